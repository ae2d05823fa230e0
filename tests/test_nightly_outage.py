"""What an operator sees of a night whose review server is down, through the real CLI: an `outage` field, each
warning once (log file, stderr, summary), `--outage-exit`, stdout that is exactly one JSON object, reports with
rounded figures (.md and .html), the run in `synthloop status` and in `synthloop report`'s runs section (done,
with an outage, and failed; escaped); unwrapped output without a terminal.
Argilla is down here (nothing listens at its address), so no server is needed; the SDK must be installed."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from forkserver import run_synthloop
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
    return run_synthloop(*args, "-p", root, env=env, timeout=300)


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
    assert "- labels collected: 0\n- model: v1, retrained on 0 real labels\n" in md  # nothing came after training

    again = cli(root, "nightly", "--json", env=env)  # default: an outage is exit 0, the field says it
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["outage"]["not_pushed"] == 20

    status = cli(root, "status", "--no-latency", env=env)
    assert status.returncode == 0, status.stderr
    first = status.stdout.splitlines()[0]
    assert str(root) in first and first.endswith("2 rounds, model v1")  # one line: not wrapped without a TTY
    rows = [line for line in status.stdout.splitlines() if "outage: a server did not answer" in line]
    assert len(rows) == 2 and all(" done " in row for row in rows)


def test_a_round_during_an_outage_says_so_beside_its_table(night):
    root, env = night
    shown = cli(root, "round", env=env)
    assert shown.returncode == 0, shown.stderr  # a round never waits for reviewers
    lines = shown.stdout.splitlines()
    assert [line for line in lines if line.startswith("outage:")] == [
        f"outage: {CLOSED} did not answer: 10 queries not pushed, 0 pushed ones whose labels wait on the server"]
    assert shown.stderr.count("did not answer (connect)") == 1 and "Traceback" not in shown.stderr
    again = cli(root, "round", "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["outage"] == {"unreachable": [CLOSED], "not_pushed": 20, "labels_waiting": 0}


def test_the_report_says_when_labels_arrived_after_training():
    from synthloop.report.nightly_report import model_line

    # An oracle answers while routing, after the model was trained: "18 collected" beside a model trained on 0.
    first = {"retrained": True, "model_version": 1, "labels_collected": 18, "labels_total": 18,
             "metrics": {"n_labels": 0}}
    assert model_line(first) == ("v1, retrained on 0 real labels (tonight's 18 labels arrived after it was "
                                 "trained; the next run trains on them)")
    # Labels collected before training (a reviewer's, a Batch job's) are in the model: nothing is said of them.
    assert model_line({**first, "labels_total": 18, "metrics": {"n_labels": 18}}) == "v1, retrained on 18 real labels"
    unchanged = {"retrained": False, "model_version": 7, "labels_collected": 16, "labels_total": 40,
                 "metrics": {"n_labels": 24}}
    assert model_line(unchanged) == ("v7, unchanged (tonight's 16 labels arrived after it was trained; the next run "
                                     "trains on them)")
    assert model_line({**unchanged, "labels_collected": 0, "labels_total": 24}) == "v7, unchanged (no new labels)"
    # A summary written before labels_total: tonight's labels count as after training.
    assert model_line({"retrained": False, "model_version": 7, "labels_collected": 1, "metrics": {}}) == (
        "v7, unchanged (tonight's 1 label arrived after it was trained; the next run trains on them)")


def _runs_rows(page: str) -> list[list[str]]:
    """The HTML report's "Nightly runs" table, as the browser shows its cells (entities decoded)."""
    from html.parser import HTMLParser

    section = page.split("<h2>Nightly runs</h2>", 1)[1].split("</table>", 1)[0]

    class Cells(HTMLParser):
        rows: list[list[str]] = []

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                self.rows.append([])
            elif tag in ("td", "th"):
                self.rows[-1].append("")

        def handle_data(self, data):
            if self.rows and self.rows[-1]:
                self.rows[-1][-1] += data

    parser = Cells()
    parser.rows = []
    parser.feed(section)
    return parser.rows


def test_the_report_lists_the_nightly_runs_with_their_status_rounded_and_escaped(night):
    root, env = night
    done = cli(root, "nightly", "--json", env=env)  # done, with an outage: Argilla is down
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    # A drop whose file name is markup: the run fails reading it, and its error names the file.
    drops = root.parent / "drops"
    drops.mkdir()
    bad = drops / "<b>[red]x*_y&z.csv"  # HTML, rich and Markdown markup
    bad.write_text("body\nhello\n")  # no text column
    failed = cli(root, "nightly", "--pool", str(drops), "--json", env=env)
    assert failed.returncode == 2 and failed.stdout == "" and "has no column 'text'" in failed.stderr, failed.stderr

    report = cli(root, "report", "--no-latency", "--json", env=env)
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    runs = data["runs"]
    assert [(r["run"], r["status"], r["outage"], r["exit_status"]) for r in runs] == [(1, "done", True, None),
                                                                                    (2, "failed", False, 2)]
    assert runs[0]["seconds"] == summary["seconds"] and runs[0]["round"] == summary["round"] == 0
    assert str(bad) in runs[1]["error"] and runs[1]["round"] is None

    page = Path(data["paths"]["html"]).read_text()
    header, first, second = _runs_rows(page)
    assert header == ["run", "started (UTC)", "status", "round", "queried", "labels collected", "seconds", "note"]
    assert first[:6] == ["1", first[1], "done", "0", "10", "0"] and first[7] == "outage: a server did not answer"
    assert first[6] == f"{summary['seconds']:.1f}"  # rounded to a tenth
    assert second[:6] == ["2", second[1], "failed", "-", "-", "-"] and re.fullmatch(r"\d+\.\d", second[6])
    assert second[7].startswith(f"{bad} could not be read as csv")  # the browser shows the name as it is ...
    assert "<b>[" not in page and "&lt;b&gt;[red]x*_y&amp;z.csv" in page  # ... because the HTML escapes it
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d", row[1]) for row in (first, second))

    md = Path(data["paths"]["md"]).read_text().split("## Nightly runs", 1)[1]
    rows = [line for line in md.splitlines() if line.startswith("| ")][1:]
    assert rows[0].startswith("| 1 | ") and f"| done | 0 | 10 | 0 | {summary['seconds']:.1f} | outage: a server" in rows[0]
    assert rows[1].startswith("| 2 | ") and "| failed | - | - | - |" in rows[1]
    # Markdown escapes what would turn into markup: the tag, the emphasis characters, the ampersand.
    assert "&lt;b&gt;\\[red\\]x\\*\\_y&amp;z.csv" in rows[1] and "<b>" not in md
    assert not re.search(r"\d\.\d{3,}", md.split("|---|", 1)[1]), md  # no unrounded figure in the table
    # One round (the failed run stopped before opening one): "1 round", not "1 rounds".
    assert ", 1 round; " in page and ", 1 round; " in Path(data["paths"]["md"]).read_text()

    status = cli(root, "status", "--no-latency", env=env)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0].endswith(": 1 round, model v1")
    shown = {row[0]: row[1:] for row in table_rows(status.stdout)}
    assert shown["1"][1:5] == ["done", "0", "10", "0"] and shown["1"][5] == "outage: a server did not answer"
    assert shown["2"][1:5] == ["failed", "-", "-", "-"]
    assert shown["2"][5].startswith(f"{bad} could not be read")  # rich printed the name as it is, [red] and all


def table_rows(text: str) -> list[list[str]]:
    """A rich table's body rows, cells stripped (one line each: nothing wraps without a terminal)."""
    return [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in text.splitlines()
            if line.strip().startswith("│")]
