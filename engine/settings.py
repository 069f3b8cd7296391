"""Workspace paths, limits and the environment variables that choose them.

DERMAE_WORKSPACE  where the database, images, logs and the API token live (default: ./workspace)
DERMAE_API_URL    where clients find the server (default: the running server's record in the workspace)
DERMAE_API_TOKEN  the token clients send (default: the token file in the workspace); set for the server, it
                  replaces that file's token, and it is required to bind any address but loopback
DERMAE_DATA       a dermamnist.npz that `dermae demo` imports instead of the phantom set
DERMAE_MAX_REQUEST_MB  the largest request body the server reads (default 64)
DERMAE_REVIEW_GROUP_COMMIT  review decisions that may share one commit (default 256; 1: a commit each, which
                  bench/review_load.py measures as "before")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765

# Limits every imported image must respect. HAM10000 is 600x450 and ISIC originals reach ~6000x4000 (24 MP);
# anything far beyond is a mistake or a decompression bomb.
MAX_IMAGE_BYTES = 50 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
MIN_IMAGE_SIDE = 8
THUMBNAIL_SIDE = 128

# The largest request body the server reads. The biggest legitimate ones are batches of generated PNGs, which the
# client splits into requests of at most SYNTHETIC_UPLOAD_BYTES.
MAX_REQUEST_BYTES = int(float(os.environ.get("DERMAE_MAX_REQUEST_MB", "64")) * 1024 * 1024)
SYNTHETIC_UPLOAD_BYTES = 16 * 1024 * 1024
REVIEW_GROUP_COMMIT = max(1, int(os.environ.get("DERMAE_REVIEW_GROUP_COMMIT", "256")))


@dataclass(frozen=True)
class Settings:
    workspace: Path

    @classmethod
    def from_env(cls, workspace: str | Path | None = None) -> Settings:
        root = workspace or os.environ.get("DERMAE_WORKSPACE") or "workspace"
        return cls(workspace=Path(root).expanduser().resolve())

    @property
    def db_path(self) -> Path:
        return self.workspace / "dermae.duckdb"

    @property
    def token_path(self) -> Path:
        return self.workspace / "api_token"

    @property
    def server_record_path(self) -> Path:
        """JSON written by a running server (url, pid) so that clients can find it."""
        return self.workspace / "server.json"

    @property
    def images_dir(self) -> Path:
        return self.workspace / "images"

    @property
    def thumbs_dir(self) -> Path:
        return self.workspace / "thumbs"

    @property
    def logs_dir(self) -> Path:
        return self.workspace / "logs"

    def ensure(self) -> None:
        for d in (self.workspace, self.images_dir, self.thumbs_dir, self.logs_dir):
            d.mkdir(parents=True, exist_ok=True)


def ensure_api_token(settings: Settings) -> str:
    """The workspace's API token, created on first start with mode 0600 (owner read/write only)."""
    import secrets

    settings.workspace.mkdir(parents=True, exist_ok=True)
    path = settings.token_path
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as f:
        token = secrets.token_urlsafe(32)
        f.write(token + "\n")
    return token


def server_api_token(settings: Settings) -> str:
    """The token the server accepts: DERMAE_API_TOKEN when the operator set one, else the workspace's file."""
    return os.environ.get("DERMAE_API_TOKEN") or ensure_api_token(settings)


MIN_TOKEN_CHARS = 24


def is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def exposure_problem(host: str, token: str | None, what: str, token_env: str) -> str | None:
    """Why `what` must not bind `host`, or None. Loopback is always allowed; any other address makes it reachable
    from other machines, which needs a token set on purpose in `token_env`."""
    if is_loopback(host):
        return None
    make = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
    if not token:
        return (f"refusing to bind {host}: {what} would be reachable from other machines. Bind 127.0.0.1 (the "
                f"default), or set {token_env} to a secret token ({make}) if you mean to expose it.")
    if len(token) < MIN_TOKEN_CHARS:
        return f"refusing to bind {host}: {token_env} is shorter than {MIN_TOKEN_CHARS} characters; {make}"
    return None


def api_token(settings: Settings) -> str | None:
    """What a client sends: DERMAE_API_TOKEN, else the workspace's token file."""
    if os.environ.get("DERMAE_API_TOKEN"):
        return os.environ["DERMAE_API_TOKEN"]
    try:
        return settings.token_path.read_text().strip()
    except OSError:
        return None


def api_url(settings: Settings) -> str | None:
    """Where a client finds the server: DERMAE_API_URL, else the running server's record in the workspace."""
    import json

    if os.environ.get("DERMAE_API_URL"):
        return os.environ["DERMAE_API_URL"].rstrip("/")
    try:
        return json.loads(settings.server_record_path.read_text())["url"]
    except (OSError, ValueError, KeyError):
        return None
