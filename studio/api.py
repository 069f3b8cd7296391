"""The studio's line to the engine: one signed-in client per browser session, cached image bytes, and errors
shown as messages that say what to do. The studio holds nothing persistent; everything goes through the API."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st
from PIL import Image

from engine.client import ApiError, Client, ServerNotFound
from engine.schemas import JobPage, Session
from engine.settings import Settings, api_url

T = TypeVar("T")
EMPTY_JOBS = JobPage(total=0, items=[])
ROLES_THAT_DECIDE = ("admin", "reviewer")


def engine_url() -> str | None:
    """DERMAE_API_URL, else the running server recorded in the workspace (DERMAE_WORKSPACE)."""
    return api_url(Settings.from_env())


def session() -> Session | None:
    return st.session_state.get("session")


def client() -> Client:
    """The signed-in user's client (the sign-in page makes it)."""
    return st.session_state["client"]


def sign_in(name: str, password: str) -> Session:
    url = engine_url()
    if url is None:
        raise ServerNotFound("no engine server found: start one with `dermae up` (or set DERMAE_API_URL)")
    signed_in = Client(url, None)
    new = signed_in.login(name, password)
    st.session_state["client"], st.session_state["session"] = signed_in, new
    return new


def sign_out() -> None:
    signed_in = st.session_state.pop("client", None)
    st.session_state.pop("session", None)
    if signed_in is not None:
        call(signed_in.logout)
        signed_in.close()


def can_decide() -> bool:
    current = session()
    return current is not None and current.user.role in ROLES_THAT_DECIDE


def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """Run a client call; on failure show the engine's message (and sign out on an expired session)."""
    try:
        return fn(*args, **kwargs)
    except ApiError as e:
        if e.status_code == 401 and session() is not None:
            st.session_state.pop("session", None)
            st.warning("Your session has ended: sign in again.")
        else:
            st.error(f"The engine said no ({e.status_code}): {e.detail}")
    except ServerNotFound as e:
        st.error(f"Cannot reach the engine: {e}")
    return None


THUMBNAILS_KEPT = 20_000


@st.cache_resource(show_spinner=False)
def _thumbnails() -> tuple[OrderedDict[str, bytes], threading.Lock]:
    """Raw thumbnails by image id, shared by every session (ids are content hashes: never stale), LRU-bounded;
    sessions rerun on their own threads, hence the lock."""
    return OrderedDict(), threading.Lock()


def prefetch_thumbnails(signed_in: Client, image_ids: list[str]) -> None:
    """Fetch the thumbnails not held yet in one round trip per 200 (a page's 48 in one)."""
    kept, lock = _thumbnails()
    with lock:
        missing = [i for i in dict.fromkeys(image_ids) if i not in kept]
    for start in range(0, len(missing), 200):
        fetched = signed_in.thumbnails(missing[start:start + 200])
        with lock:
            kept.update(fetched)
            while len(kept) > THUMBNAILS_KEPT:
                kept.popitem(last=False)


@st.cache_data(max_entries=5_000, show_spinner=False)
def image_png(_client: Client, image_id: str, side: int, smooth: bool, thumbnail: bool = True) -> bytes:
    """An image enlarged to `side` px (nearest-neighbour keeps the pixels honest; smooth is easier on the eye).
    Ids are content hashes, so the cache never goes stale and is shared by every session."""
    kept, lock = _thumbnails()
    with lock:
        data = kept.get(image_id) if thumbnail else None
        if data is not None:
            kept.move_to_end(image_id)  # least recently used goes first
    if data is None:
        data = _client.image_bytes(image_id, thumbnail=thumbnail)
    with Image.open(io.BytesIO(data)) as img:
        rgb = img.convert("RGB")
        scale = side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        big = rgb.resize(size, Image.Resampling.LANCZOS if smooth else Image.Resampling.NEAREST)
    out = io.BytesIO()
    big.save(out, "PNG")
    return out.getvalue()
