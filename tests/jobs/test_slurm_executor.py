"""The Slurm executor's parts that need no cluster: the batch script it submits, how it reads Slurm's answers, and
why it refuses to start. tests/slurm runs it against a real single-node Slurm."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.jobs.executor import Ended, ExecutorUnusable, LocalExecutor
from engine.jobs.slurm import SlurmExecutor, SlurmJob, describe_end, exit_status, parse_scontrol
from engine.schemas import JobResources, JobSubmit
from engine.worker import workspace_unseen


def job(**overrides) -> dict:
    return {"id": 12, "attempt": 2, "kind": "train_ldm", "num_processes": 1, "resources": {}, "slurm_job_id": None,
            "pid": None} | overrides


def test_one_process_is_the_worker_itself_with_the_resources_as_sbatch_lines(tmp_path):
    executor = SlurmExecutor(tmp_path / "ws", "gpu")
    resources = JobResources(gpus_per_node=2, cpus_per_task=8, mem_gb=1.5, time_limit_min=90).model_dump()
    script = executor.batch_script(job(resources=resources), tmp_path / "ws" / "logs" / "job-12.log")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    sbatch = [line.removeprefix("#SBATCH ") for line in lines if line.startswith("#SBATCH ")]
    assert f"--job-name=dermae-{executor.tag}-12-2" in sbatch and "--partition=gpu" in sbatch
    assert {"--nodes=1", "--gpus-per-node=2", "--cpus-per-task=8", "--mem=1536M", "--time=90",
            "--open-mode=append"} <= set(sbatch)
    assert f"--output={tmp_path / 'ws' / 'logs' / 'job-12.log'}" in sbatch
    assert lines[-1] == f"exec {sys.executable} -m engine.worker 12"
    assert f"DERMAE_LAUNCH_FILE={executor.script_path(12, 2)}" in script
    assert "srun" not in script and "#SBATCH --no-requeue" in script  # a requeued copy would be a stray attempt


def test_a_job_of_several_nodes_is_srun_accelerate_launch_with_one_task_per_node(tmp_path):
    executor = SlurmExecutor(tmp_path, "gpu")
    script = executor.batch_script(job(num_processes=8, resources={"nodes": 2, "gpus_per_node": 4,
                                                                   "partition": "big"}), tmp_path / "x.log")
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script
    assert "#SBATCH --partition=big" in script  # the job's own partition wins over the engine's
    last = script.splitlines()[-1]
    assert last.startswith("exec srun --kill-on-bad-exit=1 bash -c ")
    assert "--num_processes 8 --num_machines 2" in last and "--machine_rank $SLURM_NODEID" in last
    assert "--main_process_ip $MAIN_HOST" in last and last.endswith("-m engine.worker 12'")
    assert "--cpus-per-task" not in last  # none asked: srun takes the partition's
    assert "threads=$(( ${SLURM_CPUS_PER_TASK:-$(nproc)} / 4 ))" in script  # 4 processes share each node's CPUs
    # the script is valid bash, and each task expands its own node id
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)


def test_processes_must_fill_the_nodes_evenly():
    with pytest.raises(ValidationError, match=r"multiple of resources\.nodes"):
        JobSubmit(kind="selftest", num_processes=3, resources=JobResources(nodes=2))
    assert JobSubmit(kind="selftest", num_processes=4, resources=JobResources(nodes=2)).resources.nodes == 2


def test_the_local_executor_refuses_a_job_of_several_nodes(tmp_path):
    with pytest.raises(ExecutorUnusable, match="--executor slurm"):
        LocalExecutor().launch(job(id=3, attempt=1, resources={"nodes": 2}, num_processes=2), tmp_path / "l.log", {})


def test_slurms_answers_read_as_exit_codes_and_reasons():
    ended = parse_scontrol("JobId=41 JobName=dermae-x-3-1 UserId=me(0) JobState=TIMEOUT Reason=TimeLimit "
                           "Dependency=(null) ExitCode=0:15 Command=/ws/jobs/3/slurm/attempt-1.sbatch")
    assert ended == SlurmJob("41", "TIMEOUT", "TimeLimit", 0, 15)
    assert exit_status(ended) == -15
    assert "Slurm job 41 ended TIMEOUT: it reached its time limit" in describe_end(ended)
    assert "TimeLimit" in describe_end(ended)
    cancelled = SlurmJob("42", "CANCELLED", "None", 0, 15)
    assert "scancel from outside the engine" in describe_end(cancelled) and "None" not in describe_end(cancelled)
    assert exit_status(SlurmJob("43", "COMPLETED", "None", 0, 0)) == 0
    assert exit_status(SlurmJob("44", "FAILED", "NonZeroExitCode", 3, 0)) == 3
    assert exit_status(SlurmJob("45", "NODE_FAIL", "None", 0, 0)) == 1  # no code of its own: still a failure


def fake_slurm(folder: Path, partitions: str = "cpu*", nodes: str = "node1", **answers: str) -> dict[str, str]:
    """sinfo/scontrol answering as a cluster with `partitions` and `nodes` would, other commands as `answers` say
    (shell code), the rest doing nothing."""
    folder.mkdir()
    answers = {"sinfo": f'case "$*" in *%P*) echo "{partitions}";; *%N*) echo "{nodes}";; esac',
               "scontrol": f'echo "{nodes}" | tr "," "\\n"'} | answers
    for command in ("sbatch", "squeue", "scancel", "scontrol", "sinfo"):
        path = folder / command
        path.write_text("#!/bin/sh\n" + answers.get(command, "true") + "\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def test_the_server_refuses_to_start_where_slurm_cannot_run_its_jobs(tmp_path, monkeypatch):
    cluster = fake_slurm(tmp_path / "bin", "cpu* gpu", "node1,node2")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ExecutorUnusable, match="missing: sbatch"):
        SlurmExecutor(tmp_path).check("127.0.0.1", "http://127.0.0.1:1")
    monkeypatch.setenv("PATH", cluster["PATH"])
    with pytest.raises(ExecutorUnusable, match="no partition 'huge'; it has: cpu, gpu"):
        SlurmExecutor(tmp_path, "huge").check("127.0.0.1", "http://127.0.0.1:1")
    with pytest.raises(ExecutorUnusable, match=r"listens on 127\.0\.0\.1 only, but partition 'gpu' runs jobs on "
                                               "node1, node2"):
        SlurmExecutor(tmp_path, "gpu").check("127.0.0.1", "http://127.0.0.1:1")
    default = SlurmExecutor(tmp_path)
    default.check("10.0.0.5", "http://10.0.0.5:8765")  # an address the nodes reach: fine
    assert default.partition == "cpu"  # the cluster's default partition


@pytest.mark.slow
def test_dermae_serve_says_why_it_will_not_start_with_slurm(tmp_path):
    env = {**os.environ, **fake_slurm(tmp_path / "bin", "cpu*", "node7"), "DERMAE_WORKSPACE": str(tmp_path / "ws")}
    env.pop("DERMAE_API_TOKEN", None)
    done = subprocess.run([sys.executable, "-m", "engine.cli", "serve", "--port", "0", "--executor", "slurm"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "cannot start with --executor slurm" in done.stderr and "node7" in done.stderr
    assert not (tmp_path / "ws" / "server.json").exists()


def test_a_node_without_the_shared_workspace_is_told_so(tmp_path, monkeypatch):
    from engine.settings import Settings

    settings = Settings.from_env(tmp_path)
    monkeypatch.delenv("DERMAE_LAUNCH_FILE", raising=False)
    assert workspace_unseen(settings) is None  # a local job names no launch file
    launch = tmp_path / "jobs" / "4" / "slurm" / "attempt-1.sbatch"
    monkeypatch.setenv("DERMAE_LAUNCH_FILE", str(launch))
    assert "cannot see the engine's workspace" in workspace_unseen(settings)
    assert "shared" in workspace_unseen(settings)
    launch.parent.mkdir(parents=True)
    launch.write_text("#!/bin/bash\n")
    assert workspace_unseen(settings) is None


def test_sbatch_gets_the_token_in_its_environment_only_and_none_of_a_surrounding_slurm_job(tmp_path, monkeypatch):
    record = tmp_path / "record"
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin", sbatch=f'echo "$@" > {record}.args; env > {record}.env; '
                                                                 'echo "77;cluster"')["PATH"])
    monkeypatch.setenv("SBATCH_PARTITION", "elsewhere")  # would override the script's #SBATCH --partition
    monkeypatch.setenv("SLURM_JOB_ID", "5")  # the engine started inside an allocation
    monkeypatch.setenv("SLURM_CONF", "/etc/slurm/other.conf")  # which cluster: kept
    executor = SlurmExecutor(tmp_path / "ws", "gpu")
    launched = executor.launch(job(), tmp_path / "ws" / "logs" / "job-12.log", {"DERMAE_API_TOKEN": "s3cret-token"})
    assert launched.slurm_job_id == "77"
    script = executor.script_path(12, 2)
    assert (tmp_path / "record.args").read_text().split() == ["--parsable", str(script)]
    assert "s3cret-token" not in script.read_text()
    env = dict(line.split("=", 1) for line in (tmp_path / "record.env").read_text().splitlines() if "=" in line)
    assert env["DERMAE_API_TOKEN"] == "s3cret-token" and env["SLURM_CONF"] == "/etc/slurm/other.conf"
    assert "SBATCH_PARTITION" not in env and "SLURM_JOB_ID" not in env


def test_a_failed_sbatch_cancels_any_copy_it_may_have_submitted(tmp_path, monkeypatch):
    record = tmp_path / "scancel.args"
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin", sbatch="echo 'sbatch: error: Batch job submission "
                                                                   "failed: Socket timed out' >&2; exit 1",
                                          scancel=f'echo "$@" >> {record}')["PATH"])
    executor = SlurmExecutor(tmp_path / "ws", "gpu")
    with pytest.raises(ExecutorUnusable, match="Socket timed out"):
        executor.launch(job(), tmp_path / "ws" / "logs" / "job-12.log", {})
    assert record.read_text().split() == [f"--name={executor.job_name(12, 2)}"]


def test_a_job_squeue_has_forgotten_is_read_from_scontrol_and_stays_ended(tmp_path, monkeypatch):
    """squeue with only ids it no longer knows fails outright (MinJobAge passed): not an executor failure."""
    monkeypatch.setenv("PATH", fake_slurm(
        tmp_path / "bin",
        squeue="echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1",
        scontrol='echo "JobId=41 JobName=dermae-x-12-2 JobState=TIMEOUT Reason=TimeLimit ExitCode=0:15"')["PATH"])
    executor = SlurmExecutor(tmp_path / "ws", "gpu", poll_seconds=0)
    launched = executor._watch(job(), "41")
    ended = executor.poll(launched)
    assert ended is not None and "Slurm job 41 ended TIMEOUT: it reached its time limit" in ended.how
    assert executor.poll(launched) == ended  # asked again (waiting for it to go), the same answer


def test_an_adopted_job_that_ended_while_the_engine_was_away_says_how(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_slurm(
        tmp_path / "bin", squeue='echo "41|OUT_OF_MEMORY|OutOfMemory"',
        scontrol='echo "JobId=41 JobName=dermae-x-12-2 JobState=OUT_OF_MEMORY Reason=OutOfMemory '
                 'ExitCode=0:9"')["PATH"])
    ended = SlurmExecutor(tmp_path / "ws", "gpu").adopt(job(slurm_job_id="41"))
    assert isinstance(ended, Ended) and "ended OUT_OF_MEMORY: it ran out of memory" in ended.how
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin2", squeue='echo "41|RUNNING|None"')["PATH"])
    assert SlurmExecutor(tmp_path / "ws", "gpu").adopt(job(slurm_job_id="41")).slurm_job_id == "41"


def test_a_workspace_path_sbatch_cannot_take_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_slurm(tmp_path / "bin")["PATH"])
    with pytest.raises(ExecutorUnusable, match="has a space or a %"):
        SlurmExecutor(tmp_path / "my workspace", "cpu").check("10.0.0.5", "http://10.0.0.5:1")


@pytest.mark.slow
def test_a_stray_copy_of_an_attempt_refuses_to_run_as_the_current_one(server):
    """A resubmitted batch script or a late copy from a timed-out sbatch: it names its attempt, and must not report
    as the job's current one."""
    from tests.processes import wait_until

    client = server.client()
    job = client.submit_job("selftest", {"steps": 300, "step_seconds": 0.1})
    wait_until(lambda: client.job(job.id).state == "running", timeout=60, what="the job to run")
    env = {**os.environ, "DERMAE_API_URL": server.url, "DERMAE_API_TOKEN": server.token,
           "DERMAE_WORKSPACE": str(server.settings.workspace), "DERMAE_JOB_ATTEMPT": "2"}
    stray = subprocess.run([sys.executable, "-m", "engine.worker", str(job.id)], env=env, capture_output=True,
                           text=True, timeout=60)
    assert stray.returncode == 3, stray.stderr
    assert f"job {job.id} is running at attempt 1; this process was launched as attempt 2" in stray.stderr
    assert client.job(job.id).state == "running"  # the real attempt 1 goes on
    client.cancel_job(job.id)
    assert client.wait_for_job(job.id, timeout=60).state == "cancelled"


@pytest.mark.slow
def test_the_score_job_after_a_generate_job_asks_for_the_same_kind_of_node(server):
    client = server.client()
    generate = client.submit_job("generate", {}, num_processes=2,
                                 resources={"nodes": 2, "gpus_per_node": 1, "partition": "gpu"})
    score = next(j for j in client.jobs(kind="score").items if generate.id in j.after)
    assert score.num_processes == 1
    assert score.resources == JobResources(nodes=1, gpus_per_node=1, partition="gpu")
    # the local executor has one machine: the two-node job fails at once, saying so, and its score job after it
    assert "--executor slurm" in client.wait_for_job(generate.id, timeout=60).error
