"""Score a policy on held-out prompts, one record per response.

The trainer's before/after evaluation, the eval CLI and the ablation runner all go through
`PolicyEvaluator` (built by `build_evaluator` from a TrainConfig), which rolls out and scores
through the training Collector's own path, greedy, with the evaluation judges; so a number
means the same thing wherever it is printed.

A record holds, for one prompt and the policy's (greedy by default) response:
  IQ       100 if the answer is right, else 0 (exact metrics, world only; its mean is the IQ in %)
  EQ       style score 1-5 from the world's style meter (exact metrics)
  WER      word error rate of the speech channel against the text channel: text-speech
           consistency, lower is better (exact metrics)
  reward   the composite judge reward (NaN when no judge scored it), and reward/<component>
  length   response length in tokens
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from wavalign.adapters import prompt_inputs_of
from wavalign.data import judge_prompt_text
from wavalign.modality import ModalitySpec
from wavalign.rollout.engine import Rollout, SamplingParams
from wavalign.sampling_params import ModalitySampling
from wavalign.train.collect import Collector
from wavalign.files import write_text_atomic
from wavalign.train.data import check_columns
from wavalign.train.run_log import nan_to_none

log = logging.getLogger(__name__)

#: Per-prompt metrics and whether higher is better (None: neither).
METRICS = {"IQ": True, "EQ": True, "WER": False, "reward": True, "length": None}
#: The one metric-label table: what tables print for a metric, and how many digits.
METRIC_LABELS = {"IQ": ("IQ (% correct)", 1), "EQ": ("EQ (style, 1-5)", 2),
                 "WER": ("text-speech WER (lower is better)", 3), "reward": ("mean judge reward (1-5)", 2),
                 "length": ("response length (tokens)", 1)}
EVAL_SEED = 12345  # sampling seed when evaluation temperature > 0


def metric_label(name: str) -> str:
    """Table label of a metric; reward/<component> is that judge."""
    if name in METRIC_LABELS:
        return METRIC_LABELS[name][0]
    return f"  judge: {name.split('/', 1)[1]}" if name.startswith("reward/") else name


def table_label(name: str) -> str:
    """Row label in the training CLI's tables: a judge component indented under the reward."""
    return f"  {name.split('/', 1)[1]}" if name.startswith("reward/") else metric_label(name)


def metric_digits(name: str) -> int:
    return METRIC_LABELS[name][1] if name in METRIC_LABELS else 2


@dataclass
class PolicyEvaluator:
    """Held-out prompts, how to decode them and how to score them; `run(policy)` -> records.

    collector: the rollout-and-scoring path training uses (train/collect.py), with the
      evaluation judges as its reward_fn (keyed by "eval:<row>", so judge noise is the same for
      every policy scored on the same prompts), or none
    examples: TrainExamples (prompt_ids, columns, id, prompt_text)
    exact: (text, units, columns) -> {"IQ", "EQ", "WER", ...} exact metrics, or None (the world
      provides one; real data has none)
    n: responses per prompt (records are prompt-major: row = prompt * n + sample)
    """

    collector: Collector
    examples: Sequence
    exact: Callable | None
    max_new_tokens: int = 160
    temperature: float = 0.0
    n: int = 1
    seed: int = EVAL_SEED

    @property
    def spec(self) -> ModalitySpec:
        return self.collector.spec

    @property
    def reward_fn(self):
        return self.collector.reward_fn

    def rollout(self, policy) -> Rollout:
        sampling = ModalitySampling(temperature=self.temperature)
        params = SamplingParams(text=sampling, speech=sampling, max_new_tokens=self.max_new_tokens, seed=self.seed)
        return self.collector.rollout(policy, self.examples, n=self.n, params=params,
                                      extras=prompt_inputs_of(self.collector.adapter, self.examples))

    def generate(self, policy) -> list[list[int]]:
        rollout = self.rollout(policy)
        return [row[:length].tolist() for row, length in zip(rollout.ids, rollout.lengths)]

    def score(self, responses: Sequence[Sequence[int]]) -> list[dict]:
        """-> one record per response (see the module docstring)."""
        if len(responses) != len(self.examples) * self.n:
            raise ValueError(f"{len(responses)} responses for {len(self.examples)} examples x {self.n}")
        keys = [f"eval:{row}" for row in range(len(responses))]
        completions, result, decode = self.collector.score(self.examples, responses, n=self.n, keys=keys)
        if decode.get("decode_failed"):
            log.warning("evaluation: the speech codec failed on %d of %d responses; judges that listen score them "
                        "None", decode["decode_failed"], decode["decode_requested"])
        records = []
        for row, completion in enumerate(completions):
            example = self.examples[row // self.n]
            record = {"id": example.id, "length": float(len(completion.ids)), "text": completion.text}
            if self.exact is not None:
                record.update(self.exact(completion.text, completion.speech_units, example.columns))
            records.append(record)
        if result is not None:
            for row, record in enumerate(records):
                record["reward"] = float(result.total[row])
                for k, name in enumerate(result.names):
                    record[f"reward/{name}"] = float(result.components[row, k])
        return records

    def run(self, policy) -> list[dict]:
        return self.score(self.generate(policy))


def build_evaluator(config, *, examples: Sequence, spec: ModalitySpec, tokenizer, format, world=None,
                    reward_fn=None, exact: Callable | None | str = "auto", codec="world",
                    adapter=None, collector: Collector | None = None) -> PolicyEvaluator:
    """The evaluator a TrainConfig describes: the first `eval.limit` examples, greedy
    (eval.temperature), the rollout's response budget, the given judges, and exact metrics
    (exact="auto": the world's when the examples are the world's, i.e. data.source is world).
    codec: the SpeechCodec for rewards that listen ("world": the world's, when there is one);
    adapter: the model's ModelAdapter; collector: the training collector, whose format and
    rollout engine evaluation shares (None: a collector of its own)."""
    e = config.eval
    if exact == "auto":
        exact = world.exact_metrics if world is not None and config.data.source == "world" else None
    examples = list(examples)[:e.limit]
    if reward_fn is not None:
        check_columns(examples, reward_fn)
    codec = (world.codec if world is not None else None) if codec == "world" else codec
    if collector is not None:
        collector = collector.with_rewards(reward_fn, codec=codec)
    else:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (spec.pad or 0)
        collector = Collector(config, policy=None, spec=spec, pad_id=pad_id, format=format, reward_fn=reward_fn,
                              prompt_text=partial(judge_prompt_text, tokenizer=tokenizer), codec=codec,
                              adapter=adapter)
    return PolicyEvaluator(collector=collector, examples=examples, exact=exact,
                           max_new_tokens=config.rollout.max_new_tokens, temperature=e.temperature)


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


def evaluate_to_file(evaluator: PolicyEvaluator, policy, path: Path) -> dict[str, float]:
    """Score `policy`, write its per-prompt records to `path` (JSONL, NaN as null, atomically)
    and return their means ({} with a warning when there are no evaluation examples)."""
    if not evaluator.examples:
        log.warning("no evaluation examples (set data.eval_path for JSONL data, data.eval_split for hf_dataset "
                    "data); evaluation skipped")
        return {}
    records = evaluator.run(policy)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(nan_to_none(r)) + "\n" for r in records))
    return mean_summary(records)
