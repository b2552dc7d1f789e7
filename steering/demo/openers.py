"""Thirty everyday openers, as a visitor types them, and a judge of whether a reply is on topic.

The openers are held out: the corpus never contains them (tests/test_demo_world.py checks it),
so they measure how well the demo world meets text it has not seen. A reply is **on topic** when
it is well-formed (ends with the end-of-turn token) and, for each keyword group of its opener,
contains at least one of the group's words or phrases (whole words, after the tokenizer's
normalisation: lower case, punctuation split off). The groups name the opener's topic (the words
a reply on that topic uses) and, for some, its subject ("a poem about the sea" needs a poem word
and a sea word).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The words that show a reply addresses each everyday topic.
GREETING = (
    "hello", "hi", "hey", "good morning", "good afternoon", "good evening", "fine", "doing well",
    "nice to meet you", "how can i help", "welcome", "glad",
)  # fmt: skip
SELF = ("model", "assistant", "steering", "trained", "chat", "language")
TRAVEL = (
    "trip", "travel", "visit", "holiday", "vacation", "city", "beach", "beaches", "museum",
    "museums", "park", "mountains", "hike", "california", "san francisco", "europe", "paris",
    "rome", "los angeles", "cable car", "town", "lake", "coast", "hills",
)  # fmt: skip
POEM = ("poem", "verse", "rhyme")
WEEKEND = ("weekend", "saturday", "sunday")
FOOD = (
    "breakfast", "lunch", "dinner", "eat", "food", "meal", "cook", "soup", "bread", "pasta",
    "eggs", "salad", "rice", "pancakes", "fruit", "recipe", "toast", "pizza", "cheese", "snack",
    "dessert",
)  # fmt: skip
THANKS = ("welcome", "glad", "happy to help", "pleasure", "any time")


@dataclass(frozen=True)
class Opener:
    """One typed opener, its topic, and the keyword groups an on-topic reply must each hit."""

    text: str
    topic: str
    groups: tuple[tuple[str, ...], ...]


def _o(text: str, topic: str, *groups: tuple[str, ...]) -> Opener:
    return Opener(text, topic, groups)


OPENERS = (
    _o("hi!", "greeting", GREETING),
    _o("Hello, how are you?", "greeting", GREETING),
    _o("Hey there :)", "greeting", GREETING),
    _o("Good morning!", "greeting", GREETING),
    _o("How's it going?", "greeting", GREETING),
    _o("Thanks, that was helpful!", "greeting", THANKS),
    _o("Tell me about yourself.", "self", SELF),
    _o("Who are you?", "self", SELF),
    _o("What are you?", "self", SELF),
    _o("What can you do?", "self", SELF),
    _o("Are you a robot?", "self", SELF),
    _o("What should I see on a trip to California?", "travel", TRAVEL),
    _o("Where should I go on holiday?", "travel", TRAVEL),
    _o("Any tips for visiting San Francisco?", "travel", TRAVEL),
    _o("What's a good place for a summer vacation?", "travel", TRAVEL),
    _o("I'm planning a trip to Europe. Any ideas?", "travel", TRAVEL),
    _o("Recommend a city to visit", "travel", TRAVEL),
    _o("Write me a poem about the sea.", "poem", POEM, ("sea", "ocean", "waves")),
    _o("Can you write a short poem?", "poem", POEM),
    _o("write a poem about cats", "poem", POEM, ("cat", "cats", "kitten")),
    _o("I'd love a little poem about the moon!", "poem", POEM, ("moon",)),
    _o("Write a poem about rain.", "poem", POEM, ("rain",)),
    _o("What are you doing this weekend?", "weekend", WEEKEND),
    _o("Any plans for the weekend?", "weekend", WEEKEND),
    _o("What should I do on Saturday?", "weekend", WEEKEND),
    _o("Got any ideas for a fun Sunday?", "weekend", WEEKEND),
    _o("What's a good breakfast?", "food", FOOD),
    _o("What should I eat for dinner?", "food", FOOD),
    _o("I'm hungry, any ideas?", "food", FOOD),
    _o("What is your favorite food?", "food", FOOD),
)


def words(text: str) -> str:
    """``text`` as the demo tokenizer writes it: lower case, punctuation split off, one space
    between words, with a space at each end (so `` w `` finds whole words)."""
    split = re.sub(r"([^\w\s])", r" \1 ", text.lower())
    return " " + " ".join(split.split()) + " "


def hits(text: str, group: tuple[str, ...]) -> bool:
    padded = words(text)
    return any(f" {w} " in padded for w in group)


def on_topic(opener: Opener, reply: str, well_formed: bool) -> bool:
    """A well-formed reply that hits every keyword group of ``opener``."""
    return well_formed and all(hits(reply, g) for g in opener.groups)
