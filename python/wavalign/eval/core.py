"""Score a policy on held-out prompts, one record per prompt.

The trainer's before/after evaluation, `python -m wavalign.eval` and the ablation runner all go
through `PolicyEvaluator`, so a number means the same thing wherever it is printed.

A record holds, for one prompt and the policy's greedy response:
  IQ       100 if the answer is right, else 0 (world only; its mean is the IQ in %)
  EQ       style score 1-5 from the world's style meter (world only)
  WER      word error rate of the speech channel against the text channel: text-speech
           consistency, lower is better (world only)
  reward   the composite judge reward (NaN when no judge scored it), and reward/<component>
  length   response length in tokens
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from wavalign.modality import ModalitySpec
from wavalign.rollout.engine import ModalitySampling, RolloutEngine, SamplingParams
from wavalign.train.data import batch_columns
from wavalign.train.rewards import make_completions

#: per-prompt metrics and whether higher is better
METRICS = {"IQ": True, "EQ": True, "WER": False, "reward": True, "length": None}
EVAL_SEED = 12345  # sampling seed when evaluation temperature > 0


@dataclass
class PolicyEvaluator:
    """Everything evaluation needs besides the policy itself.

    examples: TrainExample-like objects (prompt_ids, columns, id, prompt_text)
    format: splits response ids into (text, speech units) — world ChatFormat or GenericFormat
    scorer: the world's WorldScorer, or None for data without a world (then no IQ/EQ/WER)
    reward_fn: a CompositeReward (keyed by "eval:<row>" so judge noise is the same for every
      policy scored on the same prompts), or None
    prompt_text: example -> the prompt as text for judges
    """

    spec: ModalitySpec
    pad_id: int
    examples: Sequence
    format: object
    scorer: object | None
    reward_fn: Callable | None
    prompt_text: Callable
    max_new_tokens: int = 160
    temperature: float = 0.0

    @torch.no_grad()
    def generate(self, policy) -> list[list[int]]:
        was_training = policy.training
        policy.eval()
        engine = RolloutEngine(policy, self.spec, pad_id=self.pad_id)
        sampling = ModalitySampling(temperature=self.temperature)
        params = SamplingParams(text=sampling, speech=sampling, max_new_tokens=self.max_new_tokens, seed=EVAL_SEED)
        rollout = engine.generate([x.prompt_ids for x in self.examples], n=1, params=params)
        policy.train(was_training)
        return [row[:length].tolist() for row, length in zip(rollout.ids, rollout.lengths)]

    def score(self, responses: Sequence[Sequence[int]]) -> list[dict]:
        """-> one record per example (see the module docstring)."""
        if len(responses) != len(self.examples):
            raise ValueError(f"{len(responses)} responses for {len(self.examples)} examples")
        records = []
        listen = self.scorer if getattr(self.reward_fn, "needs_audio", False) else None
        completions = make_completions(self.format, responses, listen)
        for example, completion in zip(self.examples, completions):
            text, units = completion.text, completion.speech_units
            record = {"id": example.id, "length": float(len(completion.ids)), "text": text}
            if self.scorer is not None:
                a = self.scorer.assess(text, units, example.columns["answer"], example.columns["style"])
                record.update(IQ=100.0 * a.correct, EQ=a.eq, WER=a.wer, recognized=a.recognized)
            records.append(record)
        if self.reward_fn is not None:
            columns = batch_columns(self.examples)
            columns["sample_key"] = [f"eval:{row}" for row in range(len(self.examples))]
            prompts = [self.prompt_text(x) for x in self.examples]
            values = self.reward_fn(prompts, completions, **columns)
            components = dict(getattr(self.reward_fn, "last_components", {}))
            for row, record in enumerate(records):
                record["reward"] = math.nan if values[row] is None else float(values[row])
                for name, scores in components.items():
                    record[f"reward/{name}"] = float(scores[row])
        return records

    def run(self, policy) -> list[dict]:
        return self.score(self.generate(policy))


def metric_names(records: Sequence[dict]) -> list[str]:
    """Numeric metrics present in the records, in a stable order."""
    names = [m for m in METRICS if records and m in records[0]]
    names += sorted(k for k in (records[0] if records else {}) if k.startswith("reward/"))
    return names


def mean_summary(records: Sequence[dict]) -> dict[str, float]:
    """Means over records (NaN ignored) plus n: the trainer's before/after numbers."""
    out: dict[str, float] = {}
    for name in metric_names(records):
        values = [r[name] for r in records if not math.isnan(r[name])]
        out[name] = sum(values) / len(values) if values else math.nan
    out["n"] = len(records)
    if "length" in out:
        out["response_length"] = out.pop("length")
    return out
