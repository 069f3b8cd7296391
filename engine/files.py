"""File helpers shared across the engine: hashing and atomic writes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, then rename: readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sha256_path(path: Path) -> tuple[str, int]:
    """(SHA-256, size in bytes) of a file, or of a folder: the hash of its sorted (relative path, file hash)."""
    if path.is_file():
        return sha256_file(path), path.stat().st_size
    digest, size = hashlib.sha256(), 0
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        digest.update(f"{p.relative_to(path).as_posix()}\0{sha256_file(p)}\n".encode())
        size += p.stat().st_size
    return digest.hexdigest(), size


def copy_file_hashed(source: Path, dest: Path) -> tuple[str, int]:
    """Copy `source` to the new file `dest` (never over one) with its permission bits from the start, so a private
    token file is never readable by others on the way, and return the SHA-256 and size of the bytes written, read
    once: for a file that changes meanwhile, the hash is that of the copy."""
    digest, size = hashlib.sha256(), 0
    with source.open("rb") as src:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, os.fstat(src.fileno()).st_mode & 0o777)
        with os.fdopen(fd, "wb") as out:
            for block in iter(lambda: src.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
                size += len(block)
    return digest.hexdigest(), size
