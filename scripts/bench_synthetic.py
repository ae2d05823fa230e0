"""What synthetic data and an LLM labeler are worth on the benchmark tasks.

For each dataset in ../shared/data: test accuracy of a seed model trained only on synthetic data
(N = 25 and 100 per class) made by the local LLM (SmolLM2-135M through llama.cpp), and the accuracy
of the local LLM as a labeler on 100 test examples. With OPENAI_API_KEY set, the same runs with
GPT-4o (--openai-model). Writes benchmarks/synthetic.json and benchmarks/synthetic.md.

The projects live in .cache/bench/synthetic/<dataset>-<model>/ (git-ignored) and are reused:
a stage already done is not run again (its recorded figures are kept), LLM answers are cached in
each project's store, and scripts/reproduce_seed_table.py starts its active learning from them.

    python scripts/bench_synthetic.py                       # everything (about 65 min on 2 shared cores)
    python scripts/bench_synthetic.py --datasets sms_spam --sizes 25 --label-n 20   # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from synthloop import Project
from synthloop.labelers.llm import label_texts
from synthloop.llm.serve import LOCAL_MODEL_NAME, start_local_server
from synthloop.synth import generate

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"
CACHE = ROOT / ".cache" / "bench" / "synthetic"
STATE_FILE = "bench_state.json"
# Generated texts are capped at 200 characters (as in `make demo`): llama.cpp compiles the cap into its
# grammar, so SmolLM2 cannot ramble for hundreds of tokens; SMS and tweets are mostly shorter anyway.
SYNTH = {"max_chars": 200}
# SmolLM2's sub-topic lists are scraps that pull its texts off their class (see scripts/demo.py); the committed
# local figures were measured without sub-topics. GPT-4o gets them (the default).
LOCAL_SYNTH = {**SYNTH, "subtopics": 0}


def project_dir(dataset: str, model: str) -> Path:
    return CACHE / f"{dataset}-{model}"


def open_project(dataset: str, llm: dict) -> Project:
    """The dataset's project for this LLM: created once (unlabeled pool + test split), then reopened."""
    d = DATA / dataset
    root = project_dir(dataset, llm["model"])
    if not (root / "synthloop.toml").exists():
        synth = LOCAL_SYNTH if llm["model"] == LOCAL_MODEL_NAME else SYNTH
        project = Project.init(root, d / "task.toml", llm=llm, synth=synth,
                               loop={"strategy": "margin", "batch_size": 25, "labeler": "oracle", "seed": 0})
        # The pool's labels stay hidden (gold): the seed model never sees them. The pool is there because a
        # real user has one: TF-IDF fits its vocabulary on it and synthetic texts are deduplicated against it.
        # reproduce_seed_table.py later lets the oracle answer from these gold labels.
        project.import_file(d / "train.csv", label_col="label", gold=True)
        project.import_file(d / "test.csv", label_col="label", split="test")
        project.close()
    project = Project(root)
    # The local server gets a new port on every run; the cache key does not include the URL.
    project.config.llm = project.config.llm.model_copy(update=llm)
    return project


def synthetic_counts(project: Project) -> Counter:
    return Counter(label for _, _, label, source in project.store.training_set() if source.startswith("synthetic"))


def seed_stage(project: Project, n: int, local: bool) -> dict:
    """Top the synthetic data up to n per class, train on it (plus the task's examples), score on the test split."""
    have = synthetic_counts(project)
    need = {lab: n - have[lab] for lab in project.task.label_names if n - have[lab] > 0}
    client = project.llm_client()
    if local:
        # The committed local figures asked each request once (before retries resampled, a retry of llama.cpp's
        # seeded answer only repeated it); kept so that a re-run measures the same thing.
        client.validation_retries = 0
    calls_before = generate_calls(project)
    start = time.perf_counter()
    # A seed per stage, as in the committed run (generation also mixes in the synthetic count since).
    report = generate(project.label_context(), need, seed=n) if need else None
    seconds = time.perf_counter() - start
    _, model = project.train()
    metrics = project.evaluate(model)
    return {"per_class": n, "kept": dict(synthetic_counts(project)), "accuracy": metrics["accuracy"],
            "macro_f1": metrics["macro_f1"], "per_class_f1": {k: v["f1"] for k, v in metrics["per_class"].items()},
            "generate_seconds": round(seconds, 1),
            "calls": None if report is None else generate_calls(project) - calls_before,
            "failed_calls": None if report is None else report.failed_calls,
            "dropped": {} if report is None else dict(report.dropped)}


def generate_calls(project: Project) -> int:
    return sum(u.calls for u in project.store.llm_usage() if u.purpose == "generate")


def test_sample(dataset: str, n: int) -> pd.DataFrame:
    """The labeler's test examples; reproduce_seed_table.py asks GPT-4o about the very same ones."""
    return pd.read_csv(DATA / dataset / "test.csv").sample(n, random_state=0)


def label_stage(project: Project, dataset: str, n: int, local: bool) -> dict:
    test = test_sample(dataset, n)
    client = project.llm_client()
    if local:
        client.validation_retries = 0  # as in the committed run (see seed_stage)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    outcomes = label_texts(project.label_context(), list(test.text))
    seconds = time.perf_counter() - start
    usage = next((asdict(u) for u in project.store.llm_usage() if u.purpose == "label"), {})
    answered = [(o.label, gold) for o, gold in zip(outcomes, test.label) if o.label is not None]
    correct = sum(a == g for a, g in answered)
    return {
        "n": n, "answered": len(answered), "failed": sum(o.error is not None for o in outcomes),
        "abstained": sum(o.abstained for o in outcomes),
        "accuracy": correct / n,  # a failed or abstained answer counts as wrong
        "accuracy_answered": correct / len(answered) if answered else None,
        "predicted": dict(Counter(o.label or ("abstain" if o.abstained else "failed") for o in outcomes)),
        "seconds": round(seconds, 1), "cost": sum(o.cost for o in outcomes),
        # Token counts of the labeling prompts (this model's tokenizer); cached answers carry none.
        "calls": usage.get("calls", 0) - (usage.get("cached") or 0), "cached": usage.get("cached") or 0,
        "prompt_tokens": usage.get("prompt_tokens") or 0, "completion_tokens": usage.get("completion_tokens") or 0,
        "few_shot_per_class": project.config.llm.few_shot,
        # The cores are shared with other work: the 1-minute load average says how busy they were.
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def run_dataset(dataset: str, llm: dict, sizes: list[int], n_label: int) -> dict:
    """Runs the stages not done yet; the state file keeps each stage's figures for later runs."""
    local = llm["model"] == LOCAL_MODEL_NAME
    project = open_project(dataset, llm)
    state_path = project.root / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.exists() else {"seed_model": {}}
    try:
        for n in sizes:
            if str(n) not in state["seed_model"]:
                print(f"  {dataset}: synthetic data, {n} per class", flush=True)
                state["seed_model"][str(n)] = seed_stage(project, n, local)
                state_path.write_text(json.dumps(state, indent=1))
        if "labeler" not in state or state["labeler"]["n"] != n_label:
            print(f"  {dataset}: labeling {n_label} test examples", flush=True)
            state["labeler"] = label_stage(project, dataset, n_label, local)
            state_path.write_text(json.dumps(state, indent=1))
        state["samples"] = samples(project)
        state["majority_accuracy"] = float(pd.read_csv(DATA / dataset / "test.csv").label.value_counts(normalize=True).iloc[0])
    finally:
        project.close()
    return {"dataset": dataset, "llm": llm["model"], "project": str(project.root.relative_to(ROOT)),
            "seed_model": [state["seed_model"][k] for k in sorted(state["seed_model"], key=int)], **{
                k: state[k] for k in ("labeler", "samples", "majority_accuracy")}}


def samples(project: Project) -> dict[str, str]:
    """The first synthetic text of each class (by id: an arbitrary but stable pick), to show what they look like."""
    out: dict[str, str] = {}
    for _, text, label, source in project.store.training_set():
        if source.startswith("synthetic") and label not in out:
            out[label] = text
    return out


def markdown(results: list[dict], meta: dict) -> str:
    # Stage times, not this run's wall time: a re-run reuses finished stages and takes seconds.
    llm_minutes = sum(s["generate_seconds"] for r in results for s in r["seed_model"]) / 60 + sum(
        r["labeler"]["seconds"] for r in results) / 60
    lines = ["# Synthetic data and LLM labels", "",
             (f"Generated by `scripts/bench_synthetic.py` on {meta['machine']}, cores shared with other work: "
              f"{llm_minutes:.0f} min of generation and labeling in all (the stage times below)."), "",
             ("**Seed model**: tfidf-lr trained only on synthetic examples plus the task's own 1–2 examples per class "
             "(no real labels; TF-IDF's vocabulary is fitted on the unlabeled pool texts, as synthloop does by default), "
             f"scored on the full test split. Synthetic texts are capped at {SYNTH['max_chars']} characters; "
             "generation requests are retried up to 3× the calls a perfect model would need, so a class can end below N."),
             "",
             "| dataset | LLM | N per class | synthetic kept | seed accuracy | seed macro-F1 | majority class | LLM calls (failed) | generation min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        for s in r["seed_model"]:
            kept = sum(s["kept"].values())
            calls = "cached" if s["calls"] is None else f"{s['calls']} ({s['failed_calls']})"
            lines.append(f"| {r['dataset']} | {r['llm']} | {s['per_class']} | {kept} | {s['accuracy']:.3f} | "
                         f"{s['macro_f1']:.3f} | {r['majority_accuracy']:.3f} | {calls} | {s['generate_seconds'] / 60:.1f} |")
    lines += ["", "LLM calls and minutes are those of the stage (N = 100 adds to the N = 25 data). Synthetic examples kept per class at the largest N: " + "; ".join(
        f"{r['dataset']}: " + ", ".join(f"{k} {v}" for k, v in r["seed_model"][-1]["kept"].items()) for r in results if r["seed_model"]) + ".",
        "", ("**LLM as a labeler** on 100 test examples (`pandas.sample(100, random_state=0)`), few-shot with the task's "
        "examples, temperature 0; failed or abstained answers count as wrong."), "",
        "| dataset | LLM | accuracy | accuracy on answered | answered | abstained | failed | seconds | s per 1k | load avg | $ |",
        "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lab = r["labeler"]
        on_answered = "–" if lab["accuracy_answered"] is None else f"{lab['accuracy_answered']:.3f}"
        lines.append(f"| {r['dataset']} | {r['llm']} | {lab['accuracy']:.3f} | {on_answered} | {lab['answered']}/{lab['n']} | "
                     f"{lab['abstained']} | {lab['failed']} | {lab['seconds']} | {lab['seconds'] / lab['n'] * 1000:.0f} | "
                     f"{'–'.join(map(str, lab.get('load_average', [])))} | {lab['cost']:.4f} |")
    lines += ["", "What the labeler answered: " + "; ".join(
        f"{r['dataset']}: " + ", ".join(f"{k} {v}" for k, v in sorted(r["labeler"]["predicted"].items())) for r in results) + ".",
        ("Load avg: the 1-minute load average before and after the labeling run (2 cores; the LLM server uses one "
        "thread, at nice 10), i.e. how much other work shared the machine.")]
    if not meta["openai"]:
        lines += ["", ("GPT-4o was **not run**: no `OPENAI_API_KEY` was set for this run. With a key the script adds the "
                  "same rows for GPT-4o (`--openai-model`).")]
    lines += ["", "## What the local LLM writes", "", "One synthetic text per class (the first by id), verbatim:", ""]
    for r in results:
        for label, text in r["samples"].items():
            lines.append(f"- {r['dataset']} / {label}: {json.dumps(text, ensure_ascii=False)}")
    lines += ["", ("SmolLM2-135M is a 135M-parameter model: it shows the plumbing, not GPT-4o's quality. "
              "These figures are what it actually produced.")]
    return "\n".join(lines) + "\n"


def write(results: list[dict], meta: dict, out: Path) -> None:
    out.mkdir(exist_ok=True)
    (out / "synthetic.json").write_text(json.dumps({**meta, "results": results}, indent=1))
    (out / "synthetic.md").write_text(markdown(results, meta))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=["sms_spam", "ag_news", "corona_nlp"])
    parser.add_argument("--sizes", nargs="*", type=int, default=[25, 100])
    parser.add_argument("--label-n", type=int, default=100)
    parser.add_argument("--openai-model", default="gpt-4o")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks")
    args = parser.parse_args()
    if not DATA.is_dir():
        raise SystemExit(f"benchmark data not found at {DATA}")
    started = time.time()
    meta = {"machine": f"{platform.node() or 'this machine'} ({os.cpu_count()} cores)", "minutes": 0,
            "openai": bool(os.environ.get("OPENAI_API_KEY")), "synth": SYNTH, "sizes": args.sizes}
    with start_local_server() as server:
        llms = [{"model": LOCAL_MODEL_NAME, "base_url": server.base_url, "concurrency": 1}]
        if meta["openai"]:
            llms.append({"model": args.openai_model})
        results: dict[tuple[str, str], dict] = {}
        # Smallest N and the labeler on every dataset first, so an interrupted run still covers every dataset.
        for sizes in (args.sizes[:1], args.sizes):
            for llm in llms:
                for dataset in args.datasets:
                    print(f"{dataset} with {llm['model']}", flush=True)
                    results[dataset, llm["model"]] = run_dataset(dataset, llm, sizes, args.label_n)
                    meta["minutes"] = round((time.time() - started) / 60, 1)
                    write(list(results.values()), meta, args.out)
    print(markdown(list(results.values()), meta))


if __name__ == "__main__":
    main()
