"""The `synthloop` command: a thin layer over `synthloop.Project`; no logic of its own."""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from synthloop.cli.common import cli_command
from synthloop.cli.llm import llm_app
from synthloop.cli.options import JsonOpt, ProjectOpt, QuietOpt, emit, err, open_project, out
from synthloop.cli.queue import requeue
from synthloop.cli.read import export, predict, simulate, status
from synthloop.cli.report import report
from synthloop.cli.review import review_app
from synthloop.cli.serve import export_model, serve
from synthloop.cli.teach import teach

if TYPE_CHECKING:  # the heavy modules load when a command needs them, so `synthloop --help` starts fast
    from synthloop.loop.project import Project, RoundResult

app = typer.Typer(help="Cheap text classifiers: synthetic data + active learning.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
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
    from synthloop.loop.project import Project

    project = Project.init(directory, task, model={"name": model},
                           loop={"strategy": strategy, "labeler": labeler, "batch_size": batch_size})
    if not emit({"project": str(project.root), "task": project.task.name}, as_json):
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
    proj = open_project(project)
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
    if emit(data, as_json):
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
    proj = open_project(project)
    with err.status("training"):
        version, _, metrics = proj.train_scored()
    summary = {"model_version": version, "metrics": metrics and {k: metrics[k] for k in ("accuracy", "macro_f1", "n_test")}}
    if not emit(summary, as_json):
        out.print(f"model v{version}" + (f": accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}" if metrics else ""))


@app.command()
@cli_command(writes="query")
def query(n: Annotated[int | None, typer.Option("--n", min=1, help="How many to query (default: batch size).")] = None,
          strategy: Annotated[str | None, typer.Option(help="Override the project's strategy.")] = None,
          project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """Select the next examples to label (trains first if this round has no model yet)."""
    proj = open_project(project)
    with err.status("selecting"):
        result = proj.round(n=n, strategy=strategy, route=False)
    pending = proj.store.queries(status="pending", round_=result.number)
    if not emit({"round": result.number, "queries": [{"id": q.example_id, "text": q.text, "score": q.score} for q in pending]}, as_json):
        table = Table("id", "score", "text", title=f"round {result.number}: {len(pending)} pending queries")
        for q in pending:
            table.add_row(escape(q.example_id), "-" if q.score is None else f"{q.score:.3f}", escape(q.text[:100]))
        out.print(table)


@app.command()
@cli_command(writes="label")
def label(with_: Annotated[str | None, typer.Option("--with", help="Labeler to use (default: the one each query was routed to).")] = None,
          project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """Hand pending queries to their labeler and store the labels that are ready."""
    proj = open_project(project)
    added = proj.label(with_)
    if not emit({"labels_added": added, "pending": proj.store.query_counts().get("pending", 0)}, as_json):
        out.print(f"{added} labels stored; {proj.store.query_counts().get('pending', 0)} queries still pending")


@app.command("round")
@cli_command(writes="round")
def round_(labeler: Annotated[str | None,
                              typer.Option(help="Route this round's queries to this labeler (oracle, llm, argilla, hybrid).")] = None,
           project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """One full round: collect labels, train, evaluate, top up minority classes, select, route."""
    from synthloop.report.nightly_report import outage, outage_line, run_logging

    proj = open_project(project)
    # Warnings (e.g. Argilla down: queried is not pushed) come once each, after the table, not mid-spinner.
    with run_logging(None, stderr=io.StringIO()) as warned, err.status("running a round"):
        result = proj.round(labeler=labeler)
    down = outage(proj.store, proj.unreachable)  # a server that did not answer: the table alone would look like a normal round
    if not emit({**asdict(result), "outage": down}, as_json):
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
    proj = open_project(project)
    progress = Progress(TextColumn("rounds"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=err, disable=quiet or as_json)
    with progress:
        bar = progress.add_task("rounds", total=rounds)
        results = proj.loop(rounds, on_round=lambda _: progress.advance(bar), until_stable=until_stable)
    if not emit([asdict(r) for r in results], as_json):
        out.print(_round_table(results))


@app.command()
@cli_command(writes="generate")
def generate(per_class: Annotated[int, typer.Option("--per-class", min=0, help="Synthetic examples to make per class.")] = 25,
             consistency_filter: Annotated[bool | None, typer.Option("--consistency-filter/--no-consistency-filter",
                                           help="Drop texts the LLM labeler puts in another class.")] = None,
             project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    """Generate synthetic training examples for every class with the project's LLM."""
    import time

    proj = open_project(project)
    calls_before, started = _llm_calls(proj), time.perf_counter()
    with err.status(f"generating {per_class} examples per class with {escape(proj.config.llm.model)}"):
        report = proj.generate(per_class, consistency_filter=consistency_filter)
    calls, failed = (now - before for now, before in zip(_llm_calls(proj), calls_before))
    minutes = (time.perf_counter() - started) / 60
    summary = {"added": report.added, "requested": report.requested, "dropped": dict(report.dropped),
               "failed_calls": report.failed_calls, "cost": report.cost, "llm_calls": calls,
               "llm_calls_failed": failed, "minutes": round(minutes, 2)}
    if not emit(summary, as_json):
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
    return sum(u.calls for u in usage), sum(u.failed or 0 for u in usage)


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
            engine: Annotated[str | None, typer.Option(help="Stream the pool through synthloop.learn.scale: local (every core) "
                                                          "or ray (a Ray cluster). Default: in memory, scores cached.")] = None,
            address: Annotated[str | None, typer.Option(help="Ray cluster address (host:6379) for --engine ray; "
                                                           "default: start Ray on this machine.")] = None,
            outage_exit: Annotated[int, typer.Option(
                "--outage-exit", min=0, max=255, help="Exit status of a run that finished while a server (Argilla) "
                "did not answer (the summary's `outage`); default 0: such a run is done.")] = 0,
            project: ProjectOpt = Path("."), as_json: JsonOpt = False):
    from synthloop.loop.nightly import run_nightly

    proj = open_project(project)
    summary = run_nightly(proj, pool, dry_run, max_labels, max_cost, labeler, text_col, id_col, log_file,
                          engine=engine, address=address)
    if not emit(summary, as_json):
        for key, value in summary.items():
            out.print(f"{key}: {escape(str(value))}", highlight=False)
    if summary.get("outage") and outage_exit:
        raise typer.Exit(outage_exit)


app.command()(status)
app.command()(predict)
app.command()(export)
app.command()(simulate)
app.command()(report)
app.command()(teach)
app.command()(serve)
app.command("export-model")(export_model)
app.command()(requeue)


if __name__ == "__main__":
    app()
