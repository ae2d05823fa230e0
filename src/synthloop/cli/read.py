"""The commands that only read a project (status, predict, export) and `simulate`, which makes its own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from synthloop.cli.common import cli_command
from synthloop.cli.options import JsonOpt, ProjectOpt, QuietOpt, emit, err, open_project, out
from synthloop.errors import SynthloopError


@cli_command()
def status(no_latency: Annotated[bool, typer.Option("--no-latency", help="Skip timing the latest model (done once per version).")] = False,
           project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """Examples, labels per class and source, pending queries, last metrics, cost and impact."""
    proj = open_project(project)
    info = proj.status(measure_latency=not no_latency)
    if emit(info, as_json):
        return
    rounds = f"{info['rounds']} round" + ("" if info["rounds"] == 1 else "s")
    out.print(f"[bold]{escape(info['task'])}[/] in {escape(info['project'])}: {rounds}, model v{info['model_version'] or '-'}")
    examples = Table("split/origin", "examples", title="examples")
    for key, n in info["examples"].items():
        examples.add_row(key, str(n))
    out.print(examples)
    labels = proj.task.label_names
    table = Table("source", *map(escape, labels), "total", title="labels")
    for source, per_class in sorted(info["labels"].items()):
        table.add_row(escape(source), *(str(per_class.get(lab, 0)) for lab in labels), str(sum(per_class.values())))
    out.print(table)
    out.print("queries: " + (", ".join(f"{k} {v}" for k, v in sorted(info["queries"].items())) or "none"), markup=False)
    for state, reasons in info.get("query_reasons", {}).items():  # `synthloop requeue --failed/--skipped` retries them
        out.print(f"  {state}: " + escape(", ".join(f"{n} {why}" for why, n in sorted(reasons.items(), key=lambda r: -r[1]))))
    if info["llm"]:
        usage = Table("purpose", "model", "calls", "cached", "failed", "tokens in", "tokens out", "$", "seconds", title="LLM usage")
        for u in info["llm"]:
            usage.add_row(escape(u["purpose"]), escape(u["model"]), str(u["calls"]), str(u["cached"]), str(u["failed"]),
                          str(u["prompt_tokens"]), str(u["completion_tokens"]), f"{u['cost']:.4f}", f"{u['latency']:.1f}")
        out.print(usage)
    if info["last_metrics"] and info["last_metrics"]["accuracy"] is not None:  # None without a test split
        m = info["last_metrics"]
        out.print(f"last metrics (model v{m['model_version']}, trained on {m['n_labels']} labels): "
                  f"accuracy {m['accuracy']:.3f}, macro-F1 {m['macro_f1']:.3f}")
    _print_impact(info["impact"])
    _print_runs(info.get("runs") or [])


def _print_runs(runs: list[dict]) -> None:
    import time

    if not runs:
        return
    table = Table("run", "started (UTC)", "status", "round", "queried", "collected", "note", title="nightly runs")
    for r in runs:
        note = r["error"] or ("outage: a server did not answer" if r["outage"] else "")
        table.add_row(str(r["run"]), time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["started_at"])), r["status"],
                      *("-" if r[k] is None else str(r[k]) for k in ("round", "queried", "labels_collected")),
                      escape(note))
    out.print(table)


def _print_impact(impact: dict) -> None:
    cf = impact["counterfactual"]
    table = Table("", "$ per 1k predictions", "seconds per 1k, one by one", "seconds per 1k, batched", title="cost and impact")
    for r in cf["rows"]:
        batched = "-" if r["seconds_per_1k_batched"] is None else f"{r['seconds_per_1k_batched']:.2f}"
        table.add_row(r["what"], f"{r['usd_per_1k']:.4f}", f"{r['seconds_per_1k_one_by_one']:.2f}", batched)
    out.print(table)
    model = impact["compact_model"]
    if model:
        out.print(f"compact model v{model['model_version']}, timed on this machine ({model['host']}"
                  f"{'; measured earlier' if model['cached'] else ''}): {model['batch_texts']:,} texts in one batch, "
                  f"{model['single_calls']} single calls", highlight=False)
    else:
        out.print(f"compact model: not timed ({escape(impact['compact_model_note'])})", highlight=False)
    pool = cf["whole_pool"]
    if pool["texts"]:
        out.print(f"labeling the whole pool ({pool['texts']:,} texts) with GPT-4o, one request each: about ${pool['usd']:,.2f} "
                  f"and {pool['seconds_one_by_one'] / 3600:,.1f} hours one by one (estimate)", highlight=False)
    out.print(f"LLM spent so far: ${impact['llm_spent_usd']:.4f} for {impact['llm_tokens']:,} tokens"
              + (f"; that is {cf['break_even_predictions']:,} GPT-4o predictions" if impact["llm_spent_usd"] else ""), highlight=False)
    out.print(f"GPT-4o figures: {cf['assumptions']}", highlight=False, soft_wrap=True)
    if impact["llm_by_round"]:
        rounds = Table("round", "LLM calls", "tokens in", "tokens out", "$", "seconds", title="LLM cost per round")
        for r in impact["llm_by_round"]:
            rounds.add_row("-" if r["round"] is None else str(r["round"]), str(r["calls"]), str(r["prompt_tokens"] or 0),
                           str(r["completion_tokens"] or 0), f"{r['cost'] or 0:.4f}", f"{r['latency'] or 0:.1f}")
        out.print(rounds)
    co2 = impact["co2"]
    if "measured_kg_co2" in co2:
        out.print(f"CO2 (estimate, codecarbon, from the report of {co2['generated_at']}): model training over all rounds "
                  f"{1000 * co2['training_kg_co2']:.4f} g CO2eq at {co2['average_watts']:.1f} W", highlight=False)
    else:
        out.print(f"CO2: {escape(co2['note'])}", highlight=False)


# A lone argument ending like this is a file the user meant to pass with --file, not a text to classify.
FILE_SUFFIXES = (".csv", ".tsv", ".jsonl", ".ndjson", ".json", ".parquet", ".pq", ".txt")


def _predict_texts(texts: list[str], file: Path | None, text_col: str) -> list[str]:
    from synthloop.data import read_table

    found: list[str] = []
    if file is not None:
        if not file.is_file():
            raise SynthloopError(f"--file {file}: no such file; pass a CSV, TSV, JSONL, Parquet or .txt (one text a line)")
        if file.suffix.lower() == ".txt":
            found += [line for line in file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
        else:
            found += read_table(file, text_col).texts
    for text in texts:
        if text == "-":
            import sys

            found += [line for line in sys.stdin.read().splitlines() if line.strip()]
        elif len(texts) == 1 and file is None and " " not in text and text.lower().endswith(FILE_SUFFIXES):
            raise SynthloopError(f"{text!r} looks like a file name: pass --file {text} to predict its rows "
                                 "(or `echo TEXT | synthloop predict -` to classify these words as a text)")
        else:
            found.append(text)
    if not found:
        raise SynthloopError("nothing to predict: give texts as arguments, --file FILE, or - to read one text a line from stdin")
    return found


@cli_command()
def predict(texts: Annotated[list[str] | None, typer.Argument(help="Texts to classify; - reads one text a line from stdin.",
                                                                 show_default=False)] = None,
            file: Annotated[Path | None, typer.Option("--file", "-f", help="CSV/TSV/JSONL/Parquet (see --text-col) "
                                                         "or .txt (one text a line).")] = None,
            text_col: Annotated[str, typer.Option(help="Text column when --file is a table.")] = "text",
            model_dir: Annotated[Path | None, typer.Option("--model-dir", help="An export folder (synthloop export-model).")] = None,
            project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """Predict with the latest model, or an exported one (loaded once for all the texts)."""
    texts = _predict_texts(texts or [], file, text_col)
    if model_dir is not None:
        from synthloop.serve.deploy import load_export

        results = load_export(model_dir).predict(texts)
    else:
        results = open_project(project).predict(texts)
    if emit(results, as_json):
        return
    table = Table("label", "probability", "text")
    for r in results:
        table.add_row(escape(r["label"]), f"{r['probability']:.3f}", escape(r["text"][:100]))
    out.print(table)


@cli_command()
def export(path: Annotated[Path, typer.Argument(help="Output file: .csv, .jsonl or .parquet.")],
           project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """Write the labeled set (real labels only, best source per example)."""
    proj = open_project(project)
    n = proj.export(path)
    if not emit({"path": str(path), "rows": n}, as_json):
        out.print(f"wrote {n} labeled examples to {path}")


@cli_command()
def simulate(task: Annotated[Path, typer.Option(help="Task file.")],
             pool: Annotated[Path, typer.Option(help="Pool file with gold labels.")],
             test: Annotated[Path, typer.Option(help="Test file with labels.")],
             strategy: str = "cold-start", model: str = "hybrid-lr",
             budget: Annotated[int, typer.Option(min=1, help="Labels to buy in all.")] = 500,
             batch: Annotated[int, typer.Option(min=1, help="Labels per round.")] = 25,
             seed: int = 0, text_col: str = "text", label_col: str = "label",
             with_report: Annotated[bool, typer.Option("--report", help="Also run the random baseline (same seed) and write "
                                                        "the report with both learning curves to REPORT_DIR.")] = False,
             # A positional folder, because typer cannot give an option an optional value: `--report [DIR]`.
             report_dir: Annotated[Path | None, typer.Argument(help="Folder for --report (default ./simulation-report).",
                                                                  show_default=False)] = None,
             as_json: JsonOpt = False, quiet: QuietOpt = False):
    """Run a whole loop against gold labels in a temporary project; prints the learning curve."""
    from synthloop.loop.simulate import simulate as run_simulation

    if report_dir is not None and not with_report:
        raise SynthloopError(f"{report_dir} was given without --report; add --report to write the report there")
    if with_report and report_dir is None:
        report_dir = Path("simulation-report")
    progress = Progress(TextColumn("labels"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                        TimeElapsedColumn(), console=err, disable=quiet or as_json)

    def on_point(point):
        run = f"{point['baseline']}: " if "baseline" in point else ""
        progress.update(bar, completed=point["labels"], description=f"{run}acc {point['accuracy'] or 0:.3f}")

    with progress:
        bar = progress.add_task("", total=budget)
        result = run_simulation(task, pool, test, strategy, model, budget, batch, seed, text_col, label_col, on_point,
                                report_dir=report_dir)
    if emit(result, as_json):
        return
    baselines = result.get("baselines", {})
    table = Table("labels", "accuracy", "macro-F1", *(f"{name} accuracy" for name in baselines),
                  title=f"{strategy} / {model} ({result['seconds']:.1f} s)")
    for k, p in enumerate(result["curve"]):
        others = [f"{c[k]['accuracy']:.3f}" if k < len(c) and c[k]["labels"] == p["labels"] else "-" for c in baselines.values()]
        table.add_row(str(p["labels"]), f"{p['accuracy']:.3f}", f"{p['macro_f1']:.3f}", *others)
    out.print(table)
    for kind, path in result.get("report", {}).items():
        out.print(f"{kind}: {path}", highlight=False, soft_wrap=True)


