"""Who is calling: the workspace's API token (the CLI and job processes, with admin rights) or a reviewer's session
token from POST /auth/login. Every endpoint but /health and /auth/login needs one of them; viewers may only read,
and review decisions are attributed to the signed-in user found here, never to a name the client sends."""

from __future__ import annotations

import secrets
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


def _unauthorized() -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED,
        "missing, wrong or expired token: send 'Authorization: Bearer <token>' with the workspace's api_token "
        "file (or DERMAE_API_TOKEN), or a session token from POST /auth/login",
        headers={"WWW-Authenticate": "Bearer"},
    )
