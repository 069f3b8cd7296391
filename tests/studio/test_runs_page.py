"""The Runs & models page through Streamlit's AppTest, against a real engine server holding two finished train runs
(the smoke profile's real chain of jobs), a generator job and two exported models.

The runs are recorded in the workspace's store before the server opens it, with the same store calls the API
makes when a job process reports (claim, metrics, artifacts, result, model): running the chain takes minutes, and
a job process can only report for the kind it really runs, so an `evaluate` job cannot be played by a selftest."""

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from engine.files import sha256_path
from engine.labels import CLASSES
from engine.metrics import classification_report
from engine.pipelines import train_chain
from engine.profiles import load_profile
from engine.schemas import DatasetVersion
from engine.settings import Settings
from engine.store import Store
from tests.factories import image_bytes
from tests.processes import start_server
from tests.studio.apptest import signed_in

PAGE = "pages/runs.py"
TEST_IMAGES = 140


class Recorder:
    """Plays the job processes of finished jobs: what they would have reported, written through the store."""

    def __init__(self, store: Store, workspace: Path):
        self.store, self.workspace = store, workspace

    def start(self, job_id: int) -> int:
        return self.store.jobs.claim(job_id)["attempt"]

    def metric(self, job_id: int, attempt: int, name: str, values: list[float]) -> None:
        points = [{"name": name, "step": step, "value": v} for step, v in enumerate(values, 1)]
        self.store.jobs.report(job_id, attempt, progress=None, metrics=points, alive=True)

    def artifact(self, job_id: int, attempt: int, name: str, kind: str, data: bytes | None = None) -> Path:
        path = self.workspace / "jobs" / str(job_id) / "artifacts" / name
        if data is None:  # a folder: a saved model
            path.mkdir(parents=True)
            (path / "weights.bin").write_bytes(b"weights")
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        digest, size = sha256_path(path)
        self.store.jobs.add_artifact(job_id, attempt, kind, path.relative_to(self.workspace).as_posix(), digest,
                                     size)
        return path

    def evaluation(self, job_id: int, attempt: int, arm: str, arch: str, skill: float) -> dict:
        """A real classification report of made-up predictions; `skill` sets how often the true class wins."""
        rng = np.random.default_rng(job_id)
        labels = np.arange(TEST_IMAGES) % len(CLASSES)
        logits = rng.normal(size=(TEST_IMAGES, len(CLASSES))) + skill * np.eye(len(CLASSES))[labels]
        probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        report = classification_report(probs, labels, CLASSES) | {
            "arm": arm, "arch": arch, "split": "test (real)",
            "cost": {"params": 1_000_000 + job_id, "flops": 2e8, "latency_ms": 3.5, "latency_ms_fast": 2.0}}
        self.artifact(job_id, attempt, "evaluation.json", "evaluation", json.dumps(report).encode())
        predictions = {"ids": [f"img{i}" for i in range(TEST_IMAGES)],
                       "lesion_ids": [f"lesion{i // 2}" for i in range(TEST_IMAGES)], "labels": labels.tolist(),
                       "predicted": probs.argmax(1).tolist()}
        self.artifact(job_id, attempt, "predictions.json", "predictions", json.dumps(predictions).encode())
        return report


SEEDED_VERSION = DatasetVersion(
    id="phantom-seeded", name="phantom", note=None, created_at=datetime(2026, 1, 1), policy={"selection": "reviews"},
    counts={"real": {"train": {"df": 10}}, "synthetic": {"train": {"df": 12}}}, lineage={}, manifest_path="m",
    manifest_sha256="0" * 64, n_images=22)


def seed_train_run(recorder: Recorder, pipeline_id: str, skill: float) -> dict[str, dict]:
    """The smoke profile's train chain, every job finished as its recipe would finish it. {key: {job, result,
    report}}."""
    chain = train_chain(load_profile("smoke"), SEEDED_VERSION)
    specs = [step.model_dump(exclude={"key"}) | {"pipeline_key": step.key} for step in chain.steps]
    ids = recorder.store.jobs.create_many(specs, pipeline_id=pipeline_id)
    seeded: dict[str, dict] = {}
    for job_id, step in zip(ids, chain.steps, strict=True):
        attempt = recorder.start(job_id)
        result: dict = {}
        report = None
        if step.kind in ("pretrain_mae", "finetune", "distill"):
            recorder.metric(job_id, attempt, "train/loss", [1.0 / s for s in range(1, 5)])
            recorder.metric(job_id, attempt, "val/macro_f1", [0.1, 0.2 + job_id / 1000])
        if step.kind == "pretrain_mae":
            for grid_step in (2, 4):
                recorder.artifact(job_id, attempt, f"reconstructions-step{grid_step:07d}.png", "reconstruction_grid",
                                  image_bytes(job_id + grid_step, "PNG", (64, 32)))
            recorder.artifact(job_id, attempt, "encoder", "mae_encoder")
        elif step.kind in ("finetune", "distill"):
            recorder.artifact(job_id, attempt, "classifier", "classifier")
            result = {"arch": step.params.get("arch")}
        elif step.kind == "evaluate":
            trained = seeded[step.after_keys[0]]
            arch = trained["result"]["arch"]
            arm_skill = skill + (1.0 if "curated" in step.key or step.key.startswith("teacher") else 0.0)
            report = recorder.evaluation(job_id, attempt, step.params["arm"], arch, arm_skill)
            result = {k: report[k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "auc_ovr", "ece")} | {
                "macro_f1_1view": report["macro_f1"] - 0.01,
                "arm": step.params["arm"], "arch": arch, "params": report["cost"]["params"],
                "gflops": report["cost"]["flops"] / 1e9, "latency_ms": report["cost"]["latency_ms"]}
        elif step.kind == "export":
            evaluation = seeded[step.after_keys[1]]["report"]
            recorder.artifact(job_id, attempt, "export", "exported_model")
            exported = f"jobs/{job_id}/artifacts/export/weights.bin"
            model = recorder.store.models.register({
                "name": step.params["name"] + f"-{pipeline_id}", "job_id": job_id, "arch": evaluation["arch"],
                "image_size": 32, "dataset": SEEDED_VERSION.id,
                "classifier_path": f"jobs/{job_id}/artifacts/export", "torchscript_path": exported,
                "onnx_path": exported, "evaluation": evaluation, "check_max_abs_diff": 1e-6})
            result = {"model_id": model["id"], "evaluated": True}
        recorder.store.jobs.finish(job_id, attempt, "succeeded", result=result)
        seeded[step.key] = {"job": job_id, "result": result, "report": report}
    return seeded


def seed_generator_job(recorder: Recorder) -> int:
    """A train_ldm job on its own (no pipeline), with its loss curve and two sample grids."""
    [job_id] = recorder.store.jobs.create_many([{"kind": "train_ldm", "params": {"steps": 10}}])
    attempt = recorder.start(job_id)
    recorder.metric(job_id, attempt, "train/loss", [1.0 - s / 20 for s in range(10)])
    for step in (5, 10):
        recorder.artifact(job_id, attempt, f"samples-step{step:07d}.png", "sample_grid",
                          image_bytes(100 + step, "PNG", (56, 64)))
    recorder.artifact(job_id, attempt, "ldm", "ldm_model")
    recorder.store.jobs.finish(job_id, attempt, "succeeded", result={"steps": 10})
    return job_id


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("runs") / "ws"
    workspace.mkdir()
    store = Store(Settings.from_env(workspace).db_path)
    recorder = Recorder(store, workspace)
    try:
        older = seed_train_run(recorder, "train-smoke-00000001", skill=0.5)
        newer = seed_train_run(recorder, "train-smoke-00000002", skill=2.0)
        generator = seed_generator_job(recorder)
    finally:
        store.close()
    server = start_server(workspace)
    server.runs = {"train-smoke-00000001": older, "train-smoke-00000002": newer}
    server.generator_job = generator
    for name, role in {"ada": "admin", "ann": "reviewer"}.items():
        server.client().add_user(name, f"{name}-password", role)
    yield server
    server.stop()


def labelled(at: AppTest, kind: str, label: str):
    return next(w for w in getattr(at, kind) if w.label == label)


def charts(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def chart_titled(at: AppTest, title: str) -> dict:
    found = [c for c in charts(at) if c["layout"].get("title", {}).get("text") == title]
    assert len(found) == 1, [c["layout"].get("title") for c in charts(at)]
    return found[0]


def test_the_newest_train_run_compares_its_arms_side_by_side(server, app):
    at = app("ann")
    run_box = labelled(at, "selectbox", "Run")
    assert run_box.value == "train-smoke-00000002"  # newest first
    jobs = len(server.runs["train-smoke-00000001"])
    assert run_box.options[1].startswith(f"train-smoke-00000001 · succeeded · {jobs}/{jobs} jobs done")
    # The generator job is not a training run. (Not "its id is in no label": labels end with a time of day, so
    # job 25 was "in" every label at 10:25.)
    assert [o.split(" · ")[0] for o in run_box.options] == ["train-smoke-00000002", "train-smoke-00000001"]

    evaluations = [s for s in server.runs["train-smoke-00000002"].values() if s["report"] is not None]
    table = at.dataframe[0].value
    assert table["arm"].tolist() == [s["result"]["arm"] for s in evaluations]
    assert table["arm"].tolist()[:4] == ["teacher (MAE + fine-tune)", "efficientnet_b0: real only",
                                         "efficientnet_b0: real only + MAE + KD",
                                         "efficientnet_b0: real + 12 human-curated synthetic + MAE + KD"]
    for column, key in (("macro-F1", "macro_f1"), ("macro-F1, 1 view", "macro_f1_1view"),
                        ("balanced accuracy", "balanced_accuracy"),
                        ("accuracy", "accuracy"), ("AUC", "auc_ovr"), ("ECE", "ece"), ("GFLOPs", "gflops"),
                        ("latency (ms)", "latency_ms")):
        assert table[column].tolist() == pytest.approx([s["result"][key] for s in evaluations]), column
    assert table["params (M)"].tolist() == pytest.approx([s["result"]["params"] / 1e6 for s in evaluations])

    differences = chart_titled(at, "Each arm minus real only (and curated minus uncurated, minus real + KD), same "
                                   "student: difference and 95% interval")
    arms = [s["result"]["arm"] for s in evaluations]
    paired = [arm for arm in arms if not arm.startswith("teacher") and not arm.endswith(": real only")]
    curated = ["curated" in arm for arm in paired]
    beyond_teacher = [f"{arm} minus real only + MAE + KD" for arm in paired if "curated" in arm]
    for trace in differences["data"]:  # macro-F1, then balanced accuracy: one point per arm, then the curated
        assert trace["y"] == paired + beyond_teacher  # arms against the KD arm of their student
        assert [x > 0.1 for x in trace["x"][:len(paired)]] == curated  # the seeded curated arms are better
        assert all(plus > 0 and minus > 0 for plus, minus in zip(trace["error_x"]["array"][:len(paired)],
                                                                trace["error_x"]["arrayminus"][:len(paired)],
                                                                strict=True))
    intervals = at.dataframe[1].value
    assert intervals["arm"].tolist()[:len(paired)] == paired
    assert intervals["Δ macro-F1"].str.endswith(" *").tolist()[:len(paired)] == curated
    per_class = chart_titled(at, "Per-class F1 on the real test split")
    assert [bar["name"] for bar in per_class["data"]] == table["arm"].tolist()
    for bar, seeded in zip(per_class["data"], evaluations, strict=True):
        assert bar["x"] == list(CLASSES)
        assert bar["y"] == pytest.approx([seeded["report"]["per_class"][c]["f1"] for c in CLASSES])
    confusions = [c for c in charts(at) if c["data"][0]["type"] == "heatmap"]
    assert [c["layout"]["title"]["text"] for c in confusions] == table["arm"].tolist()
    assert confusions[0]["data"][0]["text"] == evaluations[0]["report"]["confusion"]

    run_box.select("train-smoke-00000001").run()
    older = [s["result"]["macro_f1"] for s in server.runs["train-smoke-00000001"].values() if s["report"]]
    assert at.dataframe[0].value["macro-F1"].tolist() == pytest.approx(older)


def test_a_jobs_curves_and_grids_and_any_generator_jobs_too(server, app):
    at = app("ann")
    mae = server.runs["train-smoke-00000002"]["mae"]["job"]
    labelled(at, "selectbox", "Job").select(mae).run()
    assert not at.exception, at.exception
    train = chart_titled(at, "train/*")
    assert [(line["name"], line["x"]) for line in train["data"]] == [("train/loss", [1, 2, 3, 4])]
    assert train["data"][0]["y"] == pytest.approx([1.0, 0.5, 1 / 3, 0.25])
    assert [line["name"] for line in chart_titled(at, "val/*")["data"]] == ["val/macro_f1"]
    [grid] = at.get("image")
    assert grid.captions == ["reconstruction_grid · reconstructions-step0000004.png"]  # the newest first
    slider = labelled(at, "select_slider", "reconstruction grid: which one")
    assert len(slider.options) == 2

    at.segmented_control(key="runs_scope").set_value("all runs and jobs").run()
    labelled(at, "selectbox", "Run").select(f"job {server.generator_job}").run()
    assert not at.exception, at.exception
    assert [line["name"] for line in chart_titled(at, "train/*")["data"]] == ["train/loss"]
    [samples] = at.get("image")
    assert samples.captions == ["sample_grid · samples-step0000010.png"]


def test_an_admin_changes_the_served_model_and_a_reviewer_cannot(server, app):
    models = {m.job_id: m for m in server.client().models()}
    older, newer = (models[run["curated.efficientnet_b0.export"]["job"]] for run in server.runs.values())
    server.client().serve_model(older.id)

    at = app("ann")
    assert "runs_serve" not in [b.key for b in at.button]
    assert any("Only an admin can change the served model" in c.value for c in at.caption)
    assert server.client().served_model().id == older.id

    at = app("ada")
    models_table = at.dataframe[-1].value
    assert models_table.loc[models_table["served"] == "✓", "model"].tolist() == [older.id]
    assert models_table.loc[models_table["model"] == newer.id, "macro-F1"].item() == \
        pytest.approx(newer.evaluation["macro_f1"])
    at.selectbox(key="runs_serve_model").select(newer.id)
    at.button(key="runs_serve").click().run()
    assert not at.exception, at.exception
    assert server.client().served_model().id == newer.id
    models_table = at.dataframe[-1].value
    assert models_table.loc[models_table["served"] == "✓", "model"].tolist() == [newer.id]


def test_an_empty_workspace_says_what_to_do(tmp_path, monkeypatch):
    empty = start_server(tmp_path / "ws")
    try:
        empty.client().add_user("ada", "ada-password", "admin")
        monkeypatch.setenv("DERMAE_API_URL", empty.url)
        at = signed_in("ada", PAGE)
        messages = [i.value for i in at.info]
        assert any("No training run yet" in m and "make train" in m for m in messages)
        assert any("No exported model yet" in m for m in messages)
    finally:
        empty.stop()
