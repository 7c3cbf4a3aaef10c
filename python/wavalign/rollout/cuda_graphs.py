"""CUDA graphs for StaticDecoder's decode step (`rollout.cuda_graphs: true`).

A decode step of a mid-sized model launches hundreds of small kernels; on a GPU the launch
overhead, not the arithmetic, bounds it. A CUDA graph records the step's kernels once and
replays them with one launch. Replaying needs fixed shapes and fixed addresses, so:
- the batch is padded up to a bucket (powers of two, and the full batch); one graph per bucket,
  captured the first time a step needs it, all sharing one memory pool;
- the inputs (ids, positions, the slot to write) are copied into static tensors before replay;
- attention runs over all `capacity` slots with the unfilled ones masked, so the shapes do not
  grow with the sequence (numerically this sums over a longer, masked axis: results agree with
  the eager step up to rounding, not bit for bit).
Rows of a bucket beyond the live rows hold whatever those buffer rows held before the last
compaction (finite values, at least the current slot attended): they are computed and
ignored, and never mix with live rows (every op is row-independent).
Graphs live as long as their StaticDecoder, i.e. one `generate` call: each call captures the
buckets it uses again (a few warm-up steps per bucket).
"""

from __future__ import annotations

import torch


def _buckets(rows: int) -> list[int]:
    sizes, size = [], 1
    while size < rows:
        sizes.append(size)
        size *= 2
    return sizes + [rows]


class DecodeGraphs:
    """Captured decode steps of one StaticDecoder, which passes itself to each call (no
    reference is kept, so the decoder, its buffers and these graphs free together)."""

    def __init__(self, decoder):
        if decoder.keys.device.type != "cuda":
            raise ValueError(f"rollout.cuda_graphs needs a CUDA model, this one is on {decoder.keys.device}")
        self.device = decoder.keys.device
        self.buckets = _buckets(decoder.rows)
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        rows = decoder.rows
        self.ids = torch.zeros(rows, dtype=torch.int64, device=self.device)  # static inputs
        self.positions = torch.zeros(rows, dtype=torch.int64, device=self.device)
        self.slot = torch.zeros(1, dtype=torch.int64, device=self.device)

    def _bucket(self, rows: int) -> int:
        return next(size for size in self.buckets if size >= rows)

    def _run(self, d, size: int) -> torch.Tensor:
        # the slot as a device tensor (no host value inside the graph), every slot attended
        return d.forward(self.ids[:size], self.positions[:size], self.slot, d.keys[:, :size],
                         d.values[:, :size], d.valid[:size, None, None, :], None)

    def _capture(self, d, size: int):
        side = torch.cuda.Stream(device=self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up outside capture (lazy init, autotuning)
            for _ in range(2):
                self._run(d, size)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = self._run(d, size)
        return graph, logits

    def step(self, d, ids: torch.Tensor, positions: torch.Tensor, slot: int) -> torch.Tensor:
        """d: the StaticDecoder these graphs belong to."""
        rows = ids.shape[0]
        self.ids[:rows] = ids
        self.positions[:rows] = positions
        self.slot.fill_(slot)
        d.valid[:, slot] = True
        size = self._bucket(rows)
        if size not in self.graphs:
            self.graphs[size] = self._capture(d, size)  # the warm-up already wrote this slot; replay rewrites it
        graph, logits = self.graphs[size]
        graph.replay()
        return logits[:rows].clone()  # the static output is overwritten by the next replay

