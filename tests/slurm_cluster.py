"""A real one-node SLURM cluster for tests: munged, slurmctld and slurmd on this machine, in a temporary folder.

Debian's slurm-wlm and munge packages (.ci/run installs them). Everything (key, socket, state, spool, logs,
slurm.conf) lives in one short temporary folder; the ports are free ones; the client commands reach this
cluster through SLURM_CONF in `env`. cred_expire=10: a requeued job may start again after 10 s, not SLURM's
default 120 s. `stop()` cancels what is left, stops the three daemons by the PIDs
it started and removes the folder.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PROGRAMS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo", "slurmctld", "slurmd", "munged")

CONF = """\
ClusterName=hmstest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={dir}/munge.sock,cred_expire=10
CredType=cred/munge
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/log/slurmctld.log
SlurmdLogFile={dir}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
KillWait=5
MailProg=/bin/true
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def missing_programs() -> list[str]:
    return [p for p in PROGRAMS if shutil.which(p) is None]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """Start with `start()`, always `stop()`; `env` is the environment for sbatch/squeue/scancel."""

    def __init__(self, cpus: int = 2):
        self.dir = Path(tempfile.mkdtemp(prefix="hms_slurm_", dir="/tmp"))  # short: the munge socket path
        self.host = socket.gethostname().split(".")[0]
        self.cpus = cpus
        self.procs: list[subprocess.Popen] = []
        self.files: list = []
        self.env = {**os.environ, "SLURM_CONF": str(self.dir / "slurm.conf")}

    def _daemon(self, *cmd: str) -> None:
        log = open(self.dir / "log" / f"{Path(cmd[0]).name}.out", "w")
        self.files.append(log)
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env))

    def start(self, timeout: float = 60) -> LocalSlurm:
        d = self.dir
        for sub in ("state", "spool", "log"):
            (d / sub).mkdir()
        (d / "munge.key").write_bytes(os.urandom(1024))
        (d / "munge.key").chmod(0o400)
        (d / "slurm.conf").write_text(CONF.format(host=self.host, dir=d, cpus=self.cpus,
                                                  ctld_port=free_port(), d_port=free_port()))
        self._daemon("munged", "--foreground", "--force", f"--socket={d}/munge.sock", f"--key-file={d}/munge.key",
                     f"--pid-file={d}/munged.pid", f"--log-file={d}/log/munged.log", f"--seed-file={d}/munge.seed")
        self._wait(lambda: (d / "munge.sock").exists(), 20, "munged")
        self._daemon("slurmctld", "-D", "-i", "-f", str(d / "slurm.conf"))
        self._daemon("slurmd", "-D", "-f", str(d / "slurm.conf"))
        self._wait(lambda: self.run("sinfo", "-h", "-o", "%t").stdout.strip() == "idle", timeout, "the node")
        return self

    def _wait(self, ready, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > end:
                raise RuntimeError(f"{what} not ready ({'exited: ' + ', '.join(dead) if dead else 'timeout'}); "
                                   f"logs:\n{self.logs()}")
            time.sleep(0.5)

    def run(self, *cmd: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60, check=check)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-2000:]
                         for p in sorted((self.dir / "log").iterdir()))

    def active(self, *job_ids: str) -> list[str]:
        """The given jobs (or tasks) still pending or running."""
        res = self.run("squeue", "-h", "-o", "%i %T", *(["-j", ",".join(job_ids)] if job_ids else []))
        return res.stdout.split() if res.returncode == 0 else []

    def wait(self, *job_ids: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        while self.active(*job_ids):
            if time.monotonic() > end:
                raise TimeoutError(f"jobs {job_ids} still active after {timeout:.0f} s: {self.active(*job_ids)}")
            time.sleep(1)

    def states(self, job_id: str) -> list[str]:
        """JobState of the job, or of each task of an array job."""
        out = self.run("scontrol", "show", "job", job_id).stdout
        return [tok.split("=", 1)[1] for tok in out.split() if tok.startswith("JobState=")]

    def stop(self) -> None:
        try:
            if self.procs and all(p.poll() is None for p in self.procs):
                self.run("scancel", "--user", "root")
                end = time.monotonic() + 30
                while self.active() and time.monotonic() < end:
                    time.sleep(1)
        finally:
            for p in reversed(self.procs):  # slurmd, slurmctld, munged
                if p.poll() is None:
                    p.terminate()
                    try:
                        p.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
            for f in self.files:
                f.close()
            shutil.rmtree(self.dir, ignore_errors=True)
