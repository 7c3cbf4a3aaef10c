"""A built world on disk, loaded: its data, policy, tokenizer, ModalitySpec, scorer and judges."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from wavalign.data import WAVALIGN_KEYS, TrainExample, read_jsonl
from wavalign.modality import ModalitySpec
from wavalign.world.config import WorldConfig
from wavalign.world.judges import AcousticJudge, SemanticJudge
from wavalign.world.metrics import WorldScorer, summarize
from wavalign.world.recognizer import Recognizer
from wavalign.world.style_meter import StyleMeter
from wavalign.world.units import UnitTokenizer

SPLITS = ("train", "dev", "test")


class World:
    def __init__(self, path: str | Path):
        path = Path(path)
        if not (path / "world.json").is_file():
            raise FileNotFoundError(f"{path} is not a built world (no world.json); run: python -m wavalign.world build")
        self.path = path
        self.manifest = json.loads((path / "world.json").read_text())
        self.config = WorldConfig.from_yaml(path / "config.yaml")
        self.policy_path = path / "policy"
        self.spec = ModalitySpec.from_yaml(self.policy_path / "modality.yaml")
        self._tokenizer = None
        self._scorer = None

    # ------------------------------------------------------------------ data
    def examples(self, split: str) -> list[dict]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return [record for _, record in read_jsonl(self.path / "data" / f"{split}.jsonl")]

    def train_examples(self, split: str) -> list[TrainExample]:
        """A split's records as TrainExamples (what the trainer and the evaluator read)."""
        return world_examples(self.examples(split))

    @property
    def report(self) -> dict:
        return json.loads((self.path / "report.json").read_text())

    # ------------------------------------------------------------------ models
    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(str(self.policy_path))
        return self._tokenizer

    @property
    def format(self):
        from wavalign.world.policy import ChatFormat

        return ChatFormat(self.tokenizer, self.spec)

    def load_policy(self, dtype=torch.float32):
        from transformers import AutoModelForCausalLM

        from wavalign.adapters import without_hub_kernels

        return AutoModelForCausalLM.from_pretrained(str(self.policy_path),
                                                    **without_hub_kernels({"dtype": dtype})).eval()

    @property
    def scorer(self) -> WorldScorer:
        if self._scorer is None:
            self._scorer = WorldScorer(UnitTokenizer.load(self.path / "units.safetensors"),
                                       Recognizer.load(self.path / "recognizer.safetensors"),
                                       StyleMeter.load(self.path / "style_meter.json"))
        return self._scorer

    @property
    def codec(self):
        """The world's speech codec (a wavalign.codecs.SpeechCodec): its unit tokenizer and vocoder."""
        from wavalign.world.codec import WorldCodec

        return WorldCodec(self.scorer.units)

    def judges(self, seed: int = 0) -> dict:
        """{'semantic_judge': RewardFn, 'acoustic_judge': RewardFn} with the config's noise."""
        return {"semantic_judge": SemanticJudge(self.scorer, self.config.semantic_judge, seed),
                "acoustic_judge": AcousticJudge(self.scorer, self.config.acoustic_judge, seed)}

    def exact_judge(self, part: str):
        """The noise-free quantity a judge estimates ('semantic' or 'acoustic'), as a reward
        function: an oracle for diagnostics."""
        from wavalign.world.judges import ExactScore

        return ExactScore(self.scorer, part)

    # ------------------------------------------------------------------ evaluation
    def exact_metrics(self, text: str, units: Sequence[int], columns: dict) -> dict:
        """Exact IQ / EQ / WER of one response to a world prompt (its `answer` and `style` columns)."""
        a = self.scorer.assess(text, units, columns["answer"], columns["style"])
        return {"IQ": 100.0 * a.correct, "EQ": a.eq, "WER": a.wer, "recognized": a.recognized}

    @torch.no_grad()
    def generate(self, model, examples: Sequence[dict], *, n: int = 1, temperature: float = 0.0, seed: int = 0,
                 max_new_tokens: int = 160):
        """Rollouts of `model` on the examples' prompts (the rollout engine, both channels at one
        temperature). -> (Rollout, [(text, units)] per row, prompt-major: row = prompt * n + sample)."""
        from wavalign.rollout import make_sampler
        from wavalign.rollout.engine import SamplingParams
        from wavalign.sampling_params import ModalitySampling

        sampling = ModalitySampling(temperature=temperature)
        params = SamplingParams(text=sampling, speech=sampling, max_new_tokens=max_new_tokens, seed=seed)
        was_training = model.training
        model.eval()
        engine = make_sampler("engine", model, self.spec, pad_id=self.tokenizer.pad_token_id)
        rollout = engine.generate([list(r["prompt_ids"]) for r in examples], n=n, params=params,
                                  extras=[None] * len(examples))
        model.train(was_training)
        fmt = self.format
        channels = [fmt.split(row[:length].tolist()) for row, length in zip(rollout.ids, rollout.lengths)]
        return rollout, channels

    def evaluate(self, model, split: str = "test", *, temperature: float = 0.0, n: int = 1, seed: int = 0,
                 limit: int | None = None, max_new_tokens: int = 160) -> tuple[dict, list[dict]]:
        """Exact IQ / EQ / WER of `model` on a split (the world's own diagnostic; training and
        wavalign.eval score through the trainer's collector). -> (summary, per-row records)."""
        examples = self.examples(split)[:limit]
        rollout, channels = self.generate(model, examples, n=n, temperature=temperature, seed=seed,
                                          max_new_tokens=max_new_tokens)
        records = []
        for row, (text, units) in enumerate(channels):
            record = examples[row // n]
            records.append({"id": record["id"], "length": float(rollout.lengths[row]), "text": text,
                            **self.exact_metrics(text, units, record)})
        count = len(records)
        if count == 0:
            raise ValueError("nothing to summarise")
        summary = {name: sum(r[name] for r in records) / count for name in ("IQ", "EQ", "WER")}
        return {**summary, "n": count}, records

    def evaluate_gold(self, split: str = "test") -> dict:
        """Exact metrics of the split's gold responses (records that carry one)."""
        return summarize([self.scorer.assess(e["response_text"], e["response_units"], e["answer"], e["style"])
                          for e in self.examples(split) if "response_text" in e])


def world_examples(records: list[dict]) -> list[TrainExample]:
    """The world's records (already tokenised) -> TrainExample (prompt-only records,
    WorldConfig.gold_fraction < 1, have no response_ids)."""
    return [TrainExample(r["id"], list(r["prompt_ids"]), list(r["response_ids"]) if "response_ids" in r else None, None,
                         {k: v for k, v in r.items() if k not in WAVALIGN_KEYS}, r.get("prompt_text"))
            for r in records]
