"""The judge reports how faithful generated lesions are and never picks them: `generate` must not load it, even
when the judge's job is upstream of it (as in the generator chain) and its weights are one lookup away."""

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from engine.labels import CLASSES
from engine.models import classifier
from engine.models.ldm import LatentDiffusion, UNetConfig, VAEConfig, build_unet, build_vae, new_noise_scheduler
from engine.recipes import generate

_touched: list[str] = []
_watching: list[Path] = []  # folders whose every access is recorded while a test watches them


def _audit(event: str, args: tuple) -> None:
    if _watching and event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], str | Path):
        path = str(args[0])
        if any(path.startswith(str(folder)) for folder in _watching):
            _touched.append(path)


sys.addaudithook(_audit)  # audit hooks cannot be removed; it records only while `_watching` names a folder


class FakeApi:
    """What generate asks the engine for: finished jobs and their artifacts, the real train manifest, storage."""

    def __init__(self, jobs: dict[int, tuple[str, str, str]], real: list[dict]):
        self._jobs = jobs  # id -> (kind, artifact kind, path)
        self._real = real
        self.added: list[dict] = []

    def jobs(self, kind=None, state=None, limit=100):
        return SimpleNamespace(items=[SimpleNamespace(id=i) for i, (k, *_) in sorted(self._jobs.items(), reverse=True)
                                      if k == kind])

    def job_artifacts(self, job_id):
        _, kind, path = self._jobs[job_id]
        return [SimpleNamespace(kind=kind, path=path)]

    def manifest(self, source="real", split=None, **_):
        return [SimpleNamespace(model_dump=lambda item=item: item) for item in self._real if item["split"] == split]

    def add_synthetic(self, job_id, attempt, images):
        self.added += images
        return [f"new{len(self.added)}-{i}" for i in range(len(images))]


@pytest.fixture
def workspace(tmp_path):
    """A diffusion model, a reference classifier and a judge as finished jobs 1-3, and a few real images."""
    torch.manual_seed(0)
    ldm = LatentDiffusion(build_vae(VAEConfig((16, 32)), 32), build_unet(UNetConfig((32, 32), 1, (False, True)), 16,
                                                                           4, 7), new_noise_scheduler(), 7, 0.5)
    ldm.save_pretrained(tmp_path / "jobs/1/artifacts/ldm")
    for job, folder in ((2, "reference"), (3, "judge")):
        model = classifier.build_classifier("small_cnn", len(CLASSES), 32, width=8)
        classifier.save_classifier(model, tmp_path / f"jobs/{job}/artifacts/{folder}",
                                   {"arch": "small_cnn", "image_size": 32, "kwargs": {"width": 8},
                                    "classes": list(CLASSES)})
    real = []
    for i in range(6):
        path = f"{i:02d}/real{i}.png"
        (tmp_path / "images" / path).parent.mkdir(parents=True)
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
            tmp_path / "images" / path)
        real.append({"id": f"real{i}", "label": "df", "split": "train", "path": path, "lesion_id": None,
                     "source": "real"})
    api = FakeApi({1: ("train_ldm", "ldm_model", "jobs/1/artifacts/ldm"),
                   2: ("train_reference", "reference_classifier", "jobs/2/artifacts/reference"),
                   3: ("train_judge", "judge_classifier", "jobs/3/artifacts/judge")}, real)
    ctx = SimpleNamespace(job_id=9, attempt=1, after=[1, 2, 3], workspace=tmp_path, api=api, log=lambda *_: None,
                          progress=lambda *_, **__: None, latest_checkpoint=lambda: None,
                          save_checkpoint=lambda *_, **__: None, should_stop=lambda: False)
    return tmp_path, ctx


def watching(folder: Path):
    class Watch:
        def __enter__(self):
            _touched.clear()
            _watching.append(folder.resolve())
            return _touched

        def __exit__(self, *exc):
            _watching.clear()

    return Watch()


def test_the_watch_sees_a_classifier_being_loaded(workspace):
    root, _ = workspace
    with watching(root / "jobs/3") as touched:
        classifier.load_reference(root / "jobs/3/artifacts/judge")
    assert touched  # the check below could not pass by seeing nothing


def test_generate_selects_with_the_reference_and_never_touches_the_judge(workspace, monkeypatch):
    root, ctx = workspace
    loaded = []
    real_load = classifier.load_classifier
    monkeypatch.setattr(classifier, "load_classifier", lambda folder: loaded.append(Path(folder)) or real_load(folder))
    params = generate.Params(quotas={"df": 2}, oversample=2.0, steps=2, batch_size=2, guidance=2.0, realism_k=1)
    with watching(root / "jobs/3") as touched:
        result = generate.run(params, ctx)
    assert result["generated"] == 2 and len(ctx.api.added) == 2
    assert loaded == [root / "jobs/2/artifacts/reference"]  # the selector, and nothing else
    assert touched == [], f"generate read the judge's files: {touched}"
