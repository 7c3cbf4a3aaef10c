"""Pure-PyTorch twin of the native nearest-template DTW (cpp/include/wavalign/dtw.h)."""

from __future__ import annotations

import math

import torch


def reference_dtw_distances(query: torch.Tensor, templates: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """query [Tq, C], templates [K, Tmax, C] (zero padded), lengths [K] -> [K] float64 path
    cost / Tq (+inf where no path exists).

    Steps (i-1, j), (i-1, j-1), (i-1, j-2); the path runs from both first frames to both last
    frames. One row of the cost matrix per step, vectorised over templates and frames; frame
    distances computed directly (not through torch.cdist's matrix-product shortcut), path sums
    in float64, as the native op does.
    """
    tq = query.shape[0]
    k, tmax = templates.shape[:2]
    if tq == 0 or k == 0:
        return torch.full((k,), math.inf, dtype=torch.float64)
    cost = (query[None, :, None, :] - templates[:, None, :, :]).pow(2).sum(-1).sqrt().double()  # [K, Tq, Tmax]
    # padded[:, j + 2] = total[:, j]; the two leading columns stay inf (no step from before j = 0)
    padded = torch.full((k, tmax + 2), math.inf, dtype=torch.float64)
    total = padded[:, 2:]
    total[:, 0] = cost[:, 0, 0]
    for i in range(1, tq):
        best = torch.minimum(torch.minimum(padded[:, 2:], padded[:, 1:-1]), padded[:, :-2])
        torch.add(cost[:, i], best, out=total)
    reachable = (lengths >= 1) & (lengths - 1 <= 2 * (tq - 1))
    final = total.gather(1, (lengths - 1).clamp(0, max(tmax - 1, 0))[:, None]).squeeze(1)
    return torch.where(reachable, final / tq, torch.full_like(final, math.inf))


def reference_dtw_nearest(queries: torch.Tensor, query_lengths: torch.Tensor, templates: torch.Tensor,
                          template_lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Same arguments as wavalign.ops.dtw_nearest -> (index [Q] int64, distance [Q] float32):
    the argmin of every template's distance (ties: lowest index), -1 / +inf when none is
    reachable."""
    index, distance = [], []
    for q in range(queries.shape[0]):
        d = reference_dtw_distances(queries[q, : int(query_lengths[q])], templates, template_lengths)
        if d.numel() == 0 or not math.isfinite(float(d.min())):
            index.append(-1)
            distance.append(math.inf)
        else:
            best = int(torch.nonzero(d == d.min())[0])  # lowest index among ties
            index.append(best)
            distance.append(float(d[best]))
    return torch.tensor(index, dtype=torch.int64), torch.tensor(distance, dtype=torch.float32)
