"""How the trainer builds an optimizer step: micro-batches, gradient accumulation, PPO inner
epochs, DAPO's global normaliser under two gloo processes, and log-probs scored under the
sampling distribution."""

import os
import subprocess
import sys

import pytest

from wavalign.train.config import TrainConfig
from wavalign.train.run_log import read_metrics

BASE = ["data.world=fast", "optim.prompts_per_step=4", "rollout.group_size=2", "rollout.max_new_tokens=32",
        "run.progress=false", "run.plots=false", "run.tensorboard=false", "run.save_every=0",
        "optim.warmup_steps=1", "eval.before=false", "eval.after=false", "run.device=cpu"]


def run(tmp_path, name, *extra, world):
    from wavalign.train.trainer import Trainer

    trainer = Trainer(TrainConfig.load(None, BASE + [f"run.output_dir={tmp_path}", f"run.name={name}", *extra]),
                      world=world)
    try:
        trainer.fit()
    finally:
        trainer.close()
    return [r for r in read_metrics(tmp_path / name) if r["kind"] == "train"]


def test_micro_batches_train_like_the_whole_batch(fast_world, tmp_path):
    whole = run(tmp_path, "whole", "optim.steps=2", world=fast_world)
    micro = run(tmp_path, "micro", "optim.steps=2", "optim.micro_batch_size=3", world=fast_world)
    for a, b in zip(whole, micro):  # same rollouts, same gradient up to float summation order
        for key in ("reward/mean", "loss/total", "loss/rl", "loss/sft", "grad_norm", "gate/lambda"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)


def test_accumulation_and_inner_epochs_run(fast_world, tmp_path):
    records = run(tmp_path, "knobs", "optim.steps=2", "optim.gradient_accumulation_steps=2", "rollout.num_iterations=2",
                  "objective.epsilon_high=0.28", "optim.micro_batch_size=4", "objective.loss_type=dapo",
                  "objective.mask_truncated_completions=true", world=fast_world)
    assert [r["step"] for r in records] == [1, 2]
    last = records[-1]
    assert last["groups/groups"] == 8.0  # two prompt batches of 4 per optimizer step
    for key in ("rl/clip_fraction", "rl/clip_fraction_text", "rl/truncated_masked", "grad_norm"):
        assert key in last, key
    lrs = [r["lr"] for r in records]
    assert lrs[0] != lrs[1]  # the schedule steps once per train step, not per inner epoch


@pytest.mark.slow
def test_dapo_normaliser_is_global_across_two_gloo_processes(fast_world, tmp_path):
    """Two ranks hold different token counts; with dapo the averaged gradient is the gradient of
    the global token mean, so two processes reproduce one process on the same global batch."""
    common = [arg for o in BASE + ["optim.steps=3", f"run.output_dir={tmp_path}", "objective.loss_type=dapo",
                                   "objective.sft_normalization=sequence_mean"] for arg in ("--set", o)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "wavalign.train", *common, "--name", "one"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stdout[-3000:] + one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                          "-m", "wavalign.train", *common, "--name", "two"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stdout[-3000:] + two.stderr[-3000:]
    a = [r for r in read_metrics(tmp_path / "one") if r["kind"] == "train"]
    b = [r for r in read_metrics(tmp_path / "two") if r["kind"] == "train"]
    assert len(a) == len(b) == 3
    for x, y in zip(a, b):
        for key in ("reward/mean", "loss/rl", "loss/total", "grad_norm"):
            assert x[key] == pytest.approx(y[key], rel=1e-3, abs=1e-5), (x["step"], key, x[key], y[key])


def test_sampling_logprobs_reproduce_the_rollout_so_the_first_ratio_is_one(fast_world):
    """Scored at each token's sampling temperature, over its interleave set's ids, the training
    log-probs equal the log-probs the sampler drew with: a PPO ratio of 1 at the first inner step."""
    import torch

    from wavalign.modality import ModalitySpec
    from wavalign.rollout.engine import ModalitySampling, RolloutEngine, SamplingParams
    from wavalign.logprobs import ResponseLogprobs, ResponseRows, RowLogprobs, allowed_set_masks

    policy = fast_world.load_policy()
    spec = fast_world.spec
    prompts = [e["prompt_ids"] for e in fast_world.examples("train")[:3]]
    params = SamplingParams(text=ModalitySampling(temperature=0.7), speech=ModalitySampling(temperature=1.3),
                            max_new_tokens=40, seed=5)
    rollout = RolloutEngine(policy, spec, pad_id=fast_world.tokenizer.pad_token_id).generate(prompts, n=2,
                                                                                              params=params)
    rows = ResponseRows([p for p in rollout.prompt_ids for _ in range(2)], rollout.ids, rollout.lengths,
                        rollout.token_types, torch.where(rollout.phases == 1, 1.3, 0.7).float(),
                        rollout.allowed_sets)
    masks = allowed_set_masks(spec, policy.get_output_embeddings().weight.shape[0])
    score = RowLogprobs(ResponseLogprobs(policy), fast_world.tokenizer.pad_token_id, "cpu", set_masks=masks)
    with torch.no_grad():
        logp, types = score(rows)
        plain = ResponseRows(rows.prompts, rows.ids, rows.lengths, rows.types)  # no sampling information
        raw, _ = RowLogprobs(ResponseLogprobs(policy), fast_world.tokenizer.pad_token_id, "cpu")(plain)
    valid = types >= 0
    torch.testing.assert_close(logp[valid], rollout.logprobs[valid], rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(raw[valid], rollout.raw_logprobs[valid], rtol=1e-4, atol=2e-5)
    assert not torch.allclose(logp[valid], raw[valid])  # the two distributions do differ
    assert isinstance(spec, ModalitySpec)


def test_a_run_scored_under_the_sampling_distribution(fast_world, tmp_path):
    records = run(tmp_path, "sampled", "optim.steps=2", "objective.logprobs=sampling", "rollout.num_iterations=2",
                  world=fast_world)
    assert all(r["rl/clip_fraction"] is not None for r in records)
    with pytest.raises(Exception, match=r"rollout\.text\.temperature must be > 0"):
        TrainConfig.load(None, ["objective.logprobs=sampling", "rollout.text.temperature=0"])
    assert not TrainConfig().scores_sampling_distribution  # auto, one update per batch: raw
    assert TrainConfig.load(None, ["rollout.num_iterations=2"]).scores_sampling_distribution  # auto, PPO
