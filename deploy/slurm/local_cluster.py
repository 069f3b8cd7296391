#!/usr/bin/env python3
"""A real single-node Slurm cluster (Slurm 22.05 + munge) living entirely inside one folder, for tests and developers.

    python deploy/slurm/local_cluster.py start DIR   # prints `export SLURM_CONF=DIR/slurm.conf` and the partition
    python deploy/slurm/local_cluster.py stop DIR

start() writes DIR/slurm.conf and a munge key, starts munged, slurmctld and slurmd (daemonized; their pid files, logs,
state and spool all in DIR), waits until the node is idle and runs one `srun true`. Commands run with
SLURM_CONF=DIR/slurm.conf talk to this cluster and no other. Nothing is written to /etc, /var or /run, and it works as
root or as an ordinary user alike: the daemons run as whoever starts them. Stdlib only; tests import it by file path
(hence no `from __future__ import annotations`: a dataclass then needs its module in sys.modules).

Why the unusual settings:
- munged gets its own key, socket, pid, log and seed files in DIR, and AuthInfo=socket=... points auth/munge and
  cred/munge, in the daemons and in the client commands (they read the same slurm.conf), at that socket: a munge or
  Slurm that the machine already runs is left alone. munged needs `--force` to accept a socket in a folder that others
  cannot enter (DIR is 0700: only its owner, who runs the daemons and submits the jobs, needs in).
- SlurmctldPort/SlurmdPort: free ports picked at start, below the ephemeral range, not the usual 6817/6818.
- SlurmUser/SlurmdUser: the current user, so no `slurm` account and no root are needed.
- SlurmctldHost/NodeAddr 127.0.0.1: traffic stays on loopback, whatever the hostname resolves to.
- ProctrackType=proctrack/linuxproc, TaskPlugin=task/none: no cgroups (containers, ordinary users).
- accounting_storage/none, no slurmdbd: sacct has nothing to read, so MinJobAge=3600 keeps finished jobs in slurmctld
  for an hour, and `scontrol show job` / `squeue -t all` still report their state, reason and exit code.
- select/cons_tres with CR_CPU: jobs get CPUs, not whole nodes, so two 1-CPU jobs run side by side on 2 cores.
- SlurmdParameters=config_overrides: `cpus` may differ from what the hardware has without the node turning INVALID.
- ReturnToService=2: a node marked DOWN (say, slurmd restarted) is usable again as soon as it registers.
- PlugStackConfig: an empty file in DIR, so the machine's SPANK plugins (/etc/slurm/plugstack.conf) stay out.
"""

import argparse
import contextlib
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("slurmd", "slurmctld", "munged")  # in the order they are stopped
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


@dataclass
class Cluster:
    base: Path
    conf: Path
    partition: str
    node: str

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}


def _user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name  # not $USER/$LOGNAME: they survive su/setpriv and may name someone else


def _pid_file(base: Path, daemon: str) -> Path:
    return base / "run" / f"{daemon}.pid"


def _log_files(base: Path) -> list[Path]:
    return sorted((base / "log").glob("*"))


def _env(conf: Path) -> dict[str, str]:
    # SLURM_* from a surrounding job or shell (SLURM_JOB_ID, SBATCH_PARTITION…) must not leak into this cluster.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
    return {**env, "SLURM_CONF": str(conf)}


def _free_port(taken: set[int]) -> int:
    # Below the ephemeral range (32768+), so an outgoing connection cannot grab it between this check and the bind.
    for _ in range(200):
        port = random.randint(20000, 32000)
        if port in taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free TCP port found in 20000-32000")


def _node_line(node: str, cpus: int | None) -> str:
    """The NodeName line: what `slurmd -C` reports (CPUs and topology, or just `cpus` CPUs), memory a little below."""
    # A SLURM_CONF that does not exist: `slurmd -C` then reports the hardware without reading the machine's slurm.conf.
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True, timeout=30,
                         env=_env(Path("/nonexistent/slurm.conf"))).stdout
    hw = dict(re.findall(r"(\w+)=(\S+)", out.splitlines()[0]))
    # RealMemory below the hardware's: a node registering with less memory than configured turns INVALID.
    memory = max(1, int(hw["RealMemory"]) * 95 // 100)
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    cores = f"CPUs={cpus}" if cpus else " ".join(f"{k}={hw[k]}" for k in keys if k in hw)
    return f"NodeName={node} NodeAddr=127.0.0.1 {cores} RealMemory={memory} State=UNKNOWN"


def _pid_alive(base: Path, daemon: str) -> int | None:
    """The pid in `daemon`'s pid file, if that process is alive and is that daemon (pids get reused)."""
    try:
        pid = int(_pid_file(base, daemon).read_text().split()[0])
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return pid if comm == daemon and state != "Z" else None


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _job_processes(conf: Path) -> dict[int, bool]:
    """This cluster's slurmstepds and job processes, found by the SLURM_CONF in their environment (slurmd passes its
    own on to slurmstepd, which passes it on to the job). A job's process that outlived its job counts too: with
    proctrack/linuxproc a batch script killed by a signal leaves its children running, reparented to init.
    pid -> whether it is a slurmstepd."""
    mine, ours, found = _ancestors(), f"SLURM_CONF={conf}".encode(), {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            is_stepd = (proc / "comm").read_text().strip() == "slurmstepd"
        except OSError:
            continue
        in_job = is_stepd or any(v.startswith(b"SLURM_JOB_ID=") for v in env)
        if ours in env and in_job and int(proc.name) not in mine:
            found[int(proc.name)] = is_stepd
    return found


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"({e})"


def _failure(base: Path, what: str) -> RuntimeError:
    logs = "\n".join(f"--- {p} (last lines):\n{_tail(p)}" for p in _log_files(base) if p.stat().st_size)
    return RuntimeError(f"local Slurm cluster in {base}: {what}\n{logs}")


def _write_conf(base: Path, partition: str, node: str, node_line: str) -> Path:
    user = _user()
    ctld_port = _free_port(set())
    slurmd_port = _free_port({ctld_port})
    conf = base / "slurm.conf"
    (base / "plugstack.conf").write_text("")
    conf.write_text(f"""\
# Written by deploy/slurm/local_cluster.py: a single-node cluster living in {base}
ClusterName=dermae
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser={user}
SlurmdUser={user}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={base}/munge/munge.socket
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={_pid_file(base, "slurmctld")}
SlurmdPidFile={_pid_file(base, "slurmd")}
SlurmctldLogFile={base}/log/slurmctld.log
SlurmdLogFile={base}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={base}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
SlurmdParameters=config_overrides
MpiDefault=none
MailProg=/bin/true
MinJobAge=3600
KillWait=15
ReturnToService=2
{node_line}
PartitionName={partition} Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    return conf


def _launch(base: Path, conf: Path, daemon: str, argv: list[str]) -> None:
    """Start a daemon that forks into the background, and wait for its pid file."""
    with (base / "log" / f"{daemon}.stderr").open("ab") as err:  # what it says before its own log is open
        code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=_env(conf),
                              start_new_session=True, timeout=30).returncode
    deadline = time.monotonic() + 15
    while _pid_alive(base, daemon) is None:
        if code != 0 or time.monotonic() > deadline:
            raise _failure(base, f"{daemon} did not start (exit code {code})")
        time.sleep(0.1)


def start(base: Path, *, partition: str = "dermae", cpus: int | None = None) -> Cluster:
    """Start (after stopping whatever already runs there) a fresh cluster in `base`; it keeps no jobs from before."""
    base = Path(base).resolve()
    stop(base)
    for sub in ("state", "spool"):
        shutil.rmtree(base / sub, ignore_errors=True)
    for sub in ("", "munge", "state", "spool", "log", "run"):
        (base / sub).mkdir(mode=0o700, exist_ok=True)
    node = socket.gethostname().split(".")[0]
    conf = _write_conf(base, partition, node, _node_line(node, cpus))
    key = base / "munge" / "munge.key"
    key.unlink(missing_ok=True)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "wb") as f:
        f.write(secrets.token_bytes(1024))
    env = _env(conf)
    try:
        munge = base / "munge"
        _launch(base, conf, "munged", ["munged", "--force", f"--key-file={key}", f"--socket={munge}/munge.socket",
                                       f"--pid-file={_pid_file(base, 'munged')}", f"--log-file={base}/log/munged.log",
                                       f"--seed-file={munge}/munged.seed"])
        _launch(base, conf, "slurmctld", ["slurmctld", "-f", str(conf)])
        _launch(base, conf, "slurmd", ["slurmd", "-f", str(conf)])
        deadline = time.monotonic() + READY_TIMEOUT_S
        state = ""
        while state != "idle":
            if time.monotonic() > deadline:
                raise _failure(base, f"node {node} not idle after {READY_TIMEOUT_S:.0f} s (sinfo says {state!r})")
            time.sleep(0.5)
            state = subprocess.run(["sinfo", "-h", "-p", partition, "-o", "%T"], capture_output=True, text=True,
                                   env=env, timeout=30).stdout.strip()
        try:
            run = subprocess.run(["srun", "-p", partition, "-N1", "-n1", "true"], capture_output=True, text=True,
                                 env=env, timeout=READY_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise _failure(base, f"`srun true` took more than {READY_TIMEOUT_S:.0f} s") from None
        if run.returncode != 0:
            raise _failure(base, f"`srun true` exited {run.returncode}: {run.stderr.strip()}")
    except BaseException:
        stop(base)
        raise
    return Cluster(base=base, conf=conf, partition=partition, node=node)


def stop(base: Path) -> None:
    """Cancel this cluster's jobs, stop its daemons and wait until they are gone. Does nothing where none runs."""
    base = Path(base).resolve()
    conf = base / "slurm.conf"
    if _pid_alive(base, "slurmctld") and any(_job_processes(conf).values()):
        # slurmd leaves running jobs alone when it stops, so end them first (SIGTERM, SIGKILL after KillWait).
        subprocess.run(["scancel", "--full", "--user", _user()], capture_output=True, env=_env(conf), timeout=30)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while any(_job_processes(conf).values()) and time.monotonic() < deadline:
            time.sleep(0.2)
    for pid in _job_processes(conf):  # what scancel did not end (or where no slurmctld was left to cancel it)
        _kill(pid, signal.SIGKILL)
    stopped = []
    for daemon in DAEMONS:
        pid = _pid_alive(base, daemon)
        if pid is None:
            continue
        stopped.append(pid)
        for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 10.0)):
            _kill(pid, sig)
            deadline = time.monotonic() + wait_s
            while _pid_alive(base, daemon) == pid and time.monotonic() < deadline:
                time.sleep(0.1)
        if _pid_alive(base, daemon) == pid:
            raise RuntimeError(f"{daemon} (pid {pid}) of the Slurm cluster in {base} survived SIGKILL")
        _pid_file(base, daemon).unlink(missing_ok=True)
    # Dead daemons are init's children, and zombies until it reaps them (some container inits take a second or two);
    # wait a little, so that `pgrep slurm` right after stop() finds nothing.
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in stopped) and time.monotonic() < deadline:
        time.sleep(0.1)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("start", "stop"))
    parser.add_argument("dir", type=Path)
    parser.add_argument("--partition", default="dermae")
    parser.add_argument("--cpus", type=int, default=None, help="CPUs of the node (default: what slurmd -C reports)")
    args = parser.parse_args(argv)
    if args.action == "stop":
        stop(args.dir)
        return 0
    try:
        cluster = start(args.dir, partition=args.partition, cpus=args.cpus)
    except RuntimeError as e:
        print(e, file=sys.stderr)
        return 1
    print(f"export SLURM_CONF={cluster.conf}")
    print(f"# partition: {cluster.partition} (the default one), node: {cluster.node}; stop with: "
          f"python {Path(__file__).as_posix()} stop {cluster.base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
