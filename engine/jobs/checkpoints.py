"""Checkpoints as folders, written atomically and verified before use.

`step-000000012/` holds whatever files a recipe writes plus `MANIFEST.json` with each file's SHA-256 and the process
that wrote it (rank, host, pid: under several processes only rank 0 may). A
checkpoint is written under a temporary name and renamed into place only when complete, so a crash or a full
disk mid-write leaves the previous one intact; loading checks every hash and falls back to an older checkpoint,
saying why, when a file is damaged.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.files import sha256_file

MANIFEST = "MANIFEST.json"


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: Path


class CheckpointCorrupt(ValueError):
    pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(root: Path, step: int, write: Callable[[Path], None], keep: int = 2) -> Checkpoint:
    """Call `write(folder)` to fill a fresh folder, seal it with a manifest, and keep the newest `keep`."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:09d}"
    tmp = root / f".tmp-step-{step:09d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        write(tmp)
        files = {}
        for p in sorted(tmp.rglob("*")):
            if p.is_file():
                with p.open("rb") as f:
                    os.fsync(f.fileno())
                files[p.relative_to(tmp).as_posix()] = sha256_file(p)
        writer = {"rank": int(os.environ.get("RANK", "0")), "host": socket.gethostname(), "pid": os.getpid()}
        (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files, "writer": writer}))
        with (tmp / MANIFEST).open("rb") as f:
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return Checkpoint(step, final)


def verify(folder: Path) -> Checkpoint:
    """Raise CheckpointCorrupt naming the damaged file, else return the checkpoint."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointCorrupt(f"{folder.name}: unreadable manifest ({e})") from None
    for name, expected in manifest["files"].items():
        file = folder / name
        if not file.is_file():
            raise CheckpointCorrupt(f"{folder.name}: {name} is missing")
        if sha256_file(file) != expected:
            raise CheckpointCorrupt(f"{folder.name}: {name} does not match its recorded SHA-256 (damaged)")
    return Checkpoint(int(manifest["step"]), folder)


def latest(root: Path, warn: Callable[[str], None] = print) -> Checkpoint | None:
    """The newest intact checkpoint; damaged ones are reported through `warn` and skipped."""
    for folder in sorted(root.glob("step-*"), reverse=True):
        try:
            return verify(folder)
        except CheckpointCorrupt as e:
            warn(f"refusing checkpoint {e}; falling back to an older one")
    return None
