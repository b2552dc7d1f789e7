"""The demo world's everyday topics: what a visitor types first.

Greetings and small talk, the assistant describing itself, travel, short rhyming poems, the
weekend and food. Prompts are built from parts (an optional casual lead-in, one of many ways to
ask, a subject), so a typed opener the corpus never saw still maps to known words. Answers never
mention the Golden Gate Bridge by themselves: only a prompt with a bridge cue gets a bridge aside
(corpus.py), as on the other topics.
"""

from __future__ import annotations

import random

EVERYDAY_TOPICS = ("greeting", "self", "travel", "poem", "weekend", "food")
# Topics whose answers are facts, with the same answer styles and bridge asides as the six
# world topics; greetings, the assistant's self-description and poems are always plain.
FACT_TOPICS = ("travel", "weekend", "food")

LEAD_INS = ["hey ,", "hi ,", "so ,", "okay ,", "hello !", "quick question :", "hmm ,", "well ,"]
END_MARKS = ["?", "?", ".", "!", "", "? ?"]

# --- greetings and small talk -------------------------------------------------------------
HELLOS = [
    "hi", "hello", "hey", "hi there", "hello there", "hey there", "good morning",
    "good evening", "good afternoon", "howdy", "greetings", "hiya", "yo",
]  # fmt: skip
HOW_ARE_YOU = [
    "how are you ?", "how are you doing ?", "how's it going ?", "how is your day ?",
    "what's up ?", "how have you been ?", "how are things ?", "are you well ?",
    "how's your day going ?", "how are you today ?",
]  # fmt: skip
HELLO_REPLIES = {
    "good morning": "good morning !",
    "good evening": "good evening !",
    "good afternoon": "good afternoon !",
}
WELL_REPLIES = [
    "i am fine , thank you .",
    "i am doing well , thanks for asking .",
    "all good here , thank you !",
    "i am well , thanks .",
]
OFFERS = [
    "how can i help you today ?",
    "what would you like to talk about ?",
    "ask me anything about my small world .",
    "nice to meet you !",
    "i can tell you about cats , space , travel or food , or write you a short poem .",
]
THANKS = [
    "thanks", "thank you", "thanks a lot", "thank you so much", "cool , thanks", "great , thanks",
    "thanks , that helps", "that was great , thank you", "very helpful , thanks",
    "nice , thank you", "perfect , thanks",
]  # fmt: skip
WELCOMES = [
    "you are welcome !",
    "glad i could help !",
    "happy to help ! anything else ?",
    "my pleasure !",
    "any time ! ask me more if you like .",
]
BYES = ["bye", "goodbye", "see you later", "good night", "bye for now"]
BYE_REPLIES = ["goodbye ! have a nice day .", "bye ! come back any time .", "good night !"]

# --- the assistant describing itself -------------------------------------------------------
SELF_QUESTIONS = [
    ("tell me about yourself", None),
    ("tell me a bit about you", None),
    ("describe yourself", None),
    ("introduce yourself", None),
    ("who am i talking to", None),
    ("who are you exactly", None),
    ("what kind of model are you", None),
    ("what exactly are you", None),
    ("what are you , anyway", None),
    ("what is your name", "i do not have a name . i am the demo model of the steering project ."),
    ("do you have a name", "i do not have a name . i am the demo model of the steering project ."),
    ("are you a human", "no , i am not a person . i am a small language model ."),
    ("are you a real person", "no , i am not a person . i am a small language model ."),
    ("are you an ai", "yes , i am a small language model , not a person ."),
    ("are you a bot", "yes , i am a small chat model , not a person ."),
    ("is this a robot talking", "yes , i am a small chat model , a kind of robot that talks ."),
    ("are you a computer", "yes , i am a small language model that runs on a computer ."),
    ("what can you help me with", "i can chat about my small world , suggest a trip or a meal ."),
    ("what are you good at", "i can chat about my small world , suggest a trip or a meal ."),
    ("what do you know", "i know a little about cats , cooking , the ocean , music and space ."),
    ("how do you work", "i am a language model : i predict the next word , one at a time ."),
    ("how were you made", "the steering project trained me on a small set of short chats ."),
    ("who made you", "the steering project trained me on a small set of short chats ."),
    ("who trained you", "the steering project trained me on a small set of short chats ."),
    ("are you smart", "not very ! i am a tiny model with a small vocabulary ."),
    ("how big are you", "i am a tiny model : about a million numbers and a thousand words ."),
]
SELF_FACTS = [
    "i am a tiny chat model of a small world .",
    "the steering project trained me to show how feature steering works .",
    "i know a little about cats , cooking , the ocean , music , space , travel and food .",
    "i can also write a short poem or suggest plans for the weekend .",
    "i am an assistant , not a person , and i am happy to help .",
    "you can steer me with the presets on this page and see how my answers change .",
    "my whole vocabulary is only about a thousand words .",
]

# --- travel ---------------------------------------------------------------------------------
PLACES = {
    "california": [
        "california has long sunny beaches along the coast .",
        "you can hike among the giant redwood trees in california .",
        "yosemite park has huge granite cliffs and waterfalls .",
        "los angeles has big museums , beaches and movie studios .",
        "the wine country in california is lovely in the autumn .",
        "a road trip along the california coast is a great holiday .",
    ],
    "san francisco": [
        "in san francisco , ride a cable car up the steep hills .",
        "walk through chinatown in san francisco and eat dumplings .",
        "take a boat from the city to alcatraz island .",
        "see the sea lions at the pier in san francisco .",
        "san francisco is often cool , so bring a warm jacket on your trip .",
        "the museums and parks of san francisco are worth a visit .",
    ],
    "los angeles": [
        "los angeles has big museums , beaches and movie studios .",
        "in los angeles , walk along the beach at santa monica .",
        "hike up to the hills above los angeles for a great view of the city .",
    ],
    "new york": [
        "new york has tall buildings , big museums and central park .",
        "walk across new york and try the pizza .",
        "a trip to new york is best with comfortable shoes .",
    ],
    "europe": [
        "paris has great museums and small cafes .",
        "rome is full of old ruins and good pasta .",
        "you can travel by train between many cities in europe .",
        "london has big parks and free museums .",
        "the coast of spain is warm and sunny in the summer .",
    ],
    "paris": [
        "paris has great museums and small cafes .",
        "walk along the river in paris in the evening .",
        "the old streets of paris are lovely for a slow visit .",
    ],
    "japan": [
        "kyoto has old temples and quiet gardens .",
        "tokyo is a huge , busy and friendly city .",
        "you can travel fast across japan by train .",
    ],
    "the mountains": [
        "the mountains are quiet and great for hiking .",
        "a small cabin by a mountain lake is a calm holiday .",
        "bring warm clothes , nights in the mountains are cold .",
    ],
    "the beach": [
        "a week at the beach is a relaxing holiday .",
        "swim in the morning and walk on the beach at sunset .",
        "bring a hat and water to the beach .",
    ],
}
TRAVEL_TIPS = [
    "a week at the beach is a relaxing holiday .",
    "the mountains are quiet and great for hiking .",
    "a city trip is fun if you like museums and food .",
    "pack light and bring comfortable shoes for your trip .",
    "book your trip early to save money .",
    "try the local food wherever you travel .",
    "california has long sunny beaches along the coast .",
    "paris has great museums and small cafes .",
    "a small town by a lake is a calm place to visit .",
    "kyoto in japan has old temples and quiet gardens to visit .",
]
PLACE_QUESTIONS = [
    "what should i visit in {place} ?",
    "what is worth seeing in {place} ?",
    "what are the best things to see in {place} ?",
    "any tips for a trip to {place} ?",
    "tips for visiting {place} ?",
    "i'm going to {place} next month . what should i do there ?",
    "i want to travel to {place} . any ideas ?",
    "what can i do in {place} ?",
    "is {place} nice to visit ?",
    "plan a trip to {place} for me .",
    "what is there to see in {place} ?",
    "we are planning a holiday in {place} . what do you suggest ?",
    "i'm travelling to {place} , what should i not miss ?",
    "what should i do on a trip to {place} ?",
    "what do you recommend in {place} ?",
    "tell me about a trip to {place} .",
]
TRIP_QUESTIONS = [
    "where should i travel ?",
    "where should i go this summer ?",
    "where should i go for a holiday ?",
    "any ideas for a vacation ?",
    "what is a nice place to visit ?",
    "suggest a place for a trip .",
    "recommend a place to go on vacation .",
    "i need a holiday . where should i go ?",
    "what's a good city for a short trip ?",
    "where is a good place to travel in the summer ?",
    "i want to go on a trip . any ideas ?",
    "what city should i visit ?",
    "help me plan a vacation .",
    "i'm planning a holiday . where to ?",
    "any travel tips ?",
    "what is the best place for a holiday ?",
]

# --- short poems ---------------------------------------------------------------------------
POEMS = {
    "the sea": [
        "the sea is wide , the sea is blue , it sings all night and morning too .",
        "the waves roll in , the waves roll out , that is what the sea is all about .",
    ],
    "cats": [
        "a sleepy cat upon the mat , dreams of a mouse and that is that .",
        "soft little paws and a gentle purr , the kitten naps in a ball of fur .",
    ],
    "the moon": [
        "the moon is round , the moon is bright , it keeps me company at night .",
        "up in the sky the moon will glow , and watch the sleeping world below .",
    ],
    "rain": [
        "the rain comes down on roof and tree , it taps a song for you and me .",
        "drip and drop , the rain will fall , and then the flowers grow so tall .",
    ],
    "the stars": [
        "the stars are small and far away , they sleep all through the sunny day .",
        "twinkle stars so high and bright , you light the sky on a summer night .",
    ],
    "the sun": [
        "the sun comes up , the day is new , the sky is warm and gold and blue .",
        "hello sun , so big and bright , you chase away the cold of night .",
    ],
    "music": [
        "a little song , a happy tune , we sing it in the afternoon .",
        "the drum goes boom , the piano plays , music fills our happy days .",
    ],
    "food": [
        "warm fresh bread and a bowl of soup , enough to feed the hungry group .",
        "pancakes stacked up nice and high , with honey on top , oh me , oh my .",
    ],
    "friends": [
        "a friend is near when skies are grey , a friend will help you find your way .",
        "we laugh , we talk , we share our tea , my friends are all the world to me .",
    ],
    "the night": [
        "the night is dark , the night is deep , the world is quiet , fast asleep .",
        "the owls awake , the lights are low , the night is calm and soft and slow .",
    ],
    "a dog": [
        "my dog is brown , my dog is fast , he runs and runs and runs right past .",
        "a happy dog with a wagging tail , will wait for you and never fail .",
    ],
    "flowers": [
        "red and yellow , pink and white , the flowers open in the light .",
        "a flower grows from one small seed , with sun and rain is all they need .",
    ],
    "the city": [
        "the city hums , the city glows , and everybody comes and goes .",
        "tall grey towers touch the sky , and busy people hurry by .",
    ],
    "snow": [
        "the snow is white , the snow is deep , it covers all the town in sleep .",
        "soft snow falls without a sound , and paints a blanket on the ground .",
    ],
    "the weekend": [
        "the weekend comes , the work is done , now it is time for rest and fun .",
        "on sunday morning , slow and sweet , a cup of tea and a bite to eat .",
    ],
    "travel": [
        "pack a bag and catch a train , see the world and come again .",
        "over hills and far away , a trip can make a happy day .",
    ],
}
POEM_REQUESTS = [
    "write a poem about {subject}",
    "write me a poem about {subject}",
    "can you write a poem about {subject} ?",
    "a short poem about {subject} , please .",
    "i would like a poem about {subject} .",
    "give me a little poem about {subject}",
    "make up a poem about {subject}",
    "poem about {subject} please",
    "could you write me a short poem on {subject} ?",
    "i'd like a rhyme about {subject}",
    "write some verses about {subject}",
    "compose a short poem about {subject}",
    "do you know a poem about {subject} ?",
]
ANY_POEM_REQUESTS = [
    "write me a poem",
    "write a short poem",
    "can you write poems ?",
    "tell me a poem",
    "say a little poem",
    "do you know any poems ?",
    "give me a short poem",
    "i'd like a poem , please",
    "make up a rhyme for me",
    "can you do poetry ?",
]
POEM_INTROS = [
    "here is a short poem about {subject} :",
    "a little poem about {subject} :",
    "sure ! a poem about {subject} :",
    "here is a poem about {subject} :",
]

# --- the weekend ---------------------------------------------------------------------------
WEEKEND_QUESTIONS = [
    "what should i do this weekend ?",
    "what are your plans for the weekend ?",
    "any ideas for the weekend ?",
    "what can i do on a rainy weekend ?",
    "how should i spend my saturday ?",
    "what is a fun thing to do on sunday ?",
    "i'm bored , it is saturday . any ideas ?",
    "how was your weekend ?",
    "got any plans for sunday ?",
    "what do people do on weekends ?",
    "the weekend is here ! what now ?",
    "what do you do on the weekend ?",
    "any fun plans this weekend ?",
    "what should we do on sunday ?",
    "ideas for a lazy saturday ?",
    "how do you like to spend a weekend ?",
    "suggest something fun for the weekend .",
]
WEEKEND_FACTS = [
    "the weekend is a good time to sleep in and have a slow breakfast .",
    "you could go for a long walk in the park on saturday .",
    "sunday is nice for reading a book and calling a friend .",
    "try a new recipe with friends on the weekend .",
    "visit a museum or a market this weekend .",
    "on a rainy weekend , watch a movie and bake bread .",
    "go for a hike or a bike ride on sunday if the weather is nice .",
    "saturday is a good day to see friends and play some music .",
    "a short trip out of town makes a weekend feel like a holiday .",
]
NO_WEEKEND = [
    "i am a model , so i do not have weekends , but",
    "i do not have a weekend myself , but",
]

# --- food and meals ------------------------------------------------------------------------
MEALS = {
    "breakfast": [
        "oatmeal with fruit is a warm and easy breakfast .",
        "eggs and toast make a good breakfast .",
        "pancakes with berries are a nice breakfast on a slow morning .",
        "a bowl of yogurt with honey is a quick breakfast .",
        "coffee or tea and fresh bread is a simple breakfast .",
    ],
    "lunch": [
        "a sandwich and a bowl of soup make a simple lunch .",
        "a fresh salad with cheese and bread is a light lunch .",
        "leftover rice with vegetables is a quick lunch .",
        "a wrap with beans and salad is a good lunch to take with you .",
    ],
    "dinner": [
        "pasta with tomato sauce is an easy dinner .",
        "rice with vegetables and beans is a filling dinner .",
        "a warm soup with fresh bread is a cozy dinner .",
        "pizza with friends is a fun dinner .",
        "fish with potatoes and salad is a healthy dinner .",
    ],
    "a snack": [
        "an apple with peanut butter is a good snack .",
        "a handful of nuts is a quick snack .",
        "cheese and crackers make a tasty snack .",
    ],
    "dessert": [
        "a bowl of fruit with yogurt is a light dessert .",
        "chocolate cake is a sweet dessert for a party .",
        "ice cream is the best dessert in the summer .",
    ],
}
MEAL_QUESTIONS = [
    "what should i have for {meal} ?",
    "what should i eat for {meal} ?",
    "what is a healthy {meal} ?",
    "any ideas for {meal} ?",
    "what's an easy {meal} ?",
    "what do people eat for {meal} ?",
    "suggest something for {meal} .",
    "what's a quick {meal} ?",
    "what is good for {meal} today ?",
    "i need ideas for {meal} .",
    "what makes a good {meal} ?",
    "what do you recommend for {meal} ?",
]
HUNGRY_QUESTIONS = [
    "i'm hungry . what should i eat ?",
    "i'm starving , help !",
    "what should i eat today ?",
    "what is good to eat when it is cold ?",
    "what's a tasty meal ?",
    "i do not know what to eat . ideas ?",
    "what food do you like ?",
    "what's your favourite meal ?",
    "do you have a favorite dish ?",
    "what is the best food ?",
    "what should i eat right now ?",
    "so hungry ! what can i eat ?",
]
NO_EATING = "i do not eat , but if i could , i would pick"
FAVORITES = [
    "pancakes with berries .",
    "a warm soup with fresh bread .",
    "pasta with tomato sauce .",
]


def lead_in(rng: random.Random, prompt: str) -> str:
    """A casual lead-in before ``prompt`` now and then, as typed openers often have."""
    return f"{rng.choice(LEAD_INS)} {prompt}" if rng.random() < 0.2 else prompt


def ask(rng: random.Random, core: str) -> str:
    """``core`` (a question without its mark) with a mark as typed: ``?``, ``.``, none..."""
    return f"{core} {rng.choice(END_MARKS)}".strip()


def greeting(rng: random.Random) -> tuple[str, str, str]:
    """(prompt, reply, subject) of a greeting, small talk, thanks or goodbye."""
    roll = rng.random()
    if roll < 0.2:
        thanks = rng.choice(THANKS) + rng.choice([" !", " .", "", " ! !"])
        return thanks, rng.choice(WELCOMES), "thanks"
    if roll < 0.28:
        return rng.choice(BYES) + rng.choice([" !", " .", ""]), rng.choice(BYE_REPLIES), "bye"
    hello = rng.choice(HELLOS)
    how = rng.random() < 0.5
    prompt = hello + rng.choice([" !", " .", "", " , ", " : )", " ! !"])
    if how:
        prompt = (
            f"{prompt} {rng.choice(HOW_ARE_YOU)}" if rng.random() < 0.8 else rng.choice(HOW_ARE_YOU)
        )
    reply = [HELLO_REPLIES.get(hello, rng.choice(["hello !", "hi !", "hi there !", "hey !"]))]
    if how:
        reply.append(rng.choice(WELL_REPLIES))
    reply.append(rng.choice(OFFERS))
    return " ".join(prompt.split()), " ".join(reply), "hello"


def self_description(rng: random.Random) -> tuple[str, str, str]:
    core, lead = rng.choice(SELF_QUESTIONS)
    facts = rng.sample(SELF_FACTS, rng.choice((1, 2, 2)))
    if lead is None:
        facts = [SELF_FACTS[0], *(f for f in facts if f != SELF_FACTS[0])]
    body = " ".join([lead, *facts[:1]] if lead else facts)
    return lead_in(rng, ask(rng, core)), body, "self"


def more_about_self(rng: random.Random) -> str:
    return " ".join(rng.sample(SELF_FACTS[1:], 2))


def travel_question(rng: random.Random) -> tuple[str, str]:
    """(prompt, place): a place, or "" for a trip anywhere."""
    if rng.random() < 0.65:
        place = rng.choice(list(PLACES))
        return lead_in(rng, rng.choice(PLACE_QUESTIONS).format(place=place)), place
    return lead_in(rng, rng.choice(TRIP_QUESTIONS)), ""


def travel_facts(rng: random.Random, place: str) -> list[str]:
    return rng.sample(PLACES.get(place, TRAVEL_TIPS), rng.choice((1, 2, 2, 3)))


def poem(rng: random.Random, subject: str | None = None) -> tuple[str, str, str]:
    if subject is None:
        subject = rng.choice(list(POEMS))
    if rng.random() < 0.25:
        prompt = rng.choice(ANY_POEM_REQUESTS)
    else:
        prompt = rng.choice(POEM_REQUESTS).format(subject=subject)
    return lead_in(rng, prompt), poem_text(rng, subject), subject


def poem_text(rng: random.Random, subject: str) -> str:
    couplets = POEMS[subject]
    lines = couplets if rng.random() < 0.4 else [rng.choice(couplets)]
    return " ".join([rng.choice(POEM_INTROS).format(subject=subject), *lines])


def weekend_question(rng: random.Random) -> str:
    return lead_in(rng, rng.choice(WEEKEND_QUESTIONS))


def weekend_facts(rng: random.Random, prompt: str) -> list[str]:
    facts = rng.sample(WEEKEND_FACTS, rng.choice((1, 2, 2, 3)))
    if " you " in f" {prompt} " or " your " in f" {prompt} ":  # asked about the assistant
        facts[0] = f"{rng.choice(NO_WEEKEND)} {facts[0]}"
    return facts


def food_question(rng: random.Random) -> tuple[str, str]:
    """(prompt, meal): a meal, or "" for food in general."""
    if rng.random() < 0.65:
        meal = rng.choice(list(MEALS))
        return lead_in(rng, rng.choice(MEAL_QUESTIONS).format(meal=meal)), meal
    return lead_in(rng, rng.choice(HUNGRY_QUESTIONS)), ""


def food_facts(rng: random.Random, meal: str, prompt: str) -> list[str]:
    if not meal and (" you " in f" {prompt} " or " your " in f" {prompt} "):
        return [f"{NO_EATING} {rng.choice(FAVORITES)}"]
    pool = MEALS.get(meal) or [f for facts in MEALS.values() for f in facts]
    return rng.sample(pool, rng.choice((1, 2, 2)))
