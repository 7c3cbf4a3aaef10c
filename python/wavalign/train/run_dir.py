"""The run directory's guards: one live run per directory, and room to write, checked up front.

A run holds `<run_dir>/.lock` (the PID and host of the process that owns it) from start-up
until it ends. A second run on the same directory is refused while that process lives; a lock
left by a killed run (its PID gone) is taken over, and the run says so. Before any work the
directory is probed for writing and its free space compared with what a checkpoint needs, so
a read-only or full disk fails with a message instead of a traceback at the first save.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"


class RunDirError(ValueError):
    """The run directory cannot be used: in use, not writable, or too little free space."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunDirLock:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.held = False

    def acquire(self) -> None:
        """Take the lock or raise RunDirError naming the live owner. A stale lock is replaced."""
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        if self.path.is_file():
            try:
                owner = json.loads(self.path.read_text())
                pid, host = int(owner["pid"]), str(owner["host"])
            except (ValueError, KeyError, TypeError, OSError):
                owner, pid, host = None, None, None
            if owner is not None and pid != me["pid"]:
                if host != me["host"]:
                    raise RunDirError(f"{self.path.parent} is locked by PID {pid} on host {host}, which this "
                                      f"machine cannot check; if that run has ended, delete {self.path}")
                if _alive(pid):
                    raise RunDirError(f"{self.path.parent} is in use by another live run (PID {pid}); wait for it "
                                      f"to finish or choose another run name (--name)")
                log.warning("%s: taking over a stale lock left by PID %d (no longer running)", self.path, pid)
                print(f"[train] taking over a stale lock of PID {pid} (no longer running) in {self.path.parent}",
                      flush=True)
        tmp = self.path.with_name(f"{LOCK_NAME}.{me['pid']}")
        try:
            tmp.write_text(json.dumps(me) + "\n")
            os.replace(tmp, self.path)
        except OSError as error:
            raise RunDirError(f"cannot write to the run directory {self.path.parent}: {error}") from None
        self.held = True

    def release(self) -> None:
        if not self.held:
            return
        try:
            owner = json.loads(self.path.read_text())
            if int(owner.get("pid", -1)) == os.getpid():
                self.path.unlink()
        except (OSError, ValueError):
            pass
        self.held = False


def prepare(run_dir: Path) -> None:
    """Create the run directory, or fail clearly when it cannot be."""
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"cannot create the run directory {run_dir}: {error}") from None


def check_free_space(run_dir: Path, need_bytes: int) -> None:
    """Fail before the first step when a checkpoint cannot fit (need_bytes: an estimate)."""
    free = shutil.disk_usage(run_dir).free
    if free < need_bytes:
        raise RunDirError(f"not enough free space in {run_dir}: a checkpoint needs about "
                          f"{need_bytes / 2**20:.1f} MiB, {free / 2**20:.1f} MiB are free")


def checkpoint_bytes(model, keep: int, *, trainable_only: bool = False) -> int:
    """Rough size of `keep` checkpoints plus one being written: weights + AdamW's two moments.
    trainable_only: a LoRA checkpoint holds only the adapters."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad or not trainable_only)
    return weights * 3 * (keep + 1)
