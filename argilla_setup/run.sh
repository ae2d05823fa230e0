#!/usr/bin/env bash
# One command for a local Argilla: install what is missing, then serve on 127.0.0.1:6900.
# Extra arguments go to launch.py, e.g. `run.sh --port 0 --annotators alice,bob`; ARGILLA_PORT also works.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
"$HERE/install.sh"
exec "$HERE/.venv/bin/python" "$HERE/launch.py" "$@"
