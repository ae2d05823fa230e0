"""What an operator sees of a night whose review server is down, through the real CLI: an `outage` field, each
warning once (log file, stderr, summary), `--outage-exit`, stdout that is exactly one JSON object, reports with
rounded figures (.md and .html), and the run in `synthloop status`; unwrapped output without a terminal.
Argilla is down here (nothing listens at its address), so no server is needed; the SDK must be installed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import skip_or_fail

if importlib.util.find_spec("argilla") is None:
    skip_or_fail("the argilla SDK is not installed in this venv (pip install 'synthloop[argilla]')")

from synthloop import Project

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "sms_spam"
CLOSED = "http://127.0.0.1:9"  # nothing listens there


@pytest.fixture
def night(tmp_path, small_pool):
    # A long folder name: a line that would wrap at 80 columns.
    root = tmp_path / ("a-project-folder-with-a-name-long-enough-to-pass-eighty-columns-" + "x" * 30)
    project = Project.init(root, EXAMPLE / "task.toml", loop={"batch_size": 10, "labeler": "argilla"},
                           argilla={"retries": 0, "retry_wait": 0.1})
    project.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    project.import_file(small_pool / "test.csv", label_col="label", split="test")
    project.close()
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update(ARGILLA_API_URL=CLOSED, ARGILLA_API_KEY="argilla.apikey",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    return root, env


def cli(root: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synthloop", *args, "-p", str(root)], capture_output=True, check=False,
                          text=True, env=env, timeout=300)


def test_an_outage_is_a_field_a_warning_once_and_an_exit_status_if_asked(night):
    root, env = night
    run = cli(root, "nightly", "--json", "--outage-exit", "3", env=env)
    assert run.returncode == 3, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 1, run.stdout  # one JSON object, nothing else on stdout
    summary = json.loads(lines[0])
    assert summary["status"] == "done" and summary["queried"] == 10
    assert summary["outage"] == {"unreachable": [CLOSED], "not_pushed": 10, "labels_waiting": 0}
    warning = (f"Argilla at {CLOSED} did not answer (connect) after 1 try: ConnectError; 10 queries stay pending "
               "and go out with the next round or `synthloop review push`")
    assert summary["warnings"] == [warning]
    # stderr: synthloop's handler, each warning once; nothing echoed by the root logger the Argilla SDK sets up.
    assert run.stderr.count(warning) == 1, run.stderr
    assert "INFO" not in run.stderr and "Traceback" not in run.stderr
    log = (root / ".synthloop" / "logs" / "nightly.log").read_text()
    assert [line for line in log.splitlines() if " WARNING " in line] == [
        line for line in log.splitlines() if line.endswith(f"WARNING synthloop: {warning}")] and warning in log
    assert sum(" WARNING " in line for line in log.splitlines()) == 1 and "run 1 done" in log

    reports = root / ".synthloop" / "reports"
    md, page = (reports / "nightly-0001.md").read_text(), (reports / "nightly-0001.html").read_text()
    for text in (md, page):
        assert "outage" in text and CLOSED in text and "10 queries not pushed" in text
        assert not re.search(r"\d\.\d{5,}", text), text  # figures rounded
    assert "<table>" in page and "<script" not in page
    assert "model v1 (retrained)" in md

    again = cli(root, "nightly", "--json", env=env)  # default: an outage is exit 0, the field says it
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["outage"]["not_pushed"] == 20

    status = cli(root, "status", "--no-latency", env=env)
    assert status.returncode == 0, status.stderr
    first = status.stdout.splitlines()[0]
    assert str(root) in first and first.endswith("2 rounds, model v1")  # one line: not wrapped without a TTY
    rows = [line for line in status.stdout.splitlines() if "outage: a server did not answer" in line]
    assert len(rows) == 2 and all(" done " in row for row in rows)


def test_the_report_says_when_labels_arrived_after_training():
    from synthloop.nightly_report import model_line

    base = {"retrained": False, "model_version": 7}
    assert model_line({**base, "labels_collected": 16}) == (
        "model v7 unchanged (tonight's 16 labels arrived after it was trained; the next run trains on them)")
    assert model_line({**base, "labels_collected": 0}) == "model v7 unchanged (no new labels)"
    assert model_line({**base, "retrained": True, "labels_collected": 3}) == "model v7 (retrained)"
