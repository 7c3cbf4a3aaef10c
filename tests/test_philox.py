"""The PyTorch Philox twin against the published Random123 known-answer vectors."""

import torch

from wavalign.reference.philox import philox4x32_10, philox_uniform

# Random123 kat_vectors, philox4x32_10: (counter, key) -> output
KAT = [
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    (
        [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
        [0xA4093822, 0x299F31D0],
        [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
    ),
]


def test_known_answer_vectors():
    for counter, key, expected in KAT:
        out = philox4x32_10([torch.tensor([c]) for c in counter], tuple(key))
        assert [int(o) for o in out] == expected


def test_uniforms_in_unit_interval_and_roughly_uniform():
    u = philox_uniform(12345, torch.arange(200_000))
    assert u.dtype == torch.float64
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.005
    histogram = torch.histc(u.float(), bins=10, min=0.0, max=1.0)
    assert float((histogram / 20_000 - 1).abs().max()) < 0.03


def test_offsets_above_32_bits_and_seed_words_matter():
    offsets = torch.tensor([1, 1 + 2**32, 2**62])
    u = philox_uniform(7, offsets)
    assert len(set(u.tolist())) == 3
    assert float(philox_uniform(7, offsets[:1])) != float(philox_uniform(7 + 2**32, offsets[:1]))
