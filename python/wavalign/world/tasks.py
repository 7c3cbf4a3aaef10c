"""The world's dialogue tasks: questions with one-word answers, asked in a speaking style.

Every question is answered by a short sentence that restates it and ends in the answer
("three plus four is seven"), spoken in the style the user asked for. Question kinds:
arithmetic, lookups in a fixed knowledge table (capitals, colours, animal sounds), and word
tasks (next day / month, opposites). Splits are drawn from a seed over (question, style)
pairs, so every test prompt is absent from training.
"""

from __future__ import annotations

import dataclasses
import random
import re
from dataclasses import asdict, dataclass

from wavalign.world.espeak import Voice

NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
           "fifteen sixteen seventeen eighteen").split()

# Styles differ in pitch, rate, energy and voicing (whisper: no voicing at all). Some pairs
# are deliberately close (cheerful / excited, sad / calm) so style is graded, not trivial.
STYLES: dict[str, Voice] = {
    "neutral": Voice(rate=160, pitch=50, pitch_range=50, amplitude=100),
    "cheerful": Voice(rate=180, pitch=72, pitch_range=80, amplitude=135),
    "excited": Voice(rate=215, pitch=90, pitch_range=99, amplitude=180),
    "sad": Voice(rate=115, pitch=28, pitch_range=15, amplitude=55),
    "calm": Voice(rate=135, pitch=40, pitch_range=30, amplitude=80),
    "whisper": Voice(rate=150, pitch=50, pitch_range=50, amplitude=110, whisper=True),
}
STYLE_WORDS = {"neutral": "neutral", "cheerful": "cheerful", "excited": "excited", "sad": "sad",
               "calm": "calm", "whisper": "whispering"}

CAPITALS = [("france", "paris"), ("spain", "madrid"), ("italy", "rome"), ("japan", "tokyo"),
            ("egypt", "cairo"), ("peru", "lima"), ("kenya", "nairobi"), ("norway", "oslo"),
            ("greece", "athens"), ("china", "beijing"), ("canada", "ottawa"), ("russia", "moscow"),
            ("cuba", "havana"), ("chile", "santiago"), ("poland", "warsaw"), ("ireland", "dublin")]
COLOURS = [("the sky", "blue"), ("grass", "green"), ("snow", "white"), ("coal", "black"),
           ("a banana", "yellow"), ("a tomato", "red"), ("milk", "white"), ("a carrot", "orange"),
           ("a frog", "green"), ("the sun", "yellow"), ("a crow", "black"), ("the ocean", "blue")]
SOUNDS = [("cow", "moo"), ("dog", "woof"), ("cat", "meow"), ("duck", "quack"), ("sheep", "baa"),
          ("owl", "hoot"), ("lion", "roar"), ("pig", "oink"), ("bee", "buzz"), ("horse", "neigh")]
DAYS = "monday tuesday wednesday thursday friday saturday sunday".split()
MONTHS = ("january february march april may june july august september october november "
          "december").split()
OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("old", "young"),
             ("light", "dark"), ("open", "closed"), ("early", "late"), ("loud", "quiet"),
             ("wet", "dry"), ("full", "empty"), ("hard", "soft"), ("left", "right"), ("rich", "poor")]


@dataclass(frozen=True)
class Question:
    kind: str
    question: str  # what the user asks, without the style request
    response: str  # the gold text channel: a sentence ending in the answer
    answer: str  # the final word of the response


def all_questions() -> list[Question]:
    out = []
    for a in range(10):
        for b in range(10):
            out.append(Question("add", f"what is {NUMBERS[a]} plus {NUMBERS[b]}",
                                f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]}", NUMBERS[a + b]))
    for a in range(10):
        for b in range(a + 1):
            out.append(Question("subtract", f"what is {NUMBERS[a]} minus {NUMBERS[b]}",
                                f"{NUMBERS[a]} minus {NUMBERS[b]} is {NUMBERS[a - b]}", NUMBERS[a - b]))
    for country, city in CAPITALS:
        out.append(Question("capital", f"what is the capital of {country}",
                            f"the capital of {country} is {city}", city))
    for thing, colour in COLOURS:
        out.append(Question("colour", f"what colour is {thing}", f"{thing} is {colour}", colour))
    for animal, sound in SOUNDS:
        out.append(Question("sound", f"what does a {animal} say", f"a {animal} says {sound}", sound))
    for names in (DAYS, MONTHS):
        for index, name in enumerate(names):
            following = names[(index + 1) % len(names)]
            out.append(Question("next", f"what comes after {name}", f"after {name} comes {following}", following))
    for word, other in OPPOSITES:
        for a, b in ((word, other), (other, word)):
            out.append(Question("opposite", f"what is the opposite of {a}", f"the opposite of {a} is {b}", b))
    return out


@dataclass(frozen=True)
class Example:
    id: str
    split: str
    kind: str
    style: str
    question: str
    prompt_text: str  # the user's turn as text: style request + question
    response: str
    answer: str

    def to_dict(self) -> dict:
        return asdict(self)


def prompt_text(question: str, style: str) -> str:
    return f"answer in a {STYLE_WORDS[style]} voice. {question}?"


def make_splits(seed: int, dev_fraction: float, test_fraction: float, styles=tuple(STYLES),
                max_questions: int | None = None, rare_styles: dict[str, float] | None = None) -> list[Example]:
    """Deterministic train/dev/test over (question, style) pairs. `max_questions` keeps a
    seeded subset of questions (the fast world for tests). `rare_styles` {style: fraction}
    keeps only that fraction of the style's training pairs (the rest are dropped, not moved):
    long-tail styles the SFT policy has seen little of, as real base models have."""
    rare_styles = rare_styles or {}
    for style, fraction in rare_styles.items():
        if style not in styles or not 0 < fraction <= 1:
            raise ValueError(f"rare_styles[{style!r}]={fraction}: the style must exist and the fraction lie in (0, 1]")
    if not (0 < dev_fraction < 1 and 0 < test_fraction < 1 and dev_fraction + test_fraction < 1):
        raise ValueError(f"dev_fraction={dev_fraction} and test_fraction={test_fraction} must be in (0, 1) "
                         "and sum below 1")
    unknown = [s for s in styles if s not in STYLES]
    if unknown:
        raise ValueError(f"unknown styles {unknown}; the world has {list(STYLES)}")
    rng = random.Random(seed)
    questions = all_questions()
    if max_questions is not None:
        questions = sorted(rng.sample(questions, max_questions), key=questions.index)
    pairs = [(q, s) for q in questions for s in styles]
    order = list(range(len(pairs)))
    rng.shuffle(order)
    n_test = max(1, round(test_fraction * len(pairs)))
    n_dev = max(1, round(dev_fraction * len(pairs)))
    split_of = {}
    for rank, index in enumerate(order):
        split_of[index] = "test" if rank < n_test else "dev" if rank < n_test + n_dev else "train"
    examples = []
    for index, (q, style) in enumerate(pairs):
        if split_of[index] == "train" and style in rare_styles and rng.random() >= rare_styles[style]:
            continue
        slug = re.sub(r"[^a-z0-9]+", "-", q.question.removeprefix("what ").strip())
        examples.append(Example(f"{q.kind}-{slug}-{style}", split_of[index], q.kind, style, q.question,
                                prompt_text(q.question, style), q.response, q.answer))
    return examples


def example_voice(style: str, key: str) -> Voice:
    """The style's voice with a small per-example prosody jitter seeded by `key`, so gold
    utterances of one sentence differ from each other and from the recognizer's templates."""
    base = STYLES[style]
    rng = random.Random(key)
    return dataclasses.replace(base, rate=round(base.rate * rng.uniform(0.95, 1.05)),
                               pitch=base.pitch + rng.randint(-3, 3),
                               amplitude=round(base.amplitude * rng.uniform(0.93, 1.07)))
