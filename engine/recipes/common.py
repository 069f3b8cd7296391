"""What several recipes share: reading the real data through the API, finding other jobs' artifacts,
class-balanced sampling, the learning-rate schedule, checkpoints, and the device."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from engine.data.tensors import labels_of, load_array
from engine.jobs.context import JobContext, Stopped


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def real_split(ctx: JobContext, split: str, size: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """uint8 images (N, size, size, 3), int labels (N,) and manifest items of a real split."""
    items = [m.model_dump() for m in ctx.api.manifest(source="real", split=split)]
    if not items:
        raise RuntimeError(f"no real {split} images in the workspace: import data first (dermae import …)")
    ctx.log(f"loading {len(items)} real {split} images at {size}px")
    return load_array(ctx.workspace, items, size), labels_of(items), items


def artifact_path(ctx: JobContext, kind: str, given: str | None, job_kind: str) -> Path:
    """`given` if set; else the artifact `kind` of an upstream job, else of the newest succeeded `job_kind`."""
    if given:
        path = Path(given).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        return path
    candidates = list(ctx.after) + [j.id for j in ctx.api.jobs(kind=job_kind, state="succeeded", limit=20).items]
    for job_id in candidates:
        for artifact in reversed(ctx.api.job_artifacts(job_id)):
            if artifact.kind == kind:
                return ctx.workspace / artifact.path
    raise FileNotFoundError(f"no {kind} found: run a {job_kind} job first, or pass its path")


def class_weights(labels: np.ndarray, exponent: float, num_classes: int) -> torch.Tensor:
    """Per-sample sampling weights ∝ n_class^-exponent: 0 = natural frequencies, 1 = every class equally."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    per_class = np.where(counts > 0, counts, 1.0) ** -exponent
    return torch.as_tensor(per_class[labels], dtype=torch.float64)


def resume(ctx: JobContext, map_location: torch.device | str = "cpu", **stateful) -> dict:
    """Restore each object (model, optimizer, schedule, EMA …) from the newest intact checkpoint and return the
    rest of what was saved (at least "step"); {"step": 0} when the job starts fresh."""
    checkpoint = ctx.latest_checkpoint()
    if checkpoint is None:
        return {"step": 0}
    state = torch.load(checkpoint.path / "state.pt", weights_only=False, map_location=map_location)
    for name, obj in stateful.items():
        obj.load_state_dict(state.pop(name))
    ctx.log(f"resuming at step {state['step']}")
    return state


def save_state(ctx: JobContext, step: int, **state) -> None:
    """Checkpoint `state.pt`: objects with a state_dict() by their state, other values as they are."""
    saved = {k: v.state_dict() if hasattr(v, "state_dict") else v for k, v in state.items()} | {"step": step}
    ctx.save_checkpoint(step, lambda folder: torch.save(saved, folder / "state.pt"))


def end_of_step(ctx: JobContext, step: int, total: int, every: int, save: Callable[[int], None]) -> None:
    """What every training loop does after a step: checkpoint with `save(step)` every `every` steps, at the last
    step, and when the job is asked to stop (cancel, SIGTERM) — then raise Stopped, within the grace period. One
    function for all of them, so no recipe can forget cancel or resume."""
    stop = ctx.should_stop()
    if step % every == 0 or step == total or stop:
        save(step)
    if stop:
        raise Stopped(f"stopped at step {step}")


def warmup_cosine(step: int, total: int, warmup: int) -> float:
    """Learning-rate factor at 0-based `step` of `total`: linear warm-up over `warmup` steps, then a cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
