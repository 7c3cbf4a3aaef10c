"""The world's supervision knobs: gold_fraction (prompt-only records), gold_errors (a weak
teacher's gold) and base_questions (what the base policy's SFT saw)."""

from __future__ import annotations

import collections

import pytest
import torch

from wavalign.world import World, WorldConfig, build_world
from wavalign.world import supervision, tasks

KNOBS = dict(gold_fraction=0.5, gold_errors=0.3, base_questions=0.5)


def _examples():
    return tasks.make_splits(0, 0.15, 0.2, max_questions=24)


def test_question_choices_are_seeded_fractions_of_the_train_questions():
    examples = _examples()
    train_questions = {e.question for e in examples if e.split == "train"}
    half = supervision.choose_questions(examples, 0.5, seed=0, purpose="gold")
    assert half <= train_questions and len(half) == round(0.5 * len(train_questions))
    assert half == supervision.choose_questions(examples, 0.5, seed=0, purpose="gold")
    assert half != supervision.choose_questions(examples, 0.5, seed=0, purpose="base")  # independent draws
    assert supervision.choose_questions(examples, 1.0, seed=0, purpose="gold") == train_questions
    assert len(supervision.choose_questions(examples, 0.01, seed=0, purpose="gold")) == 1


def test_weak_teacher_is_wrong_on_a_share_of_questions_consistently():
    examples = _examples()
    gold = [e for e in examples if e.split == "train"]
    errors = supervision.weak_teacher(gold, 0.4, seed=1, all_examples=examples)
    by_id = {e.id: e for e in examples}
    wrong_questions = {by_id[i].question for i in errors}
    assert len(wrong_questions) == round(0.4 * len({e.question for e in gold}))
    # every record of a chosen question is the teacher's, with one error kind per question
    for question in wrong_questions:
        records = [e for e in gold if e.question == question]
        assert all(e.id in errors for e in records)
        kinds = {errors[e.id].kind for e in records}
        assert len(kinds) == 1
        if kinds == {"answer"}:
            assert len({errors[e.id].response for e in records}) == 1  # the same wrong answer in every style
    kinds = collections.Counter(errors[i].kind for i in errors)
    assert kinds["answer"] and kinds["style"]
    for example_id, error in errors.items():
        e = by_id[example_id]
        if error.kind == "answer":
            assert error.style == e.style and error.response != e.response
            assert error.response.rsplit(" ", 1)[0] == e.response.rsplit(" ", 1)[0]  # the question restated
        else:
            assert error.response == e.response and error.style != e.style
    assert supervision.weak_teacher(gold, 0.0, seed=1, all_examples=examples) == {}
    with pytest.raises(ValueError, match="does not end in its answer"):
        supervision.wrong_answer("two plus two is four", "five", "six")


@pytest.mark.parametrize("field,value", [("gold_fraction", 0.0), ("gold_fraction", 1.5), ("base_questions", -1),
                                         ("gold_errors", 1.0), ("gold_errors", -0.1), ("gold_fraction", True)])
def test_bad_knob_values_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        WorldConfig(**{field: value})


def test_knobs_change_the_cache_key():
    assert WorldConfig.fast(**KNOBS).digest() != WorldConfig.fast().digest()


@pytest.fixture(scope="module")
def scarce_world(world_cache):
    return World(build_world(WorldConfig.fast(**KNOBS), progress=False))


def test_scarce_world_records(scarce_world):
    report = scarce_world.report["supervision"]
    train = scarce_world.examples("train")
    kinds = collections.Counter(r["supervision"] for r in train)
    assert report["train_records"] == len(train) and report["prompt_only"] == kinds["prompt_only"] > 0
    assert kinds["wrong_answer"] > 0 and kinds["wrong_style"] > 0
    assert report["gold_questions"] == round(0.5 * report["train_questions"])
    # prompt-only records carry no gold at all; gold questions' records all do
    gold_questions = {r["question"] for r in train if r["supervision"] != "prompt_only"}
    for r in train:
        assert ("response_ids" in r) == (r["question"] in gold_questions)
        assert ("response_text" in r) == ("response_ids" in r)
    # the weak teacher's mistakes are what a judge hears; dev / test gold stays clean
    for r in train:
        if r["supervision"] in ("wrong_answer", "wrong_style"):
            a = scarce_world.scorer.assess(r["response_text"], r["response_units"], r["answer"], r["style"])
            if r["supervision"] == "wrong_answer":
                assert not a.correct and a.recognized == r["response_text"]
            else:
                assert a.correct and a.eq < 3.0
    for split in ("dev", "test"):
        assert all(r["supervision"] == "gold" for r in scarce_world.examples(split))
    assert scarce_world.report["gold_test"]["IQ"] == 100.0
    assert report["base_sft_records"] == sum(1 for r in train if r["question"] in _base_questions(scarce_world))


def _base_questions(world):
    examples = tasks.make_splits(world.config.seed, world.config.dev_fraction, world.config.test_fraction,
                                 max_questions=world.config.max_questions, rare_styles=world.config.rare_styles)
    return supervision.choose_questions(examples, world.config.base_questions, world.config.seed, "base")


def test_sft_mode_learns_from_gold_bearing_records_only(scarce_world, tmp_path):
    from wavalign.train.config import TrainConfig
    from wavalign.train.trainer import Trainer

    config = TrainConfig.load(None, ["mode=sft", "optim.steps=1", "optim.prompts_per_step=4",
                                         f"run.output_dir={tmp_path}", "run.progress=false", "run.tensorboard=false",
                                         "run.plots=false", "eval.limit=2"])
    trainer = Trainer(config, world=scarce_world)
    assert trainer.train_examples and all(e.response_ids is not None for e in trainer.train_examples)
    expected = sum(1 for r in scarce_world.examples("train") if "response_ids" in r)
    assert len(trainer.train_examples) == expected


def test_hybrid_step_samples_prompt_only_records_and_anchors_on_gold(scarce_world, tmp_path):
    """Rollouts come from every train record; the anchor's rows are the batch's gold-bearing ones."""
    from wavalign.train.config import TrainConfig
    from wavalign.train.trainer import Trainer

    config = TrainConfig.load(None, ["optim.steps=1", "optim.prompts_per_step=8", "rollout.group_size=2",
                                     "rollout.max_new_tokens=48", f"run.output_dir={tmp_path}", "run.progress=false",
                                     "run.tensorboard=false", "run.plots=false", "eval.before=false",
                                     "eval.after=false", "gate.mode=fixed", "gate.fixed_lambda=0.5"])
    trainer = Trainer(config, world=scarce_world)
    try:
        assert len(trainer.train_examples) == len(scarce_world.examples("train"))  # prompt-only records included
        gold = [e for e in trainer.train_examples if e.response_ids is not None][:3]
        prompt_only = [e for e in trainer.train_examples if e.response_ids is None][:5]
        batch = trainer.collector.collect(gold + prompt_only, step=0, first_prompt=0)
        assert len(batch.rows) == 16 and len(batch.gold) == 3
        assert batch.gold.ids.shape[0] == 3 and not torch.isnan(batch.rewards).all()
        trainer.fit()  # one step over the sampler's prompts: both terms present
        from wavalign.train.run_log import read_metrics

        step = [r for r in read_metrics(trainer.run_dir) if r["kind"] == "train"][0]
        assert step["gate/lambda"] == 0.5 and "sft/speech_nll" in step and "loss/rl" in step
    finally:
        trainer.close()
