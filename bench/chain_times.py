"""Wall times of the 64 px profile from a fresh workspace, as a new user meets them, and the judge's verdict.

    python bench/chain_times.py generator --workspace WS [--profile cpu64]
        `dermae demo --no-studio` on WS (which must not exist yet): the default data is imported and the generator
        chain starts. Prints when the first synthetic lesion could be opened in the studio (from the command's
        start), when each job ended, the whole chain's time, and the judge's per-class table.
    python bench/chain_times.py train --workspace WS [--profile cpu64] [--dataset ID] [--seeds N]
                                      [--real-fraction F]
        `dermae train` on WS after the generator chain, with WS's training caches removed first (arrays, teacher
        targets): N seeds (default one) of the train chain. Without --dataset, a version auto-curated from the
        scores is frozen.

Budgets (issue 21, this 2-core machine): first synthetic lesion <= 15 min, generator chain <= 60 min, train
chain <= 75 min. Run alone: another process on the two cores makes every figure meaningless.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.client import Client, ServerNotFound  # noqa: E402
from engine.launcher import Launcher  # noqa: E402
from engine.settings import DEFAULT_HOST, Settings  # noqa: E402

DERMAE = str(Path(sys.executable).with_name("dermae"))
BUDGETS_MIN = {"first synthetic lesion": 15, "generator chain": 60, "train chain": 75}


def epoch(moment: datetime) -> float:
    return moment.replace(tzinfo=moment.tzinfo or UTC).timestamp()  # the engine's times are UTC


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def verdict(name: str, seconds: float) -> str:
    budget = BUDGETS_MIN[name]
    return f"{name}: {minutes(seconds)} (budget {budget} min: {'met' if seconds <= budget * 60 else 'MISSED'})"


def connect(settings: Settings, deadline: float) -> Client:
    while time.time() < deadline:
        try:
            client = Client.from_settings(settings, timeout=60)
            client.health()
            return client
        except (ServerNotFound, OSError):
            time.sleep(0.5)
    raise SystemExit("the engine did not come up")


def job_table(jobs, start: float) -> None:
    print(f"{'job':>5}  {'step':<16} {'kind':<16} {'state':<10} {'ran':>9} {'ended at':>9}")
    for job in sorted(jobs, key=lambda j: j.id):
        ran = (job.finished_at - job.started_at).total_seconds() if job.started_at and job.finished_at else None
        ended = epoch(job.finished_at) - start if job.finished_at else None
        print(f"{job.id:>5}  {job.pipeline_key or '':<16} {job.kind:<16} {job.state.value:<10} "
              f"{minutes(ran) if ran else '–':>9} {minutes(ended) if ended else '–':>9}")


def judge_table(client: Client) -> None:
    scores = [j for j in client.jobs(kind="score", state="succeeded", limit=50).items
              if isinstance(j.result, dict) and j.result.get("per_class")]
    generate = {j.id for j in client.jobs(kind="generate", limit=500).items}
    report = next((j.result for j in scores if j.result["generation_job"] in generate), None)
    if report is None:
        print("no judged generate job")
        return
    print(f"\njudge: {report['judge_arch']} (real-val macro-F1 {report['judge_val_macro_f1']:.3f}); selector: "
          f"{report['selector']}; generate job {report['generation_job']}")
    nan = float("nan")
    print(f"{'class':<6} {'n':>4} {'judged':>7} {'ceiling':>8} {'x0.8':>5} {'prec':>5} {'(real)':>6} {'rec':>5} "
          f"{'(real)':>6} {'FD':>7} {'floor':>7} {'at n':>5} {'copies':>6} {'C2ST acc [95% CI]':>22}  bars")
    for cls, row in report["per_class"].items():
        c2st, real = row.get("c2st"), row.get("real_vs_real", {})
        told = f"{c2st['accuracy']:.2f} [{c2st['ci95'][0]:.2f}, {c2st['ci95'][1]:.2f}] n={c2st['n_per_side']}" \
            if c2st else "–"
        bars = " ".join(f"{name}:{'ok' if met else 'NO'}" for name, met in row["bars"].items())
        print(f"{cls:<6} {row['n']:>4} {row['intended_rate']:>7.2f} {row['real_val_recall']:>8.2f} "
              f"{0.8 * row['real_val_recall']:>5.2f} {row.get('precision', nan):>5.2f} "
              f"{real.get('precision', nan):>6.2f} "
              f"{row.get('recall', nan):>5.2f} {real.get('recall', nan):>6.2f} {row.get('fd', nan):>7.1f} "
              f"{row.get('fd_floor', nan):>7.1f} {row.get('fd_at_n', 0):>5} {row['near_copies']:>6} "
              f"{told:>22}  {bars}")


def generator(args: argparse.Namespace) -> None:
    if args.workspace.exists():
        raise SystemExit(f"{args.workspace} exists: the figures are for a fresh workspace")
    settings = Settings.from_env(args.workspace)
    env = {**os.environ, "DERMAE_WORKSPACE": str(args.workspace)}
    start = time.time()
    command = [DERMAE, "demo", "--no-studio", "--port", "0"] + (["--profile", args.profile] if args.profile else [])
    demo = subprocess.Popen(command, env=env, start_new_session=True)
    try:
        client = connect(settings, start + 300)
        first = None
        while True:
            if first is None and sum(client.stats().synthetic["pending"].values()):
                first = time.time() - start
                print(verdict("first synthetic lesion", first), flush=True)
            jobs = client.jobs(limit=200).items
            if jobs and all(j.state.value in ("succeeded", "failed", "cancelled") for j in jobs):
                break
            if demo.poll() is not None:
                raise SystemExit(f"dermae demo exited with {demo.returncode}")
            time.sleep(5)
        chain = max(epoch(j.finished_at) for j in jobs) - start
        print(verdict("generator chain", chain))
        job_table(jobs, start)
        judge_table(client)
    finally:
        os.killpg(demo.pid, signal.SIGINT)
        demo.wait(60)


def train(args: argparse.Namespace) -> None:
    settings = Settings.from_env(args.workspace)
    shutil.rmtree(args.workspace / "cache", ignore_errors=True)  # arrays and teacher targets: as on a fresh run
    launcher = Launcher()
    try:
        launcher.start_server(settings, DEFAULT_HOST, 0)
        if args.dataset is None:
            with Client.from_settings(settings, timeout=60) as client:
                args.dataset = client.freeze_dataset(
                    "curated-scores", "frozen by bench/chain_times.py: auto-curated from the scores (selector's "
                    "intended >= 0.5, no near-copies, one per duplicate group)", selection="scores",
                    min_intended_prob=0.5).id
        start = time.time()
        result = subprocess.run([DERMAE, "train", "--profile", args.profile or "cpu64", "--dataset", args.dataset,
                                 "--seeds", str(args.seeds), "--real-fraction", str(args.real_fraction)],
                                env={**os.environ, "DERMAE_WORKSPACE": str(args.workspace)})
        took = time.time() - start
        print((verdict("train chain", took) if args.seeds == 1 else f"train chain, {args.seeds} seeds: {minutes(took)}")
              + f" (exit {result.returncode}, dataset {args.dataset}, real fraction {args.real_fraction})")
    finally:
        launcher.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("chain", choices=("generator", "train"))
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--profile", help="Default: what `dermae demo` picks for the data (generator), cpu64 (train).")
    parser.add_argument("--dataset", help="train: the dataset version to train on.")
    parser.add_argument("--seeds", type=int, default=1, help="train: seeds of the run (`dermae train --seeds`).")
    parser.add_argument("--real-fraction", type=float, default=1.0, help="train: `dermae train --real-fraction`.")
    args = parser.parse_args()
    args.workspace = args.workspace.resolve()
    (generator if args.chain == "generator" else train)(args)


if __name__ == "__main__":
    main()
