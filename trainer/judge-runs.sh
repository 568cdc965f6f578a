#!/usr/bin/env bash
# Trained runs judged by the shipping rule, the way it takes them: each run scored on the
# original test files (as it is, and with the mirror mean), converted to int8 through the
# gate both ways with tflite-runtime required, then the rule's table beside the shipped model:
#   TFLITE_RUNTIME_PYTHON=/path/to/venv-tflrt/bin/python \
#       bash trainer/judge-runs.sh DEST RUN_DIR [RUN_DIR ...]
# RUN_DIR: a trainer run folder (model.keras, run.json): a CPU run (runs/cpu/NAME) or one a
# GPU campaign sent back (trainer/campaign-after.sh calls this on those). Each run gets
# evaluation-original and evaluation-original-mirror (the original test files and the
# external check); DEST gets models/<run>-int8 and models/<run>-mirror-int8, rule.json and
# rule.txt. Run again, it keeps what is done. A model the gate refuses (its exit 3) is said
# and left out; any other failure stops the script. Nothing is shipped: a pick other than
# the shipped model is shipped by hand (docs/results.md, "The shipped model"; its trust
# checks: python -m converters.trust). TFLITE_RUNTIME_PYTHON: a Python with tflite-runtime
# 2.14 (docs/conversion.md); without it (NO_TFLITE_RUNTIME=1, a rehearsal) the models go to
# models-rehearsal/ instead, out under the rule, and a later real run does not take them for
# done.
# `judge-runs.sh --check` checks only DATA and the runtime (exit 0: ready; 2: not).
set -euo pipefail
usage="usage: judge-runs.sh DEST RUN_DIR [RUN_DIR ...] | judge-runs.sh --check"
dest=${1:?$usage}
shift
[ "$dest" = --check ] || [ "$#" -gt 0 ] || { echo "$usage" >&2; exit 2; }
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
models=$dest/models
if [ -n "$TFLITE_RUNTIME_PYTHON" ]; then
    "$TFLITE_RUNTIME_PYTHON" -c "import tflite_runtime" 2>/dev/null \
        || fail "$TFLITE_RUNTIME_PYTHON cannot import tflite_runtime" 2
    runtime=(--require-runtime tflite-runtime --check-runtime
             "tflite-runtime=$TFLITE_RUNTIME_PYTHON")
elif [ -z "$NO_TFLITE_RUNTIME" ]; then
    fail "set TFLITE_RUNTIME_PYTHON to a Python with tflite-runtime 2.14: the shipping rule \
takes only models verified there (or NO_TFLITE_RUNTIME=1 for a rehearsal)" 2
else
    models=$dest/models-rehearsal
fi
[ "$dest" = --check ] && exit 0

mkdir -p "$dest"
converted=()
for run in "$@"; do
    run=${run%/}
    [ -f "$run/model.keras" ] || fail "$run holds no model.keras: not a trained run folder" 2
    name=$(basename "$run")
    for test_time in $TEST_TIMES; do
        suffix=
        [ "$test_time" = mirror-mean ] && suffix=-mirror
        if [ ! -f "$run/evaluation-original$suffix/metrics.json" ]; then
            say "$name$suffix: scoring the float model on the original files"
            "$PYTHON" -m trainer evaluate "$run" --data "$DATA" --test-time "$test_time" \
                --out "$run/evaluation-original$suffix" \
                || say "$name$suffix: the evaluation failed (above); the gate still measures it"
        fi
        out=$models/$name$suffix-int8
        if [ ! -f "$out/model.json" ]; then
            say "$name$suffix: int8 through the gate"
            status=0
            "$PYTHON" -m converters.tflite --int8 --model "$run" --data "$DATA" --out "$out" \
                --name "$name$suffix" --test-time "$test_time" --no-trust "${runtime[@]}" \
                || status=$?
            if [ "$status" -eq 3 ]; then
                say "$name$suffix: refused by the gate (above); not a candidate"
                continue
            fi
            [ "$status" -eq 0 ] || fail "the conversion of $name$suffix failed (exit $status, \
above): not a gate verdict; mend it and run this again (what is done is kept)"
        fi
        converted+=("$out")
    done
done
rm -f "$dest/rule.json" "$dest/rule.txt"  # never an earlier run's verdict
if [ "${#converted[@]}" -eq 0 ]; then
    say "no model passed the gate: the shipped model stays (the rule's third clause)" \
        | tee "$dest/rule.txt"
    exit 0
fi
"$PYTHON" -m converters.rule "${converted[@]}" --json "$dest/rule.json" | tee "$dest/rule.txt"
