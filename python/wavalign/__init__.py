"""wavalign: post-training for end-to-end spoken dialogue models (the WavAlign recipe).

Native ops live in :mod:`wavalign.ops`; their pure-PyTorch twins (the tests' oracle, never
imported at run time) in the ``reference`` subpackage.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
