"""The built-in spoken-dialogue world: tasks asked in a speaking style, real eSpeak NG audio,
learned speech units, a recognizer, a style meter, judges, exact metrics and a tiny SFT policy.

    from wavalign.world import WorldConfig, build_world, World
    world = World(build_world())            # builds once, then cached
"""

from wavalign.world.config import JudgeNoise, WorldConfig, cache_root, world_dir
from wavalign.world.build import build_world
from wavalign.world.world import World


def load_world(config: WorldConfig | None = None, *, progress: bool = True) -> World:
    """The world for `config` (default: the embedded default), built on first use."""
    return World(build_world(config, progress=progress))


__all__ = ["JudgeNoise", "World", "WorldConfig", "build_world", "cache_root", "load_world", "world_dir"]
