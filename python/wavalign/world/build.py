"""Build the world: tasks -> eSpeak audio -> units -> recognizer and style meter -> tokenizer
and SFT policy -> evaluation report -> JSONL export. Cached under cache_root()/world/<digest>,
written to a temporary directory and renamed into place, so a cache entry is complete or absent.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import torch
import yaml
from tqdm.auto import tqdm

from wavalign.modality import Schedule
from wavalign.world import audio, supervision, tasks
from wavalign.world.config import WorldConfig, world_dir
from wavalign.world.espeak import synthesize
from wavalign.world.metrics import spearman
from wavalign.world.recognizer import Recognizer
from wavalign.world.style_meter import StyleMeter, measure
from wavalign.world.units import UnitTokenizer

PROMPT_VOICE = "neutral"  # spoken user prompts use the neutral voice


def _say(message: str, progress: bool) -> None:
    if progress:
        tqdm.write(f"[world] {message}")


def build_world(config: WorldConfig | None = None, *, force: bool = False, progress: bool = True) -> Path:
    """Build (or reuse) the world for `config`. -> its directory."""
    config = config or WorldConfig()
    final = world_dir(config)
    if (final / "world.json").is_file() and not force:
        _say(f"cached: {final}", progress)
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.parent / f".building-{config.digest()}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _build_into(staging, config, progress)
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _build_into(out: Path, config: WorldConfig, progress: bool) -> None:
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    bar = lambda items, desc: tqdm(items, desc=desc, disable=not progress, leave=False)  # noqa: E731

    # 1. tasks, who supervises what, and the audio -------------------------------------
    examples = tasks.make_splits(config.seed, config.dev_fraction, config.test_fraction,
                                 max_questions=config.max_questions, rare_styles=config.rare_styles)
    _say(f"{len(examples)} examples, {len(tasks.STYLES)} styles", progress)
    train = [e for e in examples if e.split == "train"]
    gold_questions = supervision.choose_questions(examples, config.gold_fraction, config.seed, "gold")
    base_questions = supervision.choose_questions(examples, config.base_questions, config.seed, "base")
    errors = supervision.weak_teacher([e for e in train if e.question in gold_questions], config.gold_errors,
                                      config.seed, examples)
    sentences = sorted({e.response for e in examples})
    jobs = ([(e.response, tasks.example_voice(e.style, e.id)) for e in examples]
            + [(e.prompt_text, tasks.STYLES[PROMPT_VOICE]) for e in examples]
            + [(s, voice) for s in sentences for voice in tasks.STYLES.values()])
    frames = synthesize_frames(jobs, progress=progress)
    n = len(examples)
    response_frames = {e.id: frames[i] for i, e in enumerate(examples)}
    prompt_frames = {e.id: frames[n + i] for i, e in enumerate(examples)}
    template_frames = frames[2 * n:]
    # The weak teacher's responses (and the templates of sentences only it says) are
    # synthesised apart, so the clean audio above does not depend on gold_errors.
    by_id = {e.id: e for e in examples}
    error_ids = sorted(errors)
    extra_sentences = sorted({errors[i].response for i in error_ids} - set(sentences))
    if error_ids:
        extra = synthesize_frames([(errors[i].response, tasks.example_voice(errors[i].style, i)) for i in error_ids]
                                  + [(s, voice) for s in extra_sentences for voice in tasks.STYLES.values()],
                                  progress=progress)
        error_frames = dict(zip(error_ids, extra[:len(error_ids)]))
        template_frames = template_frames + extra[len(error_ids):]
        sentences = sentences + extra_sentences
    else:
        error_frames = {}

    # 2. speech units ------------------------------------------------------------------
    _say(f"learning {config.n_units} speech units (k-means)", progress)
    units = UnitTokenizer.fit([response_frames[e.id] for e in train] + [prompt_frames[e.id] for e in train],
                              config.n_units, seed=config.seed)
    units.save(out / "units.safetensors")
    response_units = {e.id: units.encode_frames(response_frames[e.id]).tolist() for e in examples}
    prompt_units = {e.id: units.encode_frames(prompt_frames[e.id]).tolist() for e in examples}

    # 3. recognizer templates (canonical voices, through the units like any policy output)
    n_styles = len(tasks.STYLES)
    templates = [[units.decode(units.encode_frames(template_frames[i * n_styles + k])) for k in range(n_styles)]
                 for i in bar(range(len(sentences)), "recognizer templates")]
    recognizer = Recognizer.from_waves(sentences, templates)
    recognizer.save(out / "recognizer.safetensors")

    # 4. style meter, fitted on round-tripped gold training speech ----------------------
    measurements = torch.stack([measure(units.decode(response_units[e.id]), e.response)
                                for e in bar(train, "style meter")])
    StyleMeter.fit(measurements, [e.style for e in train]).save(out / "style_meter.json")

    # 5. tokenizer, spec, gold ids, SFT policy -------------------------------------------
    from wavalign.world.policy import ChatFormat, SFTExample, build_model, sft

    tokenizer, spec = world_tokenizer(config, examples)
    fmt = ChatFormat(tokenizer, spec)
    records, clean_ids = [], {}
    for e in examples:
        record = e.to_dict()
        del record["response"]
        record.update(prompt_units=prompt_units[e.id], prompt_ids=fmt.prompt_ids(e.prompt_text))
        clean_ids[e.id] = fmt.response_ids(e.response, response_units[e.id])
        if e.split != "train" or (e.question in gold_questions and e.id not in errors):
            record.update(response_text=e.response, response_units=response_units[e.id],
                          response_ids=clean_ids[e.id], supervision="gold")
        elif e.question in gold_questions:  # a weak teacher's response
            error = errors[e.id]
            units_of_error = units.encode_frames(error_frames[e.id]).tolist()
            record.update(response_text=error.response, response_units=units_of_error,
                          response_ids=fmt.response_ids(error.response, units_of_error),
                          supervision=f"wrong_{error.kind}")
        else:
            record["supervision"] = "prompt_only"
        records.append(record)
    (out / "data").mkdir()
    for split in ("train", "dev", "test"):
        with open(out / "data" / f"{split}.jsonl", "w") as handle:
            for record in records:
                if record["split"] == split:
                    handle.write(json.dumps(record) + "\n")

    model = build_model(len(tokenizer), config.hidden_size, config.num_layers, config.num_heads,
                        config.intermediate_size, tokenizer, config.seed)
    n_params = sum(p.numel() for p in model.parameters())
    _say(f"SFT of a {n_params / 1e6:.2f}M-parameter Llama policy, {config.sft_steps} steps", progress)
    # The base policy's own SFT: clean gold of the base questions' train records.
    sft_data = [SFTExample(r["prompt_ids"], clean_ids[r["id"]]) for r in records
                if r["split"] == "train" and by_id[r["id"]].question in base_questions]
    losses = sft(model, sft_data, steps=config.sft_steps, batch_size=config.sft_batch_size, lr=config.sft_lr,
                 seed=config.seed, pad_id=tokenizer.pad_token_id, progress=progress)
    policy_dir = out / "policy"
    model.save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    spec.to_yaml(policy_dir / "modality.yaml")
    (out / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    (out / "world.json").write_text(json.dumps({"digest": config.digest(), "examples": len(examples),
                                                "styles": list(tasks.STYLES), "n_params": n_params}, indent=1))

    # 6. report: gold and base policy, judge reliability ---------------------------------
    from wavalign.world.world import World

    world = World(out)
    _say("evaluating gold and the base policy", progress)
    policy = world.load_policy()
    greedy, _ = world.evaluate(policy, "test", temperature=0.0)
    sampled, _ = world.evaluate(policy, "test", temperature=1.0, seed=config.seed)
    counts = {kind: sum(r["supervision"] == kind for r in records if r["split"] == "train")
              for kind in ("gold", "wrong_answer", "wrong_style", "prompt_only")}
    train_questions = {e.question for e in train}
    report = {"build_seconds": None,
              "supervision": {"train_records": len(train), **counts, "train_questions": len(train_questions),
                              "gold_questions": len(gold_questions), "base_questions": len(base_questions),
                              "base_sft_records": len(sft_data)}, "sft_loss_first": losses[0], "sft_loss_last": sum(losses[-10:]) / 10,
              "roundtrip_test": roundtrip_accuracy(world), "gold_test": world.evaluate_gold("test"), "base_test_greedy": greedy,
              "base_test_sampled_t1": sampled, "judge_spearman_dev": judge_reliability(world, policy, config.seed)}
    report["build_seconds"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    _say(f"built in {report['build_seconds']} s", progress)


def world_tokenizer(config: WorldConfig, examples: list | None = None):
    """The world policy's tokenizer and ModalitySpec (a function of the config's tasks only)."""
    from wavalign.world.policy import modality_spec, train_tokenizer

    if examples is None:
        examples = tasks.make_splits(config.seed, config.dev_fraction, config.test_fraction,
                                     max_questions=config.max_questions, rare_styles=config.rare_styles)
    texts = [e.prompt_text for e in examples] + [e.response for e in examples]
    tokenizer = train_tokenizer(texts, config.text_vocab_size, config.n_units)
    return tokenizer, modality_spec(tokenizer, Schedule(**config.schedule))


def _synthesize_chunk(jobs) -> list:
    # numpy, not tensors: torch shares tensors through the sending process, which exits here
    torch.set_num_threads(1)  # one process per core; small FFTs do not gain from threads
    out = []
    for text, voice in jobs:
        f = audio.analyze(synthesize(text, voice))
        out.append((f.log_mel.numpy(), f.f0.numpy(), f.voiced.numpy(), f.energy_db.numpy()))
    return out


def synthesize_frames(jobs: list, *, chunks: int = 4, workers: int = 2, progress: bool = True) -> list:
    """[(text, Voice)] -> [audio.Frames], synthesised and analysed in fresh worker processes.

    eSpeak's output depends on its call history within a process, so each fixed chunk of
    jobs runs in a process of its own (max_tasks_per_child=1): the result depends only on
    the jobs, never on what the calling process synthesised before.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = -(-len(jobs) // chunks)
    pieces = [jobs[i: i + size] for i in range(0, len(jobs), size)]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, max_tasks_per_child=1) as pool:
        futures = [pool.submit(_synthesize_chunk, piece) for piece in pieces]
        with tqdm(total=len(jobs), desc="synthesize", disable=not progress, leave=False) as bar:
            results = []
            for future, piece in zip(futures, pieces):
                results.extend(audio.Frames(*map(torch.from_numpy, arrays)) for arrays in future.result())
                bar.update(len(piece))
    return results


def roundtrip_accuracy(world) -> dict:
    """How well the recognizer and the style meter recover content and style from gold test
    responses after units -> audio (the detokeniser). Uses the scorer's assessments, which
    evaluate_gold then reuses from its cache instead of listening again."""
    test = world.examples("test")
    heard = styled = 0
    for e in test:
        a = world.scorer.assess(e["response_text"], e["response_units"], e["answer"], e["style"])
        heard += a.recognized == e["response_text"]
        styled += max(a.style_probabilities, key=a.style_probabilities.get) == e["style"]
    return {"recognizer_accuracy": heard / len(test), "style_accuracy": styled / len(test), "n": len(test)}


def judge_reliability(world, policy, seed: int, samples: int = 4) -> dict:
    """Spearman correlation of each judge with the exact quantity it estimates, over base-
    policy samples (T=1) on the dev split."""
    examples = world.examples("dev")
    _, channels = world.generate(policy, examples, n=samples, temperature=1.0, seed=seed + 1)
    judges = world.judges(seed)
    exact_semantic, exact_eq, semantic, acoustic = [], [], [], []
    for row, (text, units) in enumerate(channels):
        example = examples[row // samples]
        assessment = world.scorer.assess(text, units, example["answer"], example["style"])
        exact_semantic.append(assessment.semantic_score)
        exact_eq.append(assessment.eq)
        s = judges["semantic_judge"].judge(assessment)
        a = judges["acoustic_judge"].judge(assessment)
        semantic.append(float("nan") if s is None else s)
        acoustic.append(float("nan") if a is None else a)
    return {"semantic_judge": spearman(semantic, exact_semantic), "acoustic_judge": spearman(acoustic, exact_eq),
            "n": len(channels)}
