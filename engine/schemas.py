"""The API's request and response models: the contract shared by the server (engine.api) and engine.client."""

from __future__ import annotations

import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Base64Bytes, BaseModel, Field, computed_field, model_validator

from engine.labels import ClassName, PerClass, SplitKind

ClassCounts = dict[str, int]

# The database's integer columns. A larger number cannot even be compared with one (the query fails, a 500), so
# every id, offset, attempt and count the API takes stops at these, with a 422 that says so.
MAX_BIGINT = 2**63 - 1
MAX_INTEGER = 2**31 - 1
BigInt = Annotated[int, Field(ge=-MAX_BIGINT - 1, le=MAX_BIGINT)]

# Ids the server gives out, as the filters and paths that take them accept them: anything else is a clear 422.
IMPORT_BATCH_ID = r"^imp-[0-9a-f]{12}$"  # POST /imports
PIPELINE_ID = r"^[A-Za-z0-9_.\-]{1,100}$"  # <pipeline name>-<8 hex>
DATASET_ID = r"^[A-Za-z0-9_.\-]{1,100}$"  # <version name>-<date>-<time>-<4 hex>
METRIC_NAME = r"^[A-Za-z0-9_.\-/]{1,200}$"  # train/loss, test/f1/mel …


def finite_or_none(value: Any) -> Any:
    """`value` with every NaN and ±infinity in it, at any depth, replaced by None. JSON has no such numbers, though
    Python reads and writes them: one stored as sent would make every later answer that holds it fail."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_none(v) for v in value]
    return value


FiniteOrNone = Annotated[float | None, AfterValidator(finite_or_none)]
FiniteJSON = Annotated[Any, AfterValidator(finite_or_none)]


class Health(BaseModel):
    status: str
    version: str
    schema_version: int
    workspace: str


class ImportFormat(StrEnum):
    ham10000 = "ham10000"
    isic = "isic"
    medmnist = "medmnist"
    folder = "folder"
    phantom = "phantom"


class ImportRequest(BaseModel):
    format: ImportFormat
    path: str | None = Field(None, max_length=4096, description="Path on the server's machine; not used for "
                                                                 "`phantom`.")
    split_seed: int = Field(0, description="Seed of the lesion-aware split, for sources without splits.")
    phantom_size: int = Field(1000, ge=70, le=20000, description="Number of phantom images.")
    skip_missing: bool = Field(False, description="HAM10000 / ISIC: import the rows whose image file is there and "
                                                  "list the others (default: a missing file fails the import).")

    @model_validator(mode="after")
    def _path_given(self) -> ImportRequest:
        if self.format != ImportFormat.phantom and not self.path:
            raise ValueError(f"format {self.format.value} needs a path")
        return self


class ImportResult(BaseModel):
    batch_id: str
    format: ImportFormat
    source: str
    n_records: int = Field(description="Images in the source.")
    n_added: int = Field(description="Images new to the database (0 when the same data is imported again).")
    phantom: bool
    added: dict[str, ClassCounts] = Field(description="Added images per split and class.")
    split_kind: SplitKind | None = Field(description="How the real images were split (None: nothing added).")
    skipped: list[str] = Field([], description="Rows left out because their image file is missing "
                                               "(skip_missing), each named.")


class ImportBatch(BaseModel):
    id: str
    format: str
    source: str
    created_at: datetime
    n_records: int
    n_added: int
    phantom: bool
    split_kind: SplitKind | None = Field(None, description="None for batches imported before it was recorded.")
    skipped: list[str] = []


class Stats(BaseModel):
    real: dict[str, ClassCounts]
    synthetic: dict[str, ClassCounts]
    phantom: bool = Field(False, description="True when phantom (not clinical) data has been imported.")


class ImageInfo(BaseModel):
    id: str
    content_id: str
    label: ClassName
    source: str
    split: str | None
    lesion_id: str | None
    width: int
    height: int
    format: str
    size_bytes: int
    import_batch: str | None
    original_name: str | None
    metadata: dict[str, Any] = {}
    duplicate_of: str | None
    created_at: datetime
    generation_job: int | None = None
    seed: int | None = None
    guidance: float | None = None
    steps: int | None = None
    checkpoint: str | None = None


class ManifestItem(BaseModel):
    id: str
    label: ClassName
    split: str | None
    path: str = Field(description="Relative to the workspace's images folder.")
    lesion_id: str | None
    source: str


class SyntheticImageIn(BaseModel, extra="forbid"):
    png: Base64Bytes = Field(description="The generated image, PNG, base64.")
    label: ClassName
    seed: BigInt
    guidance: float = Field(allow_inf_nan=False)
    steps: int = Field(ge=1, le=MAX_INTEGER)
    checkpoint: str = Field(max_length=500)


class SyntheticBatchIn(BaseModel, extra="forbid"):
    attempt: BigInt
    images: list[SyntheticImageIn] = Field(min_length=1, max_length=1024)


class SyntheticBatchResult(BaseModel):
    ids: list[str]


class ScoreIn(BaseModel, extra="forbid"):
    image_id: str = Field(pattern=r"^[0-9a-f]{64}$")
    name: str = Field(pattern=r"^[a-z0-9_]{1,64}$")
    value: FiniteOrNone = Field(description="NaN and infinity are kept as null (none).")
    ref: str | None = Field(None, max_length=200, description="A related id, e.g. the nearest real image.")


class ScoreValue(BaseModel):
    value: float | None
    ref: str | None


class ScoresIn(BaseModel, extra="forbid"):
    attempt: BigInt
    scores: list[ScoreIn] = Field(max_length=200_000)


class ImagePage(BaseModel):
    total: int
    offset: int
    items: list[ImageInfo]


class Problem(BaseModel):
    detail: str
    problems: list[str] = []


def error_lines(errors: list[dict[str, Any]], unnamed: str = "") -> list[str]:
    """pydantic's validation errors as "where: what" lines; `unnamed` stands for an error of the whole value."""
    return [f"{'.'.join(map(str, err.get('loc', ()))) or unnamed}: {err.get('msg')}" for err in errors]


# jobs ---------------------------------------------------------------------------------------------------------
class JobState(StrEnum):
    queued = "queued"
    running = "running"
    cancelling = "cancelling"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TERMINAL_STATES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled})


class JobResources(BaseModel, extra="forbid"):
    """What a job asks of the machine it runs on. The local executor uses `nodes` only (more than one is refused:
    it has one machine); the Slurm executor turns every field into an `sbatch` option."""

    nodes: int = Field(1, ge=1, le=64, description="Machines; the job's processes are spread evenly over them.")
    gpus_per_node: int = Field(0, ge=0, le=16, description="GPUs on each node (sbatch --gpus-per-node).")
    cpus_per_task: int | None = Field(None, ge=1, le=512, description="CPU cores per node (sbatch --cpus-per-task); "
                                                                       "default: the partition's.")
    mem_gb: float | None = Field(None, gt=0, le=8192, description="Memory per node in GB (sbatch --mem).")
    time_limit_min: int | None = Field(None, ge=1, le=60 * 24 * 60, description="Minutes before Slurm stops the "
                                                                                 "job (sbatch --time).")
    partition: str | None = Field(None, pattern=r"^[A-Za-z0-9_.\-]{1,64}$",
                                  description="A Slurm partition other than the engine's default.")

    def describe(self, processes: int) -> str:
        """In words, for the CLI and the studio: "2 processes on 1 node, 1 GPU/node, 8 CPUs, 32 GB, 240 min"."""
        parts = [f"{processes} process{'es' if processes > 1 else ''} on {self.nodes} "
                 f"node{'s' if self.nodes > 1 else ''}"]
        parts += [f"{self.gpus_per_node} GPU/node"] if self.gpus_per_node else []
        parts += [f"{self.cpus_per_task} CPUs"] if self.cpus_per_task else []
        parts += [f"{self.mem_gb:g} GB"] if self.mem_gb else []
        parts += [f"{self.time_limit_min} min"] if self.time_limit_min else []
        parts += [f"partition {self.partition}"] if self.partition else []
        return ", ".join(parts)


class JobSubmit(BaseModel, extra="forbid"):
    kind: str
    params: dict[str, Any] = {}
    after: list[BigInt] = Field([], description="Job ids that must succeed before this one starts.")
    num_processes: int = Field(1, ge=1, le=64, description="More than 1 launches through `accelerate launch`, "
                                                           "spread evenly over `resources.nodes`.")
    resources: JobResources = JobResources()
    max_attempts: int = Field(2, ge=1, le=10, description="Attempts when the server dies under the job.")
    heartbeat_timeout: float = Field(300, ge=1, le=86400, description="Seconds without life before it is ended.")

    @model_validator(mode="after")
    def _processes_fill_nodes(self) -> JobSubmit:
        if self.num_processes % self.resources.nodes:
            raise ValueError(f"num_processes ({self.num_processes}) must be a multiple of resources.nodes "
                             f"({self.resources.nodes}): every node runs the same number of processes")
        return self


class PipelineStep(JobSubmit):
    key: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    after_keys: list[str] = Field([], description="Keys of earlier steps of the same pipeline.")


class PipelineSubmit(BaseModel, extra="forbid"):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    steps: list[PipelineStep] = Field(min_length=1, max_length=100)


class Progress(BaseModel):
    done: FiniteOrNone = None  # NaN or infinity: unknown (null)
    total: FiniteOrNone = None
    message: str | None = None

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.done is not None and self.total else None


class JobInfo(BaseModel):
    id: int
    kind: str
    state: JobState
    params: dict[str, Any]
    after: list[int]
    pipeline_id: str | None
    pipeline_key: str | None
    attempt: int
    max_attempts: int
    num_processes: int
    resources: JobResources
    heartbeat_timeout: float
    pid: int | None
    slurm_job_id: str | None = Field(None, description="Set when the Slurm executor submitted the running attempt.")
    progress: Progress
    result: Any = None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None


class JobPage(BaseModel):
    total: int
    items: list[JobInfo]


class PipelineInfo(BaseModel):
    id: str
    jobs: list[JobInfo]


class JobEvent(BaseModel):
    seq: int
    attempt: int
    event: str
    message: str | None
    created_at: datetime


class MetricPoint(BaseModel):
    name: str = Field(pattern=METRIC_NAME, description="Letters, digits and _ . - /, e.g. train/loss.")
    step: BigInt
    value: float = Field(description="NaN and infinity are kept (a diverged loss is worth seeing); series give "
                                     "them as null.")


class JobReport(BaseModel, extra="forbid"):
    attempt: BigInt
    progress: Progress | None = None
    metrics: list[MetricPoint] = Field([], max_length=100_000)
    alive: bool = True


class JobReportReply(BaseModel):
    state: JobState


class JobFinish(BaseModel, extra="forbid"):
    attempt: BigInt
    state: JobState
    result: FiniteJSON = Field(None, description="Any JSON; NaN and infinity in it are kept as null.")
    error: str | None = Field(None, max_length=100_000)


class ArtifactIn(BaseModel, extra="forbid"):
    attempt: BigInt
    path: str = Field(max_length=4096, description="A file inside the workspace.")
    kind: str = Field(pattern=r"^[a-z0-9_\-]{1,64}$")


class Artifact(BaseModel):
    id: int
    job_id: int
    kind: str
    path: str
    sha256: str
    size_bytes: int
    created_at: datetime


class MetricSeries(BaseModel):
    name: str
    steps: list[int]
    values: list[float | None] = Field(description="null where the job reported NaN or infinity.")


class LogChunk(BaseModel):
    text: str
    offset: int = Field(description="Where the next read should start.")
    finished: bool = Field(description="The job has ended: nothing more will be written.")


class EvaluationResult(BaseModel):
    """What an evaluate job returns (its `result`): the headline figures on one set of real images, the split kind
    they rest on and the model's cost. The full report — per class, confusion, calibration — is its
    `evaluation` artifact; the per-image predictions its `predictions` artifact. Fields added later default to
    None, so results of older jobs still read."""

    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    auc_ovr: float | None
    ece: float | None
    single_view: dict[str, float | None] = Field(description="The same figures from one view, without TTA.")
    tta: bool
    macro_f1_1view: float | None = None
    arm: str | None = Field(None, description="What the model trained on, in words (a train run's arm).")
    arch: str
    split_kind: str | None = Field(None, description="lesion-aware, per-image or given: how far to trust it.")
    external: str | None = Field(None, description="The import batch evaluated on, when not the version's test.")
    n: int | None = Field(None, description="Images evaluated.")
    params: int | None = None
    gflops: float | None = None
    latency_ms: float | None = Field(None, description="Batch-1 eager latency.")


class JobKindInfo(BaseModel):
    name: str
    description: str
    params_schema: dict[str, Any]


# dataset versions ---------------------------------------------------------------------------------------------
class DatasetFreeze(BaseModel, extra="forbid"):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")
    note: str | None = Field(None, max_length=2000)
    accepts_needed: int | None = Field(None, ge=1, le=20, description="Policy: k accepts and no reject; default: "
                                                                     "the review policy in force.")
    # INTEGER: the manifest query compares the ranks with it as one
    targets: PerClass[Annotated[int, Field(ge=0, le=MAX_INTEGER)]] | None = Field(
        None, description="At most this many synthetic images per class.")
    selection: str = Field("reviewed", pattern=r"^(reviewed|scores|all|none)$",
                           description="reviewed: accepted under the policy; scores: automatic curation by the "
                                       "score job; all: every generated image; none: real only.")
    min_intended_prob: float = Field(0.5, ge=0, le=1, description="For selection=scores.")


class DatasetVersion(BaseModel):
    id: str
    name: str
    note: str | None
    created_at: datetime
    policy: dict[str, Any]
    counts: dict[str, dict[str, ClassCounts]] = Field(description="source -> split -> class -> images")
    lineage: dict[str, Any] = Field(description="Review events, generation jobs and checkpoints behind it.")
    manifest_path: str
    manifest_sha256: str
    n_images: int


class DatasetItem(BaseModel):
    id: str
    label: ClassName
    split: str
    source: str
    path: str
    lesion_id: str | None
    generation_job: int | None
    checkpoint: str | None


# models --------------------------------------------------------------------------------------------------------
class _ModelFields(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")
    arch: str
    image_size: int = Field(ge=1, le=MAX_INTEGER)
    dataset: str | None
    classifier_path: str
    torchscript_path: str
    onnx_path: str
    evaluation: Annotated[dict[str, Any] | None, AfterValidator(finite_or_none)]  # NaN, ±inf: null
    check_max_abs_diff: float = Field(allow_inf_nan=False)


class ModelIn(_ModelFields, extra="forbid"):
    attempt: BigInt


class ModelInfo(_ModelFields):
    id: int
    job_id: int
    served: bool
    created_at: datetime


# users and sign-in ---------------------------------------------------------------------------------------------
Role = Literal["admin", "reviewer", "viewer"]


class UserIn(BaseModel, extra="forbid"):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    password: str = Field(min_length=8, max_length=1024)
    role: Role = "reviewer"


class UserInfo(BaseModel):
    name: str
    role: Role
    created_at: datetime | None = None


class Login(BaseModel, extra="forbid"):
    name: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class Session(BaseModel):
    token: str = Field(description="Send as 'Authorization: Bearer <token>' until it expires.")
    expires_at: datetime
    user: UserInfo


# review --------------------------------------------------------------------------------------------------------
Decision = Literal["accept", "reject", "unsure"]
Reason = Literal["unrealistic_texture", "wrong_class_features", "artifact", "duplicate", "near_copy", "other"]
PREVIEW_FOLDER = "ldm-preview-step"  # train_ldm's preview images point at a folder "<this><step, 7 digits>"

ReviewSort = Literal["newest", "oldest", "intended_prob", "-intended_prob", "judge_prob", "-judge_prob",
                     "nearest_real_dist", "-nearest_real_dist", "dup_group", "sharpness"]


class ReviewIn(BaseModel, extra="forbid"):
    image_ids: list[str] = Field(min_length=1, max_length=1000)
    decision: Decision
    reasons: list[Reason] = Field([], description="Needed for a rejection; 'other' needs a note.")
    note: str | None = Field(None, max_length=2000)
    request_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{8,64}$",
                                   description="A fresh id per decision (e.g. a UUID): sent again with a retry, the "
                                               "decision is recorded once and its events are returned again.")


class ReviewEvent(BaseModel):
    seq: int
    image_id: str
    label: ClassName
    reviewer: str
    decision: Literal["accept", "reject", "unsure", "undo"]
    undoes: int | None = Field(description="For an undo: the decision it takes back.")
    reasons: list[str]
    note: str | None
    created_at: datetime
    undone_by: int | None = Field(description="The undo event that took this decision back, if any.")


class ReviewHistory(BaseModel):
    total: int
    offset: int
    items: list[ReviewEvent]


class ReviewItem(BaseModel):
    id: str
    label: ClassName
    generation_job: int | None
    seed: int | None
    guidance: float | None
    steps: int | None
    checkpoint: str | None
    created_at: datetime
    status: Literal["pending", "accepted", "rejected"] | None = Field(description="None while blind reading hides "
                                                                              "it (see `blinded`).")
    accepts: int | None
    rejects: int | None
    reviewers: list[str] | None
    blinded: bool = Field(description="Blind reading: you have not decided this image, so others' decisions on it "
                                      "(status, accepts, rejects, reviewers) are withheld.")
    my_decision: Decision | None = Field(description="The signed-in reviewer's own live decision.")
    my_seq: int | None = Field(description="Its event number (what undo takes).")
    intended_prob: float | None = Field(description="The selector's (reference classifier's) probability of the "
                                                    "intended class: what generate ranked candidates by.")
    nearest_real_dist: float | None
    nearest_real_id: str | None
    near_copy: float | None
    dup_group: float | None
    sharpness: float | None
    predicted_class: ClassName | None = Field(description="The selector's most likely class.")
    judge_prob: float | None = Field(description="The independent judge's probability of the intended class.")
    judge_class: ClassName | None = Field(description="The judge's most likely class.")

    @computed_field(description="Made from a checkpoint part way through diffusion training (a preview, see "
                                "train_ldm's preview_at): the step it was made at; None for a finished model's image.")
    @property
    def preview_step(self) -> int | None:
        found = re.search(rf"{PREVIEW_FOLDER}(\d+)", self.checkpoint or "")
        return int(found.group(1)) if found else None


class ReviewPage(BaseModel):
    total: int
    offset: int
    items: list[ReviewItem]


class ReviewPolicyIn(BaseModel, extra="forbid"):
    accepts_needed: int | None = Field(None, ge=1, le=20, description="An image is accepted with k accepts and "
                                                                      "no reject; default: as in force.")
    blind: bool | None = Field(None, description="Blind reading: a reviewer sees no other reviewer's decision on an "
                                                 "image until they have decided it; default: as in force.")


class ReviewPolicy(BaseModel):
    accepts_needed: int = Field(ge=1, le=20, description="An image is accepted with k accepts and no reject.")
    blind: bool = Field(description="Blind reading (admins always see everything).")
    changed_by: str | None = Field(description="Who set it (None: the default, never changed).")
    changed_at: datetime | None


class Agreement(BaseModel):
    reviewers: list[str]
    images: int = Field(description="Images decided by two or more reviewers: what kappa rests on.")
    enough: bool = Field(description="Whether `images` reaches `min_images`: below it, read kappa as 'not enough "
                                     "images'.")
    min_images: int
    percent_agreement: float | None = Field(description="Share of reader pairs on an image that agree, averaged "
                                                        "over the images.")
    kappa: float | None
    kappa_ci95: tuple[float, float] | None = Field(description="95% interval of kappa from resampling images.")
    method: Literal["cohen", "fleiss"] | None
    table: dict[str, dict[str, int]] = Field(description="Reader pairs by decision: table[first][second], the "
                                                         "readers of a pair in name order.")


# the blinded visual Turing test -------------------------------------------------------------------------------
TuringSays = Literal["real", "synthetic"]


class TuringSessionIn(BaseModel, extra="forbid"):
    name: str = Field(min_length=1, max_length=100)
    classes: list[ClassName] = Field(min_length=1, max_length=7)
    n_images: int = Field(ge=1, le=2000, description="Items in the session, real and synthetic together.")
    real_fraction: float = Field(0.5, ge=0, le=1, description="Share of real images (0.5: as many real as "
                                                              "synthetic).")
    ask_class: bool = Field(False, description="Readers also name the class of each image.")
    ask_realism: bool = Field(False, description="Readers also rate realism, 1 (clearly artificial) to 5.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Of the sampling; default: a random one.")


class TuringSessionInfo(BaseModel):
    id: int
    name: str
    created_by: str
    created_at: datetime
    classes: list[ClassName]
    n_images: int
    real_fraction: float | None = Field(description="Admins only: readers who knew it could balance their "
                                                    "guesses.")
    ask_class: bool
    ask_realism: bool
    image_side: int = Field(description="Every item is served square at this side, real and synthetic alike.")
    closed: bool
    closed_by: str | None
    closed_at: datetime | None
    n_items: int
    n_answers: int
    n_readers: int
    my_answered: int = Field(description="Items the caller has answered.")


class TuringItem(BaseModel):
    """One image as a reader sees it: a random key and re-encoded pixels, nothing that tells where it came from."""
    key: str
    position: int = Field(description="Its place in the caller's own order, from 1.")
    png: Base64Bytes = Field(description="The image re-encoded as PNG without metadata, base64.")


class TuringNext(BaseModel):
    session_id: int
    total: int
    answered: int
    done: bool = Field(description="The caller has answered every item.")
    classes: list[ClassName]
    ask_class: bool
    ask_realism: bool
    item: TuringItem | None


class TuringAnswerIn(BaseModel, extra="forbid"):
    key: str = Field(min_length=1, max_length=64, description="The item key GET …/next gave.")
    says: TuringSays
    class_guess: ClassName | None = None
    realism: int | None = Field(None, ge=1, le=5)


class TuringAnswer(BaseModel):
    session_id: int
    key: str
    reviewer: str
    says: TuringSays
    class_guess: str | None
    realism: int | None
    created_at: datetime
    answered: int = Field(description="Items the reader has answered now.")
    total: int


class TuringStats(BaseModel):
    n: int = Field(description="Answers.")
    correct: int
    accuracy: float | None
    p_value: float | None = Field(description="Exact two-sided binomial test of the accuracy against 50% chance.")
    n_synthetic: int
    n_real: int
    sensitivity: float | None = Field(description="Synthetic images called synthetic.")
    specificity: float | None = Field(description="Real images called real.")
    class_guesses: int
    class_accuracy: float | None
    realism_real: float | None = Field(description="Mean realism rating of the real images.")
    realism_synthetic: float | None


class TuringFooled(BaseModel):
    image_id: str
    label: ClassName
    key: str
    answers: int
    said_real: int
    share_real: float


class TuringResults(BaseModel):
    session: TuringSessionInfo
    readers: list[str]
    overall: TuringStats
    per_class: dict[str, TuringStats]
    per_reviewer: dict[str, TuringStats]
    agreement: dict[str, Agreement] = Field(description="On real/synthetic: 'overall', then per class.")
    fooled: list[TuringFooled] = Field(description="Synthetic images most of their readers called real.")
    fooled_rule: str


class BackupIn(BaseModel, extra="forbid"):
    path: str = Field(max_length=4096, description="An empty folder on the server's machine, outside the "
                                                   "workspace: where the database export is written.")


class DatabaseBackup(BaseModel):
    path: str
    schema_version: int
    counts: dict[str, int] = Field(description="Rows per table, from the same snapshot as the export.")
