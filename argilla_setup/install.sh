#!/usr/bin/env bash
# Installs the local argilla-server into argilla_setup/.venv and, when possible, redis-server.
# Safe to run again: it does nothing when the venv already matches requirements.txt.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.requirements.sha256"

# A real Redis is preferred; launch.py falls back to fakeredis in-process when there is none.
if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing redis-server with apt-get" >&2
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }; then
            echo "warning: apt-get could not install redis-server; launch.py will use fakeredis" >&2
        fi
    else
        echo "note: no redis-server (and no root apt-get); launch.py will use fakeredis" >&2
    fi
fi

# argilla-server pins old typer/pydantic/fastapi, so it gets its own venv, never synthloop's.
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi

want="$(sha256sum "$HERE/requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    "$VENV/bin/python" -m pip install --quiet -r "$HERE/requirements.txt"
    echo "$want" > "$STAMP"
fi
