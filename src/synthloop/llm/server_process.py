"""llama.cpp's server (xllamacpp) for one GGUF file, in this process until it is killed.

Started by synthloop.llm.serve.start_local_server, by path: it imports only the standard library and
xllamacpp, so the server is up without paying for synthloop's own imports.
"""

import argparse
import os
import signal


def serve_forever(model: str, alias: str, host: str, port: int, n_ctx: int, threads: int) -> None:
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = model
    params.model_alias = {alias}  # a set of names: a plain string would become a set of its characters
    params.n_ctx = n_ctx
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads
    params.port = port
    params.hostnames = [host]
    params.use_jinja = True  # the GGUF's own chat template (SmolLM2's and Qwen's are ChatML)
    try:
        server = xllamacpp.Server(params)  # noqa: F841 - it serves from its own threads while it lives
    except RuntimeError as err:  # llama.cpp's own log above says why (a bad GGUF, a port in use)
        raise SystemExit(f"llama.cpp's server did not start: {err}") from None
    for sig in (signal.SIGTERM, signal.SIGINT):  # Ctrl-C in a terminal reaches this child too: exit quietly
        signal.signal(sig, lambda *_: os._exit(0))
    while True:
        signal.pause()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("model")
    parser.add_argument("--alias", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    serve_forever(args.model, args.alias, args.host, args.port, args.n_ctx, args.threads)


if __name__ == "__main__":
    main()
