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


@pytest.fixture(scope="session")
def world_cache(tmp_path_factory):
    """A private WAVALIGN_CACHE for the session, so tests never touch the user's cache."""
    root = tmp_path_factory.mktemp("wavalign-cache")
    previous = os.environ.get("WAVALIGN_CACHE")
    os.environ["WAVALIGN_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("WAVALIGN_CACHE")
    else:
        os.environ["WAVALIGN_CACHE"] = previous


@pytest.fixture(scope="session")
def fast_world(world_cache):
    """The fast built-in world, built once per session (about 30 s)."""
    from wavalign.world import World, WorldConfig, build_world

    return World(build_world(WorldConfig.fast(), progress=False))
