"""Philox4x32-10 in PyTorch, bit-identical to cpp/include/wavalign/philox.h.

Tensors hold unsigned 32-bit words in int64; the 32x32 -> 64-bit product is split into
16-bit halves so no intermediate overflows int64.
"""

from __future__ import annotations

import torch

_MUL = (0xD2511F53, 0xCD9E8D57)
_WEYL = (0x9E3779B9, 0xBB67AE85)
_MASK16 = 0xFFFF
_MASK32 = 0xFFFFFFFF


def _mulhilo32(constant: int, word: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of constant * word. word: [...] int64 in [0, 2^32)."""
    a_lo, a_hi = constant & _MASK16, constant >> 16
    b_lo, b_hi = word & _MASK16, word >> 16
    lo_lo = a_lo * b_lo
    lo_hi = a_lo * b_hi
    hi_lo = a_hi * b_lo
    hi_hi = a_hi * b_hi
    middle = (lo_lo >> 16) + (lo_hi & _MASK16) + (hi_lo & _MASK16)
    lo = ((middle & _MASK16) << 16) | (lo_lo & _MASK16)
    hi = hi_hi + (lo_hi >> 16) + (hi_lo >> 16) + (middle >> 16)
    return hi & _MASK32, lo


def philox4x32_10(counter: list[torch.Tensor], key: tuple[int, int]) -> list[torch.Tensor]:
    """counter: 4 int64 tensors of 32-bit words; key: two 32-bit ints."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo32(_MUL[0], c0)
        hi1, lo1 = _mulhilo32(_MUL[1], c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + _WEYL[0]) & _MASK32
        k1 = (k1 + _WEYL[1]) & _MASK32
    return [c0, c1, c2, c3]


def philox_uniform(seed: int, offsets: torch.Tensor) -> torch.Tensor:
    """Uniform float64 in [0, 1) per offset. offsets: [N] int64 (read as uint64)."""
    offsets = offsets.to(torch.int64).cpu()
    lo = offsets & _MASK32
    hi = (offsets >> 32) & _MASK32  # arithmetic shift; the mask restores the unsigned word
    zero = torch.zeros_like(lo)
    out = philox4x32_10([lo, hi, zero, zero], (seed & _MASK32, (seed >> 32) & _MASK32))
    bits53 = (out[0] << 21) | (out[1] >> 11)
    return bits53.to(torch.float64) * 2.0**-53
