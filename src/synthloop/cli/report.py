"""`synthloop report`, registered in cli.py with `app.command()(report)`. It writes the report files
and the store's latency and CO2 records, so it takes the project lock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from synthloop.cli.common import cli_command


@cli_command(writes="report")
def report(project: Annotated[Path, typer.Option("--project", "-p", help="Project folder.", envvar="SYNTHLOOP_PROJECT")] = Path("."),
           out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for the report (default .synthloop/reports).")] = None,
           as_json: Annotated[bool, typer.Option("--json", help="Print the report's data as JSON.")] = False,
           no_latency: Annotated[bool, typer.Option("--no-latency", help="Skip timing the compact model.")] = False):
    """Write report.html (self-contained), report.md and report.json: learning curves, label quality, cost and savings."""
    from synthloop.loop.project import Project
    from synthloop.report.project_report import build_report

    proj = Project(project)
    try:
        data = build_report(proj.report_context(), out_dir=out, measure_latency=not no_latency)
    finally:
        proj.close()
    if as_json:
        print(json.dumps(data, default=str))
    else:
        for kind, path in data["paths"].items():
            print(f"{kind}: {path}")
