import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _cuda_ready() -> bool:
    from wavalign import ops

    return bool(ops.build_info()["cuda_kernels"]) and torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _cuda_ready():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU and wavalign built with CUDA kernels")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
