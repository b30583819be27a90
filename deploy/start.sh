#!/usr/bin/env bash
# Serve the app (the Docker image's command; the browser tests start it the same way):
#
#   deploy/start.sh [extra streamlit options]
#
# Environment:
#   PORT=8501            the port to listen on (hosted platforms set it)
#   ADDRESS=127.0.0.1    the address to bind: 127.0.0.1 behind a proxy on the same
#                        machine, 0.0.0.0 in a container (the image sets it)
#   VENV=.venv           the environment deploy/build.sh made (PYTHON overrides it)
#   INTERP_DEMO, INTERP_CONFIG, INTERP_CACHE   as in the README ("Hosted demo")
#   OMP_NUM_THREADS=1    torch threads per operation. One: many sessions then run in
#                        parallel instead of fighting over cores (a Reasoning vectors
#                        trace on the organisms took 0.2 s with 1 thread and 1.4-4.8 s
#                        with 2 on a busy 2-core machine). Raise it for one user with a
#                        large model on a many-core CPU.
#
# Streamlit reads .streamlit/config.toml (headless, no file watcher, no usage stats);
# deploy/serve.py imports what the pages need in the background while the server
# already answers its health check (GET /_stcore/health, see deploy/healthcheck.py).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
PY=${PYTHON:-$VENV/bin/python}
exec "$PY" deploy/serve.py \
    --server.port "${PORT:-8501}" \
    --server.address "${ADDRESS:-127.0.0.1}" \
    --client.showErrorDetails type \
    "$@"
