"""Hybrid post-training (WavAlign). The trainer itself is not implemented yet (issue 8)."""
