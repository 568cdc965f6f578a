#!/usr/bin/env bash
# Train and evaluate every model of the paper reproduction in ONE call on a GPU machine.
#
# Written for the lent GPU machine (JAX + CUDA, no TensorFlow, no network, 15 minutes,
# at most 64 MiB in and 8 files / 64 MiB back), and rehearsed on the CPU with
#   EPOCHS=1 LIMIT=96 OUT=/tmp/out PYTHON=/work/venv/bin/python bash trainer/campaign.sh
#
# Needs: the project (PYTHONPATH=.), a data pack (python -m trainer pack; a folder, or one
# tar file of it: tar czf .gpu/pack.tar.gz -C .gpu pack), and
# the wheels that machine lacks in .whl/ (keras, namex, optree). All models train at once
# on the one GPU, each its own process with a share of GPU memory: these small models
# leave a GPU mostly idle one at a time. Every training stops before $BUDGET seconds
# (--time-limit); a stopped run says so in its run.json ("stopped_time_limit"). At
# $HARD_STOP seconds whatever still runs is ended, so that the results always come back.
#
# Back in $OUT (8 files at most, 16 MiB each):
#   results.tar.gz   run.json, history, evaluation (metrics, Table 3, figures,
#                    predictions) and logs of every model, and the small models' model.keras
#   weights.part-*   model.keras of the best paper-family run (by validation accuracy, and
#                    only above $RETURN_ABOVE if set), split: cat weights.part-* > model.keras
#   campaign.log     this script's output
#
# MODELS lists run names; a name that is not an architecture is a variant, written
# NAME:ARCH:OPTION,VALUE,... (e.g. mlp-lr1e-4:mlp:--lr,1e-4).
set -uo pipefail
{ # the whole script is read before it runs: editing this file cannot derail a running campaign

PYTHON=${PYTHON:-python3}
PACK=${PACK:-.gpu/pack.tar.gz}
OUT=${OUT:?set OUT to the folder that receives the results}
EPOCHS=${EPOCHS:-35}
LIMIT=${LIMIT:-}
BUDGET=${BUDGET:-380}
HARD_STOP=${HARD_STOP:-470}
MODELS=${MODELS:-dsconv_cbam_bn dsconv_cbam mobilenetv2 mlp dsconv_cbam_gap}
WORK=${WORK:-/tmp/neuroedge-campaign}
SMALL_MODELS=${SMALL_MODELS:-dsconv_cbam_gap mobilenetv2}
export KERAS_BACKEND=${KERAS_BACKEND:-jax}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export NEUROEDGE_CACHE_DIR=$WORK/cache
# One share of GPU memory per concurrent training (JAX takes 75 % by default).
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.15}

exec > >(tee "$OUT/campaign.log") 2>&1
started=$(date +%s)
say() { echo "[campaign +$(( $(date +%s) - started ))s] $*"; }

if [ -d .whl ] && ! "$PYTHON" -c "import keras" 2>/dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
rm -rf "$WORK" && mkdir -p "$WORK/logs" "$WORK/runs"

say "machine: $(nproc) cores; $(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo 'no GPU')"
"$PYTHON" - <<'EOF'
import jax, keras, numpy, PIL
print("python", __import__("sys").version.split()[0], "keras", keras.__version__,
      "backend", keras.backend.backend(), "jax", jax.__version__, "devices", jax.devices(),
      "numpy", numpy.__version__, "pillow", PIL.__version__)
EOF

say "unpacking $PACK"
if [ -f "$PACK" ]; then  # a pack in one tar file travels with less overhead than 7,000 files
    mkdir -p "$WORK/pack" && tar xzf "$PACK" -C "$WORK/pack" --strip-components=1 || exit 1
    PACK=$WORK/pack
fi
"$PYTHON" -m trainer unpack "$PACK" --out "$WORK/data" || exit 1
# The deduplicated test list names the original .jpg files; the pack's copies are .png.
sed 's/\.jpg$/.png/' docs/leakage/dedup_test.txt > "$WORK/dedup_test.txt"
"$PYTHON" - "$WORK/data" <<'EOF' || exit 1
import sys
from trainer.data import load_split
for split in ("Training", "Testing"):  # decode once into the shared cache
    print(split, load_split(sys.argv[1], split).images.shape)
EOF

extra_args() {
    case $1 in
        mobilenetv2) echo "--backbone-weights none" ;;
    esac
}

pids=()
say "training: $MODELS (epochs $EPOCHS, limit ${LIMIT:-none}, budget ${BUDGET}s each)"
names=()
for entry in $MODELS; do  # NAME, or NAME:ARCH[:OPTION,VALUE,...] for a variant
    model=${entry%%:*}
    arch=$model
    options=
    if [[ $entry == *:* ]]; then
        rest=${entry#*:}
        arch=${rest%%:*}
        [[ $rest == *:* ]] && options=${rest#*:} && options=${options//,/ }
    fi
    names+=("$model")
    (
        # shellcheck disable=SC2046,SC2086
        "$PYTHON" -m trainer train --arch "$arch" --data "$WORK/data" --epochs "$EPOCHS" \
            --runs-dir "$WORK/runs" --name "$model" --time-limit "$BUDGET" \
            ${LIMIT:+--limit "$LIMIT"} $(extra_args "$arch") $options \
        && "$PYTHON" -m trainer evaluate "$WORK/runs/$model" \
            --dedup-list "$WORK/dedup_test.txt" ${LIMIT:+--limit "$LIMIT"}
        echo "exit status $?"
    ) > "$WORK/logs/$model.log" 2>&1 &
    pids+=($!)
done
running() { local pid; for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && return 0; done; return 1; }
while running; do
    sleep 20
    if [ $(( $(date +%s) - started )) -gt "$HARD_STOP" ]; then
        say "hard stop at ${HARD_STOP}s: ending what still runs, keeping what is done"
        pkill -f -- "--runs-dir $WORK/runs" ; pkill -f -- "trainer evaluate $WORK/runs"
    fi
    say "$(grep -ho 'epoch [0-9]*: .*' "$WORK"/logs/*.log 2>/dev/null | wc -l) epochs done;" \
        "GPU: $(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>/dev/null)"
done
wait "${pids[@]}"  # not a bare wait: that would also wait for the tee behind the log
for model in "${names[@]}"; do
    say "$model: $(grep -h 'run .*: \|exit status\|error' "$WORK/logs/$model.log" | tr '\n' ' ')"
    grep -A12 '^| ' "$WORK/logs/$model.log" | head -14
done

# Training throughput of the paper model alone on this device, if time is left.
if [ $(( $(date +%s) - started )) -lt "${THROUGHPUT_BEFORE:-430}" ]; then
    say "throughput: dsconv_cbam alone"
    timeout 60 "$PYTHON" -m trainer throughput --arch dsconv_cbam --steps "${THROUGHPUT_STEPS:-30}" \
        --json "$WORK/logs/throughput-dsconv_cbam-$KERAS_BACKEND.json" 2>&1 | grep -v tpu
fi

say "collecting results"
best=$("$PYTHON" - "$WORK/runs" "${RETURN_ABOVE:-0}" <<'EOF'
import json, sys
from pathlib import Path
scores = {}  # the paper-family runs with a model, by validation accuracy (never test)
for run in Path(sys.argv[1]).glob("*/run.json"):
    record = json.loads(run.read_text())
    if record.get("architecture") in ("dsconv_cbam_bn", "dsconv_cbam") and \
            (run.parent / "model.keras").is_file():
        scores[run.parent.name] = record.get("best_val_accuracy") or 0.0
scores = {name: v for name, v in scores.items() if v > float(sys.argv[2])}
print(max(scores, key=scores.get) if scores else "")
EOF
)
say "returning the weights of: ${best:-none}"
(
    cd "$WORK" || exit 1
    keep=(logs dedup_test.txt)
    for model in "${names[@]}"; do
        for f in run.json history.json history.csv data_split.json evaluation; do
            [ -e "runs/$model/$f" ] && keep+=("runs/$model/$f")
        done
    done
    for model in $SMALL_MODELS; do
        [ -e "runs/$model/model.keras" ] && keep+=("runs/$model/model.keras")
    done
    tar czf "$OUT/results.tar.gz" "${keep[@]}"
    if [ "$(stat -c %s "$OUT/results.tar.gz")" -gt 16000000 ]; then  # 16 MiB per file back
        say "results.tar.gz is over 16 MB: packing it again without the small models"
        tar czf "$OUT/results.tar.gz" --exclude=model.keras "${keep[@]}"
    fi
)
if [ -n "$best" ]; then
    echo "$best" > "$WORK/best.txt"
    split -b 15M -d "$WORK/runs/$best/model.keras" "$OUT/weights.part-"
    sha256sum "$WORK/runs/$best/model.keras" | sed "s|$WORK/||" > "$OUT/weights.sha256"
fi
ls -la "$OUT"
say "done"
exit 0
}
