"""tests/forkserver.py runs the CLI as a new Python would: the same exit status, output, working directory,
environment and stdin, in a process of its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import forkserver
import pytest
from helpers import project_after_one_round


def plain(*args, cwd, env=None, input=None):
    return subprocess.run([sys.executable, "-m", "synthloop", *args], cwd=cwd, env=env, input=input,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def server():
    if os.environ.get("SYNTHLOOP_TEST_FORKSERVER") == "0":
        pytest.skip("SYNTHLOOP_TEST_FORKSERVER=0: every call is a plain subprocess")
    server = forkserver._get_server()
    assert server is not None, "the fork server did not start (or refused: threads after preloading)"
    return server


def test_forked_runs_match_a_new_python(server, tmp_path, example_dir):
    env = {**os.environ, "COLUMNS": "100"}
    for args in (["--help"], ["status"], ["init", "p", "--task", str(example_dir / "task.toml"), "--batch-size", "0"],
                 ["no-such-command"]):
        forked, fresh = (run(*args, cwd=tmp_path, env=env) for run in (forkserver.run_synthloop, plain))
        assert (forked.returncode, forked.stdout, forked.stderr) == (fresh.returncode, fresh.stdout, fresh.stderr), args
    # The working directory is the caller's: init writes the project there.
    done = forkserver.run_synthloop("init", "p", "--task", example_dir / "task.toml", cwd=tmp_path)
    assert done.returncode == 0 and (tmp_path / "p" / "synthloop.toml").is_file()
    assert forkserver.run_synthloop("status", "--json", cwd=tmp_path / "p").returncode == 0


def test_stdin_environment_and_pids_are_each_calls_own(server, tmp_path, small_pool):
    proj = project_after_one_round(tmp_path / "proj", small_pool, "tfidf-lr")
    texts = "Free entry! Text WIN to 80082 now\nsee you at lunch\n"
    forked, fresh = (run("predict", "-", "--json", cwd=proj, input=texts) for run in (forkserver.run_synthloop, plain))
    assert forked.returncode == 0 and forked.stdout == fresh.stdout and len(json.loads(forked.stdout)) == 2
    # The environment is the caller's: a project named by $SYNTHLOOP_PROJECT that does not exist.
    env = {**os.environ, "SYNTHLOOP_PROJECT": str(tmp_path / "nowhere")}
    forked, fresh = (run("status", cwd=tmp_path, env=env) for run in (forkserver.run_synthloop, plain))
    assert forked.returncode == fresh.returncode == 2 and forked.stderr == fresh.stderr and "nowhere" in forked.stderr
    # Each call was a process of its own: the server outlived the calls that exited 2 and still serves.
    assert server.proc.poll() is None and forkserver.run_synthloop("--help", cwd=tmp_path).returncode == 0


def test_the_shim_passes_a_signal_on_and_ends_by_it(server, tmp_path, small_pool):
    """`synthloop serve ... & kill $!` through the docs' shim: the kill reaches the forked server, which stops."""
    import re
    import signal
    import socket

    proj = project_after_one_round(tmp_path / "proj", small_pool, "tfidf-lr")
    shim = subprocess.Popen([*forkserver.shim_args(), "serve", "--port", "0"], cwd=proj, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, **forkserver.environment()})
    url = None
    for line in shim.stdout:
        if found := re.search(r"http://([0-9.]+):([0-9]+)", line):
            url = (found.group(1), int(found.group(2)))
            break
    assert url, "serve printed no address"
    socket.create_connection(url, timeout=5).close()  # it serves
    shim.send_signal(signal.SIGTERM)
    assert shim.wait(timeout=60) == -signal.SIGTERM
    with pytest.raises(OSError):
        socket.create_connection(url, timeout=5).close()  # and it has stopped
