"""Who is calling: the workspace's API token (the CLI and job processes, with admin rights) or a reviewer's session
token from POST /auth/login. Every endpoint but /health and /auth/login needs one of them; viewers may only read,
and review decisions are attributed to the signed-in user found here, never to a name the client sends."""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

_bearer = HTTPBearer(auto_error=False, description="The workspace's `api_token`, or a session token from "
                                                   "POST /auth/login.")
_READS = ("GET", "HEAD", "OPTIONS")


@dataclass(frozen=True)
class Principal:
    name: str
    role: str  # admin | reviewer | viewer
    is_user: bool  # False: the workspace API token (CLI, job processes)
    token: str


def require_token(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
                  ) -> Principal:
    if credentials is None:
        raise _unauthorized()
    token = credentials.credentials
    if secrets.compare_digest(token.encode(), request.app.state.api_token.encode()):
        principal = Principal("engine", "admin", False, token)
    else:
        user = request.app.state.store.users.session_user(token)
        if user is None:
            raise _unauthorized()
        principal = Principal(user.name, user.role, True, token)
    if principal.role == "viewer" and request.method not in _READS and request.url.path != "/auth/logout":
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"{principal.name} is a viewer: viewers can look, not change")
    request.state.principal = principal
    return principal


def reads_blind(request: Request, principal: Principal) -> bool:
    """Whether the caller reads blind: the policy says so and they are not an admin (nor the workspace token)."""
    return principal.role != "admin" and principal.is_user and request.app.state.store.reviews.policy()["blind"]


def refuse_if_blind(request: Request, what: str) -> None:
    """403 for a blinded caller asking for `what`, which would show other reviewers' decisions image by image."""
    if reads_blind(request, request.state.principal):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"blind reading is on: {what} would show other reviewers' "
                                                       "decisions on images you have not decided. An admin can get "
                                                       "it, or turn blind reading off (dermae policy --no-blind).")


def require_admin(principal: Principal = Depends(require_token)) -> Principal:
    if principal.role != "admin":
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"{principal.name} is a {principal.role}: this needs an admin")
    return principal


def require_reviewer(principal: Principal = Depends(require_token)) -> Principal:
    """A signed-in person who may decide: decisions need a name to be attributed to, so not the API token."""
    if not principal.is_user:
        raise HTTPException(status.HTTP_403_FORBIDDEN, "review decisions need a signed-in reviewer: "
                                                       "POST /auth/login and send that session token")
    if principal.role not in ("admin", "reviewer"):
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"{principal.name} is a {principal.role}: reviewing needs "
                                                       "the reviewer or admin role")
    return principal


def require_engine(principal: Principal = Depends(require_token)) -> Principal:
    """The workspace API token only: what job processes send. Progress, synthetic images, scores and models come
    from jobs; a signed-in person, whatever their role, must not be able to forge them."""
    if principal.is_user:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"{principal.name}: only job processes (the workspace API "
                                                       "token) report progress, images, scores and models")
    return principal


class SignInLimiter:
    """Failed sign-ins in a sliding window, per account and per client address. Over a limit, every attempt (right
    password or not) is refused until the oldest failure leaves the window: guessing one account's password gets
    `max_failures` tries per `window` seconds. The address limit is 10x higher because the studio signs everyone
    in from one address: one person mistyping must not lock the others out; it stops spraying many accounts.
    In memory: a restart forgets, which only helps someone who can restart the server anyway."""

    MAX_KEYS = 10_000

    def __init__(self, max_failures: int = 5, window: float = 300.0):
        self.max_failures = max_failures
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> SignInLimiter:
        return cls(int(os.environ.get("DERMAE_SIGNIN_MAX_FAILURES", "5")),
                   float(os.environ.get("DERMAE_SIGNIN_WINDOW", "300")))

    def _limits(self, name: str, address: str) -> dict[str, int]:
        return {f"user:{name}": self.max_failures, f"address:{address}": 10 * self.max_failures}

    def retry_after(self, name: str, address: str) -> float:
        """Seconds until `name` may try again from `address` (0: now)."""
        now = time.monotonic()
        wait = 0.0
        with self._lock:
            for key, limit in self._limits(name, address).items():
                failures = self._failures.get(key)
                while failures and now - failures[0] >= self.window:
                    failures.popleft()
                if failures and len(failures) >= limit:
                    wait = max(wait, self.window - (now - failures[-limit]))
        return wait

    def failed(self, name: str, address: str) -> None:
        now = time.monotonic()
        with self._lock:
            if len(self._failures) >= self.MAX_KEYS:  # guesses at many made-up names must not grow memory
                self._failures = {k: f for k, f in self._failures.items() if f and now - f[-1] < self.window}
            for key in self._limits(name, address):
                failures = self._failures.setdefault(key, deque())
                failures.append(now)
                while len(failures) > 10 * self.max_failures:  # more than the largest limit is never needed
                    failures.popleft()

    def succeeded(self, name: str) -> None:
        """The account's count starts again; the address's does not (one known password must not reset it)."""
        with self._lock:
            self._failures.pop(f"user:{name}", None)


def _unauthorized() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing, wrong or expired token: send 'Authorization: Bearer <token>' with the workspace's api_token "
        "file (or DERMAE_API_TOKEN), or a session token from POST /auth/login",
        headers={"WWW-Authenticate": "Bearer"},
    )
