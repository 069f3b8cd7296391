"""Review decisions (append-only events), the acceptance policy, the review queue, and the live decisions that
reviewer agreement (engine.metrics.review_agreement) is computed from.

Nothing here updates or deletes a decision: an undo is a new event naming the one it takes back, and the current
state of an image is derived from the events (REVIEW_STATUS_SQL) under the policy in force.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa

from engine.store.db import Database, utc_now, where_given

DECISIONS = ("accept", "reject", "unsure")
REASONS = ("unrealistic_texture", "wrong_class_features", "artifact", "duplicate", "near_copy", "other")
SORTS = {  # name -> ORDER BY; ties broken by id so pages never overlap
    "newest": "i.created_at DESC, i.id", "oldest": "i.created_at, i.id",
    "intended_prob": "sc.intended_prob NULLS FIRST, i.id", "-intended_prob": "sc.intended_prob DESC NULLS LAST, i.id",
    "judge_prob": "sc.judge_prob NULLS FIRST, i.id", "-judge_prob": "sc.judge_prob DESC NULLS LAST, i.id",
    "nearest_real_dist": "sc.nearest_real_dist NULLS LAST, i.id",
    "-nearest_real_dist": "sc.nearest_real_dist DESC NULLS LAST, i.id",
    "dup_group": "sc.dup_group NULLS LAST, i.id", "sharpness": "sc.sharpness NULLS LAST, i.id",
}

# Live decision per (image, reviewer): the latest event that is not an undo and has not been undone.
LIVE_SQL = """
SELECT image_id, reviewer, arg_max(decision, seq) AS decision, max(seq) AS seq
FROM reviews
WHERE decision <> 'undo' AND seq NOT IN (SELECT undoes FROM reviews WHERE undoes IS NOT NULL)
GROUP BY image_id, reviewer
"""

PER_IMAGE_SQL = """
    SELECT image_id, count(*) FILTER (decision = 'accept') AS accepts,
           count(*) FILTER (decision = 'reject') AS rejects, list(reviewer ORDER BY reviewer) AS reviewers
    FROM live GROUP BY image_id
"""
# The policy "k accepts and no reject": one reject rejects, k ($accepts) accepts accept, anything else is pending.
STATUS_CASE = ("CASE WHEN coalesce(p.rejects, 0) > 0 THEN 'rejected' WHEN coalesce(p.accepts, 0) >= $accepts "
               "THEN 'accepted' ELSE 'pending' END")

# Every synthetic image's status under the policy: (id, label, status).
REVIEW_STATUS_SQL = f"""
WITH live AS ({LIVE_SQL}), per_image AS ({PER_IMAGE_SQL})
SELECT i.id, i.label, {STATUS_CASE} AS status
FROM images i LEFT JOIN per_image p ON p.image_id = i.id
WHERE i.source = 'synthetic'
"""

# Blind reading: a blinded caller sees no one's decision on an image until they have decided it themselves.
HIDDEN = "($blind AND mine.decision IS NULL)"

QUEUE_SQL = f"""
WITH live AS ({LIVE_SQL}),
per_image AS ({PER_IMAGE_SQL}),
sc AS (
    SELECT image_id,
           max(value) FILTER (name = 'intended_prob') AS intended_prob,
           max(value) FILTER (name = 'nearest_real_dist') AS nearest_real_dist,
           max(ref) FILTER (name = 'nearest_real_dist') AS nearest_real_id,
           max(value) FILTER (name = 'near_copy') AS near_copy,
           max(value) FILTER (name = 'dup_group') AS dup_group,
           max(value) FILTER (name = 'sharpness') AS sharpness,
           max(ref) FILTER (name = 'predicted_class') AS predicted_class,
           max(value) FILTER (name = 'judge_prob') AS judge_prob,
           max(ref) FILTER (name = 'judge_class') AS judge_class
    FROM scores GROUP BY image_id
)
SELECT i.id, i.label, i.generation_job, i.seed, i.guidance, i.steps, i.checkpoint, i.created_at,
       CASE WHEN {HIDDEN} THEN NULL ELSE {STATUS_CASE} END AS status,
       CASE WHEN {HIDDEN} THEN NULL ELSE coalesce(p.accepts, 0) END AS accepts,
       CASE WHEN {HIDDEN} THEN NULL ELSE coalesce(p.rejects, 0) END AS rejects,
       CASE WHEN {HIDDEN} THEN NULL ELSE coalesce(p.reviewers, []) END AS reviewers, {HIDDEN} AS blinded,
       mine.decision AS my_decision, mine.seq AS my_seq,
       sc.intended_prob, sc.nearest_real_dist, sc.nearest_real_id, sc.near_copy, sc.dup_group, sc.sharpness,
       sc.predicted_class, sc.judge_prob, sc.judge_class, count(*) OVER () AS total
FROM images i
LEFT JOIN per_image p ON p.image_id = i.id
LEFT JOIN sc ON sc.image_id = i.id
LEFT JOIN live mine ON mine.image_id = i.id AND mine.reviewer = $me
WHERE i.source = 'synthetic' AND {{where}}
ORDER BY {{order}}
LIMIT $limit OFFSET $offset
"""
QUEUE_COLUMNS = ("id", "label", "generation_job", "seed", "guidance", "steps", "checkpoint", "created_at", "status",
                 "accepts", "rejects", "reviewers", "blinded", "my_decision", "my_seq", "intended_prob",
                 "nearest_real_dist",
                 "nearest_real_id", "near_copy", "dup_group", "sharpness", "predicted_class", "judge_prob",
                 "judge_class")
EVENT_COLUMNS = ("seq", "image_id", "label", "reviewer", "decision", "undoes", "reasons", "note", "created_at",
                 "undone_by")


class ReviewProblem(ValueError):
    """A decision that cannot be recorded as asked (the API answers 422 with the message)."""


class ReviewConflict(ReviewProblem):
    """A decision that no longer fits the current state, e.g. undoing a decision that was already taken back."""


@dataclass
class _Pending:
    """One POST /reviews waiting for the group commit that records it."""

    image_ids: list[str]
    reviewer: str
    decision: str
    reasons: list[str]
    note: str | None
    request_id: str | None
    done: threading.Event = field(default_factory=threading.Event)
    seqs: list[int] = field(default_factory=list)
    events: list[dict[str, Any]] | None = None  # as written, so the answer needs no read after the commit
    error: BaseException | None = None
    same_as: _Pending | None = None  # a retry that arrived in the same group as its first attempt


DEFAULT_POLICY = {"accepts_needed": 1, "blind": True, "changed_by": None, "changed_at": None}
GROUP_COMMIT_MAX = 256  # requests that arrive together share one transaction and one fsync, at most this many


class ReviewQueries:
    def __init__(self, db: Database, group_commit_max: int = GROUP_COMMIT_MAX):
        self.db = db
        self.group_commit_max = group_commit_max  # 1: one transaction per request (the bench's "before")
        self._waiting: deque[_Pending] = deque()
        self._waiting_lock = threading.Lock()
        self._turn = threading.Condition()  # notified when a commit ends
        self._committing = False

    # -- the policy ---------------------------------------------------------------------------------------------
    def policy(self) -> dict[str, Any]:
        """The review policy in force: k of "k accepts and no reject", and whether reading is blind (a reviewer
        sees no other reviewer's decision on an image before deciding it). Blind and k = 1 until an admin sets
        them; every change is a new row (`policy_history`)."""
        history = self.policy_history(limit=1)
        return history[0] if history else dict(DEFAULT_POLICY)

    def policy_history(self, limit: int = 100) -> list[dict[str, Any]]:
        """Every policy change, newest first: the audit trail of who set what when."""
        rows = self.db.cursor().execute("SELECT accepts_needed, coalesce(blind, TRUE), changed_by, created_at "
                                        "FROM review_policy ORDER BY seq DESC LIMIT ?", [limit]).fetchall()
        return [dict(zip(("accepts_needed", "blind", "changed_by", "changed_at"), r, strict=True)) for r in rows]

    def accepts_needed(self) -> int:
        return self.policy()["accepts_needed"]

    def set_policy(self, changed_by: str, *, accepts_needed: int | None = None, blind: bool | None = None
                   ) -> dict[str, Any]:
        """A new policy row: what is given changes, the rest stays as in force."""
        if accepts_needed is not None and not 1 <= accepts_needed <= 20:
            raise ReviewProblem("accepts needed: 1 to 20")
        with self.db.transaction() as cur:
            row = cur.execute("SELECT accepts_needed, coalesce(blind, TRUE) FROM review_policy ORDER BY seq DESC "
                              "LIMIT 1").fetchone() or (DEFAULT_POLICY["accepts_needed"], DEFAULT_POLICY["blind"])
            cur.execute("INSERT INTO review_policy (accepts_needed, blind, changed_by, created_at) VALUES (?, ?, ?, ?)",
                        [row[0] if accepts_needed is None else accepts_needed, row[1] if blind is None else blind,
                         changed_by, utc_now()])
        return self.policy()

    # -- decisions ----------------------------------------------------------------------------------------------
    def decide(self, image_ids: list[str], reviewer: str, decision: str, reasons: list[str] | None = None,
               note: str | None = None, request_id: str | None = None) -> list[dict[str, Any]]:
        """Record one decision by `reviewer` on each image, all or none. Rejections need a reason; "other" needs
        a note. Returns the new events. With a `request_id` the reviewer used before, nothing new is recorded
        and the events of that request are returned: a retry after a lost answer does not decide twice.

        Group commit: requests that arrive while a commit is under way wait, then share the next transaction and
        its one fsync; each returns only after that commit, and each stands or fails on its own."""
        reasons = sorted(set(reasons or []))
        if decision not in DECISIONS:
            raise ReviewProblem(f"decision {decision!r}: choose one of {', '.join(DECISIONS)}")
        unknown_reasons = [r for r in reasons if r not in REASONS]
        if unknown_reasons:
            raise ReviewProblem(f"unknown reason(s) {unknown_reasons}: choose from {', '.join(REASONS)}")
        if decision == "reject" and not reasons:
            raise ReviewProblem(f"a rejection needs at least one reason ({', '.join(REASONS)})")
        if "other" in reasons and not (note or "").strip():
            raise ReviewProblem("reason 'other' needs a note saying what is wrong")
        if not image_ids:
            raise ReviewProblem("no images given")
        pending = _Pending(list(dict.fromkeys(image_ids)), reviewer, decision, reasons, note, request_id)
        with self._waiting_lock:
            self._waiting.append(pending)
        while True:
            # Leader and followers: while a commit is under way the others wait; when it ends, those it recorded
            # leave, and one of the rest commits everything waiting by then, its own request among them.
            with self._turn:
                while self._committing and not pending.done.is_set():
                    self._turn.wait()
                if pending.done.is_set():
                    break
                self._committing = True
            try:
                with self._waiting_lock:
                    group = [self._waiting.popleft() for _ in range(min(len(self._waiting), self.group_commit_max))]
                self._commit_group(group)
            finally:
                with self._turn:
                    self._committing = False
                    self._turn.notify_all()
        if pending.error is not None:
            raise pending.error
        return pending.events if pending.events is not None else self.events(pending.seqs)

    def _commit_group(self, group: list[_Pending]) -> None:
        """Record `group` in one transaction. A request that cannot be recorded (unknown or real images, a request
        id reused for other images) gets its own error and leaves the others be; if the commit itself fails,
        every request of the group fails with it and none is recorded."""
        try:
            with self.db.transaction() as cur:
                self._insert_group(cur, group)
            for item in group:
                if item.same_as is not None:
                    item.seqs, item.events, item.error = item.same_as.seqs, item.same_as.events, item.same_as.error
        except BaseException as e:  # nothing of the group was committed
            for item in group:
                item.seqs, item.error = [], item.error or e
        finally:
            for item in group:
                item.done.set()

    def _insert_group(self, cur: Any, group: list[_Pending]) -> None:
        now = utc_now()
        cur.register("decided_ids", pa.table({"image_id": sorted({i for p in group for i in p.image_ids})}))
        found = {i: (source, label) for i, source, label in cur.execute(
            "SELECT i.id, i.source, i.label FROM images i JOIN decided_ids d ON d.image_id = i.id").fetchall()}
        cur.unregister("decided_ids")
        asked = [item for item in group if item.request_id is not None]
        used: dict[tuple[str, str], list[int]] = {}
        if asked:
            cur.register("asked_requests", pa.table({"reviewer": [i.reviewer for i in asked],
                                                     "request_id": [i.request_id for i in asked]}))
            used = {(who, rid): seqs for who, rid, seqs in cur.execute(
                "SELECT r.reviewer, r.request_id, r.seqs FROM review_requests r JOIN asked_requests a "
                "ON a.reviewer = r.reviewer AND a.request_id = r.request_id").fetchall()}
            cur.unregister("asked_requests")
        writing: list[_Pending] = []
        firsts: dict[tuple[str, str], _Pending] = {}
        for item in group:
            if item.request_id is not None:
                key = (item.reviewer, item.request_id)
                recorded, first = used.get(key), firsts.get(key)  # by an earlier commit / earlier in this group
                if recorded is not None or first is not None:
                    used_for = [e["image_id"] for e in self.events(list(recorded))] if recorded is not None \
                        else first.image_ids
                    if used_for != item.image_ids:
                        item.error = ReviewConflict(f"request {item.request_id} was already used for other images: "
                                                    "send a new request id for a new decision")
                    elif recorded is not None:
                        item.seqs = list(recorded)
                    else:
                        item.same_as = first
                    continue
                firsts[key] = item
            missing = [i for i in item.image_ids if i not in found]
            real = [i for i in item.image_ids if found.get(i, ("synthetic",))[0] != "synthetic"]
            if missing:
                item.error = ReviewProblem(f"{len(missing)} unknown image id(s), e.g. {missing[0]}")
            elif real:
                item.error = ReviewProblem(f"{len(real)} image(s) are real: only synthetic images are reviewed, "
                                           f"e.g. {real[0]}")
            else:
                writing.append(item)
        count = sum(len(item.image_ids) for item in writing)
        if not count:
            return
        seqs = iter([r[0] for r in cur.execute("SELECT nextval('review_seq') FROM range(?)", [count]).fetchall()])
        events = []  # the rows written are these events' columns
        for item in writing:
            item.seqs = [next(seqs) for _ in item.image_ids]
            item.events = [{"seq": seq, "image_id": image_id, "label": found[image_id][1], "reviewer": item.reviewer,
                            "decision": item.decision, "undoes": None, "reasons": item.reasons, "note": item.note,
                            "created_at": now, "undone_by": None}
                           for seq, image_id in zip(item.seqs, item.image_ids, strict=True)]
            events += item.events
        column = lambda name: [e[name] for e in events]  # noqa: E731
        cur.register("new_reviews", pa.table({
            "seq": column("seq"), "image_id": column("image_id"), "reviewer": column("reviewer"),
            "decision": column("decision"), "undoes": pa.array(column("undoes"), pa.int64()),
            "reasons": pa.array(column("reasons"), pa.list_(pa.string())),
            "note": pa.array(column("note"), pa.string()), "created_at": column("created_at")}))
        cur.execute("INSERT INTO reviews BY NAME SELECT * FROM new_reviews")
        cur.unregister("new_reviews")
        requests = [item for item in writing if item.request_id is not None]
        if requests:
            cur.executemany("INSERT INTO review_requests VALUES (?, ?, ?, ?)",
                            [[item.request_id, item.reviewer, item.seqs, now] for item in requests])

    def undo(self, seq: int, reviewer: str) -> dict[str, Any]:
        """Take back `reviewer`'s decision `seq` with a new 'undo' event. Only a reviewer's current decision on
        an image can be undone (undo the later one first), and only by that reviewer."""
        with self.db.transaction() as cur:
            row = cur.execute("SELECT image_id, reviewer, decision FROM reviews WHERE seq = ?", [seq]).fetchone()
            if row is None:
                raise ReviewProblem(f"no decision {seq}")
            image_id, owner, decision = row
            if owner != reviewer:
                raise ReviewConflict(f"decision {seq} is {owner}'s: only they can undo it")
            if decision == "undo":
                raise ReviewConflict(f"{seq} is an undo itself: decide again instead")
            live = cur.execute(f"SELECT seq FROM ({LIVE_SQL}) WHERE image_id = ? AND reviewer = ?",
                               [image_id, reviewer]).fetchone()
            if live is None or live[0] != seq:
                raise ReviewConflict(f"decision {seq} is not your current decision on this image "
                                     "(already undone, or a later decision replaced it)")
            new = cur.execute("INSERT INTO reviews (image_id, reviewer, decision, undoes, reasons, note, created_at) "
                              "VALUES (?, ?, 'undo', ?, [], NULL, ?) RETURNING seq",
                              [image_id, reviewer, seq, utc_now()]).fetchone()[0]
        return self.events([new])[0]

    def events(self, seqs: list[int]) -> list[dict[str, Any]]:
        """The events `seqs`, in that order (a bulk decision answers in the order of its image ids)."""
        by_seq = {e["seq"]: e for e in self.history(seqs=seqs, limit=len(seqs) or 1)[1]}
        return [by_seq[s] for s in seqs]

    def history(self, *, reviewer: str | None = None, label: str | None = None, image_id: str | None = None,
                since: datetime | None = None, until: datetime | None = None, seqs: list[int] | None = None,
                limit: int = 100, offset: int = 0, blind_for: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        """Decision events, newest first, each with the image's class and the undo that took it back (if any).
        `blind_for`: that reviewer reads blind, so only events on images they have decided (and not taken back)
        are listed, as the queue shows them."""
        where, params = where_given(
            (f"r.image_id IN (SELECT image_id FROM ({LIVE_SQL}) WHERE reviewer = $blind_for)", "blind_for",
             blind_for),
            ("r.reviewer = $reviewer", "reviewer", reviewer), ("i.label = $label", "label", label),
            ("r.image_id = $image_id", "image_id", image_id), ("r.created_at >= $since", "since", since),
            ("r.created_at < $until", "until", until),
            ("r.seq IN (SELECT seq FROM wanted_seqs)", None, seqs))
        params |= {"limit": limit, "offset": offset}
        cur = self.db.cursor()
        if seqs is not None:
            cur.register("wanted_seqs", pa.table({"seq": pa.array(seqs, pa.int64())}))
        rows = cur.execute(f"""
            SELECT r.seq, r.image_id, i.label, r.reviewer, r.decision, r.undoes, r.reasons, r.note, r.created_at,
                   u.seq AS undone_by, count(*) OVER () AS total
            FROM reviews r JOIN images i ON i.id = r.image_id
            LEFT JOIN reviews u ON u.undoes = r.seq
            WHERE {where}
            ORDER BY r.seq DESC LIMIT $limit OFFSET $offset""", params).fetchall()
        total = rows[0][-1] if rows else 0
        return total, [dict(zip(EVENT_COLUMNS, r[:-1], strict=True)) for r in rows]

    def reviewers(self) -> list[str]:
        return [r[0] for r in self.db.cursor().execute("SELECT DISTINCT reviewer FROM reviews ORDER BY 1").fetchall()]

    # -- the queue ----------------------------------------------------------------------------------------------
    def queue(self, *, me: str | None = None, label: str | None = None, status: str | None = None,
              generation_job: int | None = None, min_intended: float | None = None,
              max_intended: float | None = None, min_nearest: float | None = None, max_nearest: float | None = None,
              dup_group: int | None = None, near_copy: bool | None = None, reviewer: str | None = None,
              undecided_by_me: bool = False, sort: str = "oldest", limit: int = 48, offset: int = 0,
              blind: bool = False) -> tuple[int, list[dict[str, Any]]]:
        """Synthetic images with their review state, scores and `me`'s own decision, filtered and sorted.
        `undecided_by_me`: the reviewer's own queue. `reviewer`: images that reviewer has a live decision on.
        `blind`: `me` reads blind, so the state others made (status, counts, reviewers) is withheld on images `me`
        has not decided, and filters by status or by another reviewer match only images `me` has decided."""
        if sort not in SORTS:
            raise ReviewProblem(f"sort {sort!r}: choose one of {', '.join(SORTS)}")
        accepts = self.accepts_needed()
        where, params = where_given(
            ("i.label = $label", "label", label),
            (f"{STATUS_CASE} = $status", "status", status),
            ("i.generation_job = $job", "job", generation_job),
            ("sc.intended_prob >= $min_intended", "min_intended", min_intended),
            ("sc.intended_prob <= $max_intended", "max_intended", max_intended),
            ("sc.nearest_real_dist >= $min_nearest", "min_nearest", min_nearest),
            ("sc.nearest_real_dist <= $max_nearest", "max_nearest", max_nearest),
            ("sc.dup_group = $dup_group", "dup_group", dup_group),
            ("list_contains(coalesce(p.reviewers, []), $reviewer)", "reviewer", reviewer),
            ("coalesce(sc.near_copy, 0) = $near_copy", "near_copy", None if near_copy is None else float(near_copy)),
            ("mine.decision IS NULL", None, True if undecided_by_me else None),
            ("mine.decision IS NOT NULL", None,
             True if blind and (status is not None or reviewer not in (None, me)) else None),
        )
        params |= {"accepts": accepts, "me": me or "", "limit": limit, "offset": offset, "blind": blind}
        sql = QUEUE_SQL.format(where=where, order=SORTS[sort])
        cur = self.db.cursor()
        rows = cur.execute(sql, params).fetchall()
        if rows:
            total = rows[0][-1]
        else:  # an empty page: past the end (the total is still worth knowing), or nothing matches
            first = cur.execute(sql, {**params, "limit": 1, "offset": 0}).fetchone() if offset else None
            total = first[-1] if first else 0
        return total, [dict(zip(QUEUE_COLUMNS, r[:-1], strict=True)) for r in rows]

    def left_for(self, me: str) -> dict[str, int]:
        """Per class, the synthetic images `me` has not decided: what is left in their queue."""
        rows = self.db.cursor().execute(
            f"SELECT i.label, count(*) FILTER (mine.decision IS NULL) FROM images i LEFT JOIN ({LIVE_SQL}) mine "
            "ON mine.image_id = i.id AND mine.reviewer = ? WHERE i.source = 'synthetic' GROUP BY 1", [me]).fetchall()
        return dict(rows)

    # -- agreement ----------------------------------------------------------------------------------------------
    def live_decisions(self) -> list[tuple[str, str, str, str]]:
        """(image_id, class, reviewer, decision) of every live decision."""
        return self.db.cursor().execute(
            f"SELECT l.image_id, i.label, l.reviewer, l.decision FROM ({LIVE_SQL}) l JOIN images i ON i.id = "
            "l.image_id ORDER BY l.image_id, l.reviewer").fetchall()

