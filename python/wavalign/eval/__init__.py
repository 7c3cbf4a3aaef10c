"""Evaluation: per-prompt scoring (`core`), bootstrap statistics (`stats`), tables (`report`),
the `python -m wavalign.eval` command and the ablation runner (`python -m wavalign.eval.ablation`)."""
