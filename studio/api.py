"""The studio's line to the engine: one signed-in client per browser session, cached image bytes, and errors
shown as messages that say what to do. The studio holds nothing persistent; everything goes through the API."""

from __future__ import annotations

import base64
import io
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import streamlit as st
from PIL import Image

from engine.client import ApiError, Client, ServerNotFound
from engine.data.images import square_resize
from engine.schemas import ImageInfo, JobPage, Session
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


def held_thumbnail(signed_in: Client, image_id: str) -> bytes:
    """An image's thumbnail from the shared cache, fetched into it first if not held yet."""
    kept, lock = _thumbnails()
    with lock:
        data = kept.get(image_id)
        if data is not None:
            kept.move_to_end(image_id)  # least recently used goes first
            return data
    prefetch_thumbnails(signed_in, [image_id])
    with lock:
        data = kept.get(image_id)
    # not answered in a batch (an unknown id): asked alone, the engine says why
    return data if data is not None else signed_in.image_bytes(image_id, thumbnail=True)


def thumbnail_uri(signed_in: Client, image_id: str) -> str:
    """A data: URI of an image's thumbnail, for an image column of a table."""
    data = held_thumbnail(signed_in, image_id)
    kind = "png" if data.startswith(b"\x89PNG") else "jpeg" if data.startswith(b"\xff\xd8") else "webp"
    return f"data:image/{kind};base64,{base64.b64encode(data).decode()}"


@st.cache_data(max_entries=5_000, show_spinner=False)
def image_png(_client: Client, image_id: str, side: int, smooth: bool, thumbnail: bool = True, square: bool = False,
              through: int | None = None) -> bytes:
    """An image enlarged to `side` px (nearest-neighbour keeps the pixels honest; smooth is easier on the eye).
    `square`: its centre square only, the part of the frame the models are trained on; `through`: first brought
    to that size, to show what a model of that input size sees. Ids are content hashes, so the cache never goes
    stale and is shared by every session."""
    data = held_thumbnail(_client, image_id) if thumbnail else _client.image_bytes(image_id, thumbnail=False)
    with Image.open(io.BytesIO(data)) as img:
        rgb = square_resize(img, through) if through else square_resize(img, min(img.size)) if square \
            else img.convert("RGB")
        scale = side / max(rgb.size)
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        big = rgb.resize(size, Image.Resampling.LANCZOS if smooth else Image.Resampling.NEAREST)
    out = io.BytesIO()
    big.save(out, "PNG")
    return out.getvalue()


@st.cache_data(max_entries=5_000, show_spinner=False)
def image_info(_client: Client, image_id: str) -> ImageInfo:
    """An image's record (size, class, split …); never stale: ids are content hashes."""
    return _client.image(image_id)


def shown_at(width: int, height: int, side: int, square: bool = False, through: int | None = None) -> str:
    """What a caption says of an image's pixels: "64x64, shown 6x"; "150x150 centre of a 200x150 frame, shown
    2.6x"; with `through`, the size the model sees."""
    if through:
        return f"centre of a {width}x{height} frame at {through}x{through}, as the model sees it, shown " \
               f"{side / through:.2g}x"
    if square and width != height:
        crop = min(width, height)
        return f"{crop}x{crop} centre of a {width}x{height} frame, shown {side / crop:.2g}x"
    return f"{width}x{height}, shown {side / max(width, height):.2g}x"
