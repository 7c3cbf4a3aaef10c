"""Hybrid post-training (WavAlign): setup (build_run), collect, learn and the Trainer loop.

    python -m wavalign.train            # the embedded default
    from wavalign.train.trainer import Trainer
"""
