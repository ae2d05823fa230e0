"""`synthloop serve` and `synthloop export-model`: registered in cli.py; the work is in server.py and deploy.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from synthloop.cli.common import cli_command
from synthloop.console import console
from synthloop.errors import SynthloopError

out = console()  # unwrapped without a terminal, like the main CLI (synthloop/console.py)
err = console(stderr=True)

ProjectOpt = Annotated[Path, typer.Option("--project", "-p", help="Project folder.", envvar="SYNTHLOOP_PROJECT")]
VersionOpt = Annotated[int | None, typer.Option("--version", min=1, help="A model version (default: the latest).")]


@cli_command()
def export_model(out_dir: Annotated[Path, typer.Argument(help="Folder for model-vNNNN.skops and manifest.json.")],
                 version: VersionOpt = None, project: ProjectOpt = Path("."),
                 as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON.")] = False):
    """Write a model version in skops format (loading it runs no code from the file) plus a manifest."""
    from synthloop.loop.project import Project
    from synthloop.serve.deploy import export_model as export

    proj = Project(project)
    try:
        manifest = export(proj, out_dir, version)
    finally:
        proj.close()
    if as_json:
        print(json.dumps(manifest))
    else:
        out.print(f"wrote model v{manifest['version']} ({manifest['model']}, task {escape(manifest['task'])}) "
                  f"to {escape(str(out_dir / manifest['file']))}; serve it with `synthloop serve --model-dir {escape(str(out_dir))}`",
                  highlight=False, soft_wrap=True)


@cli_command()
def serve(ctx: typer.Context,
          host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")] = "127.0.0.1",
          port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0 picks a free one and prints it).")] = 8000,
          model_dir: Annotated[Path | None, typer.Option("--model-dir", help="Serve an export folder "
                                                            "(synthloop export-model) instead of a project.")] = None,
          project: ProjectOpt = Path("."), version: Annotated[int | None, typer.Option(
              "--version", min=1, help="Serve this version only (default: the latest, and newer ones as they appear).")] = None,
          poll: Annotated[float, typer.Option(min=0, help="Seconds between checks for a newer model (0: never).")] = 2.0,
          max_texts: Annotated[int, typer.Option(min=1, help="Texts per request, at most.")] = 256,
          max_chars: Annotated[int, typer.Option(min=1, help="Characters per text, at most.")] = 10_000,
          max_body_bytes: Annotated[int, typer.Option(min=1, help="Request body bytes, at most.")] = 1_048_576,
          access_log: Annotated[bool, typer.Option(help="Log one line per request (never headers or bodies).")] = True):
    """Serve the model over HTTP: POST /v1/predict, GET /v1/model, GET /healthz (bearer token: $SYNTHLOOP_SERVE_TOKEN)."""
    from synthloop.serve import server
    from synthloop.serve.deploy import open_source

    if model_dir is not None and getattr(ctx.get_parameter_source("project"), "name", "") == "COMMANDLINE":
        raise SynthloopError("give --model-dir or --project, not both")
    token = server.token_from_env()
    holder = server.ModelHolder(open_source(model_dir, project, version), poll_seconds=poll)
    sock = server.bind(host, port)
    where = f"[{host}]" if ":" in host else host
    loaded = holder.current
    out.print(f"serving {escape(str(loaded.info.get('task')))} model v{loaded.version} ({loaded.info.get('model')}) "
              f"at http://{where}:{sock.getsockname()[1]}"
              f"{'; bearer token required' if token else ''}", highlight=False, soft_wrap=True)
    if not token and host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]warning:[/] listening on {escape(host)} with no token; set ${server.TOKEN_ENV} to require one",
                  highlight=False)
    server.serve(holder, sock, server.Limits(max_texts, max_chars, max_body_bytes), token, access_log=access_log)
