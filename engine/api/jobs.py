from __future__ import annotations

import mimetypes
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request, status
from fastapi.responses import FileResponse
from pydantic import ValidationError

from engine.api.auth import require_engine
from engine.data.images import ImageStore
from engine.data.ingest import ingest
from engine.data.sources import SourceRecord
from engine.files import sha256_path
from engine.jobs.scheduler import log_path
from engine.recipes.registry import KINDS, UnknownKind, get_kind
from engine.schemas import (
    MAX_BIGINT,
    METRIC_NAME,
    PIPELINE_ID,
    TERMINAL_STATES,
    Artifact,
    ArtifactIn,
    JobEvent,
    JobFinish,
    JobInfo,
    JobKindInfo,
    JobPage,
    JobReport,
    JobReportReply,
    JobSubmit,
    LogChunk,
    MetricSeries,
    PipelineInfo,
    PipelineSubmit,
    Problem,
    Progress,
    ScoresIn,
    SyntheticBatchIn,
    SyntheticBatchResult,
    error_lines,
    finite_or_none,
)
from engine.store import UnknownJob

router = APIRouter(tags=["jobs"])
MAX_LOG_CHUNK = 1 << 20
_ERRORS: dict[int | str, dict[str, Any]] = {404: {"model": Problem}, 409: {"model": Problem},
                                            422: {"model": Problem}}
JobId = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="Job id.")]
ArtifactId = Annotated[int, Path(ge=1, le=MAX_BIGINT, description="Artifact id (GET /jobs/{job_id}/artifacts).")]
_KIND = "^(" + "|".join(KINDS) + ")$"  # a kind filter names a known kind (GET /job-kinds), or it is a mistake


def _info(job: dict) -> JobInfo:
    progress = Progress(done=job.pop("progress_done"), total=job.pop("progress_total"),
                        message=job.pop("progress_message"))
    # what a workspace stored before NaN and infinity were kept out would otherwise fail every listing
    job |= {"params": finite_or_none(job["params"]), "result": finite_or_none(job["result"])}
    return JobInfo(**job, progress=progress)


def _validated(kind: str, params: dict) -> dict:
    try:
        model = get_kind(kind).params
    except UnknownKind as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e)) from None
    try:
        valid = model.model_validate(params).model_dump(mode="json")
    except ValidationError as e:
        problems = "; ".join(error_lines(e.errors(), unnamed="params"))
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            f"invalid parameters for {kind}: {problems}") from None
    # JSON has no NaN or infinity, though Python reads them (lr=Infinity passes gt=0): stored, one would break
    # every later answer that shows the job.
    infinite = [name for name, value in valid.items() if finite_or_none(value) != value]
    if infinite:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"invalid parameters for {kind}: "
                            f"{', '.join(infinite)}: give finite numbers, not NaN or infinity")
    return valid


def _create(request: Request, specs: list[dict], pipeline_id: str | None) -> list[int]:
    try:
        ids = request.app.state.store.jobs.create_many(specs, pipeline_id=pipeline_id)
    except (UnknownJob, ValueError) as e:  # waiting on a job that does not exist is a bad request, not a 404
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e)) from None
    if request.app.state.scheduler:
        request.app.state.scheduler.wake()
    return ids


def _job(request: Request, job_id: int) -> dict:
    return request.app.state.store.jobs.get(job_id)  # UnknownJob -> 404 (engine.api.app)


@router.get("/job-kinds", response_model=list[JobKindInfo])
def job_kinds() -> list[JobKindInfo]:
    """Every job kind with the JSON schema of its parameters (the studio builds its forms from these)."""
    return [JobKindInfo(name=k.name, description=k.description, params_schema=k.params.model_json_schema())
            for k in KINDS.values()]


def _with_follow_ups(specs: list[dict]) -> list[dict]:
    """After each job of a kind with a `then` (generate -> score), a job of that kind waiting on it."""
    out = []
    for i, spec in enumerate(specs):
        key = spec.get("pipeline_key") or f"{spec['kind']}-{i}"
        out.append(spec | {"pipeline_key": key})
        then = get_kind(spec["kind"]).then
        if then:
            # one process, on the kind of node its parent ran on (a cluster's GPU partition)
            resources = spec.get("resources") and {**spec["resources"], "nodes": 1}
            out.append({"kind": then, "params": _validated(then, {}), "after_keys": [key],
                        "pipeline_key": f"{key}.{then}"} | ({"resources": resources} if resources else {}))
    return out


@router.post("/jobs", response_model=JobInfo, status_code=201, responses=_ERRORS)
def submit_job(body: JobSubmit, request: Request) -> JobInfo:
    """Queue a job. A generate job brings a score job that waits on it."""
    spec = body.model_dump() | {"params": _validated(body.kind, body.params)}
    job_id = _create(request, _with_follow_ups([spec]), None)[0]
    return _info(_job(request, job_id))


@router.post("/pipelines", response_model=PipelineInfo, status_code=201, responses=_ERRORS)
def submit_pipeline(body: PipelineSubmit, request: Request) -> PipelineInfo:
    """Jobs submitted together, waiting on each other by key: visible as one pipeline run."""
    keys = [s.key for s in body.steps]
    if len(set(keys)) != len(keys):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "pipeline step keys must be unique")
    specs = [step.model_dump(exclude={"key"}) | {"pipeline_key": step.key,
                                                  "params": _validated(step.kind, step.params)}
             for step in body.steps]
    pipeline_id = f"{body.name}-{uuid.uuid4().hex[:8]}"
    _create(request, _with_follow_ups(specs), pipeline_id)
    return get_pipeline(pipeline_id, request)


@router.get("/pipelines/{pipeline_id}", response_model=PipelineInfo, responses=_ERRORS)
def get_pipeline(pipeline_id: Annotated[str, Path(pattern=PIPELINE_ID)], request: Request) -> PipelineInfo:
    _, jobs = request.app.state.store.jobs.list(pipeline_id=pipeline_id, limit=1000)
    if not jobs:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no pipeline {pipeline_id}")
    return PipelineInfo(id=pipeline_id, jobs=[_info(j) for j in sorted(jobs, key=lambda j: j["id"])])


@router.get("/jobs", response_model=JobPage)
def list_jobs(
    request: Request,
    state: Annotated[str | None, Query(pattern=r"^(queued|running|cancelling|succeeded|failed|cancelled)$")] = None,
    kind: Annotated[str | None, Query(pattern=_KIND, description="A job kind (GET /job-kinds).")] = None,
    pipeline: Annotated[str | None, Query(pattern=PIPELINE_ID, description="A pipeline id.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_BIGINT)] = 0,
) -> JobPage:
    total, jobs = request.app.state.store.jobs.list(state=state, kind=kind, pipeline_id=pipeline, limit=limit,
                                                    offset=offset)
    return JobPage(total=total, items=[_info(j) for j in jobs])


@router.get("/jobs/{job_id}", response_model=JobInfo, responses=_ERRORS)
def get_job(job_id: JobId, request: Request) -> JobInfo:
    return _info(_job(request, job_id))


@router.post("/jobs/{job_id}/cancel", response_model=JobInfo, responses=_ERRORS)
def cancel_job(job_id: JobId, request: Request) -> JobInfo:
    """Queued: cancelled at once. Running: SIGTERM, a grace period to checkpoint, then SIGKILL."""
    request.app.state.store.jobs.request_cancel(job_id)
    if request.app.state.scheduler:
        request.app.state.scheduler.wake()
    return _info(_job(request, job_id))


@router.post("/jobs/{job_id}/retry", response_model=JobInfo, responses=_ERRORS)
def retry_job(job_id: JobId, request: Request) -> JobInfo:
    """Re-queue a failed or cancelled job (and what failed downstream because of it); it resumes from its
    last checkpoint."""
    request.app.state.store.jobs.retry(job_id)
    if request.app.state.scheduler:
        request.app.state.scheduler.wake()
    return _info(_job(request, job_id))


@router.get("/jobs/{job_id}/events", response_model=list[JobEvent], responses=_ERRORS)
def job_events(job_id: JobId, request: Request) -> list[JobEvent]:
    _job(request, job_id)
    return [JobEvent(**e) for e in request.app.state.store.jobs.events(job_id)]


@router.get("/jobs/{job_id}/logs", response_model=LogChunk, responses=_ERRORS)
def job_logs(
    job_id: JobId,
    request: Request,
    offset: Annotated[int, Query(ge=0, description="Byte offset to read from (follow: pass back `offset`).")] = 0,
    tail: Annotated[int | None, Query(ge=1, le=10000, description="Only the last N lines.")] = None,
) -> LogChunk:
    job = _job(request, job_id)
    path = log_path(request.app.state.settings, job_id)
    finished = job["state"] in TERMINAL_STATES
    if not path.exists():
        return LogChunk(text="", offset=0, finished=finished)
    with path.open("rb") as f:
        end = f.seek(0, 2)
        if tail is not None:
            start = max(0, end - MAX_LOG_CHUNK)
            f.seek(start)
            lines = f.read().decode(errors="replace").splitlines(keepends=True)
            return LogChunk(text="".join(lines[-tail:]), offset=end, finished=finished)
        f.seek(min(offset, end))
        data = f.read(MAX_LOG_CHUNK)
    return LogChunk(text=data.decode(errors="replace"), offset=min(offset, end) + len(data),
                    finished=finished and min(offset, end) + len(data) >= end)


@router.get("/jobs/{job_id}/metrics", response_model=list[MetricSeries], responses=_ERRORS)
def job_metrics(job_id: JobId, request: Request,
                name: Annotated[str | None, Query(pattern=METRIC_NAME, description="One metric, e.g. train/loss.")]
                = None) -> list[MetricSeries]:
    _job(request, job_id)
    series = request.app.state.store.jobs.metrics(job_id, name)
    return [MetricSeries(name=n, steps=[s for s, _ in pts], values=[finite_or_none(v) for _, v in pts])
            for n, pts in series.items()]


@router.get("/jobs/{job_id}/artifacts", response_model=list[Artifact], responses=_ERRORS)
def job_artifacts(job_id: JobId, request: Request) -> list[Artifact]:
    _job(request, job_id)
    return [Artifact(**a) for a in request.app.state.store.jobs.artifacts(job_id)]


@router.get("/jobs/{job_id}/artifacts/{artifact_id}/file", response_class=FileResponse, responses=_ERRORS)
def artifact_file(job_id: JobId, artifact_id: ArtifactId, request: Request) -> FileResponse:
    """The bytes of one file the job registered (a sample grid, an evaluation report), so that clients on other
    hosts can show it. Only that job's own artifacts, only inside the workspace: anything else is a 404. Folders
    (saved models) are not served: 409."""
    _job(request, job_id)
    artifact = next((a for a in request.app.state.store.jobs.artifacts(job_id) if a["id"] == artifact_id), None)
    if artifact is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} has no artifact {artifact_id}")
    workspace = request.app.state.settings.workspace.resolve()
    path = (workspace / artifact["path"]).resolve()  # follows links: one leading out of the workspace is refused
    if not path.is_relative_to(workspace) or not path.exists():
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"artifact {artifact_id} of job {job_id} ({artifact['path']}) is not in the workspace")
    if path.is_dir():
        raise HTTPException(status.HTTP_409_CONFLICT,
                            f"artifact {artifact_id} of job {job_id} ({artifact['kind']}) is a folder: only files "
                            "are served; read a saved model from the workspace on the engine's host")
    return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream",
                        filename=path.name, headers={"X-Content-Type-Options": "nosniff"})


# the job process's side ---------------------------------------------------------------------------------------
@router.post("/jobs/{job_id}/report", response_model=JobReportReply, responses=_ERRORS,
             dependencies=[Depends(require_engine)])
def report(job_id: JobId, body: JobReport, request: Request) -> JobReportReply:
    """Progress, a batch of metrics and a heartbeat. 409 when this attempt is no longer the running one."""
    progress = (body.progress.done, body.progress.total, body.progress.message) if body.progress else None
    state = request.app.state.store.jobs.report(
        job_id, body.attempt, progress=progress, metrics=[m.model_dump() for m in body.metrics],
        alive=body.alive)
    return JobReportReply(state=state)


@router.post("/jobs/{job_id}/finish", status_code=204, responses=_ERRORS,
             dependencies=[Depends(require_engine)])
def finish(job_id: JobId, body: JobFinish, request: Request) -> None:
    if body.state not in TERMINAL_STATES:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "state must be succeeded, failed or cancelled")
    request.app.state.store.jobs.finish(job_id, body.attempt, body.state.value, result=body.result,
                                        error=body.error)
    if request.app.state.scheduler:
        request.app.state.scheduler.wake()


@router.post("/jobs/{job_id}/artifacts", response_model=Artifact, status_code=201, responses=_ERRORS,
             dependencies=[Depends(require_engine)])
def add_artifact(job_id: JobId, body: ArtifactIn, request: Request) -> Artifact:
    """Register a file or folder (a saved model) the job wrote inside the workspace; the server hashes it."""
    store = request.app.state.store
    store.jobs.assert_running(job_id, body.attempt)  # before any disk work: hashing a folder can take a while
    workspace = request.app.state.settings.workspace.resolve()
    try:
        path = (workspace / body.path).resolve()
        inside = path.is_relative_to(workspace)
        exists = inside and path.exists()
    except (OSError, ValueError) as e:  # a NUL byte, a name too long for the file system
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{body.path!r} is not a usable path: {e}") from None
    if not inside:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{body.path} is outside the workspace")
    if not exists:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{body.path} does not exist")
    # The workspace itself, or the server's own files at its top (the database, the API token), would be served to
    # every signed-in user as the artifact's file.
    if path == workspace or (path.parent == workspace and path.is_file()):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"{body.path!r}: an artifact is a file or folder "
                            "the job wrote inside the workspace, not the workspace or one of the server's own files")
    try:
        digest, size = sha256_path(path)
    except OSError as e:  # a file the job is still changing (deleted between listing and reading)
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, f"cannot read {body.path}: {e}") from None
    artifact_id = store.jobs.add_artifact(job_id, body.attempt, body.kind, path.relative_to(workspace).as_posix(),
                                          digest, size)
    return next(Artifact(**a) for a in store.jobs.artifacts(job_id) if a["id"] == artifact_id)


@router.post("/jobs/{job_id}/synthetic", response_model=SyntheticBatchResult, status_code=201, responses=_ERRORS,
             dependencies=[Depends(require_engine)])
def add_synthetic(job_id: JobId, body: SyntheticBatchIn, request: Request) -> SyntheticBatchResult:
    """Generated images with their provenance, stored as synthetic images pending review (all or none)."""
    store, settings = request.app.state.store, request.app.state.settings
    store.jobs.assert_running(job_id, body.attempt)
    records = [
        SourceRecord(name=f"job {job_id} seed {im.seed}", label=im.label, read=(lambda data=im.png: data),
                     metadata={"generator": "ldm"},
                     provenance={"generation_job": job_id, "seed": im.seed, "guidance": im.guidance,
                                 "steps": im.steps, "checkpoint": im.checkpoint})
        for im in body.images
    ]
    result = ingest(records, batch_id=None, source="synthetic", images=ImageStore(settings.images_dir),
                    thumbs=ImageStore(settings.thumbs_dir), existing_counts=store.images.existing_counts,
                    commit=store.images.add_rows)
    return SyntheticBatchResult(ids=[r["id"] for r in result.rows])


@router.post("/jobs/{job_id}/scores", status_code=204, responses=_ERRORS,
             dependencies=[Depends(require_engine)])
def add_scores(job_id: JobId, body: ScoresIn, request: Request) -> None:
    """Named numbers per image (intended-class probability, nearest-real distance …); replaces earlier ones."""
    store = request.app.state.store
    store.jobs.assert_running(job_id, body.attempt)
    try:
        store.images.set_scores(job_id, [s.model_dump() for s in body.scores])
    except KeyError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(e.args[0])) from None
