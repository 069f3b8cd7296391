"""selftest: counts steps 1..N, checkpointing each one; used to test the job machinery end to end.

Its result is the sum of the step numbers, carried across resumes in the checkpoint, so a run interrupted and
resumed gives the same result as an uninterrupted one. `fail_at` raises at that step; `hang_at` stops showing
life at that step (the heartbeat timeout must end it); `disk_full_at` runs out of disk space half-way through that
step's checkpoint, as a full disk would, in the first attempt only (space is freed before a retry);
`checkpoint_bytes` pads each checkpoint (to fill a real small disk).
"""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, Field

from engine.jobs.context import JobContext, Stopped

KIND = "selftest"


class Params(BaseModel, extra="forbid"):
    steps: int = Field(10, ge=0, le=1_000_000)
    step_seconds: float = Field(0.1, ge=0, le=3600)
    fail_at: int | None = Field(None, ge=1, description="Raise an error at this step.")
    hang_at: int | None = Field(None, ge=1, description="Hang (no heartbeat) at this step.")
    disk_full_at: int | None = Field(None, ge=1, description="Fail with 'no space left' while checkpointing this "
                                                             "step.")
    checkpoint_bytes: int = Field(0, ge=0, le=256 * 1024 * 1024, description="Padding in each checkpoint.")


def run(params: Params, ctx: JobContext) -> dict:
    step, total = 0, 0
    checkpoint = ctx.latest_checkpoint()
    if checkpoint is not None:
        state = json.loads((checkpoint.path / "state.json").read_text())
        step, total = state["step"], state["total"]
        ctx.log(f"resuming after step {step} (total {total})")
    ctx.progress(step, params.steps, "counting")
    while step < params.steps:
        if ctx.should_stop():
            raise Stopped(f"stopped after step {step}")
        step += 1
        if params.fail_at == step:
            raise RuntimeError(f"selftest failing at step {step} as asked (fail_at={params.fail_at})")
        if params.hang_at == step:
            ctx.log(f"hanging at step {step} as asked")
            while True:
                time.sleep(3600)
        time.sleep(params.step_seconds)
        total += step

        def write(folder: Path, state=(step, total)) -> None:
            (folder / "state.json").write_text(json.dumps({"step": state[0], "total": state[1]}))
            if params.checkpoint_bytes:
                (folder / "padding.bin").write_bytes(os.urandom(params.checkpoint_bytes))
            if params.disk_full_at == state[0] and ctx.attempt == 1:
                (folder / "weights.bin").write_bytes(b"\0" * 1024)  # half-written, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "weights.bin"))

        ctx.save_checkpoint(step, write)
        ctx.log_metric("total", total, step)
        ctx.progress(step, params.steps, f"step {step}")
    result = {"sum": total, "steps": params.steps}
    if ctx.is_main:
        summary = ctx.artifact_dir / "summary.json"
        summary.write_text(json.dumps(result))
        ctx.save_artifact(summary, "summary")
    return result
