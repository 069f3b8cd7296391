"""Review: the queue of synthetic images with their scores, decisions (append-only), undo, history, the acceptance
policy and agreement between reviewers."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request

from engine.api.auth import Principal, reads_blind, require_admin, require_reviewer
from engine.labels import CLASSES
from engine.schemas import (
    MAX_BIGINT,
    Agreement,
    Problem,
    ReviewEvent,
    ReviewHistory,
    ReviewIn,
    ReviewItem,
    ReviewPage,
    ReviewPolicy,
    ReviewPolicyIn,
    ReviewSort,
)
from engine.store.reviews import DECISIONS
from engine.store.users import USER_NAME

router = APIRouter(tags=["review"])
_LABEL = r"^(akiec|bcc|bkl|df|mel|nv|vasc)$"
_ERRORS = {409: {"model": Problem}, 422: {"model": Problem}}
# Only signed-in users decide, so a reviewer filter is a user name: anything else is a mistake to point out, not a
# filter that quietly matches nothing.
_REVIEWER = USER_NAME.pattern


@router.get("/reviews/queue", response_model=ReviewPage)
def queue(
    request: Request,
    label: Annotated[str | None, Query(pattern=_LABEL)] = None,
    status: Annotated[str | None, Query(pattern=r"^(pending|accepted|rejected)$")] = None,
    generation_job: Annotated[int | None, Query(ge=1, le=MAX_BIGINT)] = None,
    min_intended: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_intended: Annotated[float | None, Query(ge=0, le=1)] = None,
    min_nearest: Annotated[float | None, Query(ge=0)] = None,
    max_nearest: Annotated[float | None, Query(ge=0)] = None,
    dup_group: Annotated[int | None, Query(ge=-1, le=MAX_BIGINT)] = None,
    near_copy: bool | None = None,
    reviewer: Annotated[str | None, Query(pattern=_REVIEWER, description="Images this reviewer (a user name) has "
                                                                         "decided.")] = None,
    mine: Annotated[bool, Query(description="Only images the caller has not decided: their own queue.")] = False,
    sort: ReviewSort = "oldest",
    limit: Annotated[int, Query(ge=1, le=500)] = 48,
    offset: Annotated[int, Query(ge=0, le=MAX_BIGINT)] = 0,
) -> ReviewPage:
    """Synthetic images with review state under the policy in force, their scores, and the caller's own decision.
    Under blind reading, others' decisions on an image the caller has not decided are withheld (`blinded`), and
    filters by status or by another reviewer match only images the caller has decided; admins see everything."""
    principal: Principal = request.state.principal
    total, rows = request.app.state.store.reviews.queue(
        me=principal.name, label=label, status=status, generation_job=generation_job, min_intended=min_intended,
        max_intended=max_intended, min_nearest=min_nearest, max_nearest=max_nearest, dup_group=dup_group,
        near_copy=near_copy, reviewer=reviewer, undecided_by_me=mine, sort=sort, limit=limit, offset=offset,
        blind=reads_blind(request, principal))
    return ReviewPage(total=total, offset=offset, items=[ReviewItem(**r) for r in rows])


@router.get("/reviews/progress", response_model=dict[str, int])
def progress(request: Request) -> dict[str, int]:
    """Per class (every class, in the labels' order), the synthetic images the caller has not decided yet."""
    left = request.app.state.store.reviews.left_for(request.state.principal.name)
    return {cls: left.get(cls, 0) for cls in CLASSES}


@router.post("/reviews", response_model=list[ReviewEvent], status_code=201, responses=_ERRORS)
def decide(body: ReviewIn, request: Request, principal: Principal = Depends(require_reviewer)) -> list[ReviewEvent]:
    """One decision by the signed-in reviewer on each image (bulk), recorded as new events, all or none. A retry
    with the same `request_id` records nothing new and answers with the events of the first."""
    events = request.app.state.store.reviews.decide(body.image_ids, principal.name, body.decision, body.reasons,
                                                    body.note, body.request_id)
    return [ReviewEvent(**e) for e in events]


@router.post("/reviews/{seq}/undo", response_model=ReviewEvent, status_code=201, responses=_ERRORS)
def undo(seq: Annotated[int, Path(ge=1, le=MAX_BIGINT)], request: Request,
         principal: Principal = Depends(require_reviewer)) -> ReviewEvent:
    """Take back one of your own current decisions: a new 'undo' event; nothing is deleted."""
    return ReviewEvent(**request.app.state.store.reviews.undo(seq, principal.name))


@router.get("/reviews", response_model=ReviewHistory)
def history(
    request: Request,
    reviewer: Annotated[str | None, Query(pattern=_REVIEWER, description="A reviewer's user name.")] = None,
    label: Annotated[str | None, Query(pattern=_LABEL)] = None,
    image_id: Annotated[str | None, Query(pattern=r"^[0-9a-f]{64}$")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_BIGINT)] = 0,
) -> ReviewHistory:
    """Every decision event, newest first; undone decisions stay, marked with the undo that took them back. Under
    blind reading a reviewer sees only events on images they have decided."""
    principal: Principal = request.state.principal
    total, rows = request.app.state.store.reviews.history(
        reviewer=reviewer, label=label, image_id=image_id, since=since, until=until, limit=limit, offset=offset,
        blind_for=principal.name if reads_blind(request, principal) else None)
    return ReviewHistory(total=total, offset=offset, items=[ReviewEvent(**r) for r in rows])


@router.get("/reviews/reviewers", response_model=list[str])
def reviewers(request: Request) -> list[str]:
    """Everyone who has recorded a decision."""
    return request.app.state.store.reviews.reviewers()


@router.get("/reviews/agreement", response_model=dict[str, Agreement])
def agreement(request: Request) -> dict[str, Agreement]:
    """Overall ("all"), then per class: on the images two or more reviewers decided, how many, percent agreement,
    the table of reader pairs' decisions, and chance-corrected agreement (Cohen's kappa for two reviewers, Fleiss'
    for more) with a 95% interval. Counts only: no one's decision on any one image."""
    from engine.metrics import review_agreement

    rows = review_agreement(request.app.state.store.reviews.live_decisions(), CLASSES, DECISIONS, overall="all")
    if reads_blind(request, request.state.principal):  # a table of one or two images gives their decisions away
        rows = {cls: row | ({} if row["enough"] else {"table": {}}) for cls, row in rows.items()}
    return {cls: Agreement(**row) for cls, row in rows.items()}


@router.get("/review-policy", response_model=ReviewPolicy)
def get_policy(request: Request) -> ReviewPolicy:
    """The review policy in force: k accepts and no reject, and whether reading is blind."""
    return ReviewPolicy(**request.app.state.store.reviews.policy())


@router.get("/review-policy/history", response_model=list[ReviewPolicy])
def policy_history(request: Request) -> list[ReviewPolicy]:
    """Every change of the policy, newest first: who set what, when."""
    return [ReviewPolicy(**row) for row in request.app.state.store.reviews.policy_history()]


@router.put("/review-policy", response_model=ReviewPolicy, responses=_ERRORS)
def set_policy(body: ReviewPolicyIn, request: Request, principal: Principal = Depends(require_admin)
               ) -> ReviewPolicy:
    """Change the policy (admins): what the body gives changes, the rest stays. Statuses everywhere follow at once;
    past dataset versions keep theirs. Each change is recorded with who made it."""
    return ReviewPolicy(**request.app.state.store.reviews.set_policy(
        principal.name, accepts_needed=body.accepts_needed, blind=body.blind))
