#!/usr/bin/env bash
# After a GPU campaign call, here: the returned runs put together, scored on the original
# files, converted to int8 through the gate the way the agent would run each (as it is, and
# with the mirror mean), and judged by the shipping rule beside the shipped model:
#   TFLITE_RUNTIME_PYTHON=/path/to/venv-tflrt/bin/python \
#       bash trainer/campaign-after.sh FILES_DIR DEST
# FILES_DIR: the files the call sent back ($OUT's); DEST: where the runs go (runs/gpu-NAME).
# DEST receives runs/<run>/ (trainer/campaign-collect.sh); then trainer/judge-runs.sh DEST
# DEST/runs/*/ does the rest (its header says what it writes and needs:
# TFLITE_RUNTIME_PYTHON, or NO_TFLITE_RUNTIME=1 for a rehearsal). Run again, it keeps what
# is done.
set -euo pipefail
src=${1:?usage: campaign-after.sh FILES_DIR DEST}
dest=${2:?usage: campaign-after.sh FILES_DIR DEST}

here=$(dirname "$0")
bash "$here/judge-runs.sh" --check  # before anything is collected
bash "$here/campaign-collect.sh" "$src" "$dest"
runs=("$dest"/runs/*/)
[ -e "${runs[0]}/model.keras" ] || { echo "error: no model came back in $src \
(weights.sha256 names none)" >&2; exit 1; }
exec bash "$here/judge-runs.sh" "$dest" "${runs[@]}"
