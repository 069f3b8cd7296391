"""Reviewer accounts and their sign-in sessions.

Passwords are kept as scrypt hashes with a per-user random salt; session tokens are random and only their SHA-256
is stored, so neither a copied database nor a backup holds anything that signs anyone in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.store.db import Database, utc_now

ROLES = ("admin", "reviewer", "viewer")
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
MIN_PASSWORD = 8
SESSION_TTL = timedelta(hours=12)  # a working day of review, then sign in again


class UserProblem(ValueError):
    """A user request that cannot be done as asked (the API answers 422 or 409 with the message)."""


class UserExists(UserProblem):
    pass


@dataclass(frozen=True)
class User:
    name: str
    role: str
    created_at: datetime | None = None


def _hash(password: str, salt: bytes) -> bytes:
    # scrypt (stdlib): memory-hard, with parameters OWASP lists as a sane minimum (N=2^14, r=8, p=1 is ~16 MiB)
    return hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1, dklen=32)


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


LIVE_SESSIONS_KEPT = 10_000


class UserQueries:
    def __init__(self, db: Database):
        self.db = db
        # Live sessions already looked up, {token digest: (user, expires at)}: every request is authenticated, and
        # only this process revokes a session (end_session drops it here too), so a hit needs no query.
        self._live: dict[str, tuple[User, datetime]] = {}
        self._ended: set[str] = set()  # digests this process revoked: a lookup racing the revoke must not keep one

    def add(self, name: str, password: str, role: str) -> User:
        if not USER_NAME.match(name):
            raise UserProblem(f"user name {name!r}: 1-64 letters, digits, . _ - (starting with a letter or digit)")
        if role not in ROLES:
            raise UserProblem(f"role {role!r}: choose one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise UserProblem(f"password: at least {MIN_PASSWORD} characters")
        salt = secrets.token_bytes(16)
        with self.db.transaction() as cur:
            if cur.execute("SELECT count(*) FROM users WHERE name = ?", [name]).fetchone()[0]:
                raise UserExists(f"user {name!r} exists already")
            now = utc_now()
            cur.execute("INSERT INTO users VALUES (?, ?, ?, ?, ?)", [name, role, salt, _hash(password, salt), now])
        return User(name, role, now)

    def get(self, name: str) -> User | None:
        row = self.db.cursor().execute("SELECT name, role, created_at FROM users WHERE name = ?", [name]).fetchone()
        return User(*row) if row else None

    def list(self) -> list[User]:
        rows = self.db.cursor().execute("SELECT name, role, created_at FROM users ORDER BY name").fetchall()
        return [User(*r) for r in rows]

    def authenticate(self, name: str, password: str) -> User | None:
        """The user if the password is right, else None (same work either way: no timing hint of who exists)."""
        row = self.db.cursor().execute("SELECT role, salt, password_hash FROM users WHERE name = ?",
                                       [name]).fetchone()
        salt, expected = (bytes(row[1]), bytes(row[2])) if row else (b"\0" * 16, b"\0" * 32)
        ok = hmac.compare_digest(_hash(password, salt), expected)
        return User(name, row[0]) if row and ok else None

    def start_session(self, user: User, ttl: timedelta = SESSION_TTL) -> tuple[str, datetime]:
        """A new session token for `user` and when it expires."""
        token = secrets.token_urlsafe(32)
        now = utc_now()
        with self.db.transaction() as cur:
            cur.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, FALSE)",
                        [_token_digest(token), user.name, now, now + ttl])
        return token, now + ttl

    def session_user(self, token: str) -> User | None:
        """The signed-in user of a live (unexpired, not revoked) session token."""
        digest, now = _token_digest(token), utc_now()
        known = self._live.get(digest)
        if known is not None and known[1] > now:
            return known[0]
        row = self.db.cursor().execute(
            "SELECT u.name, u.role, u.created_at, s.expires_at FROM sessions s JOIN users u ON u.name = s.user_name "
            "WHERE s.token_sha256 = ? AND NOT s.revoked AND s.expires_at > ?", [digest, now]).fetchone()
        if row is None:
            self._live.pop(digest, None)
            return None
        user = User(*row[:3])
        if digest not in self._ended:
            if len(self._live) >= LIVE_SESSIONS_KEPT:
                self._live.clear()
            self._live[digest] = (user, row[3])
        return user

    def end_session(self, token: str) -> None:
        digest = _token_digest(token)
        self._ended.add(digest)  # first: from now on no lookup caches it
        self._live.pop(digest, None)
        with self.db.transaction() as cur:
            cur.execute("UPDATE sessions SET revoked = TRUE WHERE token_sha256 = ?", [digest])
        self._live.pop(digest, None)
