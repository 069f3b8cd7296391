"""Sign-in (sessions) and reviewer accounts."""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, HTTPException, Request, status

from engine.api.auth import Principal, require_admin, require_token
from engine.schemas import Login, Problem, Session, UserIn, UserInfo

router = APIRouter(tags=["users"])
_ERRORS = {409: {"model": Problem}, 422: {"model": Problem}}


@router.post("/auth/login", response_model=Session, responses={401: {"model": Problem}, 429: {"model": Problem}})
def login(body: Login, request: Request) -> Session:
    """Exchange a name and password for a session token (the only endpoint besides /health that needs none).
    After 5 wrong passwords for an account within 5 minutes, it refuses (429, Retry-After) until the window
    passes."""
    users, limiter = request.app.state.store.users, request.app.state.sign_in_limiter
    address = request.client.host if request.client else "unknown"
    wait = limiter.retry_after(body.name, address)
    if wait > 0:
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS,
                            f"too many failed sign-ins for {body.name!r}: try again in {math.ceil(wait)} s",
                            headers={"Retry-After": str(math.ceil(wait))})
    user = users.authenticate(body.name, body.password)
    if user is None:
        limiter.failed(body.name, address)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong name or password (an admin can add you with "
                                                          "`dermae users add NAME`)")
    limiter.succeeded(body.name)
    token, expires_at = users.start_session(user)
    return Session(token=token, expires_at=expires_at, user=UserInfo(name=user.name, role=user.role))


@router.post("/auth/logout", status_code=204)
def logout(request: Request, principal: Principal = Depends(require_token)) -> None:
    """End this session (a no-op for the API token)."""
    if principal.is_user:
        request.app.state.store.users.end_session(principal.token)


@router.get("/auth/me", response_model=UserInfo)
def me(request: Request, principal: Principal = Depends(require_token)) -> UserInfo:
    user = request.app.state.store.users.get(principal.name) if principal.is_user else None
    return UserInfo(name=principal.name, role=principal.role, created_at=user.created_at if user else None)


@router.get("/users", response_model=list[UserInfo], dependencies=[Depends(require_admin)])
def list_users(request: Request) -> list[UserInfo]:
    return [UserInfo(name=u.name, role=u.role, created_at=u.created_at) for u in request.app.state.store.users.list()]


@router.post("/users", response_model=UserInfo, status_code=201, responses=_ERRORS,
             dependencies=[Depends(require_admin)])
def add_user(body: UserIn, request: Request) -> UserInfo:
    """A new account; the password is stored only as a salted scrypt hash."""
    user = request.app.state.store.users.add(body.name, body.password, body.role)
    return UserInfo(name=user.name, role=user.role, created_at=user.created_at)
