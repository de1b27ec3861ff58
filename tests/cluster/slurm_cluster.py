"""A one-node SLURM cluster on loopback, for the length of one test module.

Daemons run in the foreground as our children, so they are stopped by PID whatever happens. The
configuration has to live at /etc/slurm/slurm.conf: the executor's job-step plugin drops SLURM_CONF
before it calls srun. Finished jobs are kept in a job-completion log (JobCompType=jobcomp/filetxt),
which is the scheduler's own record of every job it ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
CONF = Path("/etc/slurm/slurm.conf")
# MinJobAge must be at least 3x the executor's first status check for `squeue` status queries.
MIN_JOB_AGE = 300

SLURM_CONF = """\
ClusterName=lwpartest
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
ReturnToService=2
MinJobAge={min_job_age}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={partition} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


class Unavailable(Exception):
    """SLURM cannot run here (not root, no apt-get, install failed): the test is skipped with this."""


def ensure_installed() -> None:
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if os.geteuid() != 0:
        raise Unavailable("SLURM is not installed and installing it needs root")
    if not shutil.which("apt-get"):
        raise Unavailable("SLURM is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES],
                         capture_output=True, text=True, env=env, timeout=600)
    if run.returncode != 0:
        update = subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=600)
        run = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES],
                             capture_output=True, text=True, env=env, timeout=600)
        if run.returncode != 0:
            raise Unavailable(f"apt-get install {' '.join(PACKAGES)} failed: {(update.stderr + run.stderr)[-500:]}")


class LocalSlurm:
    """Start munged, slurmctld and slurmd for one node; `stop()` ends exactly those processes."""

    def __init__(self, root: Path, partition: str = "lwpar", cpus: int | None = None, memory_mb: int = 16000):
        self.root = root
        self.partition = partition
        self.cpus = cpus or os.cpu_count() or 1
        self.memory_mb = memory_mb
        self.processes: dict[str, subprocess.Popen] = {}
        self._saved_conf: bytes | None = None
        self._munge_dir: Path | None = None

    @property
    def jobcomp_log(self) -> Path:
        return self.root / "jobcomp.log"

    def start(self) -> "LocalSlurm":
        if os.geteuid() != 0:
            raise Unavailable("starting slurmctld, slurmd and munged needs root")
        ensure_installed()
        # A controller left by an interrupted run holds the ports: this cluster's daemons would fail to
        # bind and the jobs would go to the old controller, whose records are elsewhere.
        import psutil

        stale = [f"{p.info['name']} (pid {p.pid})" for p in psutil.process_iter(["name"])
                 if p.info["name"] in ("slurmctld", "slurmd")]
        if stale:
            raise RuntimeError(f"SLURM daemons from another run are running: {', '.join(stale)}; stop them first")
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        if CONF.exists():
            self._saved_conf = CONF.read_bytes()
        CONF.parent.mkdir(parents=True, exist_ok=True)
        CONF.write_text(SLURM_CONF.format(root=self.root, cpus=self.cpus, memory_mb=self.memory_mb,
                                          partition=self.partition, min_job_age=MIN_JOB_AGE))
        try:
            self._start_munge()
            self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-i"])
            self._spawn("slurmd", ["slurmd", "-D", "-N", "localhost"])
            self._wait_for_idle_node()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_munge(self) -> None:
        run_dir = Path("/run/munge")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        key = Path("/etc/munge/munge.key")
        if not key.exists():
            subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True)
            shutil.chown(key, "munge", "munge")
        # munged runs as user munge, which cannot traverse pytest's private (0700) temporary folders
        self._munge_dir = Path(tempfile.mkdtemp(prefix="lwpar-munge-"))
        shutil.chown(self._munge_dir, "munge", "munge")
        socket = run_dir / "munge.socket.2"
        if socket.exists() and subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return  # a munged is already serving this machine; it is not ours to stop
        self._spawn("munged", ["munged", "-F", "--force", f"--log-file={self._munge_dir / 'munged.log'}",
                               f"--seed-file={self._munge_dir / 'munged.seed'}",
                               f"--pid-file={self._munge_dir / 'munged.pid'}"], user="munge")
        self._wait(lambda: subprocess.run(["munge", "-n"], capture_output=True).returncode == 0, "munged", 20)

    def _spawn(self, name: str, argv: list[str], user: str | None = None) -> None:
        log = open(self.root / f"{name}.stdout", "w")
        self.processes[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, user=user,
                                                start_new_session=True)

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}: {self.log_tail(name)}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"{what} not ready after {timeout} s: {self.log_tail('slurmctld')} {self.log_tail('slurmd')}")

    def _wait_for_idle_node(self) -> None:
        def idle():
            run = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
            return run.returncode == 0 and run.stdout.strip().startswith("idle")
        self._wait(idle, "the SLURM node", 60)

    def log_tail(self, name: str, chars: int = 1500) -> str:
        paths = [self.root / f"{name}.log", self.root / f"{name}.stdout"]
        return " | ".join(p.read_text(errors="replace")[-chars:] for p in paths if p.exists())

    def completed_jobs(self) -> list[dict[str, str]]:
        """The scheduler's record of finished jobs: one dict per jobcomp line (JobId, Name, JobState, ...)."""
        if not self.jobcomp_log.exists():
            return []
        jobs = []
        for line in self.jobcomp_log.read_text().splitlines():
            fields = dict(item.split("=", 1) for item in line.split() if "=" in item)
            if "JobId" in fields:
                jobs.append(fields)
        return jobs

    def _cancel_jobs(self) -> None:
        """Cancel what is still queued or running in our partition (a test that timed out leaves its
        jobs and their steps behind), and wait until the node has ended them."""
        if self.processes.get("slurmctld") is None or self.processes["slurmctld"].poll() is not None:
            return
        subprocess.run(["scancel", "--partition", self.partition], capture_output=True, timeout=30)

        def empty():
            run = subprocess.run(["squeue", "-h", "-p", self.partition], capture_output=True, text=True, timeout=30)
            return run.returncode != 0 or not run.stdout.strip()
        deadline = time.monotonic() + 60
        while not empty() and time.monotonic() < deadline:
            time.sleep(1)

    def stop(self) -> None:
        try:
            self._cancel_jobs()
        except (OSError, subprocess.SubprocessError):
            pass  # stopping the daemons below ends what is left
        for name in ("slurmd", "slurmctld", "munged"):
            process = self.processes.pop(name, None)
            if process is None or process.poll() is not None:
                continue
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._munge_dir is not None:
            shutil.rmtree(self._munge_dir, ignore_errors=True)
        if self._saved_conf is not None:
            CONF.write_bytes(self._saved_conf)
        elif CONF.exists():
            CONF.unlink()
