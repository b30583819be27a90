#!/usr/bin/env bash
# Build the app's Python environment (the Docker image runs this; so does CI):
#
#   deploy/build.sh [VENV]            # default VENV: .venv (in the repository root)
#
# Environment:
#   PYTHON=python3.11                 the interpreter the venv is made from
#   TORCH_VARIANT=default|cpu|cuda   default: plain `pip install torch==PIN` (from PyPI
#                                     that is the CUDA build on Linux x86-64, and CPU
#                                     elsewhere); cpu: the PyTorch CPU index (a much
#                                     smaller image); cuda: PyPI's CUDA build, said
#                                     explicitly
#   EXTRA_REQUIREMENTS=FILE           also install FILE (CI: requirements-dev.txt)
#   DRY_RUN=1                         print the commands, run nothing
#
# torch is installed first and on its own, at the pin in requirements.txt, so the
# requirements never swap in another build; then `pip check`, then the project's
# sources are byte-compiled (a faster first start).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
PY=${PYTHON:-python3.11}
TORCH_PIN=$(sed -n 's/^\(torch==[^ #]*\).*/\1/p' requirements.txt)
if [ -z "$TORCH_PIN" ]; then
    echo "error: requirements.txt has no torch==VERSION line" >&2
    exit 2
fi
case "${TORCH_VARIANT:-default}" in
    cpu) TORCH_INDEX=(--index-url https://download.pytorch.org/whl/cpu) ;;
    default | cuda) TORCH_INDEX=() ;;
    *) echo "error: TORCH_VARIANT must be default, cpu or cuda" >&2; exit 2 ;;
esac
run() {
    echo "+ $*"
    if [ -z "${DRY_RUN:-}" ]; then "$@"; fi
}
run "$PY" -m venv "$VENV"
run "$VENV/bin/python" -m pip install -q "${TORCH_INDEX[@]}" "$TORCH_PIN"
run "$VENV/bin/python" -m pip install -q -r requirements.txt \
    ${EXTRA_REQUIREMENTS:+-r "$EXTRA_REQUIREMENTS"}
run "$VENV/bin/python" -m pip check
run "$VENV/bin/python" -m compileall -q app.py pages interp deploy
