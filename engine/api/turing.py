"""The blinded visual Turing test: admins make sessions and read the results; readers get one image at a time,
blinded, and answer real or synthetic.

Blinding is done here: a reader gets a random item key and the pixels re-encoded as a fresh PNG — centre-cropped
square and resized to the session's one side, so neither metadata, file format, aspect ratio nor size can tell
real from synthetic — and never an image id, file name or provenance. Answers are attributed to the signed-in
reader, never to a name in the body.
"""

from __future__ import annotations

import base64
import io
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Path, Request
from PIL import Image, ImageOps

from engine.api.auth import Principal, require_admin, require_reviewer, require_token
from engine.data.images import ImageStore
from engine.schemas import (
    MAX_BIGINT,
    Problem,
    TuringAnswer,
    TuringAnswerIn,
    TuringItem,
    TuringNext,
    TuringResults,
    TuringSessionIn,
    TuringSessionInfo,
)

router = APIRouter(tags=["turing test"])
SessionId = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="Turing test session id.")]
_ERRORS = {404: {"model": Problem}, 409: {"model": Problem}, 422: {"model": Problem}}


def blinded_png(data: bytes, side: int) -> bytes:
    """The image as a fresh `side` x `side` RGB PNG: orientation applied, centre-cropped square, resized, and
    rebuilt from raw pixels so that nothing of the original file (EXIF, ICC profile, text chunks, format) is
    carried over."""
    with Image.open(io.BytesIO(data)) as original:
        upright = ImageOps.exif_transpose(original).convert("RGB")
    square = ImageOps.fit(upright, (side, side), Image.Resampling.LANCZOS)
    pixels = Image.fromarray(np.asarray(square, dtype=np.uint8), "RGB")  # a new image: no info dict
    out = io.BytesIO()
    pixels.save(out, "PNG")
    return out.getvalue()


def _info(row: dict[str, Any], principal: Principal) -> TuringSessionInfo:
    fields = {k: v for k, v in row.items() if k != "seed"}
    if principal.role != "admin":
        fields["real_fraction"] = None
    return TuringSessionInfo(**fields)


@router.post("/turing/sessions", response_model=TuringSessionInfo, status_code=201, responses=_ERRORS)
def create_session(body: TuringSessionIn, request: Request,
                   principal: Principal = Depends(require_admin)) -> TuringSessionInfo:
    """Sample a session's images (admins): the classes chosen, real from the train/val splits and synthetic
    whatever their review status, at the real:synthetic ratio asked, each source spread evenly over the classes."""
    row = request.app.state.store.turing.create(
        name=body.name, classes=list(body.classes), n_images=body.n_images, real_fraction=body.real_fraction,
        ask_class=body.ask_class, ask_realism=body.ask_realism, created_by=principal.name, seed=body.seed)
    return _info(row, principal)


@router.get("/turing/sessions", response_model=list[TuringSessionInfo])
def list_sessions(request: Request, principal: Principal = Depends(require_token)) -> list[TuringSessionInfo]:
    """Every session, newest first, with its progress and how many items the caller has answered."""
    return [_info(r, principal) for r in request.app.state.store.turing.sessions(me=principal.name)]


@router.get("/turing/sessions/{session_id}/next", response_model=TuringNext, responses=_ERRORS)
def next_item(session_id: SessionId, request: Request,
              principal: Principal = Depends(require_reviewer)) -> TuringNext:
    """The caller's next unanswered item, blinded (a random key and re-encoded pixels only); `done` when none is
    left. Each reader has an order of their own."""
    found = request.app.state.store.turing.next_item(session_id, principal.name)
    session = found["session"]
    item = None
    if not found["done"]:
        path = ImageStore(request.app.state.settings.images_dir).absolute(found["path"])
        png = blinded_png(path.read_bytes(), session["image_side"])
        item = TuringItem(key=found["key"], position=found["position"], png=base64.b64encode(png))
    return TuringNext(session_id=session_id, total=found["total"], answered=found["answered"], done=found["done"],
                      classes=session["classes"], ask_class=session["ask_class"],
                      ask_realism=session["ask_realism"], item=item)


@router.post("/turing/sessions/{session_id}/answers", response_model=TuringAnswer, status_code=201,
             responses=_ERRORS)
def answer(session_id: SessionId, body: TuringAnswerIn, request: Request,
           principal: Principal = Depends(require_reviewer)) -> TuringAnswer:
    """The signed-in reader's answer on one item: final, one per reader and item (a second one is refused).
    No feedback on whether it was right: readers must not learn during the test."""
    return TuringAnswer(**request.app.state.store.turing.answer(
        session_id, principal.name, body.key, body.says, body.class_guess, body.realism))


@router.get("/turing/sessions/{session_id}/results", response_model=TuringResults, responses=_ERRORS,
            dependencies=[Depends(require_admin)])
def results(session_id: SessionId, request: Request) -> TuringResults:
    """Admins: accuracy against 50% chance (exact binomial test), sensitivity and specificity per class, per
    reader and overall; agreement between readers; class-guess accuracy and realism; the synthetic images that
    fooled most of their readers, with their ids."""
    summary = request.app.state.store.turing.results(session_id)
    admin = request.state.principal
    return TuringResults(**{**summary, "session": _info(summary["session"], admin)})


@router.post("/turing/sessions/{session_id}/close", response_model=TuringSessionInfo, responses=_ERRORS)
def close_session(session_id: SessionId, request: Request,
                  principal: Principal = Depends(require_admin)) -> TuringSessionInfo:
    """Stop taking answers (admins). Closing a closed session changes nothing."""
    return _info(request.app.state.store.turing.close(session_id, principal.name), principal)
