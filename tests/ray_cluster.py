"""A real two-node Ray cluster on this machine, for tests: `ray start --head` plus `ray start --address`,
separate processes, each stopped by its own process group (never `ray stop`, which would stop every Ray
on the machine). One cluster serves the whole session (conftest.py): a driver that started an in-process
Ray and shut it down cannot attach to another cluster afterwards, so tests only ever attach by address.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_node(args: list[str], log: Path) -> subprocess.Popen:
    ray_cli = Path(sys.executable).parent / "ray"
    # --block keeps `ray start` as the parent of the node's processes; a new session gives them their own
    # process group, so the teardown stops exactly this node and no other Ray on the machine.
    return subprocess.Popen([str(ray_cli), "start", *args, "--num-cpus", "1", "--block", "--node-ip-address",
                             "127.0.0.1", "--disable-usage-stats"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _wait_started(node: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        if node.poll() is not None:
            break
        time.sleep(0.3)
    raise RuntimeError(f"ray node did not start:\n{log.read_text(errors='replace')[-3000:]}")


def _signal_group(node: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(node.pid, sig)
    except ProcessLookupError:
        pass


def _stop_nodes(nodes: list[subprocess.Popen]) -> None:
    """SIGTERM each node's own process group, then SIGKILL what is left: never `ray stop`, which would
    also stop every other Ray on the machine."""
    for node in nodes:
        _signal_group(node, signal.SIGTERM)
    deadline = time.monotonic() + 3
    for node in nodes:
        try:
            node.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for node in nodes:
        # `ray start` may exit before its children do: the group goes either way.
        _signal_group(node, signal.SIGKILL)
        node.wait()


@contextlib.contextmanager
def two_node_cluster():
    # Recent Ray turns token auth on for a new head but not for a node that joins it; a loopback-only
    # test cluster needs neither. The driver (this process) must agree with the nodes.
    auth_mode = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # A short temp dir: Ray's socket paths live under it and must stay below the 107-byte Unix limit.
    temp = tempfile.mkdtemp(prefix="slray", dir="/tmp")
    port = _free_port()
    nodes = []
    try:
        head_log, worker_log = Path(temp) / "head.log", Path(temp) / "worker.log"
        nodes.append(_start_node(["--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", temp], head_log))
        _wait_started(nodes[0], head_log)
        nodes.append(_start_node(["--address", f"127.0.0.1:{port}"], worker_log))
        _wait_started(nodes[1], worker_log)
        yield f"127.0.0.1:{port}"
    finally:
        _stop_nodes(nodes)
        shutil.rmtree(temp, ignore_errors=True)
        if auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = auth_mode
