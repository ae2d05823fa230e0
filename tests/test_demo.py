"""`make demo` as a person runs it (a shorter budget): the real local LLM writes the round-0 data,
the top-up adds synthetic examples of the class real labels leave short, and the report is written.
The model is tiny: structure, not quality."""

import json
import os
import subprocess
import sys
from pathlib import Path

from llm_servers import need_local_llm

ROOT = Path(__file__).resolve().parent.parent


def test_demo_generates_tops_up_and_writes_the_report(tmp_path):
    need_local_llm()
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, "scripts/demo.py", "--budget", "50", "--report-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1", "COLUMNS": "200"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "SMS spam: test accuracy per round" in done.stdout and f"report: {out / 'report.html'}" in done.stdout
    # Every step is printed as it starts (a log shows where the minutes go), and the end says what to try next.
    for step in ("1/4 starting the local LLM", "2/4 the baseline", "3/4 smollm2-135m-instruct writes", "4/4 round 2"):
        assert step in done.stdout
    assert "What to try next:" in done.stdout and "synthloop llm install qwen-1.5b" in done.stdout

    report = json.loads((out / "report.json").read_text())
    generated, *topups = report["synthetic_added"]
    assert generated["round"] is None and generated.get("ham", 0) > 0 and generated.get("spam", 0) > 0
    # Each top-up adds the class that is under the demo's 45% threshold among the real labels so far (spam is
    # 13% of the pool, but margin sampling may pick mostly spam, and then ham is the one short).
    assert topups
    for topup in topups:
        before = report["per_round"][topup["round"] - 1]["labels_total"]["oracle"]
        short = {label for label in ("ham", "spam") if before.get(label, 0) / sum(before.values()) < 0.45}
        assert {label for label, n in topup.items() if label != "round" and n > 0} == short
    assert [p["labels"] for p in report["curve"]] == [0, 25, 50]
    assert [p["labels"] for p in report["baselines"]["random"]] == [0, 25, 50]
    assert report["llm"]["by_purpose"]["generate"]["calls"] > 0 and report["llm"]["total_cost"] == 0  # local: $0
    assert (out / "report.html").stat().st_size > 10_000 and (out / "report.md").exists()
