"""How many wrong labels each pre-selection policy lets in, with a reviewer who accepts what is pre-selected.

Argilla pre-selects a record's suggestion: a reviewer who presses Enter stores it. This runs the loop
(margin sampling, batch 25) with a simulated reviewer who accepts every pre-selected label and, when nothing
is pre-selected, answers correctly (the gold label). The policy under test is the one `review push` uses
(`synthloop.labelers.argilla_queue.preselect` through `ArgillaLabeler.assess`/`pick`, no server needed):
always pre-select the model's guess, pre-select it only at confidence >= 0.6 / 0.7 / 0.8, or never.
Wrong accepted labels go into training, as they would in a real project.

Writes benchmarks/suggest.json and benchmarks/suggest.md.

    python scripts/bench_suggest.py                      # every dataset found, 3 seeds, 8 rounds
    python scripts/bench_suggest.py --seeds 1 --rounds 4 --datasets example   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
POLICIES = {"always": 0.0, "0.6": 0.6, "0.7": 0.7, "0.8": 0.8, "never": float("inf")}


def datasets(names: list[str] | None, shared: Path = SHARED) -> dict[str, tuple[Path, Path, Path]]:
    """name -> (task.toml, pool csv, test csv): the committed SMS sample, and ../shared/data when present."""
    found = {"example": (ROOT / "examples/sms_spam/task.toml", ROOT / "examples/sms_spam/pool.csv",
                         ROOT / "examples/sms_spam/test.csv")}
    for name in ("sms_spam", "ag_news", "corona_nlp"):
        d = shared / name
        if (d / "train.csv").exists():
            found[name] = (d / "task.toml", d / "train.csv", d / "test.csv")
    return {k: v for k, v in found.items() if not names or k in names}


def run_one(files: tuple[Path, Path, Path], policy: float, seed: int, rounds: int, batch: int) -> dict:
    from synthloop import Project
    from synthloop.labelers.argilla import ArgillaLabeler
    from synthloop.store import NewLabel

    task, pool, test = files
    folder = Path(tempfile.mkdtemp(prefix="bench-suggest-"))
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        project = Project.init(folder / "p", task, loop={"batch_size": batch, "seed": seed, "labeler": "argilla"},
                               argilla={"suggest_min_confidence": min(policy, 1.0)})
        project.import_file(pool, label_col="label", gold=True)
        project.import_file(test, label_col="label", split="test")
        asked = preselected = wrong = 0
        for _ in range(rounds):
            result = project.round(route=False)
            queries = project.store.queries(status="pending", round_=result.number)
            labeler = ArgillaLabeler(project.label_context())  # the model this round selected with: what a push would show
            guesses = labeler.assess(queries)
            gold = project.store.gold_for([q.example_id for q in queries])
            labels = []
            for q in queries:
                pick = None if policy == float("inf") else labeler.pick(guesses[q.example_id], {})
                answer = pick.value if pick is not None else gold[q.example_id]  # Enter, or a careful choice
                asked += 1
                preselected += pick is not None
                wrong += answer != gold[q.example_id]
                labels.append(NewLabel(q.example_id, answer, "human:sim"))
            project.store.record_labels(labels, result.number)
            project.round()  # closes the round (nothing left to hand out)
        final = project.round(query=False)  # train and evaluate on everything the reviewer stored
        metrics = final.metrics or {}
        project.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"asked": asked, "preselected": preselected, "wrong": wrong,
            "accuracy": metrics.get("accuracy"), "macro_f1": metrics.get("macro_f1"),
            "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def summarize(runs: list[dict]) -> list[dict]:
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        for policy in POLICIES:
            mine = [r for r in runs if r["dataset"] == dataset and r["policy"] == policy]
            if not mine:
                continue
            asked = sum(r["asked"] for r in mine)
            rows.append({
                "dataset": dataset, "policy": policy, "seeds": len(mine), "asked": asked,
                "wrong_let_in": sum(r["wrong"] for r in mine), "wrong_share": sum(r["wrong"] for r in mine) / asked,
                "preselected_share": sum(r["preselected"] for r in mine) / asked,
                "wrong_among_preselected": (sum(r["wrong"] for r in mine) / sum(r["preselected"] for r in mine)
                                            if sum(r["preselected"] for r in mine) else None),
                "accuracy_median": statistics.median(r["accuracy"] for r in mine),
                "macro_f1_median": statistics.median(r["macro_f1"] for r in mine),
                "wall_s_min": min(r["wall_s"] for r in mine), "wall_s_median": statistics.median(r["wall_s"] for r in mine),
                "cpu_s_median": statistics.median(r["cpu_s"] for r in mine),
            })
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    lines = ["# Pre-selected suggestions: wrong labels let in", "",
             f"A simulated reviewer accepts every pre-selected label and answers the rest correctly; margin sampling, "
             f"{meta['rounds']} rounds of {meta['batch']}, {meta['seeds']} seeds, model `{meta['model']}`. "
             "`wrong let in`: labels stored that differ from the gold label (all of them accepted pre-selections). "
             "`pre-selected`: the share of records the reviewer only confirms. Accuracy and macro-F1: the model "
             "trained on what the reviewer stored, on the test split (median over seeds).", "",
             f"Measured {meta['date']} on {meta['machine']}; load average before {meta['load_before']}, "
             f"after {meta['load_after']}; {meta['total_s']:.0f} s wall in all.", "",
             "| dataset | policy | asked | wrong let in | wrong share | pre-selected | wrong among pre-selected "
             "| accuracy | macro-F1 | wall s (min / median) | CPU s (median) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['policy']} | {r['asked']} | {r['wrong_let_in']} | {pct(r['wrong_share'])} "
                     f"| {pct(r['preselected_share'])} | {pct(r['wrong_among_preselected'])} "
                     f"| {r['accuracy_median']:.3f} | {r['macro_f1_median']:.3f} "
                     f"| {r['wall_s_min']:.1f} / {r['wall_s_median']:.1f} | {r['cpu_s_median']:.1f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="*", help="example, sms_spam, ag_news, corona_nlp (default: all found)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    parser.add_argument("--data", type=Path, default=SHARED, help="the benchmark datasets (default ../shared/data)")
    parser.add_argument("--name", default="suggest", help="file names in --out: NAME.json and NAME.md")
    args = parser.parse_args()
    from synthloop.config import ModelConfig

    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    start = time.perf_counter()
    runs = []
    args.out.mkdir(exist_ok=True)
    for name, files in datasets(args.datasets, args.data).items():
        for policy, bar in POLICIES.items():
            for seed in range(args.seeds):
                run = run_one(files, bar, seed, args.rounds, args.batch)
                runs.append({"dataset": name, "policy": policy, "seed": seed, **run})
                print(f"{name} {policy} seed {seed}: {run['wrong']} wrong of {run['asked']}, "
                      f"accuracy {run['accuracy']:.3f} ({run['wall_s']:.1f} s)", flush=True)
        # Written after each dataset: a run stopped early keeps what it measured.
        meta = {"rounds": args.rounds, "batch": args.batch, "seeds": args.seeds, "model": ModelConfig().name,
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
                "load_before": load_before, "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                "total_s": time.perf_counter() - start}
        rows = summarize(runs)
        (args.out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "summary": rows, "runs": runs}, indent=1))
        (args.out / f"{args.name}.md").write_text(markdown(rows, meta))
    print((args.out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()
