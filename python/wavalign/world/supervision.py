"""What supervision the world's post-training data carries: the knobs that make gold scarce
and imperfect, as it is for real spoken dialogue models (WorldConfig.gold_fraction,
gold_errors, base_questions).

- **base questions**: the questions whose (clean) gold the base policy's own SFT saw. The
  others are new to it: post-training prompts include questions the base was never taught.
- **gold questions**: the train questions whose post-training records carry a gold response;
  the rest are prompt-only records (the public format allows records without sft_target_*).
  Rollout prompts come from every train record; the SFT anchor and the SFT-only baseline see
  only gold-bearing records.
- **weak-teacher gold**: a share of the gold questions is answered by a weaker teacher that
  makes mistakes a judge can see, consistently across the question's records: a wrong answer
  (the question restated, ending in another answer of the same kind of question) or a wrong
  style (the right sentence spoken in another style).

Every choice is a seeded function of the question list, so a world's data is a function of
its config (the cache key) alone.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from wavalign.world.tasks import STYLES, Example

ERROR_KINDS = ("answer", "style")


@dataclass(frozen=True)
class GoldError:
    kind: str  # "answer" or "style"
    response: str  # what the teacher says (the correct sentence when kind == "style")
    style: str  # the style the teacher speaks in (the requested one when kind == "answer")


def choose_questions(examples: list[Example], fraction: float, seed: int, purpose: str) -> set[str]:
    """A seeded `fraction` of the distinct train questions (at least one), for `purpose`
    ('gold' or 'base': independent draws)."""
    questions = sorted({e.question for e in examples if e.split == "train"})
    if fraction >= 1.0:
        return set(questions)
    count = max(1, round(fraction * len(questions)))
    return set(random.Random(f"{seed}:{purpose}").sample(questions, count))


def weak_teacher(gold_records: list[Example], share: float, seed: int, all_examples: list[Example]
                 ) -> dict[str, GoldError]:
    """{example id: GoldError}: a weaker teacher answers a seeded `share` of the gold questions
    (so about that share of the gold responses) and is wrong on them the way a model that lacks
    a fact is, consistently: error kinds alternate over the chosen questions; a wrong-answer
    question gets one wrong answer (of the same kind of question) in every style it is asked
    in, a wrong-style question is spoken in another style in each record."""
    if share <= 0 or not gold_records:
        return {}
    rng = random.Random(f"{seed}:weak_teacher")
    questions = sorted({e.question for e in gold_records})
    chosen = sorted(rng.sample(questions, round(share * len(questions))))
    answers_by_kind: dict[str, list[str]] = {}
    for e in all_examples:
        answers_by_kind.setdefault(e.kind, [])
        if e.answer not in answers_by_kind[e.kind]:
            answers_by_kind[e.kind].append(e.answer)
    errors = {}
    for index, question in enumerate(chosen):
        records = sorted((e for e in gold_records if e.question == question), key=lambda e: e.id)
        if ERROR_KINDS[index % 2] == "answer":
            first = records[0]
            wrong = rng.choice(sorted(a for a in answers_by_kind[first.kind] if a != first.answer))
            for e in records:
                errors[e.id] = GoldError("answer", wrong_answer(e.response, e.answer, wrong), e.style)
        else:
            for e in records:
                errors[e.id] = GoldError("style", e.response, rng.choice(sorted(s for s in STYLES if s != e.style)))
    return errors


def wrong_answer(response: str, answer: str, wrong: str) -> str:
    """The gold sentence with its final answer word replaced ("... is seven" -> "... is eight")."""
    words = response.split()
    if not words or words[-1] != answer:
        raise ValueError(f"gold response {response!r} does not end in its answer {answer!r}")
    return " ".join(words[:-1] + [wrong])
