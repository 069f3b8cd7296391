"""The `dermae` command against a real server, and `dermae up` stopping everything it started."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest

from engine.client import Client
from tests import factories


def dermae(server, *args, timeout=120):
    env = {**os.environ, "DERMAE_WORKSPACE": str(server.settings.workspace)}
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_import_then_stats_json(server, tmp_path):
    done = dermae(server, "import", "ham10000", str(factories.ham_tree(tmp_path / "ham", n_per_class=10)))
    assert done.returncode == 0, done.stderr
    assert "70 of 70 images added" in done.stdout
    stats = json.loads(dermae(server, "stats", "--json").stdout)
    assert set(stats) == {"real", "synthetic"}
    assert set(stats["real"]) == {"train", "val", "test"}
    assert set(stats["synthetic"]) == {"pending", "accepted", "rejected"}
    assert sum(stats["real"][s]["nv"] for s in stats["real"]) == 10
    assert dermae(server, "import", "ham10000", str(tmp_path / "ham")).stdout.startswith("0 of 70")


def test_skip_missing_lists_the_rows_it_left_out(server, tmp_path):
    root = factories.ham_tree(tmp_path / "ham", n_per_class=1)
    metadata = root / "HAM10000_metadata.csv"
    metadata.write_text(metadata.read_text() + "HAM_99,ISIC_gone,df,histo,40,male,back\n")
    refused = dermae(server, "import", "ham10000", str(root))
    assert refused.returncode == 1 and "line 9: no image file for image_id 'ISIC_gone'" in refused.stderr
    assert "--skip-missing" in refused.stderr
    done = dermae(server, "import", "ham10000", str(root), "--skip-missing")
    assert done.returncode == 0, done.stderr
    assert "7 of 7 images added" in done.stdout and "split lesion-aware" in done.stdout
    assert "1 row(s) skipped" in done.stdout and "line 9: no image file for image_id 'ISIC_gone'" in done.stdout
    wrong = dermae(server, "import", "medmnist", str(tmp_path / "d.npz"), "--skip-missing")
    assert wrong.returncode == 2 and "--skip-missing is for ham10000 and isic" in wrong.stderr


def test_errors_are_one_clear_message_and_exit_code_1(server, tmp_path):
    missing = dermae(server, "import", "folder", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    bad = dermae(server, "import", "dicom", str(tmp_path))
    assert bad.returncode == 2 and "unknown format 'dicom'" in bad.stderr


def test_submit_records_the_resources_a_job_asks_for_and_refuses_unknown_ones(server):
    """`-r` are the sbatch options under --executor slurm; the local executor runs this one-node job as usual."""
    submitted = dermae(server, "submit", "selftest", "-p", "steps=2", "-r", "cpus_per_task=2", "-r", "mem_gb=1.5",
                       "-r", "time_limit_min=10")
    assert submitted.returncode == 0, submitted.stderr
    job_id = int(submitted.stdout.strip())
    assert server.client().job(job_id).resources.model_dump(exclude_none=True) == {
        "nodes": 1, "gpus_per_node": 0, "cpus_per_task": 2, "mem_gb": 1.5, "time_limit_min": 10}
    shown = dermae(server, "jobs", "show", str(job_id))
    assert "asks     1 process on 1 node, 2 CPUs, 1.5 GB, 10 min" in shown.stdout
    unknown = dermae(server, "submit", "selftest", "-r", "gpus=4")
    assert unknown.returncode == 2 and "resources.gpus: Extra inputs are not permitted" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    malformed = dermae(server, "submit", "selftest", "-r", "nodes")
    assert malformed.returncode == 2 and "--resource takes KEY=VALUE" in malformed.stderr


def test_without_a_server_the_cli_says_how_to_start_one(tmp_path):
    env = {**os.environ, "DERMAE_WORKSPACE": str(tmp_path)}
    env.pop("DERMAE_API_URL", None)
    result = subprocess.run([sys.executable, "-m", "engine.cli", "stats"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 1 and "dermae serve" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_demo_imports_data_makes_accounts_starts_generation_and_the_studio_and_ctrl_c_stops_everything(tmp_path,
                                                                                                     stop):
    workspace = tmp_path / "ws"
    env = {**os.environ, "DERMAE_WORKSPACE": str(workspace), "HOME": str(tmp_path)}  # no medmnist cache
    env["DERMAE_DATA"] = "phantom"  # fast, and the same wherever the suite runs
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "demo", "--port", "0", "--studio-port", "0",
                             "--profile", "smoke"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            lines.append(line)
            if "Press Ctrl-C" in line or proc.poll() is not None:
                break
        output = "".join(lines)
        assert "PHANTOM" in output and "images added" in output, output
        url = json.loads((workspace / "server.json").read_text())["url"]
        assert httpx.get(f"{url}/health").status_code == 200
        studio = re.search(r"DerMAE Studio running at (\S+)", output).group(1)
        assert httpx.get(f"{studio}/_stcore/health").text == "ok"
        name, password = re.search(r"sign in as '(\w+)' \(admin\) with password '([^']+)'", output).groups()
        client = Client(url, None)
        assert client.login(name, password).user.role == "admin"
        assert "generator chain" in output and client.jobs(kind="train_vae").total == 1
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
        proc.send_signal(stop)
        # a hang detector, not a timing: stopping waits for a running job to checkpoint
        proc.wait(timeout=90)
        _, alive = psutil.wait_procs(children, timeout=30)
        assert not alive
        assert not (workspace / "server.json").exists()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_unknown_pipeline_and_profile_are_usage_errors(server):
    assert dermae(server, "pipeline", "nope").returncode == 2
    bad = dermae(server, "pipeline", "generator", "--profile", "huge")
    assert bad.returncode == 2 and "unknown profile 'huge'" in bad.stderr


def test_the_server_does_not_import_torch():
    """The engine server starts in about a second because recipes keep torch out of their module level."""
    code = "import sys, engine.api.app, engine.cli; assert 'torch' not in sys.modules, 'torch imported'"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60).returncode == 0


def test_users_add_ls_and_the_review_policy(server):
    added = subprocess.run([sys.executable, "-m", "engine.cli", "users", "add", "ann", "--role", "reviewer",
                            "--password-stdin"], input="a long password\n", capture_output=True, text=True,
                           env={**os.environ, "DERMAE_WORKSPACE": str(server.settings.workspace)}, timeout=60)
    assert added.returncode == 0 and "added ann (reviewer)" in added.stdout, added.stderr
    assert "ann" in dermae(server, "users", "ls").stdout
    assert Client(server.url, None).login("ann", "a long password").user.name == "ann"
    assert "2 accept(s)" in dermae(server, "policy", "2").stdout
    shown = dermae(server, "policy").stdout
    assert "2 accept(s)" in shown and "reading is blind" in shown  # blind by default
    assert "reading is open" in dermae(server, "policy", "--no-blind").stdout
    assert "2 accept(s)" in dermae(server, "policy").stdout  # a change of one keeps the other
    assert "1 accept(s) no reject; reading is blind" in dermae(server, "policy", "1", "--blind").stdout.replace(
        " and", "")


def test_the_train_table_shows_each_arm_and_its_difference_from_real_only_with_an_interval(capsys):
    from types import SimpleNamespace

    from engine.cli.runs import print_comparison

    result = {"arm": "efficientnet_b0: real only", "arch": "efficientnet_b0", "macro_f1": 0.523,
              "macro_f1_1view": 0.5, "balanced_accuracy": 0.551, "accuracy": 0.738, "auc_ovr": 0.914, "ece": 0.117,
              "params": 4.02e6, "gflops": 0.512, "latency_ms": 17.6, "split_kind": "lesion-aware"}
    kd = result | {"arm": "efficientnet_b0: real only + MAE + KD"}
    curated = result | {"arm": "efficientnet_b0: real + 40 auto-curated (from scores) synthetic + MAE + KD"}
    jobs = [SimpleNamespace(id=2, kind="evaluate", result=result, pipeline_key="baseline.efficientnet_b0.eval"),
            SimpleNamespace(id=1, kind="distill", result={"val": {}}, pipeline_key="baseline.efficientnet_b0"),
            SimpleNamespace(id=4, kind="evaluate", result=kd, pipeline_key="real_kd.efficientnet_b0.eval"),
            SimpleNamespace(id=6, kind="evaluate", result=curated, pipeline_key="curated.efficientnet_b0.eval")]
    labels = [0, 1, 2, 3, 4, 5, 6] * 20
    # real only says akiec to everything; the KD arm is always right, and so is the curated arm
    predicted = {2: [0] * 140, 4: labels, 6: labels}
    artifacts = {job_id: json.dumps({"ids": list(range(140)), "lesion_ids": [f"L{i}" for i in range(140)],
                                     "labels": labels, "predicted": p}).encode() for job_id, p in predicted.items()}
    client = SimpleNamespace(pipeline=lambda pipeline_id: SimpleNamespace(jobs=jobs),
                             job_artifacts=lambda job_id: [SimpleNamespace(id=job_id * 10, kind="predictions")],
                             artifact_bytes=lambda job_id, artifact_id: artifacts[job_id])
    print_comparison(client, "train-cpu64-1")
    out = capsys.readouterr().out
    assert "real test split (lesion-aware)" in out
    header, row = out.split("real test split (lesion-aware)")[1].strip().splitlines()[:2]
    assert header.split()[:4] == ["arm", "macro-F1", "1", "view"]
    assert row.split()[-9:] == ["0.523", "0.500", "0.551", "0.738", "0.914", "0.117", "4.02M", "0.512", "17.6"]
    [difference] = [line for line in out.splitlines() if line.startswith("efficientnet_b0: real only + MAE + KD")
                    and "[" in line]
    assert "macro-F1 +0.964 [" in difference and "]*" in difference  # 1.0 - 1/28, an interval above zero
    beyond_teacher = out.split("curated minus real only + MAE + KD")[1].splitlines()[1]
    assert "macro-F1 +0.000 [+0.000, +0.000]" in beyond_teacher  # what the synthetic images add: nothing here
    assert "curated minus uncurated" not in out  # no uncurated arm in this run


def test_following_a_job_draws_each_step_once_however_often_it_polls(monkeypatch, capsys):
    from types import SimpleNamespace

    from engine.cli import jobs as cli_jobs
    from engine.schemas import JobState, LogChunk

    # The job reports steps 3, 3, 3, 6, 6, 9 to successive polls, then ends.
    states = iter([(3, "running")] * 3 + [(6, "running")] * 2 + [(9, "running"), (9, "succeeded")])

    def job(job_id):
        done, state = next(states)
        progress = SimpleNamespace(total=9, done=done, message=f"loss {done}")
        return SimpleNamespace(progress=progress, state=JobState(state), error=None)

    logs = iter(["step 3\n", "", "", "", "", "", "step 9\njob 7 succeeded\n"])  # the runner's last line
    client = SimpleNamespace(job=job, job_logs=lambda job_id, offset: LogChunk(text=next(logs), offset=0,
                                                                              finished=True))
    monkeypatch.setattr(cli_jobs.time, "sleep", lambda seconds: None)
    assert cli_jobs.follow(client, 7) == 0
    out, err = capsys.readouterr()
    drawn = [line for line in err.replace("\r", "\n").splitlines() if re.search(r"\d/9", line)]
    # Each step once; then 9 redrawn below the log's last lines, and by close().
    assert [re.search(r"(\d)/9", line).group(1) for line in drawn] == ["3", "6", "9", "9", "9"]
    assert drawn[1].endswith("loss 6]")
    assert out.splitlines() == ["step 3", "step 9", "job 7 succeeded"]  # the outcome once, not echoed again
