"""Review decisions under load, and across a kill -9 of the engine: decisions are the product's most valuable data
and must never be lost.

Load (the default): a real engine server with synthetic images and one account per reviewer, then
  1. 1 reviewer, no training job                      the baseline of this run
  2. 1 reviewer, while a selftest job logs a metric every step
  3. N reviewers at once (threads, each its own signed-in client), D decisions each, the job still logging
Every request is one decision (POST /reviews with one image: accept, or reject with a reason) and carries a note
naming it, so each acknowledged request can be found again. A reviewer decides the same image again and again
(the store keeps every decision as a new event), so the queue never runs dry. Afterwards the whole history is
read back (GET /reviews, paged) and must equal, event for event, what the server acknowledged. Prints errors,
acknowledged and stored counts, p50/p95/p99 latency and throughput per phase with ratios to the baseline, and the
metric points the job logged meanwhile. The scenario runs twice on fresh workspaces, "before" with a commit per
request (DERMAE_REVIEW_GROUP_COMMIT=1) and "after" with group commit (decisions that arrive together share one
transaction and fsync), and ends with the many-reviewer phase of both side by side. Exits 1 on any error or count
mismatch; asserts nothing about time.

Kill (--kill-server-after S): N reviewers write (odd-numbered ones in bulk requests of --batch images), the server
gets SIGKILL S seconds into the burst, a new server starts on the same workspace, and every acknowledged decision
must be there, nothing twice, and each bulk request whole or absent (a request cut off by the kill may have been
committed without its answer arriving: that is allowed, half of one is not). Exits 1 if anything was lost.

    python bench/review_load.py [--reviewers 20 --decisions 500]
    python bench/review_load.py --kill-server-after 3 [--reviewers 8 --batch 5]
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.client import ApiError, Client, ServerNotFound  # noqa: E402
from tests.processes import RunningServer, review_server, start_server, wait_until  # noqa: E402

# Reasons a rejection may give without a note (engine.store.reviews.REASONS less "other", which needs one).
REJECT_REASONS = ("unrealistic_texture", "wrong_class_features", "artifact", "duplicate", "near_copy")
CLASSES_SEEDED = ("akiec", "bcc", "df", "vasc")


@dataclass
class Request:
    """One POST /reviews as sent: its note is unique, so the events it created can be told apart in the store."""

    reviewer: str
    note: str
    image_ids: list[str]
    decision: str
    reasons: list[str]


@dataclass
class Ack:
    """A request the server answered 2xx, with the events it returned as (seq, image id): the decisions that must
    never be lost. (A bulk answer lists its events newest first, not in the order the images were sent.)"""

    request: Request
    events: list[tuple[int, str]]

    @property
    def seqs(self) -> list[int]:
        return [seq for seq, _ in self.events]


@dataclass
class Burst:
    """What the reviewers of one burst sent and got back."""

    acks: list[Ack] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # anything that is not a 2xx with the expected events
    cut_off: list[Request] = field(default_factory=list)  # in flight when the server was killed: no answer
    unfinished: int = 0  # reviewers that did not get through all their requests (kill mode: the kill was mid-burst)
    seconds: float = 0.0

    @property
    def decisions(self) -> int:
        return sum(len(a.seqs) for a in self.acks)

    def merge(self, other: Burst) -> None:
        self.acks += other.acks
        self.latencies_ms += other.latencies_ms
        self.errors += other.errors
        self.cut_off += other.cut_off
        self.unfinished += other.unfinished


@dataclass
class Check:
    """The store read back against the acknowledgements."""

    acknowledged: int  # decisions (events) acknowledged
    found: int  # of those, stored with the image, reviewer, decision and note they were acknowledged with
    stored: int  # events in the store altogether (GET /reviews total)
    listed: int  # events the paged history returned
    lost: list[str]  # acknowledged seqs missing or stored differently
    duplicates: list[str]  # a seq listed twice, or one request's image recorded twice
    committed_unacknowledged: int  # events of requests cut off by a kill that were committed whole (allowed)
    inconsistent: list[str]  # partial bulk requests, events nobody sent

    @property
    def exact(self) -> bool:
        """Load mode: the store holds exactly what was acknowledged."""
        return self.consistent and self.committed_unacknowledged == 0 and self.stored == self.acknowledged

    @property
    def consistent(self) -> bool:
        """Kill mode: nothing acknowledged lost, nothing twice, no half request."""
        return (not self.lost and not self.duplicates and not self.inconsistent and self.found == self.acknowledged
                and self.listed == self.stored)


def reviewer_names(n: int) -> list[str]:
    return [f"rev{i:02d}" for i in range(n)]


def start_review_server(workspace: Path, reviewers: int, images: int, group_commit: int | None = None
                        ) -> RunningServer:
    """A real server with `images` synthetic images spread over a few classes and accounts rev00.. (reviewers);
    `group_commit`: the server's DERMAE_REVIEW_GROUP_COMMIT (1: a commit per request), else its default."""
    per_class = {c: images // len(CLASSES_SEEDED) + (k < images % len(CLASSES_SEEDED))
                 for k, c in enumerate(CLASSES_SEEDED)}
    env = {"DERMAE_REVIEW_GROUP_COMMIT": str(group_commit)} if group_commit else None
    return review_server(workspace, dict.fromkeys(reviewer_names(reviewers), "reviewer"), per_class, env)


def start_training(server: RunningServer, step_seconds: float = 0.02) -> int:
    """Submit a selftest job that logs a metric every step and outlasts any burst; returns its id once running.
    (review_server's seeding cancelled its own job, which may still be ending: this one waits its turn.)"""
    client = server.client()
    job = client.submit_job("selftest", {"steps": 1_000_000, "step_seconds": step_seconds})
    wait_until(lambda: client.job(job.id).state == "running", timeout=120, what=f"selftest job {job.id} running")
    return job.id


def metric_steps(server: RunningServer, job_id: int) -> list[int]:
    """The steps of the selftest job's metric points stored so far (one per step: 1, 2, ... with no gap)."""
    return [step for series in server.client().job_metrics(job_id, "total") for step in series.steps]


def _requests(name: str, index: int, image_ids: list[str], count: int, batch: int, tag: str) -> list[Request]:
    """Reviewer `index`'s requests: mostly accepts, every third a rejection with a reason, images taken round the
    whole set from an offset of their own (so reviewers overlap on images, and each decides each image often)."""
    out = []
    for i in range(count):
        start = index * 7 + i * batch
        ids = [image_ids[(start + k) % len(image_ids)] for k in range(batch)]
        reject = (i + index) % 3 == 0
        out.append(Request(name, f"{tag}{name}#{i}", ids, "reject" if reject else "accept",
                           [REJECT_REASONS[i % len(REJECT_REASONS)]] if reject else []))
    return out


def _send(client: Client, request: Request, burst: Burst, killed: threading.Event) -> bool:
    """Send one request, record its acknowledgement or error; False when the server is gone (stop sending)."""
    start = time.perf_counter()
    try:
        events = client.decide(request.image_ids, request.decision, request.reasons, request.note)
    except ServerNotFound as e:  # transport failure: no answer at all
        if killed.is_set():
            burst.cut_off.append(request)
            return False
        burst.errors.append(f"{request.note}: {e}")
        return True
    except ApiError as e:
        burst.errors.append(f"{request.note}: {e}")
        return True
    burst.latencies_ms.append((time.perf_counter() - start) * 1000)
    got = sorted((e.image_id, e.reviewer, e.decision, e.note) for e in events)
    want = sorted((i, request.reviewer, request.decision, request.note) for i in request.image_ids)
    if got != want:
        burst.errors.append(f"{request.note}: acknowledged {got}, sent {want}")
    burst.acks.append(Ack(request, [(e.seq, e.image_id) for e in events]))
    return True


def run_burst(clients: dict[str, Client], image_ids: list[str], requests: int, *, batch: int = 1,
              tag: str = "", kill: Callable[[], None] | None = None, kill_after: float | None = None) -> Burst:
    """Every reviewer (one thread and one signed-in client each) sends `requests` requests at once, each deciding
    `batch` images if the reviewer is odd-numbered and one otherwise; notes start with `tag` (unique per burst).
    With `kill`, it is called `kill_after` seconds into the burst (once something was acknowledged), and requests
    that then get no answer are cut off, not errors: they were never acknowledged."""
    plans = {name: _requests(name, k, image_ids, requests, batch if k % 2 else 1, tag)
             for k, name in enumerate(clients)}
    bursts = {name: Burst() for name in clients}
    killed = threading.Event()
    ready = threading.Barrier(len(clients) + 1)

    def reviewer(name: str) -> None:
        ready.wait()
        for request in plans[name]:
            if not _send(clients[name], request, bursts[name], killed):
                bursts[name].unfinished = 1
                return

    threads = [threading.Thread(target=reviewer, args=(name,), name=f"reviewer-{name}") for name in clients]
    for thread in threads:
        thread.start()
    ready.wait()
    start = time.perf_counter()
    if kill is not None:
        deadline = start + (kill_after or 0)
        while (time.perf_counter() < deadline or not any(b.acks for b in bursts.values())) and any(
                t.is_alive() for t in threads):
            time.sleep(0.01)
        killed.set()
        kill()
    for thread in threads:
        thread.join()
    total = Burst(seconds=time.perf_counter() - start)
    for burst in bursts.values():
        total.merge(burst)
    return total


def stored_events(client: Client, page: int = 1000) -> tuple[int, list]:
    """(total, every review event) through GET /reviews, paged newest first (nothing writes meanwhile)."""
    first = client.review_history(limit=page, offset=0)
    events = list(first.items)
    while len(events) < first.total:
        items = client.review_history(limit=page, offset=len(events)).items
        if not items:
            break
        events += items
    return first.total, events


def check_store(client: Client, acks: list[Ack], cut_off: Sequence[Request] = ()) -> Check:
    """Read the whole history back and hold it against the acknowledgements: each acknowledged seq stored as
    acknowledged, no seq twice, no request's image twice, and events of no other request than those cut off by a
    kill — and of those, all of a request's events or none."""
    total, events = stored_events(client)
    by_seq = {e.seq: e for e in events}
    duplicates = [f"seq {s} listed {n} times" for s, n in Counter(e.seq for e in events).items() if n > 1]
    duplicates += [f"{note}: image {image[:12]} recorded {n} times"
                   for (note, image), n in Counter((e.note, e.image_id) for e in events).items() if n > 1]
    lost, found = [], 0
    for ack in acks:
        r = ack.request
        for seq, image_id in ack.events:
            e = by_seq.get(seq)
            if e is not None and (e.image_id, e.reviewer, e.decision, e.note) == (image_id, r.reviewer, r.decision,
                                                                                  r.note):
                found += 1
            else:
                lost.append(f"{r.note}: seq {seq} ({'stored as ' + repr(e) if e else 'missing'})")
    per_note = Counter(e.note for e in events)
    acked = {a.request.note: len(a.seqs) for a in acks}
    cut = {r.note: len(r.image_ids) for r in cut_off}
    inconsistent, committed_unacked = [], 0
    for note, n in per_note.items():
        if note in acked:
            if n != acked[note]:
                inconsistent.append(f"{note}: {n} events stored, {acked[note]} acknowledged")
        elif note in cut:
            if n == cut[note]:
                committed_unacked += n
            else:
                inconsistent.append(f"{note}: {n} of its {cut[note]} decisions stored (a partial bulk request)")
        else:
            inconsistent.append(f"{note}: {n} events nobody sent")
    return Check(acknowledged=sum(len(a.seqs) for a in acks), found=found, stored=total, listed=len(events),
                 lost=lost, duplicates=duplicates, committed_unacknowledged=committed_unacked,
                 inconsistent=inconsistent)


def percentiles(latencies_ms: list[float]) -> tuple[float, float, float]:
    if not latencies_ms:
        return float("nan"), float("nan"), float("nan")
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99])
    return float(p50), float(p95), float(p99)


@dataclass
class LoadResult:
    phases: list[tuple[str, int, Burst]]  # (what, reviewers, burst)
    check: Check
    metric_points: int  # logged by the job during the main burst
    metric_steps_whole: bool  # the job's metric steps are 1..n, each once: no point lost or doubled under load
    job_running: bool  # the job was still running at the end (it logged throughout)
    errors: list[str]

    @property
    def ok(self) -> bool:
        return not self.errors and self.check.exact


def load_run(workspace: Path, *, reviewers: int = 20, decisions: int = 500, baseline: int = 200, images: int = 60,
             step_seconds: float = 0.02, group_commit: int | None = None) -> LoadResult:
    """The load scenario (module docstring) on a fresh workspace; every phase's decisions are checked at the end."""
    server = start_review_server(workspace, reviewers, images, group_commit)
    try:
        image_ids = [i for ids in server.ids.values() for i in ids]
        clients = {name: server.signed_in(name) for name in reviewer_names(reviewers)}
        one = dict(list(clients.items())[:1])
        warm_up = run_burst(clients, image_ids, 5, tag="warm/")  # first connections and queries: not measured
        phases = [("1 reviewer, no training job (baseline)", 1, run_burst(one, image_ids, baseline, tag="base/"))]
        job_id = start_training(server, step_seconds)
        phases.append(("1 reviewer, training job logging", 1, run_burst(one, image_ids, baseline, tag="job/")))
        before = len(metric_steps(server, job_id))
        phases.append((f"{reviewers} reviewers, training job logging", reviewers,
                       run_burst(clients, image_ids, decisions, tag="load/")))
        time.sleep(0.5)  # the job reports every 0.2 s (FAST_JOB_ENV): let the burst's last points arrive
        steps = metric_steps(server, job_id)
        whole = sorted(steps) == list(range(1, len(steps) + 1))
        job_running = server.client().job(job_id).state == "running"
        everything = warm_up
        for _, _, burst in phases:
            everything.merge(burst)
        check = check_store(server.client(), everything.acks)
        errors = everything.errors + ([] if job_running else [f"the training job {job_id} stopped during the run"])
        errors += [] if whole else [f"the job's metric steps have gaps or repeats: {len(steps)} points, "
                                    f"steps {min(steps, default=0)}..{max(steps, default=0)}"]
        server.client().cancel_job(job_id)
    finally:
        server.stop()
    return LoadResult(phases, check, len(steps) - before, whole, job_running, errors)


@dataclass
class KillResult:
    burst: Burst
    check: Check
    after_restart_seq: int | None  # seq of a decision made after the restart (the sequence must have survived)
    max_seq_before: int
    errors: list[str]

    @property
    def ok(self) -> bool:
        return (not self.errors and self.check.consistent and self.burst.unfinished > 0
                and self.after_restart_seq is not None and self.after_restart_seq > self.max_seq_before)


def kill_run(workspace: Path, *, reviewers: int = 8, decisions: int = 10_000, batch: int = 5, kill_after: float = 3,
             images: int = 60, training: bool = True, step_seconds: float = 0.02) -> KillResult:
    """The kill scenario (module docstring): burst, SIGKILL, a new server on the same workspace, check."""
    server = start_review_server(workspace, reviewers, images)
    try:
        image_ids = [i for ids in server.ids.values() for i in ids]
        if training:
            start_training(server, step_seconds)
        clients = {name: server.signed_in(name) for name in reviewer_names(reviewers)}
        burst = run_burst(clients, image_ids, decisions, batch=batch, kill_after=kill_after,
                          kill=lambda: server.stop(signal.SIGKILL))
    finally:
        server.stop(signal.SIGKILL)
    restarted = start_server(workspace)
    try:
        check = check_store(restarted.client(), burst.acks, burst.cut_off)
        max_seq = max((s for a in burst.acks for s in a.seqs), default=0)
        _, events = stored_events(restarted.client())
        max_seq = max([max_seq, *(e.seq for e in events)])
        errors = list(burst.errors)
        try:
            [event] = restarted.signed_in(reviewer_names(1)[0]).decide([image_ids[0]], "accept", note="after")
            after = event.seq
        except (ApiError, ServerNotFound) as e:
            errors.append(f"a decision after the restart failed: {e}")
            after = None
        for state in ("running", "queued"):  # the recovered training job: end it before stopping the server
            for job in restarted.client().jobs(state=state).items:
                restarted.client().cancel_job(job.id)
    finally:
        restarted.stop()
    return KillResult(burst, check, after, max_seq, errors)


def print_errors(errors: list[str], what: str = "errors") -> None:
    print(f"{what}: {len(errors)}")
    for line in errors[:20]:
        print(f"  {line}")
    if len(errors) > 20:
        print(f"  ... and {len(errors) - 20} more")


def print_load(result: LoadResult, step_seconds: float) -> None:
    base = result.phases[0][2]
    base_p50 = percentiles(base.latencies_ms)[0]
    base_rate = base.decisions / base.seconds
    print(f"\n{'phase':<40} {'decisions':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'per s':>7} "
          f"{'p50 x':>6} {'rate x':>6}")
    for what, _, burst in result.phases:
        p50, p95, p99 = percentiles(burst.latencies_ms)
        rate = burst.decisions / burst.seconds
        print(f"{what:<40} {burst.decisions:>9} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f} {rate:>7.0f} "
              f"{p50 / base_p50:>6.2f} {rate / base_rate:>6.2f}")
    main = result.phases[-1][2]
    print(f"\nmetric points the job logged during the {main.seconds:.1f}s burst: {result.metric_points} "
          f"({result.metric_points / main.seconds:.0f}/s; {1 / step_seconds:.0f}/s asked); steps 1..n each once: "
          f"{result.metric_steps_whole}; job still running: {result.job_running}")
    c = result.check
    print(f"acknowledged {c.acknowledged} decisions; stored {c.stored} (history listed {c.listed}), found as "
          f"acknowledged {c.found}; lost {len(c.lost)}, duplicates {len(c.duplicates)}, inconsistent "
          f"{len(c.inconsistent)} -> {'exact' if c.exact else 'MISMATCH'}")
    print_errors(result.errors)
    for what, problems in (("lost", c.lost), ("duplicates", c.duplicates), ("inconsistent", c.inconsistent)):
        if problems:
            print_errors(problems, what)


def print_kill(result: KillResult) -> None:
    b, c = result.burst, result.check
    print(f"\nkilled {b.seconds:.1f}s into the burst; {len(b.cut_off)} request(s) cut off without an answer, "
          f"{b.unfinished} reviewer(s) stopped mid-burst")
    print(f"{c.acknowledged} acknowledged, {c.found} found after restart, {len(c.lost)} lost")
    print(f"committed but unacknowledged (cut off after the commit, whole): {c.committed_unacknowledged}; "
          f"duplicates {len(c.duplicates)}; partial or unknown requests {len(c.inconsistent)}; stored {c.stored}")
    print(f"a decision after the restart got seq {result.after_restart_seq} (highest before: {result.max_seq_before})")
    print_errors(result.errors)
    for what, problems in (("lost", c.lost), ("duplicates", c.duplicates), ("inconsistent", c.inconsistent)):
        if problems:
            print_errors(problems, what)
    if not b.unfinished:
        print("the kill came after the burst had ended: nothing was tested (raise --decisions or lower "
              "--kill-server-after)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviewers", type=int, default=None, help="concurrent reviewers (20; kill mode: 8)")
    parser.add_argument("--decisions", type=int, default=None,
                        help="requests per reviewer (500; kill mode: 10,000, cut short by the kill)")
    parser.add_argument("--baseline", type=int, default=200, help="decisions of the 1-reviewer phases")
    parser.add_argument("--images", type=int, default=60, help="synthetic images to decide on")
    parser.add_argument("--step-seconds", type=float, default=0.02, help="the selftest job's time per step")
    parser.add_argument("--kill-server-after", type=float, default=None, metavar="S",
                        help="kill mode: SIGKILL the server S seconds into the burst, restart, check")
    parser.add_argument("--batch", type=int, default=5, help="kill mode: images per bulk request (odd reviewers)")
    parser.add_argument("--no-training", action="store_true", help="kill mode: no training job meanwhile")
    args = parser.parse_args()
    if args.kill_server_after is not None:
        with tempfile.TemporaryDirectory() as tmp:
            workspace = Path(tmp) / "ws"
            result = kill_run(workspace, reviewers=args.reviewers or 8, decisions=args.decisions or 10_000,
                              batch=args.batch, kill_after=args.kill_server_after, images=args.images,
                              training=not args.no_training, step_seconds=args.step_seconds)
            print_kill(result)
            sys.exit(0 if result.ok else 1)
    results = {}
    for what, group_commit in (("before: a commit per request", 1), ("after: group commit", None)):
        with tempfile.TemporaryDirectory() as tmp:
            print(f"\n== {what}")
            results[what] = load_run(Path(tmp) / "ws", reviewers=args.reviewers or 20,
                                     decisions=args.decisions or 500, baseline=args.baseline, images=args.images,
                                     step_seconds=args.step_seconds, group_commit=group_commit)
            print_load(results[what], args.step_seconds)
    print_before_after(results)
    sys.exit(0 if all(r.ok for r in results.values()) else 1)


def print_before_after(results: dict[str, LoadResult]) -> None:
    """The many-reviewer phase of each run side by side, with the after/before ratios."""
    rows = {what: (percentiles(r.phases[-1][2].latencies_ms), r.phases[-1][2].decisions / r.phases[-1][2].seconds)
            for what, r in results.items()}
    print(f"\n{results[next(iter(results))].phases[-1][0]}, one run:")
    print(f"{'':<32} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'decisions/s':>12}")
    for what, ((p50, p95, p99), rate) in rows.items():
        print(f"{what:<32} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f} {rate:>12.0f}")
    (before, before_rate), (after, after_rate) = rows.values()
    print(f"{'after / before':<32} {after[0] / before[0]:>8.2f} {after[1] / before[1]:>8.2f} "
          f"{after[2] / before[2]:>8.2f} {after_rate / before_rate:>12.2f}")


if __name__ == "__main__":
    main()
