"""The accuracy table of the method on the real test split: what synthetic data, curation, MAE pre-training and
distillation each buy, for both students, with the same training budget per arm.

Arms (issue 5): real only / + uncurated synthetic (every generated image) / + curated synthetic / + curated
synthetic + MAE teacher + KD. Here "curated" is automatic — the score job's numbers (intended-class probability,
no near-copies, one image per duplicate group) stand in for the clinicians — so the value of curation itself is
measured. Needs a workspace where the generator chain has run (dermae pipeline generator).

    python bench/train_arms.py --workspace WS [--profile tiny] [--min-intended 0.5] [--arms uncurated,curated]
                               [--students efficientnet_b0]

`--arms` runs some of them (the real-only and the curated + MAE + KD arms are also what `make train` runs, so a
workspace that has run it needs only the other two); MAE and the teacher are trained only for the KD arm.
`--students` runs some of the profile's students (those whose settings changed since the last table).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.client import Client, ServerNotFound  # noqa: E402
from engine.recipes.registry import checked_profile  # noqa: E402
from engine.schemas import PipelineStep, PipelineSubmit  # noqa: E402
from engine.settings import Settings  # noqa: E402

ARMS = {  # key: (label, dataset selection, use_synthetic, use_teacher)
    "real": ("real only", "scores", False, False),
    "uncurated": ("+ uncurated synthetic", "all", True, False),
    "curated": ("+ curated synthetic", "scores", True, False),
    "curated_kd": ("+ curated synthetic + MAE + KD", "scores", True, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--min-intended", type=float, default=0.5)
    parser.add_argument("--arms", default=",".join(ARMS), help=f"Comma-separated, from {', '.join(ARMS)}.")
    parser.add_argument("--students", help="Comma-separated architectures; default: all of the profile's.")
    args = parser.parse_args()
    unknown = set(args.arms.split(",")) - set(ARMS)
    if unknown:
        parser.error(f"unknown arms {sorted(unknown)}: choose from {', '.join(ARMS)}")
    arms = {a: ARMS[a] for a in args.arms.split(",")}
    profile = checked_profile(args.profile)
    archs = [s["arch"] for s in profile.students]
    chosen = args.students.split(",") if args.students else archs
    if set(chosen) - set(archs):
        parser.error(f"unknown students {sorted(set(chosen) - set(archs))}: profile {args.profile} has "
                     f"{', '.join(archs)}")
    students = [s for s in profile.students if s["arch"] in chosen]
    server = None
    try:
        client = Client.from_settings(Settings.from_env(args.workspace), timeout=60)
        client.health()
    except ServerNotFound:
        from tests.processes import start_server

        server = start_server(args.workspace)
        client = server.client()
    try:
        versions = {sel: client.freeze_dataset(f"bench-{sel}", "bench/train_arms.py", selection=sel,
                                               min_intended_prob=args.min_intended).id for sel in ("scores", "all")}
        for sel, vid in versions.items():
            counts = client.dataset(vid).counts.get("synthetic", {}).get("train", {})
            print(f"dataset {vid}: {sum(counts.values())} synthetic images ({sel}) {counts}")
        steps = [
            PipelineStep(key="mae", kind="pretrain_mae", params=profile.params("pretrain_mae",
                                                                               dataset=versions["scores"])),
            PipelineStep(key="teacher", kind="finetune", after_keys=["mae"],
                         params=profile.params("finetune", dataset=versions["scores"])),
        ] if any(teacher for *_, teacher in arms.values()) else []
        for student in students:
            for arm, (label, sel, synthetic, teacher) in arms.items():
                key = f"{arm}.{student['arch']}"
                steps.append(PipelineStep(key=key, kind="distill", after_keys=["teacher"] if teacher else [],
                                          params=profile.params("distill", dataset=versions[sel], **student,
                                                                use_synthetic=synthetic, use_teacher=teacher)))
                steps.append(PipelineStep(key=f"{key}.eval", kind="evaluate", after_keys=[key],
                                          params={"arm": f"{student['arch']}: {label}"}))
        start = time.perf_counter()
        run = client.submit_pipeline(PipelineSubmit(name=f"bench-arms-{args.profile}", steps=steps))
        print(f"pipeline {run.id}: {len(run.jobs)} jobs")
        jobs = [client.wait_for_job(j.id, timeout=6 * 3600) for j in run.jobs]
        print(f"finished in {(time.perf_counter() - start) / 60:.1f} min")
        failed = [j for j in jobs if j.state != "succeeded"]
        for job in failed:
            print(f"job {job.id} {job.pipeline_key} {job.state.value}: {job.error}")
        evals = [j for j in jobs if j.kind == "evaluate" and j.result]
        print(f"\n{'arm':<56}{'macro-F1':>9}{'1 view':>8}{'bal.acc':>9}{'acc':>7}{'AUC':>7}{'params':>9}"
              f"{'GFLOPs':>8}{'ms':>7}")
        for job in evals:
            r = job.result
            print(f"{r['arm']:<56}{r['macro_f1']:>9.3f}{r['macro_f1_1view']:>8.3f}{r['balanced_accuracy']:>9.3f}"
                  f"{r['accuracy']:>7.3f}"
                  f"{r['auc_ovr']:>7.3f}{r['params'] / 1e6:>8.2f}M{r['gflops']:>8.3f}{r['latency_ms']:>7.1f}")
        print("\nper-class F1 (real test)")
        for job in evals:
            series = {m.name: m.values[-1] for m in client.job_metrics(job.id) if m.name.startswith("test/f1/")}
            print(f"{job.result['arm']:<56}" + " ".join(f"{n.split('/')[-1]} {v:.2f}" for n, v in series.items()))
    finally:
        if server:
            server.stop()


if __name__ == "__main__":
    main()
