"""Review decisions (append-only events), the acceptance policy, the review queue, and the live decisions that
reviewer agreement (engine.metrics.review_agreement) is computed from.

Nothing here updates or deletes a decision: an undo is a new event naming the one it takes back, and the current
state of an image is derived from the events (REVIEW_STATUS_SQL) under the policy in force.
"""

from __future__ import annotations

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
       {STATUS_CASE} AS status,
       coalesce(p.accepts, 0) AS accepts, coalesce(p.rejects, 0) AS rejects,
       coalesce(p.reviewers, []) AS reviewers, mine.decision AS my_decision, mine.seq AS my_seq,
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
                 "accepts", "rejects", "reviewers", "my_decision", "my_seq", "intended_prob", "nearest_real_dist",
                 "nearest_real_id", "near_copy", "dup_group", "sharpness", "predicted_class", "judge_prob",
                 "judge_class")
EVENT_COLUMNS = ("seq", "image_id", "label", "reviewer", "decision", "undoes", "reasons", "note", "created_at",
                 "undone_by")


class ReviewProblem(ValueError):
    """A decision that cannot be recorded as asked (the API answers 422 with the message)."""


class ReviewConflict(ReviewProblem):
    """A decision that no longer fits the current state, e.g. undoing a decision that was already taken back."""


class ReviewQueries:
    def __init__(self, db: Database):
        self.db = db

    # -- the policy ---------------------------------------------------------------------------------------------
    def accepts_needed(self) -> int:
        """k of the policy "k accepts and no reject" in force (1 until an admin sets it)."""
        row = self.db.cursor().execute("SELECT accepts_needed FROM review_policy ORDER BY seq DESC LIMIT 1").fetchone()
        return row[0] if row else 1

    def set_accepts_needed(self, k: int, changed_by: str) -> int:
        if not 1 <= k <= 20:
            raise ReviewProblem("accepts needed: 1 to 20")
        with self.db.transaction() as cur:
            cur.execute("INSERT INTO review_policy (accepts_needed, changed_by, created_at) VALUES (?, ?, ?)",
                        [k, changed_by, utc_now()])
        return k

    # -- decisions ----------------------------------------------------------------------------------------------
    def decide(self, image_ids: list[str], reviewer: str, decision: str, reasons: list[str] | None = None,
               note: str | None = None, request_id: str | None = None) -> list[dict[str, Any]]:
        """Record one decision by `reviewer` on each image, all or none. Rejections need a reason; "other" needs
        a note. Returns the new events. With a `request_id` the reviewer used before, nothing new is recorded
        and the events of that request are returned: a retry after a lost answer does not decide twice."""
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
        ids = list(dict.fromkeys(image_ids))
        now = utc_now()
        with self.db.transaction() as cur:
            if request_id is not None:
                done = cur.execute("SELECT seqs FROM review_requests WHERE reviewer = ? AND request_id = ?",
                                   [reviewer, request_id]).fetchone()
                if done:
                    previous = self.events(list(done[0]))
                    if [e["image_id"] for e in previous] != ids:
                        raise ReviewConflict(f"request {request_id} was already used for other images: send a "
                                             "new request id for a new decision")
                    return previous
            cur.register("decided_ids", pa.table({"image_id": ids}))
            found = dict(cur.execute("SELECT i.id, i.source FROM images i JOIN decided_ids d ON d.image_id = i.id"
                                     ).fetchall())
            cur.unregister("decided_ids")
            missing = [i for i in ids if i not in found]
            if missing:
                raise ReviewProblem(f"{len(missing)} unknown image id(s), e.g. {missing[0]}")
            real = [i for i in ids if found[i] != "synthetic"]
            if real:
                raise ReviewProblem(f"{len(real)} image(s) are real: only synthetic images are reviewed, e.g. "
                                    f"{real[0]}")
            seqs = [r[0] for r in cur.execute("SELECT nextval('review_seq') FROM range(?)", [len(ids)]).fetchall()]
            cur.register("new_reviews", pa.table({
                "seq": seqs, "image_id": ids, "reviewer": [reviewer] * len(ids), "decision": [decision] * len(ids),
                "undoes": pa.array([None] * len(ids), pa.int64()),
                "reasons": pa.array([reasons] * len(ids), pa.list_(pa.string())), "note": [note] * len(ids),
                "created_at": [now] * len(ids)}))
            cur.execute("INSERT INTO reviews BY NAME SELECT * FROM new_reviews")
            cur.unregister("new_reviews")
            if request_id is not None:
                cur.execute("INSERT INTO review_requests VALUES (?, ?, ?, ?)", [request_id, reviewer, seqs, now])
        return self.events(seqs)

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
                limit: int = 100, offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """Decision events, newest first, each with the image's class and the undo that took it back (if any)."""
        where, params = where_given(
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
              undecided_by_me: bool = False, sort: str = "oldest", limit: int = 48,
              offset: int = 0) -> tuple[int, list[dict[str, Any]]]:
        """Synthetic images with their review state, scores and `me`'s own decision, filtered and sorted.
        `undecided_by_me`: the reviewer's own queue. `reviewer`: images that reviewer has a live decision on."""
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
        )
        params |= {"accepts": accepts, "me": me or "", "limit": limit, "offset": offset}
        sql = QUEUE_SQL.format(where=where, order=SORTS[sort])
        cur = self.db.cursor()
        rows = cur.execute(sql, params).fetchall()
        if rows:
            total = rows[0][-1]
        else:  # an empty page: past the end (the total is still worth knowing), or nothing matches
            first = cur.execute(sql, {**params, "limit": 1, "offset": 0}).fetchone() if offset else None
            total = first[-1] if first else 0
        return total, [dict(zip(QUEUE_COLUMNS, r[:-1], strict=True)) for r in rows]

    # -- agreement ----------------------------------------------------------------------------------------------
    def live_decisions(self) -> list[tuple[str, str, str, str]]:
        """(image_id, class, reviewer, decision) of every live decision."""
        return self.db.cursor().execute(
            f"SELECT l.image_id, i.label, l.reviewer, l.decision FROM ({LIVE_SQL}) l JOIN images i ON i.id = "
            "l.image_id ORDER BY l.image_id, l.reviewer").fetchall()

