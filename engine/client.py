"""Typed HTTP client of the engine API, used by the CLI, the studio, the demo and job processes.

    client = Client.from_settings()          # DERMAE_API_URL / DERMAE_API_TOKEN, else the workspace's records
    client.stats().real["train"]["nv"]
"""

from __future__ import annotations

import base64
import io
import shutil
import tempfile
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import httpx

from engine.schemas import (
    TERMINAL_STATES,
    Agreement,
    Artifact,
    BackupIn,
    DatabaseBackup,
    DatasetFreeze,
    DatasetItem,
    DatasetVersion,
    Health,
    ImageInfo,
    ImagePage,
    ImportBatch,
    ImportFormat,
    ImportRequest,
    ImportResult,
    JobEvent,
    JobInfo,
    JobKindInfo,
    JobPage,
    JobSubmit,
    LogChunk,
    Login,
    ManifestItem,
    MetricSeries,
    ModelIn,
    ModelInfo,
    PipelineInfo,
    PipelineSubmit,
    ReviewEvent,
    ReviewHistory,
    ReviewIn,
    ReviewPage,
    ReviewPolicy,
    ReviewPolicyIn,
    ScoresIn,
    ScoreValue,
    Session,
    Stats,
    SyntheticBatchIn,
    TuringAnswer,
    TuringAnswerIn,
    TuringNext,
    TuringResults,
    TuringSessionIn,
    TuringSessionInfo,
    UserIn,
    UserInfo,
)
from engine.settings import SYNTHETIC_UPLOAD_BYTES, Settings, api_token, api_url

DECISION_RETRIES = 3  # a lost answer to a decision is retried after 0.5, 1 and 2 s (same request id)


class ApiError(RuntimeError):
    """A non-2xx answer. `problems` lists per-row/per-file details when the server gave them."""

    def __init__(self, status_code: int, detail: str, problems: list[str] | None = None):
        self.status_code = status_code
        self.detail = detail
        self.problems = problems or []
        super().__init__(f"{status_code}: {detail}" + "".join(f"\n  - {p}" for p in self.problems[:20]))


class ServerNotFound(RuntimeError):
    pass


class Client:
    def __init__(self, base_url: str, token: str | None, timeout: float = 30.0, unreachable_wait: float = 0.0):
        """`unreachable_wait`: seconds to keep retrying a request the engine refused to connect (it never arrived,
        so any request may be sent again) — a job process rides out an engine restart this way."""
        self.base_url = base_url.rstrip("/")
        self.unreachable_wait = unreachable_wait
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    @classmethod
    def from_settings(cls, settings: Settings | None = None, timeout: float = 30.0,
                      unreachable_wait: float = 0.0) -> Client:
        settings = settings or Settings.from_env()
        url = api_url(settings)
        if url is None:
            raise ServerNotFound(
                f"no engine server found for workspace {settings.workspace}: start one with `dermae serve` "
                "(or `dermae up`), or set DERMAE_API_URL"
            )
        return cls(url, api_token(settings), timeout=timeout, unreachable_wait=unreachable_wait)

    @property
    def http(self) -> httpx.Client:
        """The underlying HTTP client (base URL and token set), for raw requests the typed methods do not make."""
        return self._http

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        extra = {"timeout": timeout} if timeout is not None else {}
        deadline, pause = time.monotonic() + self.unreachable_wait, 0.25
        while True:
            try:
                response = self._http.request(method, path, **kwargs, **extra)
                break
            except httpx.TransportError as e:
                if not isinstance(e, httpx.ConnectError) or time.monotonic() + pause > deadline:
                    raise ServerNotFound(f"cannot reach the engine at {self.base_url}: {e}") from None
                time.sleep(pause)
                pause = min(2 * pause, 5.0)
        if response.is_error:
            try:
                body = response.json()
            except ValueError:
                body = {"detail": response.text}
            detail = body.get("detail", response.reason_phrase)
            raise ApiError(response.status_code, str(detail), body.get("problems"))
        return response

    # health -----------------------------------------------------------------------------------------------
    def health(self) -> Health:
        return Health.model_validate(self._request("GET", "/health").json())

    def wait_until_healthy(self, timeout: float = 30.0) -> Health:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.health()
            except (ServerNotFound, ApiError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    # data -------------------------------------------------------------------------------------------------
    def import_data(self, format: ImportFormat | str, path: str | None = None, *, split_seed: int = 0,
                    phantom_size: int = 1000, skip_missing: bool = False) -> ImportResult:
        req = ImportRequest(format=ImportFormat(format), path=path, split_seed=split_seed,
                            phantom_size=phantom_size, skip_missing=skip_missing)
        # Large imports validate every image before answering: allow them time.
        response = self._request("POST", "/imports", json=req.model_dump(mode="json"), timeout=3600)
        return ImportResult.model_validate(response.json())

    def imports(self) -> list[ImportBatch]:
        return [ImportBatch.model_validate(b) for b in self._request("GET", "/imports").json()]

    def stats(self) -> Stats:
        return Stats.model_validate(self._request("GET", "/stats").json())

    def images(self, *, source: str | None = None, split: str | None = None, label: str | None = None,
               batch: str | None = None, limit: int = 100, offset: int = 0) -> ImagePage:
        params = {k: v for k, v in dict(source=source, split=split, label=label, batch=batch).items() if v}
        response = self._request("GET", "/images", params={**params, "limit": limit, "offset": offset})
        return ImagePage.model_validate(response.json())

    def image(self, image_id: str) -> ImageInfo:
        return ImageInfo.model_validate(self._request("GET", f"/images/{image_id}").json())

    def scores(self, image_ids: list[str]) -> dict[str, dict[str, ScoreValue]]:
        """{image_id: {name: ScoreValue}} for any number of images, asked for 200 at a time (ids travel in the URL,
        whose length servers limit)."""
        raw: dict[str, dict] = {}
        for start in range(0, len(image_ids), 200):
            chunk = ",".join(image_ids[start:start + 200])
            raw |= self._request("GET", "/images/scores", params={"ids": chunk}).json()
        return {i: {n: ScoreValue.model_validate(v) for n, v in named.items()} for i, named in raw.items()}

    def thumbnails(self, image_ids: list[str]) -> dict[str, bytes]:
        """Thumbnails of up to 200 images in one round trip."""
        answer = self._request("GET", "/images/thumbs", params={"ids": ",".join(image_ids)}).json()
        return {i: base64.b64decode(data) for i, data in answer.items()}

    def image_bytes(self, image_id: str, *, thumbnail: bool = False) -> bytes:
        return self._request("GET", f"/images/{image_id}/{'thumb' if thumbnail else 'file'}").content

    # jobs -------------------------------------------------------------------------------------------------
    def job_kinds(self) -> list[JobKindInfo]:
        return [JobKindInfo.model_validate(k) for k in self._request("GET", "/job-kinds").json()]

    def submit_job(self, kind: str, params: dict[str, Any] | None = None, **options: Any) -> JobInfo:
        """Queue a job; options are JobSubmit's fields (after, num_processes, max_attempts, heartbeat_timeout)."""
        body = JobSubmit(kind=kind, params=params or {}, **options).model_dump(mode="json")
        return JobInfo.model_validate(self._request("POST", "/jobs", json=body).json())

    def submit_pipeline(self, pipeline: PipelineSubmit) -> PipelineInfo:
        return PipelineInfo.model_validate(
            self._request("POST", "/pipelines", json=pipeline.model_dump(mode="json")).json())

    def pipeline(self, pipeline_id: str) -> PipelineInfo:
        return PipelineInfo.model_validate(self._request("GET", f"/pipelines/{pipeline_id}").json())

    def jobs(self, *, state: str | None = None, kind: str | None = None, pipeline: str | None = None,
             limit: int = 100, offset: int = 0) -> JobPage:
        params = {k: v for k, v in dict(state=state, kind=kind, pipeline=pipeline).items() if v}
        return JobPage.model_validate(
            self._request("GET", "/jobs", params={**params, "limit": limit, "offset": offset}).json())

    def job(self, job_id: int) -> JobInfo:
        return JobInfo.model_validate(self._request("GET", f"/jobs/{job_id}").json())

    def cancel_job(self, job_id: int) -> JobInfo:
        return JobInfo.model_validate(self._request("POST", f"/jobs/{job_id}/cancel").json())

    def retry_job(self, job_id: int) -> JobInfo:
        return JobInfo.model_validate(self._request("POST", f"/jobs/{job_id}/retry").json())

    def job_events(self, job_id: int) -> list[JobEvent]:
        return [JobEvent.model_validate(e) for e in self._request("GET", f"/jobs/{job_id}/events").json()]

    def job_logs(self, job_id: int, *, offset: int = 0, tail: int | None = None) -> LogChunk:
        params: dict[str, int] = {"offset": offset}
        if tail is not None:
            params["tail"] = tail
        return LogChunk.model_validate(self._request("GET", f"/jobs/{job_id}/logs", params=params).json())

    def job_metrics(self, job_id: int, name: str | None = None) -> list[MetricSeries]:
        params = {"name": name} if name else {}
        response = self._request("GET", f"/jobs/{job_id}/metrics", params=params)
        return [MetricSeries.model_validate(m) for m in response.json()]

    def job_artifacts(self, job_id: int) -> list[Artifact]:
        return [Artifact.model_validate(a) for a in self._request("GET", f"/jobs/{job_id}/artifacts").json()]

    def wait_for_job(self, job_id: int, timeout: float = 600, poll: float = 0.2) -> JobInfo:
        """Poll until the job has ended; raise TimeoutError (with its state) if it has not by `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if job.state in TERMINAL_STATES:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job.state.value} after {timeout:.0f}s")
            time.sleep(poll)

    # the job process's side -------------------------------------------------------------------------------
    def report_job(self, job_id: int, attempt: int, *, progress: tuple | None, metrics: list[dict[str, Any]],
                   alive: bool) -> str:
        body: dict[str, Any] = {"attempt": attempt, "metrics": metrics, "alive": alive}
        if progress is not None:
            body["progress"] = {"done": progress[0], "total": progress[1], "message": progress[2]}
        return self._request("POST", f"/jobs/{job_id}/report", json=body).json()["state"]

    def finish_job(self, job_id: int, attempt: int, state: str, *, result: Any = None,
                   error: str | None = None) -> None:
        self._request("POST", f"/jobs/{job_id}/finish",
                      json={"attempt": attempt, "state": state, "result": result, "error": error})

    def add_synthetic(self, job_id: int, attempt: int, images: list[dict[str, Any]]) -> list[str]:
        """Upload generated images: dicts of png (bytes), label, seed, guidance, steps, checkpoint. Large batches go
        in several requests of at most SYNTHETIC_UPLOAD_BYTES of PNG each (each one all or none), far below the
        server's body limit."""
        ids: list[str] = []
        start = 0
        while start < len(images):
            end, size = start, 0
            while end < len(images) and (end == start or size + len(images[end]["png"]) <= SYNTHETIC_UPLOAD_BYTES):
                size += len(images[end]["png"])
                end += 1
            encoded = [{**im, "png": base64.b64encode(im["png"])} for im in images[start:end]]  # Base64Bytes
            body = SyntheticBatchIn(attempt=attempt, images=encoded).model_dump(mode="json")
            ids += self._request("POST", f"/jobs/{job_id}/synthetic", json=body).json()["ids"]
            start = end
        return ids

    def add_scores(self, job_id: int, attempt: int, scores: list[dict[str, Any]]) -> None:
        body = ScoresIn(attempt=attempt, scores=scores).model_dump(mode="json")
        self._request("POST", f"/jobs/{job_id}/scores", json=body)

    def manifest(self, *, source: str = "real", split: str | None = None, status: str | None = None,
                 generation_job: int | None = None, batch: str | None = None) -> list[ManifestItem]:
        params = {k: v for k, v in dict(source=source, split=split, status=status, generation_job=generation_job,
                                        batch=batch).items() if v is not None}
        return [ManifestItem.model_validate(m) for m in self._request("GET", "/images/manifest", params=params).json()]

    def add_artifact(self, job_id: int, attempt: int, path: str, kind: str) -> Artifact:
        response = self._request("POST", f"/jobs/{job_id}/artifacts",
                                 json={"attempt": attempt, "path": path, "kind": kind})
        return Artifact.model_validate(response.json())

    # dataset versions -------------------------------------------------------------------------------------
    def freeze_dataset(self, name: str, note: str | None = None, *, accepts_needed: int | None = None,
                       targets: dict[str, int] | None = None, selection: str = "reviewed",
                       min_intended_prob: float = 0.5) -> DatasetVersion:
        body = DatasetFreeze(name=name, note=note, accepts_needed=accepts_needed, targets=targets,
                             selection=selection, min_intended_prob=min_intended_prob)
        return DatasetVersion.model_validate(self._request("POST", "/datasets", json=body.model_dump()).json())

    def datasets(self) -> list[DatasetVersion]:
        return [DatasetVersion.model_validate(v) for v in self._request("GET", "/datasets").json()]

    def dataset(self, version_id: str) -> DatasetVersion:
        return DatasetVersion.model_validate(self._request("GET", f"/datasets/{version_id}").json())

    def dataset_manifest(self, version_id: str, *, split: str | None = None,
                         source: str | None = None) -> list[DatasetItem]:
        params = {k: v for k, v in dict(split=split, source=source).items() if v}
        response = self._request("GET", f"/datasets/{version_id}/manifest", params=params)
        return [DatasetItem.model_validate(r) for r in response.json()]

    def dataset_zip(self, version_id: str) -> bytes:
        """The version as a zip: manifests + `<split>/<class>/<id>.<ext>` images (torchvision ImageFolder)."""
        return self._request("GET", f"/datasets/{version_id}/export.zip", timeout=600).content

    def export_dataset(self, version_id: str, dest: Path) -> Path:
        """Unpack the version's zip into `dest` (which must not exist or be empty); returns dest/<version>.
        Unpacked next to dest first and renamed when complete, so a failure leaves nothing half-written."""
        dest = Path(dest)
        if dest.exists() and any(dest.iterdir()):
            raise FileExistsError(f"{dest} is not empty: export into a new or empty folder")
        dest.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=".export-", dir=dest))
        try:
            with zipfile.ZipFile(io.BytesIO(self.dataset_zip(version_id))) as archive:
                archive.extractall(partial)  # member names are ours: version/split/class/file, no '..'
            (partial / version_id).rename(dest / version_id)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return dest / version_id

    # backup ---------------------------------------------------------------------------------------------------
    def backup_database(self, path: Path | str) -> DatabaseBackup:
        """Have the server export its database into `path`, an empty folder on its machine: the half of `dermae
        backup` only the process holding the database can do (admins)."""
        body = BackupIn(path=str(path)).model_dump()
        return DatabaseBackup.model_validate(self._request("POST", "/backup", json=body, timeout=3600).json())

    # models -----------------------------------------------------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return [ModelInfo.model_validate(m) for m in self._request("GET", "/models").json()]

    def served_model(self) -> ModelInfo:
        return ModelInfo.model_validate(self._request("GET", "/models/served").json())

    def serve_model(self, model_id: int) -> ModelInfo:
        return ModelInfo.model_validate(self._request("POST", f"/models/{model_id}/serve").json())

    def register_model(self, job_id: int, attempt: int, **entry: Any) -> ModelInfo:
        body = ModelIn(attempt=attempt, **entry).model_dump(mode="json")
        return ModelInfo.model_validate(self._request("POST", f"/jobs/{job_id}/models", json=body).json())

    # users and sign-in -----------------------------------------------------------------------------------
    def login(self, name: str, password: str) -> Session:
        """Sign in; from now on this client acts as that user (its session token replaces the one it had)."""
        body = Login(name=name, password=password).model_dump()
        session = Session.model_validate(self._request("POST", "/auth/login", json=body).json())
        self._http.headers["Authorization"] = f"Bearer {session.token}"
        return session

    def logout(self) -> None:
        self._request("POST", "/auth/logout")

    def me(self) -> UserInfo:
        return UserInfo.model_validate(self._request("GET", "/auth/me").json())

    def users(self) -> list[UserInfo]:
        return [UserInfo.model_validate(u) for u in self._request("GET", "/users").json()]

    def add_user(self, name: str, password: str, role: str = "reviewer") -> UserInfo:
        body = UserIn(name=name, password=password, role=role).model_dump()
        return UserInfo.model_validate(self._request("POST", "/users", json=body).json())

    # review ----------------------------------------------------------------------------------------------
    def review_queue(self, **filters: Any) -> ReviewPage:
        """Filters as GET /reviews/queue takes them: label, status, generation_job, min_/max_intended,
        min_/max_nearest, dup_group, near_copy, reviewer, mine, sort, limit, offset."""
        params = {k: v for k, v in filters.items() if v is not None}
        return ReviewPage.model_validate(self._request("GET", "/reviews/queue", params=params).json())

    def decide(self, image_ids: list[str], decision: str, reasons: list[str] | None = None,
               note: str | None = None) -> list[ReviewEvent]:
        """Decide, retrying under the same request id when the answer is lost (the connection dropped, the server
        restarted): the server records the decision once however often it arrives."""
        body = ReviewIn(image_ids=image_ids, decision=decision, reasons=reasons or [], note=note,
                        request_id=uuid.uuid4().hex)
        for attempt in range(DECISION_RETRIES + 1):
            try:
                answer = self._request("POST", "/reviews", json=body.model_dump(mode="json"))
                return [ReviewEvent.model_validate(e) for e in answer.json()]
            except ServerNotFound:
                if attempt == DECISION_RETRIES:
                    raise
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def undo(self, seq: int) -> ReviewEvent:
        return ReviewEvent.model_validate(self._request("POST", f"/reviews/{seq}/undo").json())

    def review_history(self, **filters: Any) -> ReviewHistory:
        """Filters: reviewer, label, image_id, since, until (datetimes), limit, offset."""
        params = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in filters.items() if v is not None}
        return ReviewHistory.model_validate(self._request("GET", "/reviews", params=params).json())

    def reviewers(self) -> list[str]:
        return self._request("GET", "/reviews/reviewers").json()

    def agreement(self) -> dict[str, Agreement]:
        return {c: Agreement.model_validate(a) for c, a in self._request("GET", "/reviews/agreement").json().items()}

    def review_progress(self) -> dict[str, int]:
        """Per class, the synthetic images the signed-in user has not decided yet."""
        return self._request("GET", "/reviews/progress").json()

    def review_policy(self) -> ReviewPolicy:
        return ReviewPolicy.model_validate(self._request("GET", "/review-policy").json())

    def set_review_policy(self, accepts_needed: int | None = None, blind: bool | None = None) -> ReviewPolicy:
        body = ReviewPolicyIn(accepts_needed=accepts_needed, blind=blind).model_dump()
        return ReviewPolicy.model_validate(self._request("PUT", "/review-policy", json=body).json())

    def review_policy_history(self) -> list[ReviewPolicy]:
        return [ReviewPolicy.model_validate(p) for p in self._request("GET", "/review-policy/history").json()]

    # artifact files ---------------------------------------------------------------------------------------
    def artifact_bytes(self, job_id: int, artifact_id: int) -> bytes:
        """One artifact file of a job (a grid PNG, an evaluation report), over HTTP so it works from other hosts."""
        return self._request("GET", f"/jobs/{job_id}/artifacts/{artifact_id}/file", timeout=300).content

    # the blinded Turing test -----------------------------------------------------------------------------
    def create_turing_session(self, name: str, classes: list[str], n_images: int, real_fraction: float = 0.5, *,
                              ask_class: bool = False, ask_realism: bool = False,
                              seed: int | None = None) -> TuringSessionInfo:
        """Sample a new session (admins)."""
        body = TuringSessionIn(name=name, classes=classes, n_images=n_images, real_fraction=real_fraction,
                               ask_class=ask_class, ask_realism=ask_realism, seed=seed)
        return TuringSessionInfo.model_validate(
            self._request("POST", "/turing/sessions", json=body.model_dump(mode="json")).json())

    def turing_sessions(self) -> list[TuringSessionInfo]:
        return [TuringSessionInfo.model_validate(s) for s in self._request("GET", "/turing/sessions").json()]

    def turing_next(self, session_id: int) -> TuringNext:
        """The signed-in reader's next item, blinded; `.item.png` holds the PNG bytes."""
        return TuringNext.model_validate(self._request("GET", f"/turing/sessions/{session_id}/next").json())

    def turing_answer(self, session_id: int, key: str, says: str, *, class_guess: str | None = None,
                      realism: int | None = None) -> TuringAnswer:
        """The signed-in reader's final answer on one item."""
        body = TuringAnswerIn(key=key, says=says, class_guess=class_guess, realism=realism)
        response = self._request("POST", f"/turing/sessions/{session_id}/answers",
                                 json=body.model_dump(mode="json", exclude_none=True))
        return TuringAnswer.model_validate(response.json())

    def turing_results(self, session_id: int) -> TuringResults:
        return TuringResults.model_validate(self._request("GET", f"/turing/sessions/{session_id}/results").json())

    def close_turing_session(self, session_id: int) -> TuringSessionInfo:
        return TuringSessionInfo.model_validate(self._request("POST", f"/turing/sessions/{session_id}/close").json())
