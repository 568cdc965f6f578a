#!/usr/bin/env bash
# The agent's tests on Python 3.8, the oldest Python it supports (a Jetson Nano's), with
# what pip resolves there: the last releases of NumPy, Pillow, pydicom, pynetdicom and the
# rest for 3.8, and tflite-runtime 2.13.0 (the `edge` extra's marker for Python < 3.9).
#
#   bash .ci/py38-tests.sh [-- PYTEST ARGS]
#
# A fresh venv (.venv-py38) gets `.[edge,dicom-codecs,dev]` (no TensorFlow: the agent must
# not need it); the host's Python (with TensorFlow) builds the int8 toy model the agent's
# tests use (NEUROEDGE_TEST_MODEL). Runs tests/edge, the tests not marked slow (those
# exercise the kernel: kill -9, live inotify; the same on any Python), then all of
# tests/deploy (install.sh with a Python 3.8 venv, as on a Jetson).
#
# Environment:
#   PYTHON38  the Python 3.8 to use (default: python3.8 on the PATH, else pyenv's 3.8.x)
#   PYTHON    host Python with TensorFlow, for the toy model (default: python3)
#
# Exit status: 0 when the tests passed, or SKIPPED (printed with the reason) where this
# machine has no Python 3.8; 1 on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
PYTEST_ARGS=()
if [ "${1:-}" = "--" ]; then shift; PYTEST_ARGS=("$@"); fi

is_38() { "$1" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 8))' 2>/dev/null; }

py=""
for candidate in "${PYTHON38:-}" python3.8 \
        "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.8*/bin/python3.8; do
    if [ -n "$candidate" ] && is_38 "$candidate"; then py=$candidate; break; fi
done
if [ -z "$py" ]; then
    echo "SKIPPED: Python 3.8 tests: no Python 3.8 with its venv module here (set PYTHON38)"
    exit 0
fi

start=$SECONDS
venv=.venv-py38
rm -rf "$venv"
"$py" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -e '.[edge,dicom-codecs,dev]'
"$venv/bin/python" - <<'EOF'
from importlib import metadata
import sys
names = ["numpy", "pillow", "pydicom", "pynetdicom", "watchdog", "tflite-runtime"]
print(f"Python {sys.version.split()[0]}: "
      + ", ".join(f"{n} {metadata.version(n)}" for n in names))
EOF

model=$(mktemp -d)
trap 'rm -rf "$model"' EXIT
PYTHONPATH=$PWD TF_CPP_MIN_LOG_LEVEL=2 "$PYTHON" tests/edge/toy_model.py "$model/toy" \
    >"$model/log" 2>&1 || { cat "$model/log" >&2; echo "py38: building the toy model with" \
    "$PYTHON failed (it needs TensorFlow: install '.[train]' there)" >&2; exit 1; }

export NEUROEDGE_TEST_MODEL=$model/toy
"$venv/bin/python" -m pytest tests/edge -m "not slow" -p no:cacheprovider -q "${PYTEST_ARGS[@]}"
# all of tests/deploy, slow ones too: install.sh building the service's venv with Python 3.8
# (a Jetson's install.sh --python python3.8), from wheels made in the test
"$venv/bin/python" -m pytest tests/deploy -p no:cacheprovider -q "${PYTEST_ARGS[@]}"
echo "Python 3.8 tests passed ($((SECONDS - start)) s with the install)"
