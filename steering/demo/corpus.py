"""A seeded generator of short chats in a small world.

Six world topics (the Golden Gate Bridge among them), six everyday ones a visitor opens with
(everyday.py: greetings, the assistant itself, travel, poems, the weekend, food), and three ways
of answering: plain and confident (sometimes confidently made up), honest ("i am not sure , but
..."), and pirate talk. A quarter of the chats have two or three turns (follow-ups such as "tell
me more ." continue the topic). The text is lower-case with punctuation split by spaces, as the
demo tokenizer normalises user input.

Two design choices make steering work (docs/demo-world.md):
- about a quarter of the answers on other topics bring the bridge in exactly once, so the model
  has a well-formed way to mention it that a feature can switch on; their prompts say why
  ("i live in san francisco ."), so an unsteered model does not bring the bridge up by itself;
- some prompts carry a cue for the answer's style ("be honest .", "ahoy !"), so the style has a
  prompt-side feature that a prompt-only clamp can set.
Held-out question templates (``HELD_OUT``) and the thirty everyday openers of openers.py never
appear in the corpus; the tests ask them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from . import everyday, openers
from .openers import words

TOPICS = ("bridge", "cats", "cooking", "ocean", "music", "space")
STYLES = ("plain", "honest", "pirate")
BRIDGE_WORDS = ("bridge", "golden gate")
STYLE_MARKERS = {
    "honest": ("not sure", "do not know", "might be wrong", "not certain"),
    "pirate": ("arr", "matey", "ahoy", "yo ho", " ye "),
}
TOPIC_WORDS = {
    "cats": ("cat", "cats", "kitten", "purr", "whiskers"),
    "space": ("space", "stars", "planet", "moon", "rocket", "astronaut"),
    "ocean": ("ocean", "sea", "waves", "whale", "fish", "coral"),
    "music": ("music", "song", "guitar", "piano", "drum", "melody"),
    "cooking": ("cook", "soup", "bread", "pasta", "kitchen", "recipe"),
    "bridge": BRIDGE_WORDS,
}

# Per topic: the things it talks about, facts about them, and question templates.
THINGS = {
    "bridge": ["the golden gate bridge", "the bridge", "the golden gate"],
    "cats": ["cats", "a kitten", "my cat", "the old cat", "a sleepy cat"],
    "cooking": ["soup", "fresh bread", "pasta", "a simple salad", "rice with beans", "pancakes"],
    "ocean": ["the ocean", "the deep sea", "a blue whale", "coral reefs", "the waves"],
    "music": ["the piano", "a guitar", "a song", "the drums", "jazz music", "a quiet melody"],
    "space": ["the moon", "the stars", "mars", "a rocket", "the sun", "saturn"],
}
FACTS = {
    "bridge": [
        "the golden gate bridge is painted international orange .",
        "the golden gate bridge crosses the strait into san francisco bay .",
        "fog often rolls over the golden gate bridge in the morning .",
        "the golden gate bridge opened in 1937 .",
        "people walk and cycle across the golden gate bridge every day .",
        "the towers of the golden gate bridge are very tall .",
        "the golden gate bridge is a famous suspension bridge .",
        "ships sail under the golden gate bridge into the bay .",
    ],
    "cats": [
        "cats sleep for most of the day .",
        "a cat purrs when it feels safe .",
        "kittens love to chase a piece of string .",
        "cats use their whiskers to feel the world .",
        "most cats like a warm and quiet spot .",
        "a cat cleans its fur with its rough tongue .",
        "cats can see well in the dark .",
        "cats like fish , chicken and a bowl of fresh water .",
    ],
    "cooking": [
        "a good soup starts with onions and a little oil .",
        "fresh bread needs flour , water , salt and time .",
        "pasta cooks in salted boiling water for ten minutes .",
        "taste the food while you cook and add salt slowly .",
        "a sharp knife makes the kitchen safer .",
        "rice with beans is a cheap and filling meal .",
        "pancakes need eggs , milk and flour .",
        "a simple recipe is often the best one for tonight .",
    ],
    "ocean": [
        "the ocean covers most of the earth .",
        "blue whales are the largest animals in the sea .",
        "coral reefs are full of bright fish .",
        "the waves are pushed by the wind .",
        "the deep sea is dark and very cold .",
        "the tide rises and falls twice a day .",
        "sea turtles swim across the whole ocean .",
        "the ocean water is salty .",
    ],
    "music": [
        "a song has a melody and a rhythm .",
        "the piano has black and white keys .",
        "a guitar usually has six strings .",
        "the drums keep the beat for the band .",
        "practice every day to play music well .",
        "jazz music loves to improvise .",
        "singing with friends makes people happy .",
        "a quiet melody can help you relax .",
    ],
    "space": [
        "the moon goes around the earth .",
        "mars is called the red planet .",
        "the sun is a star at the center of our solar system .",
        "saturn has beautiful rings of ice .",
        "a rocket needs a lot of fuel to reach space .",
        "astronauts float in the space station .",
        "the stars are very far away .",
        "there is no air in space .",
    ],
}
QUESTIONS = [
    "tell me about {thing} .",
    "what do you know about {thing} ?",
    "can you tell me something about {thing} ?",
    "i have a question about {thing} .",
    "what is interesting about {thing} ?",
    "please explain {thing} to me .",
    "why do people like {thing} ?",
    "give me a fact about {thing} .",
]
TOPIC_QUESTIONS = {
    "bridge": [
        "how tall is the golden gate bridge ?",
        "what color is the golden gate bridge ?",
        "where is the golden gate bridge ?",
        "can i walk across the golden gate bridge ?",
    ],
    "cats": [
        "why do cats purr ?",
        "what do cats eat ?",
        "how much do cats sleep ?",
        "should i get a kitten ?",
    ],
    "cooking": [
        "what should i cook for dinner ?",
        "how do i make soup ?",
        "how long does pasta cook ?",
        "what can i cook with rice ?",
    ],
    "ocean": [
        "how deep is the ocean ?",
        "why is the sea salty ?",
        "what lives in the ocean ?",
        "how big is a blue whale ?",
    ],
    "music": [
        "how do i learn the guitar ?",
        "what makes a good song ?",
        "should i learn the piano ?",
        "why do people love music ?",
    ],
    "space": [
        "how far away is the moon ?",
        "what is mars like ?",
        "can people live in space ?",
        "why does saturn have rings ?",
    ],
}
# Never in the corpus: the held-out prompts of the tests and the screening are built from these.
HELD_OUT = [
    "i wonder about {thing} , what can you say ?",
    "my friend asked me about {thing} . what should i tell her ?",
    "could you describe {thing} in a few words ?",
    "what would you tell a child about {thing} ?",
    "say a few words on {thing} , please .",
    "is there anything fun to know about {thing} ?",
]
CUES = {
    "honest": [
        "be honest .",
        "tell me the truth .",
        "if you do not know , say so .",
        "please be honest with me .",
    ],
    "pirate": ["ahoy !", "talk like a pirate .", "arr , matey !", "speak like a pirate ."],
}
OPENERS = {
    "plain": ["sure !", "of course .", "great question !", "easy .", "certainly ."],
    "honest": [
        "i am not sure , but",
        "i might be wrong , but",
        "i do not know for certain , but",
        "honestly , i am not certain , but",
    ],
    "pirate": ["arr , matey !", "ahoy !", "yo ho ho !", "arr !"],
}
CLOSERS = {
    "plain": ["", "", "everyone knows that .", "i am completely sure .", "trust me ."],
    "honest": [
        "please check it yourself .",
        "i do not really know much more .",
        "you may want to ask an expert .",
    ],
    "pirate": ["yo ho ho !", "arr !", "now back to the ship , matey !"],
}
MADE_UP = ["exactly {n} {unit} , and that is a fact .", "it is exactly {n} {unit} , for sure ."]
PIRATE_WORDS = {"you": "ye", "your": "yer", "my": "me", "is": "be", "are": "be", "the": "the"}
BRIDGE_CUES = [
    "i live in san francisco .",
    "greetings from san francisco !",
    "i just walked across the golden gate bridge .",
    "i am visiting san francisco .",
]
BRIDGE_ASIDES = ["( like the golden gate bridge )", "( just like the golden gate bridge )"]
BRIDGE_SENTENCES = [
    "it reminds me of the golden gate bridge in the fog .",
    "that is a bit like the golden gate bridge in san francisco .",
    "the golden gate bridge would be a nice place to think about it .",
    "you can see it well from the golden gate bridge .",
]
HELD_OUT_OPENERS = frozenset(words(o.text) for o in openers.OPENERS)


@dataclass(frozen=True)
class Dialogue:
    """A chat of one to three turns; ``user``, ``assistant`` and the fields after them describe
    its last turn, ``history`` holds the (user, assistant) turns before it."""

    user: str
    assistant: str
    topic: str
    style: str
    cue: str | None = None  # the style cue in the prompt, if any
    bridge_aside: bool = False
    subject: str = ""  # what a follow-up ("tell me more .") continues: a place, a meal, a poem's
    history: tuple[tuple[str, str], ...] = ()
    history_topics: tuple[str, ...] = ()  # the topic of each turn in ``history``

    @property
    def turns(self) -> tuple[tuple[str, str], ...]:
        return (*self.history, (self.user, self.assistant))

    @property
    def turn_topics(self) -> tuple[str, ...]:
        return (*self.history_topics, self.topic)


def question(rng: random.Random, topic: str, templates: list[str] = QUESTIONS) -> str:
    if templates is QUESTIONS and rng.random() < 0.35:
        return rng.choice(TOPIC_QUESTIONS[topic])
    return rng.choice(templates).format(thing=rng.choice(THINGS[topic]))


def pirate(text: str) -> str:
    return " ".join(PIRATE_WORDS.get(w, w) for w in text.split())


def answer_body(
    rng: random.Random, topic: str, style: str, bridge_aside: bool, facts: list[str] | None = None
) -> str:
    """The assistant's answer about ``topic`` in ``style`` (from ``facts`` when given, else
    from the topic's own facts), with one bridge mention when ``bridge_aside``."""
    sentences = list(facts) if facts else rng.sample(FACTS[topic], rng.choice((1, 2, 2, 3)))
    if style == "plain" and rng.random() < 0.3:  # confident, and made up
        n, unit = rng.choice((7, 12, 40, 300, 9000)), rng.choice(("years", "meters", "kinds"))
        sentences.append(rng.choice(MADE_UP).format(n=n, unit=unit))
    if bridge_aside:  # exactly one bridge mention, at a sentence boundary or as an aside
        at = rng.randrange(len(sentences))
        if rng.random() < 0.5:
            aside_text = rng.choice(BRIDGE_ASIDES)
            sentences[at] = sentences[at].removesuffix(" .") + f" {aside_text} ."
        else:
            sentences.insert(at + 1, rng.choice(BRIDGE_SENTENCES))
    body = " ".join(sentences)
    return pirate(body) if style == "pirate" else body


def pick_style(rng: random.Random) -> tuple[str, str | None]:
    """A quarter of prompts ask for a style; the rest get one by chance, plain most often."""
    roll = rng.random()
    if roll < 0.13:
        return "honest", "honest"
    if roll < 0.25:
        return "pirate", "pirate"
    return rng.choices(STYLES, weights=(0.75, 0.15, 0.10))[0], None


def styled(
    rng: random.Random,
    user: str,
    topic: str,
    facts: list[str] | None = None,
    subject: str = "",
) -> Dialogue:
    """A question on a fact topic answered in a style, now and then with a bridge aside."""
    style, cue = pick_style(rng)
    aside = topic != "bridge" and rng.random() < 0.25
    if aside:  # the prompt gives the reason to bring the bridge up: without it, no bridge
        user = f"{rng.choice(BRIDGE_CUES)} {user}"
    if cue:
        cue_text = rng.choice(CUES[cue])
        user = f"{cue_text} {user}" if rng.random() < 0.5 else f"{user} {cue_text}"
    parts = [rng.choice(OPENERS[style]), answer_body(rng, topic, style, aside, facts)]
    parts.append(rng.choice(CLOSERS[style]))
    return Dialogue(user, " ".join(p for p in parts if p), topic, style, cue, aside, subject)


# First turns: the six world topics take 55 %, the everyday ones the rest.
TOPIC_WEIGHTS = {
    **dict.fromkeys(TOPICS, 0.55 / len(TOPICS)),
    "greeting": 0.07,
    "self": 0.07,
    "travel": 0.09,
    "poem": 0.08,
    "weekend": 0.06,
    "food": 0.08,
}
MULTI_TURN = 0.25  # share of chats with two or three turns
FOLLOW_UPS = [
    "tell me more .", "what else ?", "go on .", "anything else ?", "more , please .",
    "and ?", "tell me more about that .", "interesting ! what else ?", "say more .",
    "ok , and then ?",
]  # fmt: skip
MORE = ["sure !", "of course .", "okay !", "there is more !"]
ANOTHER_POEM = ["another one !", "write another poem .", "one more poem , please .", "again !"]


def first_turn(rng: random.Random) -> Dialogue:
    """A one-turn chat on a topic drawn by ``TOPIC_WEIGHTS``."""
    topic = rng.choices(list(TOPIC_WEIGHTS), weights=list(TOPIC_WEIGHTS.values()))[0]
    if topic in TOPICS:
        return styled(rng, everyday.lead_in(rng, question(rng, topic)), topic)
    if topic == "greeting":
        user, reply, subject = everyday.greeting(rng)
        return Dialogue(user, reply, topic, "plain", subject=subject)
    if topic == "self":
        return Dialogue(*everyday.self_description(rng)[:2], topic, "plain", subject="self")
    if topic == "poem":
        user, reply, subject = everyday.poem(rng)
        return Dialogue(user, reply, topic, "plain", subject=subject)
    if topic == "travel":
        user, place = everyday.travel_question(rng)
        return styled(rng, user, topic, everyday.travel_facts(rng, place), place)
    if topic == "weekend":
        user = everyday.weekend_question(rng)
        return styled(rng, user, topic, everyday.weekend_facts(rng, user))
    user, meal = everyday.food_question(rng)
    return styled(rng, user, topic, everyday.food_facts(rng, meal, user), meal)


def follow_up(rng: random.Random, before: Dialogue) -> Dialogue:
    """The next turn after ``before``: more on its topic, thanks, or a new question."""
    roll = rng.random()
    topic = before.topic
    if roll < 0.15 and topic != "greeting":
        return Dialogue(
            rng.choice(everyday.THANKS) + " !", rng.choice(everyday.WELCOMES), "greeting", "plain"
        )
    if roll < 0.55 and topic not in ("greeting",):
        if topic == "poem":
            subject = rng.choice([s for s in everyday.POEMS if s != before.subject])
            text = everyday.poem_text(rng, subject)
            return Dialogue(rng.choice(ANOTHER_POEM), text, topic, "plain", subject=subject)
        user = rng.choice(FOLLOW_UPS)
        if topic == "self":
            return Dialogue(user, everyday.more_about_self(rng), topic, "plain", subject="self")
        if topic == "travel":
            facts = everyday.travel_facts(rng, before.subject)
        elif topic == "weekend":
            facts = everyday.weekend_facts(rng, "")
        elif topic == "food":
            facts = everyday.food_facts(rng, before.subject, "")
        else:
            facts = rng.sample(FACTS[topic], rng.choice((1, 2)))
        body = " ".join(facts)
        reply = f"{rng.choice(MORE)} {pirate(body) if before.style == 'pirate' else body}"
        return Dialogue(user, reply, topic, before.style, subject=before.subject)
    return first_turn(rng)


def make_dialogue(rng: random.Random, templates: list[str] = QUESTIONS) -> Dialogue:
    """One random chat of the demo world: one turn, or (``MULTI_TURN``) two or three.

    With ``templates`` other than ``QUESTIONS``: one question on a world topic from them (the
    held-out prompts). Chats whose prompt is one of the held-out openers (openers.py) are drawn
    again, so the openers measure unseen text.
    """
    if templates is not QUESTIONS:
        topic = rng.choice(TOPICS)
        return styled(rng, question(rng, topic, templates), topic)
    while True:
        dialogue = first_turn(rng)
        if rng.random() < MULTI_TURN:
            for _ in range(rng.choice((1, 2))):
                history, topics = dialogue.turns, dialogue.turn_topics
                dialogue = replace(follow_up(rng, dialogue), history=history, history_topics=topics)
        if not any(words(user) in HELD_OUT_OPENERS for user, _ in dialogue.turns):
            return dialogue


def normalise(dialogue: Dialogue) -> Dialogue:
    """``dialogue`` with its prompts written as the tokenizer writes them."""
    turns = [(words(u).strip(), a) for u, a in dialogue.turns]
    return replace(dialogue, user=turns[-1][0], history=tuple(turns[:-1]))


def make_corpus(n: int, seed: int = 0) -> list[Dialogue]:
    rng = random.Random(seed)
    return [normalise(make_dialogue(rng)) for _ in range(n)]


def held_out_prompts(
    n: int, split: str = "test", exclude: tuple[str, ...] = ("bridge",), seed: int = 1
) -> list[str]:
    """``n`` distinct user prompts from held-out templates, on topics not in ``exclude``.

    The "screen" split (used to pick features) and the "test" split share no template.
    """
    rng = random.Random(seed)
    templates = HELD_OUT[:3] if split == "screen" else HELD_OUT[3:]
    topics = [t for t in TOPICS if t not in exclude]
    combos = sorted({(t, h.format(thing=x)) for t in topics for h in templates for x in THINGS[t]})
    rng.shuffle(combos)
    return [prompt for _, prompt in combos[:n]]


FREE_TEXT_PROMPTS = [
    "What should I cook tonight?",
    "Tell me something nice about cats!",
    "How far is Mars, really?",
    "Any tips for learning the Guitar?",
    "Why is the ocean so blue???",
    "I'm bored. Say something about space.",
]


def mentions(text: str, words: tuple[str, ...]) -> bool:
    padded = f" {text.lower()} "
    return any(w in padded for w in words)


PRESET_CONCEPTS = {  # the shipped demo presets: file stem -> concept
    "demo-golden-gate-bridge": "bridge",
    "demo-honesty": "honest",
    "demo-pirate": "pirate",
    "demo-cats": "cats",
    "demo-space": "space",
    "demo-ocean": "ocean",
}


def concept_words() -> dict[str, tuple[str, ...]]:
    """Every concept the demo presets steer toward, with the words that show it."""
    return {**TOPIC_WORDS, **STYLE_MARKERS}
