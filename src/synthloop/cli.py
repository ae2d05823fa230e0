"""The `synthloop` command: a thin layer over `synthloop.Project`; no logic of its own."""

from __future__ import annotations

import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from synthloop.cli_common import cli_command
from synthloop.cli_llm import llm_app
from synthloop.cli_queue import requeue
from synthloop.cli_report import report
from synthloop.cli_review import review_app
from synthloop.cli_serve import export_model, serve
from synthloop.cli_teach import teach
from synthloop.console import console
from synthloop.errors import SynthloopError

if TYPE_CHECKING:  # the heavy modules load when a command needs them, so `synthloop --help` starts fast
    from synthloop.project import Project, RoundResult

app = typer.Typer(help="Cheap text classifiers: synthetic data + active learning.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
out = console()  # unwrapped without a terminal (synthloop/console.py)
err = console(stderr=True)

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="Project folder.", envvar="SYNTHLOOP_PROJECT")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]


def _open(project: Path) -> Project:
    from synthloop.project import Project

    return Project(project)


def _emit(data, as_json: bool) -> bool:
    if as_json:
        print(json.dumps(data, default=str))
    return as_json


def _round_table(results: list[RoundResult]) -> Table:
    table = Table("round", "labels", "accuracy", "macro-F1", "queried", "collected", "seconds")
    for r in results:
        m = r.metrics or {}
        acc = f"{m['accuracy']:.3f}" if "accuracy" in m else "-"
        f1 = f"{m['macro_f1']:.3f}" if "macro_f1" in m else "-"
        table.add_row(str(r.number), str(r.n_labels), acc, f1, str(r.queried), str(r.labels_collected), f"{r.seconds:.1f}")
    return table


@app.command()
@cli_command()
def init(directory: Annotated[Path, typer.Argument(help="Folder for the new project.")],
         task: Annotated[Path, typer.Option("--task", "-t", help="Task file (task.toml).")],
         model: Annotated[str, typer.Option(help="hybrid-lr, tfidf-lr, hashing-lr or embed-lr.")] = "hybrid-lr",
         strategy: Annotated[str, typer.Option(help="Query strategy.")] = "cold-start",
         labeler: Annotated[str, typer.Option(help="Who labels queries.")] = "oracle",
         batch_size: Annotated[int, typer.Option(min=1, help="Queries per round.")] = 25,
         as_json: JsonOpt = False):
    """Create a project: synthloop.toml and the .synthloop/ folder."""
    from synthloop.project import Project

    project = Project.init(directory, task, model={"name": model},
                           loop={"strategy": strategy, "labeler": labeler, "batch_size": batch_size})
    if not _emit({"project": str(project.root), "task": project.task.name}, as_json):
        out.print(f"Created project [bold]{project.task.name}[/] in {project.root}")


@app.command("import")
@cli_command(writes="import")
def import_(file: Annotated[Path, typer.Argument(help="CSV, TSV, JSONL or Parquet file.")],
            text_col: Annotated[str, typer.Option(help="Column with the text.")] = "text",
            label_col: Annotated[str | None, typer.Option(help="Column with labels, if any.")] = None,
            id_col: Annotated[str | None, typer.Option(help="Column with your own ids (default: hash of the text).")] = None,
            split: Annotated[str, typer.Option(help="pool (to label and train on) or test (held out).")] = "pool",
            gold: Annotated[bool, typer.Option("--gold", help="Keep pool labels hidden, for the simulated oracle.")] = False,
            skip_invalid: Annotated[bool, typer.Option("--skip-invalid", help="Import the valid rows and list every "
                                                       "row left out (line and reason), also in --skipped-file.")] = False,
            skipped_file: Annotated[Path | None, typer.Option(help="CSV of the skipped rows (default: "
                                                                 ".synthloop/logs/skipped-FILE.csv).")] = None,
            first_label_wins: Annotated[bool, typer.Option("--first-label-wins", help="A text given two different "
                                                           "labels keeps its first row's (default: refuse the file).")] = False,
            project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """Import examples into the pool or the test split. Importing the same file twice adds nothing."""
    proj = _open(project)
    result = proj.import_file(file, text_col, label_col, id_col, split, gold, skip_invalid=skip_invalid,
                              first_label_wins=first_label_wins)
    data = asdict(result)
    if result.skipped:
        import csv

        target = skipped_file or proj.state_dir / "logs" / f"skipped-{file.stem}.csv"
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([("where", "reason"), *result.skipped])
        data["skipped_file"] = str(target)
    if _emit(data, as_json):
        return
    out.print(f"{result.added} new examples into {split} ({result.already_stored} already stored, "
              f"{result.duplicates_in_file} duplicate rows, {result.other_split} in the other split); "
              f"{result.labels_added} labels added", markup=False)
    if result.other_split:
        other = "pool" if split == "test" else "test split"
        out.print(f"{result.other_split} of these texts are already in the {other}: the stored copy wins, so they "
                  f"stay in the {other} and are not added to the {split}", markup=False)
    if result.over_max_chars:
        cap = proj.config.limits.max_text_chars
        out.print(f"{result.over_max_chars} text(s) are longer than [limits] max_text_chars ({cap:,} characters): "
                  f"they are stored whole, and the model and LLM prompts see their first {cap:,} characters", markup=False)
    if result.skipped:
        err.print(f"skipped {len(result.skipped)} invalid row(s), listed in {data['skipped_file']}:", markup=False)
        for where, why in result.skipped[:20]:
            err.print(f"  {where}: {why}", markup=False, highlight=False)
        if len(result.skipped) > 20:
            err.print(f"  ... and {len(result.skipped) - 20} more", markup=False)


@app.command()
@cli_command(writes="train")
def train(project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """Train a new model version on every label in the store and score it on the test split."""
    proj = _open(project)
    with err.status("training"):
        version, model = proj.train()
        metrics = proj.evaluate(model)
    summary = {"model_version": version, "metrics": metrics and {k: metrics[k] for k in ("accuracy", "macro_f1", "n_test")}}
    if not _emit(summary, as_json):
        out.print(f"model v{version}" + (f": accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}" if metrics else ""))


@app.command()
@cli_command(writes="query")
def query(n: Annotated[int | None, typer.Option("--n", min=1, help="How many to query (default: batch size).")] = None,
          strategy: Annotated[str | None, typer.Option(help="Override the project's strategy.")] = None,
          project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """Select the next examples to label (trains first if this round has no model yet)."""
    proj = _open(project)
    with err.status("selecting"):
        result = proj.round(n=n, strategy=strategy, route=False)
    pending = proj.store.queries(status="pending", round_=result.number)
    if not _emit({"round": result.number, "queries": [{"id": q.example_id, "text": q.text, "score": q.score} for q in pending]}, as_json):
        table = Table("id", "score", "text", title=f"round {result.number}: {len(pending)} pending queries")
        for q in pending:
            table.add_row(escape(q.example_id), "-" if q.score is None else f"{q.score:.3f}", escape(q.text[:100]))
        out.print(table)


@app.command()
@cli_command(writes="label")
def label(with_: Annotated[str | None, typer.Option("--with", help="Labeler to use (default: the one each query was routed to).")] = None,
          project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """Hand pending queries to their labeler and store the labels that are ready."""
    proj = _open(project)
    added = proj.label(with_)
    if not _emit({"labels_added": added, "pending": proj.store.query_counts().get("pending", 0)}, as_json):
        out.print(f"{added} labels stored; {proj.store.query_counts().get('pending', 0)} queries still pending")


@app.command("round")
@cli_command(writes="round")
def round_(labeler: Annotated[str | None,
                              typer.Option(help="Route this round's queries to this labeler (oracle, llm, argilla, hybrid).")] = None,
           project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """One full round: collect labels, train, evaluate, top up minority classes, select, route."""
    from synthloop.nightly_report import outage, outage_line, run_logging

    proj = _open(project)
    # Warnings (e.g. Argilla down: queried is not pushed) come once each, after the table, not mid-spinner.
    with run_logging(None, stderr=io.StringIO()) as warned, err.status("running a round"):
        result = proj.round(labeler=labeler)
    down = outage(proj)  # a server that did not answer: the table alone would look like a normal round
    if not _emit({**asdict(result), "outage": down}, as_json):
        out.print(_round_table([result]))
        if down:
            out.print(f"outage: {escape(outage_line(down))}", highlight=False)
    for warning in warned:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


@app.command()
@cli_command(writes="loop")
def loop(rounds: Annotated[int, typer.Option(min=1, help="How many rounds.")] = 5,
         until_stable: Annotated[bool, typer.Option(help="Stop early once predictions stabilize (see [loop] stop_*).")] = False,
         project: ProjectOpt = Path("."), as_json: JsonOpt = False, quiet: QuietOpt = False):
    """Run several rounds in a row."""
    proj = _open(project)
    progress = Progress(TextColumn("rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, disable=quiet or as_json)
    with progress:
        bar = progress.add_task("rounds", total=rounds)
        results = proj.loop(rounds, on_round=lambda _: progress.advance(bar), until_stable=until_stable)
    if not _emit([asdict(r) for r in results], as_json):
        out.print(_round_table(results))


@app.command()
@cli_command(writes="generate")
def generate(per_class: Annotated[int, typer.Option("--per-class", min=0, help="Synthetic examples to make per class.")] = 25,
             consistency_filter: Annotated[bool | None, typer.Option("--consistency-filter/--no-consistency-filter",
                                           help="Drop texts the LLM labeler puts in another class.")] = None,
             project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """Generate synthetic training examples for every class with the project's LLM."""
    import time

    proj = _open(project)
    calls_before, started = _llm_calls(proj), time.perf_counter()
    with err.status(f"generating {per_class} examples per class with {escape(proj.config.llm.model)}"):
        report = proj.generate(per_class, consistency_filter=consistency_filter)
    calls, failed = (now - before for now, before in zip(_llm_calls(proj), calls_before))
    minutes = (time.perf_counter() - started) / 60
    summary = {"added": report.added, "requested": report.requested, "dropped": dict(report.dropped),
               "failed_calls": report.failed_calls, "cost": report.cost, "llm_calls": calls,
               "llm_calls_failed": failed, "minutes": round(minutes, 2)}
    if not _emit(summary, as_json):
        table = Table("label", "requested", "added", title=f"synthetic data (${report.cost:.4f})")
        for label, n in report.requested.items():
            table.add_row(escape(label), str(n), str(report.added.get(label, 0)))
        out.print(table)
        if report.dropped:
            out.print("dropped: " + ", ".join(f"{k} {v}" for k, v in report.dropped.items()), markup=False)
        out.print(f"{calls} LLM calls, {failed} failed, in {minutes:.1f} min", highlight=False)


def _llm_calls(proj: Project) -> tuple[int, int]:
    """LLM calls recorded so far, and how many of them failed (cache hits included: they are answers too)."""
    usage = proj.store.llm_usage()
    return sum(u["calls"] for u in usage), sum(u["failed"] or 0 for u in usage)


app.add_typer(llm_app, name="llm")
app.add_typer(review_app, name="review")


NIGHTLY_EXITS = "exit 0 done, 1 failed, 2 bad input, 69 a server did not answer (retry later), 75 locked (retry later)"


@app.command(help=f"The unattended job for cron/systemd/Kubernetes: {NIGHTLY_EXITS}.")
@cli_command(writes="nightly")
def nightly(pool: Annotated[str | None, typer.Option(help="Folder or glob of pool files; new or changed ones are imported.")] = None,
            labeler: Annotated[str | None, typer.Option(help="Route tonight's queries here (default: the project's).")] = None,
            max_labels: Annotated[int | None, typer.Option(
                help="Queries to hand out tonight, at most: leftovers of earlier nights first, then new ones selected "
                     "to fill the rest. Default: select [loop] batch_size, no cap.")] = None,
            max_cost: Annotated[float | None, typer.Option(
                help="$ the LLM may spend tonight, at most (labeling and top-up); a re-run after a killed or "
                     "failed run gets what is left.")] = None,
            text_col: str = "text", id_col: Annotated[str | None, typer.Option()] = None,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be done; change nothing.")] = False,
            log_file: Annotated[Path | None, typer.Option(help="Default: .synthloop/logs/nightly.log")] = None,
            engine: Annotated[str | None, typer.Option(help="Stream the pool through synthloop.scale: local (every core) "
                                                          "or ray (a Ray cluster). Default: in memory, scores cached.")] = None,
            address: Annotated[str | None, typer.Option(help="Ray cluster address (host:6379) for --engine ray; "
                                                           "default: start Ray on this machine.")] = None,
            outage_exit: Annotated[int, typer.Option(
                "--outage-exit", min=0, max=255, help="Exit status of a run that finished while a server (Argilla) "
                "did not answer (the summary's `outage`); default 0: such a run is done.")] = 0,
            project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    from synthloop.nightly import run_nightly

    proj = _open(project)
    summary = run_nightly(proj, pool, dry_run, max_labels, max_cost, labeler, text_col, id_col, log_file,
                          engine=engine, address=address)
    if not _emit(summary, as_json):
        for key, value in summary.items():
            out.print(f"{key}: {escape(str(value))}", highlight=False)
    if summary.get("outage") and outage_exit:
        raise typer.Exit(outage_exit)


@app.command()
@cli_command()
def status(no_latency: Annotated[bool, typer.Option("--no-latency", help="Skip timing the latest model (done once per version).")] = False,
           project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """Examples, labels per class and source, pending queries, last metrics, cost and impact."""
    proj = _open(project)
    info = proj.status(measure_latency=not no_latency)
    if _emit(info, as_json):
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


@app.command()
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
        from synthloop.deploy import load_export

        results = load_export(model_dir).predict(texts)
    else:
        results = _open(project).predict(texts)
    if _emit(results, as_json):
        return
    table = Table("label", "probability", "text")
    for r in results:
        table.add_row(escape(r["label"]), f"{r['probability']:.3f}", escape(r["text"][:100]))
    out.print(table)


@app.command()
@cli_command()
def export(path: Annotated[Path, typer.Argument(help="Output file: .csv, .jsonl or .parquet.")],
           project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """Write the labeled set (real labels only, best source per example)."""
    proj = _open(project)
    n = proj.export(path)
    if not _emit({"path": str(path), "rows": n}, as_json):
        out.print(f"wrote {n} labeled examples to {path}")


@app.command()
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
    from synthloop.simulate import simulate as run_simulation

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
    if _emit(result, as_json):
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


app.command()(report)
app.command()(teach)
app.command()(serve)
app.command("export-model")(export_model)
app.command()(requeue)


if __name__ == "__main__":
    app()
