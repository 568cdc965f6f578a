#!/usr/bin/env bash
# After a GPU campaign call, here: the returned runs put together, scored on the original
# files, converted to int8 through the gate the way the agent would run each (as it is, and
# with the mirror mean), and judged by the shipping rule beside the shipped model:
#   TFLITE_RUNTIME_PYTHON=/path/to/venv-tflrt/bin/python \
#       bash trainer/campaign-after.sh FILES_DIR DEST
# FILES_DIR: the files the call sent back ($OUT's); DEST: where the runs go (runs/gpu-NAME).
# DEST receives runs/<run>/ (trainer/campaign-collect.sh) with evaluation-original and
# evaluation-original-mirror (the original test files and the external check),
# models/<run>-int8 and models/<run>-mirror-int8 (each through the gate, tflite-runtime
# required: the rule asks for it), rule.json and rule.txt. Run again, it keeps what is
# done. Nothing is shipped: a pick other than the shipped model is shipped by hand
# (docs/results.md, "The shipped model"; its trust checks: python -m converters.trust).
# TFLITE_RUNTIME_PYTHON: a Python with tflite-runtime 2.14 (docs/conversion.md); without
# it (NO_TFLITE_RUNTIME=1, a rehearsal) the models are converted but out under the rule.
set -euo pipefail
src=${1:?usage: campaign-after.sh FILES_DIR DEST}
dest=${2:?usage: campaign-after.sh FILES_DIR DEST}
PYTHON=${PYTHON:-python3}
DATA=${DATA:-../shared/data/brain-tumor-mri}
TEST_TIMES=${TEST_TIMES:-none mirror-mean}
TFLITE_RUNTIME_PYTHON=${TFLITE_RUNTIME_PYTHON:-}
NO_TFLITE_RUNTIME=${NO_TFLITE_RUNTIME:-}

fail() { echo "error: $1" >&2; exit "${2:-1}"; }
say() { echo "[after] $*"; }

[ -d "$DATA/Testing" ] || fail "no data set at $DATA (its original Testing files are what \
is scored); set DATA=FOLDER" 2
runtime=()
if [ -n "$TFLITE_RUNTIME_PYTHON" ]; then
    "$TFLITE_RUNTIME_PYTHON" -c "import tflite_runtime" 2>/dev/null \
        || fail "$TFLITE_RUNTIME_PYTHON cannot import tflite_runtime" 2
    runtime=(--require-runtime tflite-runtime --check-runtime
             "tflite-runtime=$TFLITE_RUNTIME_PYTHON")
elif [ -z "$NO_TFLITE_RUNTIME" ]; then
    fail "set TFLITE_RUNTIME_PYTHON to a Python with tflite-runtime 2.14: the shipping rule \
takes only models verified there (or NO_TFLITE_RUNTIME=1 for a rehearsal)" 2
fi

bash "$(dirname "$0")/campaign-collect.sh" "$src" "$dest"
converted=()
for model in "$dest"/runs/*/model.keras; do
    [ -e "$model" ] || fail "no model came back in $src (weights.sha256 names none)"
    run=$(dirname "$model")
    name=$(basename "$run")
    for test_time in $TEST_TIMES; do
        suffix=
        [ "$test_time" = mirror-mean ] && suffix=-mirror
        if [ ! -f "$run/evaluation-original$suffix/metrics.json" ]; then
            say "$name$suffix: scoring the float model on the original files"
            "$PYTHON" -m trainer evaluate "$run" --data "$DATA" --test-time "$test_time" \
                --out "$run/evaluation-original$suffix"
        fi
        out=$dest/models/$name$suffix-int8
        if [ ! -f "$out/model.json" ]; then
            say "$name$suffix: int8 through the gate"
            if ! "$PYTHON" -m converters.tflite --int8 --model "$run" --data "$DATA" \
                    --out "$out" --name "$name$suffix" --test-time "$test_time" --no-trust \
                    "${runtime[@]}"; then
                say "$name$suffix: refused by the gate (above); not a candidate"
                continue
            fi
        fi
        converted+=("$out")
    done
done
if [ "${#converted[@]}" -eq 0 ]; then
    say "no model passed the gate: the shipped model stays (the rule's third clause)"
    exit 0
fi
"$PYTHON" -m converters.rule "${converted[@]}" --json "$dest/rule.json" | tee "$dest/rule.txt"
