"""The blinded visual Turing test: can readers tell real lesions from generated ones?

A session samples images of the chosen classes at a real:synthetic ratio and hides each one behind a random item
key. Readers see only that key and re-encoded pixels (engine.api.turing), each reader in their own shuffled order,
and answer every item once: real or synthetic, and, when the session asks, the class and a 1-5 realism rating.
Answers are append-only events, as reviews are. The results (for admins, after the test) set the answers against
the truth: accuracy with an exact binomial test against 50% chance, sensitivity and specificity, agreement between
readers, and the synthetic images that fooled most of their readers. Nothing marks an image as "fooled" in the
database: it is derived from the answers whenever the results are asked for.
"""

from __future__ import annotations

import hashlib
import json
import random
import secrets
from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa

from engine.labels import CLASSES
from engine.store.db import Database, utc_now, where_given

SAYS = ("real", "synthetic")
REAL_SPLITS = ("train", "val")  # the real test split stays unseen, even by readers
MAX_ITEMS = 2000
MAX_SIDE = 512  # items are served at the smallest side among them, at most this
FOOLED_RULE = ("a synthetic image fooled its readers when more than half of its answers said 'real', with at least "
               "2 answers (at least 1 when the session has a single reader)")

SESSION_COLUMNS = ("id", "name", "created_by", "created_at", "classes", "n_images", "real_fraction", "ask_class",
                   "ask_realism", "seed", "image_side", "closed", "closed_by", "closed_at", "n_items", "n_answers",
                   "n_readers", "my_answered")
ANSWER_COLUMNS = ("item_key", "image_id", "source", "label", "reviewer", "says", "class_guess", "realism",
                  "created_at")


class TuringProblem(ValueError):
    """A Turing-test request that cannot be done as asked (the API answers 422 with the message)."""


class TuringConflict(TuringProblem):
    """A request that no longer fits the session's state: a closed session, a second answer (409)."""


class UnknownTuringSession(LookupError):
    """No session with that id (404)."""


def reader_order(session_id: int, reviewer: str, keys: Sequence[str]) -> list[str]:
    """The item keys in `reviewer`'s own order: a shuffle that is the same on every request (so "next" is stable)
    but differs between readers, so no order effect is shared by all of them."""
    return sorted(keys, key=lambda k: hashlib.sha256(f"{session_id}|{reviewer}|{k}".encode()).hexdigest())


def _spread(total: int, classes: list[str], rng: random.Random) -> dict[str, int]:
    """`total` split as evenly as possible over the classes (the remainder to classes drawn at random), so that
    per-class results rest on comparable counts and the class says nothing about the source."""
    counts = dict.fromkeys(classes, total // len(classes))
    for c in rng.sample(classes, total % len(classes)):
        counts[c] += 1
    return counts


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _share(hits: int, n: int) -> float | None:
    return hits / n if n else None


def answer_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy of real/synthetic answers and its exact two-sided binomial p-value against 50% chance;
    sensitivity (synthetic called synthetic), specificity (real called real); class-guess accuracy and mean
    realism for real and synthetic items where the session asked. None where there is nothing to rest on."""
    from scipy.stats import binomtest  # scipy: loaded when results are first asked for, not at server start

    n = len(rows)
    correct = sum(r["says"] == r["source"] for r in rows)
    synthetic = [r for r in rows if r["source"] == "synthetic"]
    real = [r for r in rows if r["source"] == "real"]
    guesses = [r for r in rows if r["class_guess"] is not None]
    return {
        "n": n, "correct": correct, "accuracy": _share(correct, n),
        "p_value": float(binomtest(correct, n, 0.5, alternative="two-sided").pvalue) if n else None,
        "n_synthetic": len(synthetic), "n_real": len(real),
        "sensitivity": _share(sum(r["says"] == "synthetic" for r in synthetic), len(synthetic)),
        "specificity": _share(sum(r["says"] == "real" for r in real), len(real)),
        "class_guesses": len(guesses),
        "class_accuracy": _share(sum(r["class_guess"] == r["label"] for r in guesses), len(guesses)),
        "realism_real": _mean([r["realism"] for r in real if r["realism"] is not None]),
        "realism_synthetic": _mean([r["realism"] for r in synthetic if r["realism"] is not None]),
    }


def fooled_images(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The synthetic items that fooled most of their readers (FOOLED_RULE), most convincing first."""
    n_readers = len({r["reviewer"] for r in rows})
    least = 1 if n_readers == 1 else 2
    per_item: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["source"] == "synthetic":
            per_item.setdefault(r["item_key"], []).append(r)
    fooled = []
    for key, answers in per_item.items():
        said_real = sum(a["says"] == "real" for a in answers)
        if len(answers) >= least and 2 * said_real > len(answers):
            fooled.append({"image_id": answers[0]["image_id"], "label": answers[0]["label"], "key": key,
                           "answers": len(answers), "said_real": said_real, "share_real": said_real / len(answers)})
    return sorted(fooled, key=lambda f: (-f["share_real"], -f["answers"], f["key"]))


def summarise(rows: list[dict[str, Any]], classes: Sequence[str]) -> dict[str, Any]:
    """Results of a session from its answers joined with the truth (ANSWER_COLUMNS): overall, per class, per
    reader; agreement on real/synthetic between readers (Cohen's kappa for two, Fleiss' for more, as for reviews),
    overall and per class; the fooled images."""
    from engine.metrics import review_agreement

    readers = sorted({r["reviewer"] for r in rows})
    as_decisions = [(r["item_key"], r["label"], r["reviewer"], r["says"]) for r in rows]
    return {
        "readers": readers,
        "overall": answer_stats(rows),
        "per_class": {c: answer_stats([r for r in rows if r["label"] == c]) for c in classes},
        "per_reviewer": {who: answer_stats([r for r in rows if r["reviewer"] == who]) for who in readers},
        "agreement": review_agreement(as_decisions, classes, SAYS, overall="overall"),
        "fooled": fooled_images(rows),
        "fooled_rule": FOOLED_RULE,
    }


class TuringQueries:
    def __init__(self, db: Database):
        self.db = db

    # -- sessions -----------------------------------------------------------------------------------------------
    def create(self, *, name: str, classes: list[str], n_images: int, real_fraction: float, ask_class: bool,
               ask_realism: bool, created_by: str, seed: int | None = None) -> dict[str, Any]:
        """Sample the session's images and hide each behind a random key, all in one transaction. Real images
        come from the real train/val splits, synthetic ones from every generated image whatever its review
        status; each source is spread evenly over the classes."""
        name = name.strip()
        classes = list(dict.fromkeys(classes))
        if not 1 <= len(name) <= 100:
            raise TuringProblem("name: 1 to 100 characters")
        unknown = [c for c in classes if c not in CLASSES]
        if not classes or unknown:
            raise TuringProblem(f"classes: choose one or more of {', '.join(CLASSES)}"
                                + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
        if not 1 <= n_images <= MAX_ITEMS:
            raise TuringProblem(f"number of images: 1 to {MAX_ITEMS}")
        if not 0.0 <= real_fraction <= 1.0:
            raise TuringProblem("real fraction: between 0 (all synthetic) and 1 (all real)")
        seed = secrets.randbits(63) if seed is None else seed
        rng = random.Random(seed)
        n_real = round(n_images * real_fraction)
        wanted = {"real": _spread(n_real, classes, rng), "synthetic": _spread(n_images - n_real, classes, rng)}
        with self.db.transaction() as cur:
            candidates = cur.execute(
                "SELECT id, source, label, least(width, height) FROM images WHERE list_contains($classes, label) "
                "AND duplicate_of IS NULL AND (source = 'synthetic' OR list_contains($splits, split)) ORDER BY id",
                {"classes": classes, "splits": list(REAL_SPLITS)}).fetchall()
            pools: dict[tuple[str, str], list[tuple[str, int]]] = {}
            for image_id, source, label, side in candidates:
                pools.setdefault((source, label), []).append((image_id, side))
            short = [f"{n} {source} {label} (there are {len(pools.get((source, label), []))})"
                     for source, per_class in wanted.items() for label, n in per_class.items()
                     if n > len(pools.get((source, label), []))]
            if short:
                raise TuringProblem(
                    f"not enough images for {n_images} at {real_fraction:.0%} real: the session needs "
                    f"{'; '.join(short)}. Ask for fewer images, change the real:synthetic ratio or the classes, or "
                    "import / generate more (real images come from the train and val splits)")
            items = [(image_id, side, source, label)
                     for source, per_class in wanted.items() for label, n in per_class.items()
                     for image_id, side in rng.sample(pools.get((source, label), []), n)]
            rng.shuffle(items)
            image_side = min(MAX_SIDE, *(side for _, side, _, _ in items))
            session_id = cur.execute(
                "INSERT INTO turing_sessions (name, created_by, created_at, classes, n_images, real_fraction, "
                "ask_class, ask_realism, seed, image_side) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
                [name, created_by, utc_now(), json.dumps(classes), n_images, real_fraction, ask_class, ask_realism,
                 seed, image_side]).fetchone()[0]
            cur.register("new_items", pa.table({
                "session_id": pa.array([session_id] * len(items), pa.int64()),
                "position": pa.array(range(1, len(items) + 1), pa.int32()),
                "item_key": [secrets.token_urlsafe(12) for _ in items],  # random: nothing to trace back
                "image_id": [i[0] for i in items], "source": [i[2] for i in items], "label": [i[3] for i in items]}))
            cur.execute("INSERT INTO turing_items BY NAME SELECT * FROM new_items")
            cur.unregister("new_items")
        return self.session(session_id)

    def sessions(self, *, me: str | None = None, session_id: int | None = None) -> list[dict[str, Any]]:
        """Sessions, newest first, with progress: items, answers, readers, and how many `me` has answered."""
        where, params = where_given(("s.id = $id", "id", session_id))
        rows = self.db.cursor().execute(f"""
            SELECT s.id, s.name, s.created_by, s.created_at, s.classes, s.n_images, s.real_fraction, s.ask_class,
                   s.ask_realism, s.seed, s.image_side, s.closed, s.closed_by, s.closed_at,
                   (SELECT count(*) FROM turing_items i WHERE i.session_id = s.id),
                   (SELECT count(*) FROM turing_answers a WHERE a.session_id = s.id),
                   (SELECT count(DISTINCT a.reviewer) FROM turing_answers a WHERE a.session_id = s.id),
                   (SELECT count(*) FROM turing_answers a WHERE a.session_id = s.id AND a.reviewer = $me)
            FROM turing_sessions s WHERE {where} ORDER BY s.id DESC""", params | {"me": me or ""}).fetchall()
        return [{**dict(zip(SESSION_COLUMNS, r, strict=True)), "classes": json.loads(r[4])} for r in rows]

    def session(self, session_id: int, *, me: str | None = None) -> dict[str, Any]:
        found = self.sessions(me=me, session_id=session_id)
        if not found:
            raise UnknownTuringSession(f"no Turing test session {session_id}: GET /turing/sessions lists them")
        return found[0]

    def close(self, session_id: int, closed_by: str) -> dict[str, Any]:
        """Stop taking answers (closing twice keeps the first closing)."""
        self.session(session_id)
        with self.db.transaction() as cur:
            cur.execute("UPDATE turing_sessions SET closed = TRUE, closed_by = ?, closed_at = ? "
                        "WHERE id = ? AND NOT closed", [closed_by, utc_now(), session_id])
        return self.session(session_id)

    # -- a reader's side ----------------------------------------------------------------------------------------
    def next_item(self, session_id: int, reviewer: str) -> dict[str, Any]:
        """`reviewer`'s first unanswered item in their own order, with the image's stored path (for the API to
        re-encode; never to be sent), or done=True when they have answered everything."""
        session = self.session(session_id, me=reviewer)
        if session["closed"]:
            raise TuringConflict(f"Turing test session {session_id} is closed: it takes no more answers")
        cur = self.db.cursor()
        paths = dict(cur.execute("SELECT t.item_key, i.path FROM turing_items t JOIN images i ON i.id = t.image_id "
                                 "WHERE t.session_id = ?", [session_id]).fetchall())
        answered = {r[0] for r in cur.execute("SELECT item_key FROM turing_answers WHERE session_id = ? AND "
                                              "reviewer = ?", [session_id, reviewer]).fetchall()}
        out = {"session": session, "total": len(paths), "answered": len(answered), "done": True, "key": None,
               "position": None, "path": None}
        for position, key in enumerate(reader_order(session_id, reviewer, list(paths)), start=1):
            if key not in answered:
                return out | {"done": False, "key": key, "position": position, "path": paths[key]}
        return out

    def answer(self, session_id: int, reviewer: str, key: str, says: str, class_guess: str | None = None,
               realism: int | None = None) -> dict[str, Any]:
        """Record `reviewer`'s one answer on an item. It is final: a second answer on the same item is refused."""
        if says not in SAYS:
            raise TuringProblem(f"says {says!r}: answer 'real' or 'synthetic'")
        with self.db.transaction() as cur:
            row = cur.execute("SELECT closed, ask_class, ask_realism, classes FROM turing_sessions WHERE id = ?",
                              [session_id]).fetchone()
            if row is None:
                raise UnknownTuringSession(f"no Turing test session {session_id}: GET /turing/sessions lists them")
            closed, ask_class, ask_realism, classes = row[0], row[1], row[2], json.loads(row[3])
            if closed:
                raise TuringConflict(f"Turing test session {session_id} is closed: it takes no more answers "
                                     "(an admin can start a new session)")
            if cur.execute("SELECT count(*) FROM turing_items WHERE session_id = ? AND item_key = ?",
                           [session_id, key]).fetchone()[0] == 0:
                raise TuringProblem(f"item {key!r} is not in session {session_id}: answer the item that "
                                    f"GET /turing/sessions/{session_id}/next gives you")
            if ask_class and class_guess is None:
                raise TuringProblem(f"this session asks for the class: send class_guess ({', '.join(classes)})")
            if not ask_class and class_guess is not None:
                raise TuringProblem("this session does not ask for the class: leave class_guess out")
            if class_guess is not None and class_guess not in classes:
                raise TuringProblem(f"class_guess {class_guess!r}: choose one of this session's classes "
                                    f"({', '.join(classes)})")
            if ask_realism and realism is None:
                raise TuringProblem("this session asks for a realism rating: send realism (1 to 5)")
            if not ask_realism and realism is not None:
                raise TuringProblem("this session does not ask for a realism rating: leave realism out")
            if realism is not None and not 1 <= realism <= 5:
                raise TuringProblem("realism: 1 (clearly artificial) to 5 (indistinguishable from real)")
            already = ("{reviewer} has already answered item {key}: answers are final (one per reader per item); "
                       "go on with GET /turing/sessions/{session_id}/next")
            if cur.execute("SELECT count(*) FROM turing_answers WHERE session_id = ? AND item_key = ? AND "
                           "reviewer = ?", [session_id, key, reviewer]).fetchone()[0]:
                raise TuringConflict(already.format(reviewer=reviewer, key=key, session_id=session_id))
            now = utc_now()
            try:
                cur.execute("INSERT INTO turing_answers VALUES (?, ?, ?, ?, ?, ?, ?)",
                            [session_id, key, reviewer, says, class_guess, realism, now])
            except duckdb.ConstraintException:  # the primary key holds the rule even if the check above is raced
                raise TuringConflict(already.format(reviewer=reviewer, key=key, session_id=session_id)) from None
            answered, total = cur.execute(
                "SELECT (SELECT count(*) FROM turing_answers WHERE session_id = $id AND reviewer = $who), "
                "(SELECT count(*) FROM turing_items WHERE session_id = $id)",
                {"id": session_id, "who": reviewer}).fetchone()
        return {"session_id": session_id, "key": key, "reviewer": reviewer, "says": says, "class_guess": class_guess,
                "realism": realism, "created_at": now, "answered": answered, "total": total}

    # -- results (admins) ---------------------------------------------------------------------------------------
    def answers(self, session_id: int) -> list[dict[str, Any]]:
        """Every answer of a session with the truth behind its item (ANSWER_COLUMNS), oldest first."""
        self.session(session_id)
        rows = self.db.cursor().execute("""
            SELECT a.item_key, t.image_id, t.source, t.label, a.reviewer, a.says, a.class_guess, a.realism,
                   a.created_at
            FROM turing_answers a JOIN turing_items t ON t.session_id = a.session_id AND t.item_key = a.item_key
            WHERE a.session_id = ? ORDER BY a.created_at, a.reviewer, a.item_key""", [session_id]).fetchall()
        return [dict(zip(ANSWER_COLUMNS, r, strict=True)) for r in rows]

    def items(self, session_id: int) -> list[dict[str, Any]]:
        """The session's items with the truth behind them, in stored order (for admins and tests, never readers)."""
        self.session(session_id)
        cur = self.db.cursor().execute("SELECT position, item_key, image_id, source, label FROM turing_items "
                                       "WHERE session_id = ? ORDER BY position", [session_id])
        return [dict(zip(("position", "key", "image_id", "source", "label"), r, strict=True)) for r in cur.fetchall()]

    def results(self, session_id: int) -> dict[str, Any]:
        session = self.session(session_id)
        return {"session": session, **summarise(self.answers(session_id), session["classes"])}
