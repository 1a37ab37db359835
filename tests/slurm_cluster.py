"""A private, throw-away single-node Slurm cluster for tests, CI and benchmarks.

Everything the cluster uses lives in one directory given by the caller: `slurm.conf`, its own
munge key and `munged` (socket in that directory), the state and spool directories, pid files
and logs. `slurmctld` and `slurmd` listen on free ports (never 6817/6818), and the cluster has a
unique ClusterName. Clients reach it through `SLURM_CONF=<directory>/slurm.conf` (`env`,
`run()`). Nothing outside the directory is read or changed, and no daemon that this object did
not start (a system Slurm or munge, another private cluster) is ever stopped or signalled:
every process is checked, before it is signalled, to carry this cluster's marker in its
environment (daemons) or this cluster's SLURM_CONF (job processes).

Needs root (`SlurmdUser=root`, jobs may run as any user) and the Debian packages slurmctld,
slurmd, slurm-client and munge (Slurm 22.05, munge 0.5.15); `SlurmCluster.available()` says
why a cluster cannot run here. If a directory above the given one is not searchable by all
users (pytest's /tmp/pytest-of-root is 0700), munged is started with --force and only root
can use the cluster.

Behaviour of Slurm 22.05 here (no cgroups), seen on a 2-CPU machine:
- processes are tracked by process group (`proctrack/pgid`); 100 one-second-or-less array
  elements finish in about 7 s with the default 16 CPUs;
- memory is not enforced by Slurm: with `JobAcctGatherParams=OverMemoryKill` (polling) a job
  over its `--mem` was killed within a poll or two and ended FAILED, reason JobLaunchFailure,
  ExitCode 0:9 (not OUT_OF_MEMORY: that needs cgroups), racing the farmstead worker's own
  memory check (every 0.5 s, RESOURCE_ERROR); the cluster leaves it to the worker, so the
  tests see one outcome;
- time limits are whole minutes (`--time=0:10` is 1:00) and slurmctld checks them every 30 s
  (hard-coded, no setting): a job ends TIMEOUT 0-30 s after its limit (SIGTERM, SIGKILL after
  KillWait=5 s);
- after a cancel, no new job starts until the cancelled one has finished completing (~3 s).

Typical use::

    cluster = SlurmCluster.start(tmp_path / "slurm")
    try:
        cluster.run("sbatch", "--wrap=true", check=True)
    finally:
        cluster.stop()
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

#: environment variable set on the daemons this module starts: its value is the cluster's
#: directory, and only processes carrying it (or job processes with this cluster's SLURM_CONF)
#: are ever signalled
MARKER = "FARMSTEAD_SLURM_CLUSTER"
#: first line of every slurm.conf written here; stop() removes only a directory holding it
HEADER = "# farmstead private single-node Slurm cluster (tests/slurm_cluster.py)"
PARTITION = "test"
READY_TIMEOUT = 60.0
SERVER_TOOLS = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "slurmstepd")
CLIENT_TOOLS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: `sinfo %t` states of a node that responds (no `*`) and runs jobs; `comp`: a job ending
UP_STATES = frozenset({"idle", "mix", "alloc", "comp"})
_MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with the final NUL


def find_tool(tool: str) -> str | None:
    """The path of a Slurm or munge program (PATH, then the sbin directories), or None."""
    return shutil.which(tool, path=f"{os.environ.get('PATH', '')}:{SBIN_PATH}")


def missing_tools() -> list[str]:
    """The Slurm and munge programs a cluster needs that are not installed."""
    return [tool for tool in SERVER_TOOLS + CLIENT_TOOLS if find_tool(tool) is None]


def _free_port() -> int:
    # bind on all addresses: the daemons do too, so a port taken on any address is skipped
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"--- {path}: (missing)\n"
    return f"--- {path} (last {chars} characters):\n{text[-chars:]}\n"


def _process_env(pid: int) -> dict[str, str] | None:
    """The environment `pid` was started with (None if it is gone or unreadable)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    env: dict[str, str] = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: here, as in containers, pid 1 may not reap it)."""
    try:
        line = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return line.rpartition(")")[2].split()[0] not in ("Z", "X")


def _all_pids() -> Iterator[int]:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            yield int(entry.name)


def _ancestors() -> set[int]:
    """This process and its ancestors: never signalled, whatever their environment."""
    pids: set[int] = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            line = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(line.rpartition(")")[2].split()[1])
    return pids


def _signal(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def _wait_gone(pids: Iterable[int], timeout: float) -> set[int]:
    """Wait until none of `pids` runs; the ones still running after `timeout`."""
    remaining = set(pids)
    deadline = time.monotonic() + timeout
    while remaining:
        remaining = {pid for pid in remaining if _alive(pid)}
        if not remaining or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    return remaining


def _parse_conf(text: str) -> dict[str, str]:
    """`Key=Value` pairs of slurm.conf; the NodeName and PartitionName lines' own words too,
    prefixed by `NodeName.` and `PartitionName.`."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        key, _, value = words[0].partition("=")
        values[key] = value
        if key in ("NodeName", "PartitionName"):
            for word in words[1:]:
                sub, _, subvalue = word.partition("=")
                values[f"{key}.{sub}"] = subvalue
    return values


@dataclasses.dataclass
class SlurmCluster:
    """One private single-node Slurm cluster living in `directory` (see the module doc).

    Create it with `start()` (or `attach()` for one started by another process); end it with
    `stop()`, which leaves no daemon, job process or file behind.
    """

    directory: Path
    cluster_name: str
    node: str
    partition: str
    cpus: int
    memory_mb: int
    slurmctld_port: int
    slurmd_port: int

    # ---- paths ---------------------------------------------------------------------------

    @property
    def conf(self) -> Path:
        """This cluster's slurm.conf."""
        return self.directory / "slurm.conf"

    @property
    def munge_socket(self) -> Path:
        """The socket of this cluster's own munged."""
        return self.directory / "munge" / "munge.sock"

    @property
    def env(self) -> dict[str, str]:
        """Variables to add to a client's environment so that it talks to this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _path(self, name: str) -> Path:
        return {
            "munge_key": self.directory / "munge" / "munge.key",
            "munged_pid": self.directory / "munge" / "munged.pid",
            "munged_log": self.directory / "log" / "munged.log",
            "munged_seed": self.directory / "munge" / "munged.seed",
            "slurmctld_pid": self.directory / "run" / "slurmctld.pid",
            "slurmd_pid": self.directory / "run" / "slurmd.pid",
            "slurmctld_log": self.directory / "log" / "slurmctld.log",
            "slurmd_log": self.directory / "log" / "slurmd.log",
            "state": self.directory / "state",
            "spool": self.directory / "spool",
        }[name]

    # ---- life cycle ----------------------------------------------------------------------

    @staticmethod
    def available() -> str | None:
        """None if a cluster can run here, else the reason why not."""
        if os.name != "posix" or not Path("/proc/self/environ").exists():
            return "needs Linux (/proc)"
        if os.geteuid() != 0:
            return "needs root (slurmd runs jobs as their users)"
        missing = missing_tools()
        if missing:
            return (
                f"missing {', '.join(missing)} (apt-get install -y --no-install-recommends "
                f"{' '.join(PACKAGES)})"
            )
        return None

    @classmethod
    def start(cls, directory: Path, cpus: int = 16, memory_mb: int = 8000) -> SlurmCluster:
        """Create a cluster in `directory` (absent or empty; created, mode 0755) with one node
        of `cpus` CPUs and `memory_mb` MB (advertised: `config_overrides`, more than the
        machine has is fine), start munged, slurmctld and slurmd, and wait until the node is
        idle. On failure everything started is stopped and RuntimeError carries the logs."""
        reason = cls.available()
        if reason:
            raise RuntimeError(f"cannot start a Slurm cluster: {reason}")
        directory = Path(directory).absolute()
        if directory.exists() and any(directory.iterdir()):
            raise RuntimeError(f"{directory} is not empty: a cluster needs a directory of its own")
        cluster = cls(
            directory=directory,
            cluster_name=f"farm{secrets.token_hex(4)}",
            node=socket.gethostname().split(".", 1)[0],
            partition=PARTITION,
            cpus=cpus,
            memory_mb=memory_mb,
            slurmctld_port=_free_port(),
            slurmd_port=_free_port(),
        )
        if len(str(cluster.munge_socket)) > _MAX_SOCKET_PATH:
            raise RuntimeError(f"{directory} is too long a path for a unix socket in it")
        while cluster.slurmd_port == cluster.slurmctld_port:
            cluster.slurmd_port = _free_port()
        try:
            cluster._create_files()
            cluster._start_munged()
            cluster._daemon("slurmctld")
            cluster._daemon("slurmd")
            cluster._wait_node(frozenset({"idle"}), READY_TIMEOUT)
        except BaseException:
            with contextlib.suppress(Exception):
                cluster.stop()
            raise
        logger.info(
            "Slurm cluster %s up in %s (slurmctld port %d, slurmd port %d)",
            cluster.cluster_name,
            directory,
            cluster.slurmctld_port,
            cluster.slurmd_port,
        )
        return cluster

    @classmethod
    def attach(cls, directory: Path) -> SlurmCluster:
        """The cluster that `start()` created in `directory` (e.g. in another process)."""
        directory = Path(directory).absolute()
        conf = directory / "slurm.conf"
        try:
            text = conf.read_text()
        except OSError as exc:
            raise RuntimeError(f"no cluster of {__name__} in {directory}: {exc}") from None
        if not text.startswith(HEADER):
            raise RuntimeError(f"{conf} was not written by {__name__}")
        values = _parse_conf(text)
        return cls(
            directory=directory,
            cluster_name=values["ClusterName"],
            node=values["NodeName"],
            partition=values["PartitionName"],
            cpus=int(values["NodeName.CPUs"]),
            memory_mb=int(values["NodeName.RealMemory"]),
            slurmctld_port=int(values["SlurmctldPort"]),
            slurmd_port=int(values["SlurmdPort"]),
        )

    def stop(self) -> None:
        """Cancel every job, stop slurmd, slurmctld and munged, kill any job process left and
        remove the directory. Idempotent; does nothing if the directory is gone."""
        if not self.directory.exists():
            return
        if not self._ours():
            raise RuntimeError(f"{self.directory} holds no cluster of {__name__}: not removed")
        if self._pid("slurmctld") is not None:
            try:
                self.cancel_all(timeout=30.0)
            except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
                logger.warning("Slurm cluster %s: cancel_all failed: %s", self.cluster_name, exc)
        self._stop_daemon("slurmd")
        self._stop_daemon("slurmctld")
        self._kill_leftovers()
        self._stop_munged()
        shutil.rmtree(self.directory, ignore_errors=True)
        if self.directory.exists():
            shutil.rmtree(self.directory)  # raises, saying what could not be removed
        logger.info("Slurm cluster %s stopped, %s removed", self.cluster_name, self.directory)

    def stop_slurmd(self) -> None:
        """Stop the node daemon as a crash would leave things: running jobs go on (their
        slurmstepd survives), the controller notices only when it pings the node."""
        self._stop_daemon("slurmd")

    def start_slurmd(self, timeout: float = READY_TIMEOUT) -> None:
        """Start the node daemon again (it re-attaches to the running jobs) and wait until the
        node responds and is idle, mixed, allocated or completing, resuming it if it was set
        down or drained.

        A job that ended while slurmd was down may stay COMPLETING until slurmctld re-sends its
        TERMINATE_JOB (seen: 1 s to 85 s after the restart), holding the node in `comp`."""
        self._daemon("slurmd")
        self._wait_node(UP_STATES, timeout)

    def stop_slurmctld(self) -> None:
        """Stop the controller (as an outage would): sbatch, squeue and scancel fail until it
        is back; running jobs go on. Its state is saved, so a restart keeps every job."""
        self._stop_daemon("slurmctld")

    def start_slurmctld(self, timeout: float = READY_TIMEOUT) -> None:
        """Start the controller again and wait until it answers and the node is usable."""
        self._daemon("slurmctld")
        self._wait_node(UP_STATES, timeout)

    # ---- clients -------------------------------------------------------------------------

    def client_env(self) -> dict[str, str]:
        """os.environ with SLURM_CONF pointing here, and with no other Slurm client setting
        (SLURM_*, SBATCH_*, SQUEUE_*…) that could steer a command elsewhere."""
        prefixes = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_", "SQUEUE_", "SINFO_", "SCANCEL_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
        env["PATH"] = f"{env.get('PATH', '')}:{SBIN_PATH}"
        env.update(self.env)
        return env

    def run(
        self,
        *args: str,
        check: bool = False,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client command (`run("squeue", "-h")`) against this cluster; text
        output captured. `check=True` raises RuntimeError with the output on failure."""
        result = subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.client_env(),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )
        return result

    def cancel_all(self, timeout: float = 120.0) -> None:
        """Cancel every job of this cluster and wait until squeue lists none (pending,
        running or completing). TimeoutError if some job is still listed after `timeout`
        (a job cancelled while slurmd is down stays COMPLETING until slurmd is back)."""
        listed = self.run("squeue", "-h", "-o", "%F", check=True).stdout.split()
        if listed:
            self.run("scancel", *sorted(set(listed)), check=False)
        deadline = time.monotonic() + timeout
        while True:
            left = self.run("squeue", "-h", "-o", "%i %T", check=True).stdout.strip()
            if not left:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs left after scancel:\n{left}")
            time.sleep(0.2)

    # ---- internals -----------------------------------------------------------------------

    def _ours(self) -> bool:
        try:
            return self.conf.read_text().startswith(HEADER)
        except OSError:
            return False

    def _create_files(self) -> None:
        # slurm.conf first: it marks the directory as this module's, for stop()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)
        self.conf.write_text(self._conf_text())
        self.conf.chmod(0o644)
        for sub in ("munge", "log", "run", "state", "spool"):
            (self.directory / sub).mkdir(mode=0o755)
        # munged wants the key readable by its owner only
        fd = os.open(self._path("munge_key"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "wb") as out:
            out.write(secrets.token_bytes(1024))

    def _conf_text(self) -> str:
        socket_info = f"socket={self.munge_socket}"
        settings = {
            "ClusterName": self.cluster_name,
            "SlurmctldHost": self.node,
            "SlurmctldPort": str(self.slurmctld_port),
            "SlurmdPort": str(self.slurmd_port),
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "AuthType": "auth/munge",
            "AuthInfo": socket_info,  # also read by cred/munge (slurm.conf(5), AuthInfo)
            "CredType": "cred/munge",
            "StateSaveLocation": str(self._path("state")),
            "SlurmdSpoolDir": str(self._path("spool")),
            "SlurmctldPidFile": str(self._path("slurmctld_pid")),
            "SlurmdPidFile": str(self._path("slurmd_pid")),
            "SlurmctldLogFile": str(self._path("slurmctld_log")),
            "SlurmdLogFile": str(self._path("slurmd_log")),
            "SlurmctldDebug": "info",
            "SlurmdDebug": "info",
            "PlugStackConfig": str(self.directory / "plugstack.conf"),
            "MpiDefault": "none",
            "ProctrackType": "proctrack/pgid",
            "TaskPlugin": "task/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_Core_Memory",
            # without a default a job with no --mem would take the whole node's memory
            "DefMemPerCPU": str(max(1, self.memory_mb // self.cpus)),
            "SchedulerParameters": "batch_sched_delay=0",
            "SlurmdParameters": "config_overrides",
            "KillWait": "5",
            "ReturnToService": "2",
            "MinJobAge": "300",
            "MailProg": "/bin/true",
            "JobAcctGatherType": "jobacct_gather/linux",
            "JobAcctGatherFrequency": "task=2",
            "AccountingStorageType": "accounting_storage/none",
            "JobCompType": "jobcomp/none",
        }
        lines = [HEADER, "# written for this cluster only; removed by SlurmCluster.stop()"]
        lines += [f"{key}={value}" for key, value in settings.items()]
        lines.append(
            f"NodeName={self.node} CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN"
        )
        lines.append(
            f"PartitionName={self.partition} Nodes={self.node} Default=YES "
            "MaxTime=INFINITE State=UP"
        )
        (self.directory / "plugstack.conf").write_text("")
        return "\n".join(lines) + "\n"

    def _daemon_env(self) -> dict[str, str]:
        env = self.client_env()
        env[MARKER] = str(self.directory)
        return env

    def _start_munged(self) -> None:
        munged = find_tool("munged")
        assert munged is not None
        args = [
            munged,
            f"--socket={self.munge_socket}",
            f"--key-file={self._path('munge_key')}",
            f"--pid-file={self._path('munged_pid')}",
            f"--log-file={self._path('munged_log')}",
            f"--seed-file={self._path('munged_seed')}",
        ]
        closed = [
            str(parent)
            for parent in self.munge_socket.parents
            if not parent.stat().st_mode & stat.S_IXOTH
        ]
        if closed:
            # munged refuses a socket that not every user can reach, unless forced
            logger.warning(
                "%s not searchable by all: only root can use Slurm cluster %s (jobs too)",
                ", ".join(closed),
                self.cluster_name,
            )
            args.append("--force")
        self._spawn("munged", args)
        self._wait_pid("munged")
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            probe = subprocess.run(
                f"munge -n -S {self.munge_socket} | unmunge -S {self.munge_socket}",
                shell=True,
                capture_output=True,
                text=True,
                env=self._daemon_env(),
                timeout=10,
                check=False,
            )
            if probe.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"munged does not answer:\n{probe.stderr}{_tail(self._path('munged_log'))}"
                )
            time.sleep(0.1)

    def _spawn(self, name: str, args: list[str]) -> None:
        """Run a daemon that forks into the background, its output in log/<name>.out."""
        with (self.directory / "log" / f"{name}.out").open("ab") as out:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self._daemon_env(),
                cwd=self.directory,
                start_new_session=True,  # no signal of the caller's terminal reaches it
                timeout=READY_TIMEOUT,
                check=False,
            )
        if result.returncode != 0:
            raise RuntimeError(f"{name} failed to start ({result.returncode}):\n{self._logs()}")

    def _daemon(self, name: str) -> None:
        binary = find_tool(name)
        assert binary is not None
        if self._pid(name) is not None:
            raise RuntimeError(f"{name} of {self.cluster_name} already runs")
        self._spawn(name, [binary, "-f", str(self.conf)])
        self._wait_pid(name)

    def _wait_pid(self, name: str) -> None:
        """Wait until the daemon `name` has written its pid file (its first process returns
        before that)."""
        deadline = time.monotonic() + READY_TIMEOUT
        while self._pid(name) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start:\n{self._logs()}")
            time.sleep(0.05)

    def _pid(self, name: str) -> int | None:
        """The pid of this cluster's running `name` daemon, from its pid file, if the process
        behind it is alive and carries this cluster's marker."""
        try:
            pid = int(self._path(f"{name}_pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        env = _process_env(pid)
        if not _alive(pid) or env is None or env.get(MARKER) != str(self.directory):
            return None
        return pid

    def _stop_daemon(self, name: str, timeout: float = 20.0) -> None:
        pid = self._pid(name)
        if pid is None:
            return
        _signal([pid], signal.SIGTERM)
        if _wait_gone([pid], timeout):
            logger.warning("%s (pid %d) ignored SIGTERM for %.0f s: killed", name, pid, timeout)
            _signal([pid], signal.SIGKILL)
            _wait_gone([pid], 5.0)
        self._path(f"{name}_pid").unlink(missing_ok=True)

    def _stop_munged(self) -> None:
        pid = self._pid("munged")
        if pid is None:
            return
        munged = find_tool("munged")
        if munged is not None:
            subprocess.run(
                [munged, f"--socket={self.munge_socket}", "--stop"],
                capture_output=True,
                timeout=30,
                check=False,
            )
        if _wait_gone([pid], 10.0):
            _signal([pid], signal.SIGKILL)
            _wait_gone([pid], 5.0)

    def _leftovers(self) -> set[int]:
        """Processes of this cluster still running: slurmstepd (it inherits the marker from
        slurmd) and job processes (SLURM_CONF is this cluster's and SLURM_JOB_ID is set),
        never this process or its ancestors."""
        spared = _ancestors()
        found: set[int] = set()
        for pid in _all_pids():
            if pid in spared or not _alive(pid):
                continue
            env = _process_env(pid)
            if env is None:
                continue
            if env.get(MARKER) == str(self.directory) or (
                env.get("SLURM_CONF") == str(self.conf) and "SLURM_JOB_ID" in env
            ):
                found.add(pid)
        return found

    def _kill_leftovers(self) -> None:
        pids = self._leftovers() - {self._pid("munged") or -1}
        if pids:
            logger.warning(
                "Slurm cluster %s: killing %d leftover processes %s",
                self.cluster_name,
                len(pids),
                sorted(pids),
            )
            _signal(pids, signal.SIGKILL)
            _wait_gone(pids, 10.0)

    def node_state(self) -> str:
        """The node's `sinfo %t` state (`idle`, `mix`, `alloc`, `comp`, `down*`…; "" if
        slurmctld does not answer)."""
        result = self.run("sinfo", "-h", "-N", "-n", self.node, "-o", "%t", timeout=15)
        return result.stdout.strip() if result.returncode == 0 else ""

    def _wait_node(self, states: frozenset[str], timeout: float) -> None:
        """Wait until slurmctld answers and the node is in one of `states`; resume it if it is
        down or drained. RuntimeError with the logs if not within `timeout`."""
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for name in ("munged", "slurmctld", "slurmd"):
                if self._pid(name) is None:
                    raise RuntimeError(f"{name} is not running:\n{self._logs()}")
            ping = self.run("scontrol", "ping", timeout=15)
            if ping.returncode == 0 and "UP" in ping.stdout:
                state = self.node_state()
                if state.removesuffix("-") in states:  # `-`: planned by the backfill scheduler
                    return
                if state.rstrip("*~#!%$@^-").startswith(("down", "drain", "drng", "fail")):
                    self.run(
                        "scontrol", "update", f"nodename={self.node}", "state=resume", timeout=15
                    )
            time.sleep(0.2)
        raise RuntimeError(
            f"Slurm cluster {self.cluster_name} not ready within {timeout:.0f} s "
            f"(node state {state!r}):\n{self._logs()}"
        )

    def _logs(self) -> str:
        names = ("munged_log", "slurmctld_log", "slurmd_log")
        tails = [_tail(self._path(name)) for name in names]
        tails += [_tail(out, 1000) for out in sorted((self.directory / "log").glob("*.out"))]
        return "".join(tails)
