"""CUDA sampler: same semantics as the CPU path and the PyTorch twin (skipped without a GPU)."""

import pytest
import torch

from helpers import assert_matches_distribution, make_logits
from wavalign import ops
from wavalign.reference import processed_distribution, reference_sample_tokens

pytestmark = pytest.mark.cuda

CASES = [
    dict(),
    dict(temperature=0.6, top_k=7),
    dict(top_p=0.8),
    dict(min_p=0.1, temperature=1.4),
    dict(temperature=1.3, top_k=40, top_p=0.9, min_p=0.02),
    dict(allowed_ranges=[(10, 60), (200, 230)], top_p=0.95),
    dict(temperature=0.0, allowed_ranges=[(50, 250)]),
]


@pytest.mark.parametrize("kwargs", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_equals_reference(kwargs, dtype):
    logits = make_logits(300, 257, seed=1, dtype=dtype)
    gpu = ops.sample_tokens(logits.cuda(), seed=99, **kwargs)
    ids, logprobs, raw = reference_sample_tokens(logits, seed=99, **kwargs)
    assert gpu.ids.is_cuda
    # Atomic accumulation order may move a top-p boundary by one rounding error, so allow
    # a rare mismatch rather than demanding bit-equal ids.
    assert (gpu.ids.cpu() != ids).float().mean() < 0.01
    same = gpu.ids.cpu() == ids
    torch.testing.assert_close(gpu.logprobs.cpu()[same], logprobs[same], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gpu.raw_logprobs.cpu()[same], raw[same], atol=1e-5, rtol=1e-5)


def test_cuda_penalties_match_cpu():
    n, vocab = 64, 500
    logits = make_logits(n, vocab, seed=2)
    history = torch.randint(-1, vocab, (n, 32), generator=torch.Generator().manual_seed(3))
    kwargs = dict(repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.2, temperature=0.0)
    cpu = ops.sample_tokens(logits, history=history, **kwargs)
    gpu = ops.sample_tokens(logits.cuda(), history=history.cuda(), **kwargs)
    assert torch.equal(cpu.ids, gpu.ids.cpu())


def test_cuda_distribution_large_vocab():
    vocab = 168_072
    logits = make_logits(1, vocab, seed=4, scale=1.0)
    kwargs = dict(allowed_ranges=[(160_000, 160_064)], top_p=0.9, temperature=0.8)
    probs = processed_distribution(logits, **kwargs)[0]
    batch = logits.cuda().expand(20_000, -1).contiguous()
    ids = ops.sample_tokens(batch, seed=3, **kwargs).ids.cpu()
    assert_matches_distribution(ids, probs)


def test_device_mismatch_names_the_argument():
    logits = make_logits(4, 50, seed=5).cuda()
    with pytest.raises(ValueError, match="temperature is on cpu but logits is on cuda:0"):
        ops.sample_tokens(logits, temperature=torch.ones(4))
    with pytest.raises(ValueError, match="history is on cpu but logits is on cuda:0"):
        ops.sample_tokens(logits, history=torch.zeros(4, 2, dtype=torch.int64))


def test_cuda_errors_name_the_row():
    logits = make_logits(4, 50, seed=6)
    logits[2, 3] = float("nan")
    with pytest.raises(ValueError, match="row 2 cannot be sampled: its logits contain NaN"):
        ops.sample_tokens(logits.cuda())


# ---------------------------------------------------------------- CUDA correctness
# The contract (cpp/include/wavalign/sampling.h, "CPU / CUDA agreement"): greedy ids and
# kept sets are identical between CPU and CUDA; a draw may differ when its uniform falls
# within rounding of a bucket boundary, so draws are compared by agreement rate.

import wavalign._ops as _ops  # noqa: E402
from wavalign.sampling_params import SAMPLING_FIELD_NAMES  # noqa: E402

BIG_V = 168_072
BIG_N = 4096
MIN_AGREEMENT = 0.999  # CPU vs CUDA draws (the contract's rate, with margin)


def _big_logits(n: int, vocab: int, dtype, seed: int, scale: float = 2.0) -> torch.Tensor:
    """[n, vocab] logits generated on the GPU (fast), as a CUDA tensor of `dtype`."""
    generator = torch.Generator(device="cuda").manual_seed(seed)
    return (torch.randn(n, vocab, generator=generator, device="cuda") * scale).to(dtype)


def _agreement(cpu_ids: torch.Tensor, gpu_ids: torch.Tensor) -> float:
    return (cpu_ids == gpu_ids.cpu()).double().mean().item()


def _gather(values: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return values.gather(1, ids.view(-1, 1)).squeeze(1)


BIG_MODES = {
    "greedy": dict(temperature=0.0),
    "top_k": dict(temperature=0.9, top_k=50),
    "top_p": dict(temperature=1.0, top_p=0.9),
    "min_p": dict(temperature=1.1, min_p=0.05),
}


@pytest.mark.parametrize("mode", list(BIG_MODES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_large_vocab_cpu_equals_cuda(mode, dtype):
    """V = 168,072 x N = 4096: many elements per thread, many draw chunks, 4 radix passes."""
    kwargs = BIG_MODES[mode]
    gpu_logits = _big_logits(BIG_N, BIG_V, dtype, seed=11)
    cpu_logits = gpu_logits.cpu()
    offsets = torch.arange(BIG_N, dtype=torch.int64) * 3 + 5
    gpu = ops.sample_tokens(gpu_logits, seed=1234, offsets=offsets.cuda(), **kwargs)
    cpu = ops.sample_tokens(cpu_logits, seed=1234, offsets=offsets, **kwargs)
    assert (gpu.ids.cpu() >= 0).all()
    same = cpu.ids == gpu.ids.cpu()
    if mode == "greedy":
        assert torch.equal(cpu.ids, gpu.ids.cpu())  # exact, lowest id on ties
        assert torch.equal(gpu.logprobs.cpu(), torch.zeros(BIG_N))
    else:
        assert same.double().mean().item() >= MIN_AGREEMENT, f"agreement {same.double().mean().item():.5f}"
        torch.testing.assert_close(gpu.logprobs.cpu()[same], cpu.logprobs[same], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(gpu.raw_logprobs.cpu()[same], cpu.raw_logprobs[same], atol=2e-5, rtol=1e-5)

    # Kept sets: every id either backend drew lies in the kept set, computed here exactly
    # (top-k, min-p) or to float rounding (top-p, whose boundary is a rounding-level tie).
    z = gpu_logits.float()
    if mode != "greedy":
        z = z / torch.tensor(kwargs["temperature"], dtype=torch.float32, device="cuda")
    for ids in (cpu.ids.cuda(), gpu.ids):
        z_id = _gather(z, ids)
        if mode == "greedy":
            best = z.max(dim=1).values
            assert torch.equal(z_id, best)
            first = (z == best.unsqueeze(1)).int().argmax(dim=1)  # lowest id among the maxima
            assert torch.equal(ids, first)
        elif mode == "top_k":
            kth = z.topk(kwargs["top_k"], dim=1).values[:, -1]
            assert (z_id >= kth).all()
        elif mode == "min_p":
            bound = z.max(dim=1).values.double() + torch.log(torch.tensor(kwargs["min_p"], dtype=torch.float32).double())  # float32 min_p, as the kernel
            assert (z_id.double() >= bound).all()
        else:
            max_z = z.max(dim=1, keepdim=True).values
            mass = torch.exp((z - max_z).double())
            total = mass.sum(dim=1)
            above = torch.where(z > z_id.unsqueeze(1), mass, 0.0).sum(dim=1)  # mass strictly above
            assert (above < kwargs["top_p"] * total * (1 + 1e-5)).all()
    del z


def test_large_vocab_draw_agreement_rate():
    """The contract's draw agreement rate on the unfiltered distribution (every id kept, so
    every one of the 168,072 bucket boundaries can be crossed): 4 x 4096 draws. A float64
    emulation of the CUDA sums measured about 5e-4 mismatches here (2 of 4096), so about
    8 of 16,384 are expected; 0.999 allows 16."""
    mismatches = draws = 0
    for call in range(4):
        gpu_logits = _big_logits(BIG_N, BIG_V, torch.float32, seed=20 + call)
        offsets = torch.arange(BIG_N, dtype=torch.int64) + call * BIG_N
        gpu = ops.sample_tokens(gpu_logits, seed=77, offsets=offsets.cuda())
        cpu = ops.sample_tokens(gpu_logits.cpu(), seed=77, offsets=offsets)
        mismatches += int((cpu.ids != gpu.ids.cpu()).sum())
        draws += BIG_N
        del gpu_logits
    assert 1 - mismatches / draws >= MIN_AGREEMENT, f"{mismatches} of {draws} draws differ"
    greedy_logits = _big_logits(BIG_N, BIG_V, torch.bfloat16, seed=30)  # bf16: many ties
    gpu = ops.sample_tokens(greedy_logits, temperature=0.0)
    cpu = ops.sample_tokens(greedy_logits.cpu(), temperature=0.0)
    assert torch.equal(cpu.ids, gpu.ids.cpu())


def test_cuda_seeded_golden_output():
    # tests/test_sampling.py::test_seeded_golden_output, on CUDA
    n, vocab = 8, 64
    grid = torch.arange(n * vocab, dtype=torch.float64).reshape(n, vocab)
    logits = (3.0 * torch.sin(grid * 0.37) + torch.cos(grid * 0.011)).float()
    kwargs = dict(temperature=0.9, top_k=20, top_p=0.9, seed=2026)
    golden = [21, 43, 46, 16, 18, 57, 26, 51]
    assert ops.sample_tokens(logits, offsets=torch.arange(n) * 7, **kwargs).ids.tolist() == golden
    gpu = ops.sample_tokens(logits.cuda(), offsets=(torch.arange(n) * 7).cuda(), **kwargs)
    assert gpu.ids.tolist() == golden


def test_cuda_large_seeds_and_offsets():
    n, vocab = 256, 1000
    logits = make_logits(n, vocab, seed=12)
    offsets = torch.arange(n, dtype=torch.int64) * 977 + 2**40 + 3  # above 2**32: both counter words
    for seed in (2**32 + 5, 2**63 + 12345, 2**64 - 1):
        kwargs = dict(seed=seed, temperature=0.8, top_k=100)
        cpu = ops.sample_tokens(logits, offsets=offsets, **kwargs)
        gpu = ops.sample_tokens(logits.cuda(), offsets=offsets.cuda(), **kwargs)
        assert torch.equal(cpu.ids, gpu.ids.cpu())
        ref = reference_sample_tokens(logits, offsets=offsets, **kwargs)[0]
        assert (ref != cpu.ids).double().mean().item() < 0.01
    # offsets near 2**63 - 1 (the top of int64)
    top = torch.arange(n, dtype=torch.int64) + (2**63 - 1 - n)
    cpu = ops.sample_tokens(logits, seed=9, offsets=top, top_p=0.95)
    gpu = ops.sample_tokens(logits.cuda(), seed=9, offsets=top.cuda(), top_p=0.95)
    assert _agreement(cpu.ids, gpu.ids) >= 0.99  # top-p: rounding-level boundary ties allowed


def _status_call(logits, params: dict, history, ranges, seed=5):
    n = logits.shape[0]
    device = logits.device
    tensors = {name: value.to(device) for name, value in params.items()}
    return _ops.sample_tokens_status(
        logits, tuple(tensors[name] for name in SAMPLING_FIELD_NAMES),
        None if history is None else history.to(device), None if ranges is None else ranges.to(device),
        seed, torch.arange(n, dtype=torch.int64, device=device))


def test_cuda_mixed_statuses_in_one_batch():
    vocab = 2000
    n = 12
    logits = make_logits(n, vocab, seed=13)
    params = {
        "temperature": torch.ones(n), "top_k": torch.zeros(n, dtype=torch.int64), "top_p": torch.ones(n),
        "min_p": torch.zeros(n), "repetition_penalty": torch.ones(n), "presence_penalty": torch.zeros(n),
        "frequency_penalty": torch.zeros(n),
    }
    ranges = torch.tensor([[0, vocab], [0, 0]], dtype=torch.int64).repeat(n, 1, 1)  # [n, 2, 2]
    history = torch.full((n, 4), -1, dtype=torch.int64)
    logits[1, 7] = float("nan")                      # 1 non-finite logit
    logits[2] = float("-inf")                        # 2 no finite logit
    ranges[3] = torch.tensor([[5, 5], [9, 9]])       # 3 empty allowed set
    ranges[4] = torch.tensor([[100, 110], [0, 0]])
    logits[4, 100:110] = float("-inf")               # 4 allowed all masked
    history[5, 2] = vocab + 3                        # 5 history id out of range
    ranges[6] = torch.tensor([[10, vocab + 1], [0, 0]])  # 6 bad range
    params["temperature"][7] = -1.0                  # 7 bad parameter
    params["temperature"][8] = 1e-37                 # 8 overflow: 50 / 1e-37 > float32 max
    logits[8, 0] = 50.0
    params["temperature"][9] = 0.0                   # ok, greedy
    params["top_k"][10] = 3                          # ok, top-k
    params["top_p"][11] = 0.5                        # ok, top-p
    expected = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0], dtype=torch.int32)
    cpu = _status_call(logits, params, history, ranges)
    gpu = _status_call(logits.cuda(), params, history, ranges)
    assert torch.equal(cpu[3], expected)
    assert torch.equal(gpu[3].cpu(), expected)
    ok = expected == 0
    assert torch.equal(gpu[0].cpu()[ok], cpu[0][ok])
    assert (gpu[0].cpu()[~ok] == -1).all()
    assert torch.isnan(gpu[1].cpu()[~ok]).all() and torch.isnan(gpu[2].cpu()[~ok]).all()


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(), dict(top_k=5), dict(top_p=0.3),
                                    dict(min_p=0.9)])
def test_cuda_single_allowed_id(kwargs):
    vocab = BIG_V
    picks = [0, 1, 511, 512, 100_000, vocab - 2, vocab - 1]
    n = len(picks)
    logits = make_logits(n, vocab, seed=14)
    ranges = torch.tensor([[[p, p + 1]] for p in picks], dtype=torch.int64)
    gpu = ops.sample_tokens(logits.cuda(), allowed_ranges=ranges.cuda(), **kwargs)
    cpu = ops.sample_tokens(logits, allowed_ranges=ranges, **kwargs)
    assert gpu.ids.tolist() == picks
    assert cpu.ids.tolist() == picks
    assert torch.equal(gpu.logprobs.cpu(), torch.zeros(n))
    torch.testing.assert_close(gpu.raw_logprobs.cpu(), cpu.raw_logprobs, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(top_k=20, temperature=0.7),
                                    dict(top_p=0.9), dict(min_p=0.1)])
def test_cuda_ranges_at_both_ends(kwargs):
    vocab, n = BIG_V, 512
    logits = _big_logits(n, vocab, torch.float32, seed=15)
    # [0, 37) and [V - 29, V), given out of order and overlapping, plus padding
    ranges = torch.tensor([[vocab - 29, vocab], [0, 20], [10, 37], [3, 3]], dtype=torch.int64)
    gpu = ops.sample_tokens(logits, allowed_ranges=ranges, seed=8, **kwargs)
    cpu = ops.sample_tokens(logits.cpu(), allowed_ranges=ranges, seed=8, **kwargs)
    ids = gpu.ids.cpu()
    assert (((ids >= 0) & (ids < 37)) | ((ids >= vocab - 29) & (ids < vocab))).all()
    assert ((ids < 37).any() and (ids >= vocab - 29).any()) or kwargs.get("temperature") == 0.0
    assert torch.equal(cpu.ids, ids)  # 66 kept ids at most: a rounding-level tie is out of reach


@pytest.mark.parametrize("vocab", [300, BIG_V])
def test_cuda_tied_kth_values(vocab):
    n, k = 256, 5
    # Values on a coarse grid: the k-th largest is tied with many others, in many threads.
    logits = torch.round(make_logits(n, vocab, seed=16, scale=1.0) * 2.0) / 2.0
    cpu = ops.sample_tokens(logits, top_k=k, seed=4)
    gpu = ops.sample_tokens(logits.cuda(), top_k=k, seed=4)
    kth = logits.topk(k, dim=1).values[:, -1]
    assert (_gather(logits, gpu.ids.cpu()) >= kth).all()  # ties at the boundary are kept
    assert torch.equal(cpu.ids, gpu.ids.cpu())
    torch.testing.assert_close(gpu.logprobs.cpu(), cpu.logprobs, atol=1e-5, rtol=1e-5)
    # greedy: every row's maximum appears at several ids; the lowest wins on both
    cpu = ops.sample_tokens(logits, temperature=0.0)
    gpu = ops.sample_tokens(logits.cuda(), temperature=0.0)
    first = (logits == logits.max(dim=1, keepdim=True).values).int().argmax(dim=1)
    assert torch.equal(cpu.ids, first)
    assert torch.equal(gpu.ids.cpu(), first)
    # all-equal rows: id 0, or the range's lo
    flat = torch.zeros(4, vocab)
    assert ops.sample_tokens(flat.cuda(), temperature=0.0).ids.tolist() == [0] * 4
    assert ops.sample_tokens(flat.cuda(), temperature=0.0,
                             allowed_ranges=[(vocab - 7, vocab)]).ids.tolist() == [vocab - 7] * 4


@pytest.mark.parametrize("history_len", [513, 1500])
def test_cuda_penalties_long_history(history_len):
    n, vocab = 64, 20_000
    logits = make_logits(n, vocab, seed=17)
    generator = torch.Generator().manual_seed(18)
    history = torch.randint(0, 300, (n, history_len), generator=generator)  # many repeats
    history[:, ::7] = -1                                                    # and padding
    history[:, -1] = torch.randint(0, vocab, (n,), generator=generator)
    for kwargs in (dict(temperature=0.0), dict(temperature=0.9, top_k=40), dict(temperature=1.0)):
        kwargs.update(repetition_penalty=1.3, presence_penalty=0.4, frequency_penalty=0.05)
        cpu = ops.sample_tokens(logits, history=history, seed=6, **kwargs)
        gpu = ops.sample_tokens(logits.cuda(), history=history.cuda(), seed=6, **kwargs)
        assert torch.equal(cpu.ids, gpu.ids.cpu())
        torch.testing.assert_close(gpu.logprobs.cpu(), cpu.logprobs, atol=1e-5, rtol=1e-5)
        ref = reference_sample_tokens(logits, history=history, seed=6, **kwargs)[0]
        assert (ref != cpu.ids).double().mean().item() < 0.02


def test_cuda_non_default_stream():
    n, vocab = 512, 50_000
    base = make_logits(n, vocab, seed=19).cuda()
    expected = ops.sample_tokens(base, top_k=30, seed=3)
    stream = torch.cuda.Stream()
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(50_000_000)  # delays the producer on `stream` by tens of ms
        logits = base * 1.0            # produced on `stream`, after the sleep
        out = ops.sample_tokens(logits, top_k=30, seed=3)  # must run on `stream`, after it
        group = ops.group_stats(logits[:8, :16].contiguous())
    stream.synchronize()
    assert torch.equal(out.ids, expected.ids)
    assert torch.equal(out.logprobs, expected.logprobs)
    torch.testing.assert_close(group.mean, base[:8, :16].mean(dim=1))
    # one cached workspace per (device, stream), reused by the next call that fits
    key = (base.device.index, stream.cuda_stream)
    assert key in _ops._WORKSPACES
    pointer = _ops._WORKSPACES[key].data_ptr()
    with torch.cuda.stream(stream):
        ops.sample_tokens(base[:100].contiguous(), seed=3)
    assert _ops._WORKSPACES[key].data_ptr() == pointer
    _ops.release_sampling_workspace(base.device)
    assert key not in _ops._WORKSPACES


def test_cuda_workspace_cache_grows():
    _ops.release_sampling_workspace()
    small = make_logits(4, 1000, seed=21).cuda()
    ops.sample_tokens(small)
    key = (0, torch.cuda.current_stream(0).cuda_stream)
    assert _ops._WORKSPACES[key].numel() == 4 * 1000
    big = make_logits(64, 2000, seed=22).cuda()
    a = ops.sample_tokens(big, seed=1)
    assert _ops._WORKSPACES[key].numel() == 64 * 2000
    b = ops.sample_tokens(big, seed=1)  # reused buffer: same result
    assert torch.equal(a.ids, b.ids)
    assert torch.equal(ops.sample_tokens(small).ids.cpu(), ops.sample_tokens(small.cpu()).ids)
    _ops.release_sampling_workspace()
    assert not _ops._WORKSPACES


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_cuda_tensor_on_second_device():
    n, vocab = 256, 30_000
    logits = make_logits(n, vocab, seed=23)
    expected = ops.sample_tokens(logits, top_p=0.9, seed=2)
    greedy = ops.sample_tokens(logits, temperature=0.0)
    with torch.cuda.device(0):
        on1 = logits.to("cuda:1")
        out = ops.sample_tokens(on1, top_p=0.9, seed=2)
        assert torch.cuda.current_device() == 0  # the launcher restored the caller's device
        assert out.ids.device == torch.device("cuda:1")
        assert _agreement(expected.ids, out.ids) >= 0.99
        assert torch.equal(ops.sample_tokens(on1, temperature=0.0).ids.cpu(), greedy.ids)
        stream = torch.cuda.Stream(device=1)
        with torch.cuda.stream(stream):
            on_stream = ops.sample_tokens(on1, temperature=0.0)
        stream.synchronize()
        assert torch.equal(on_stream.ids.cpu(), greedy.ids)
        rewards = torch.tensor([[1.0, 2.0, 3.0, float("nan")], [0.0, 0.0, 1.0, 1.0]])
        stats = ops.group_stats(rewards.to("cuda:1"))
        assert torch.cuda.current_device() == 0
        torch.testing.assert_close(stats.mean.cpu(), ops.group_stats(rewards).mean)
