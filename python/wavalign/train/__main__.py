"""`python -m wavalign.train` — PLACEHOLDER until the trainer lands (issue 8).

Today it only proves the install works: it prints the build info and samples a batch of
tokens under a text/speech constraint with the native sampler. It trains nothing.
"""

from __future__ import annotations

import sys


def main() -> int:
    import torch

    from wavalign import info, ops

    print("wavalign.train: the trainer is NOT implemented yet (tracked in issue 8).")
    print("This placeholder checks the install and the native sampler instead.\n")
    info.main()
    vocab, speech_start = 1024, 512
    logits = torch.randn(8, vocab, generator=torch.Generator().manual_seed(0))
    out = ops.sample_tokens(
        logits, temperature=0.7, top_p=0.9, allowed_ranges=[(speech_start, vocab)], seed=1
    )
    in_speech = bool(((out.ids >= speech_start) & (out.ids < vocab)).all())
    print(f"\nsampled speech-phase ids: {out.ids.tolist()} (all inside the speech range: {in_speech})")
    return 0 if in_speech else 1


if __name__ == "__main__":
    sys.exit(main())
