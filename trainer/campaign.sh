#!/usr/bin/env bash
# Train and evaluate a set of models in ONE call on a GPU machine.
#
# Written for the lent GPU machine (JAX + CUDA, no TensorFlow, no network, 15 minutes,
# at most 64 MiB in and 8 files / 64 MiB back), and rehearsed on the CPU with a tiny pack
# (docs/gpu-campaign.md, "The next GPU campaign"):
#   EPOCHS=1 BUDGET=900 HARD_STOP=1800 OUT=/tmp/out PYTHON=.venv/bin/python \
#       bash trainer/campaign.sh
#
# Needs: the project (PYTHONPATH=.), a data pack (python -m trainer pack; a folder, or one
# tar file of it: tar czf .gpu/pack.tar.gz -C .gpu pack), the external check folder as a
# tar file (tar czf .gpu/br35h-tumour.tar.gz -C ../shared/data br35h-tumour; without it
# the evaluations say "External check: none"), and the wheels that machine lacks in .whl/
# (keras, namex, optree). All models train at once on the one GPU, each its own process
# with a share of GPU memory. Every training stops before $BUDGET seconds (--time-limit); a
# stopped run says so in its run.json ("stopped_time_limit"). At $HARD_STOP seconds
# whatever still runs is ended, so that the results always come back.
#
# Back in $OUT (8 files at most, 16 MiB each, 64 MiB together):
#   results.tar.gz       run.json, history, evaluation (metrics with the external check,
#                        Table 3, figures, predictions), evaluation-mirror-mean (the same,
#                        each answer the mean over the picture and its mirror image:
#                        docs/results.md) and logs of every run, and the SMALL_MODELS'
#                        model.keras
#   weights-RUN.part-NN  model.keras of each returned run in 15 MiB parts; weights.sha256
#                        names them (trainer/campaign-collect.sh reassembles and checks)
#   campaign.log         this script's output, ending with a table of every run
#
# Which weights come back: trainer/campaign_select.py (RETURN=rule, the default: per
# architecture the run the shipping rule of docs/results.md would pick, judged here on the
# float model and the pack's copy of the test split, then the other runs while parts are
# left, for the int8 rule back on the workstation; RETURN=val: the best paper-family run by
# validation accuracy, the first campaigns' way), at most RETURN_PARTS files of 15 MiB.
#
# MODELS lists run names; a name that is not an architecture is a variant, written
# NAME:ARCH:OPTION,VALUE,... (e.g. resnet18-s1:resnet18:--recipe,strong,--seed,1).
# A fine-tune of an earlier entry names it as --init-from,@NAME: it starts when NAME has
# trained and been evaluated, from NAME's model, with what is left of $BUDGET as its time
# limit (give NAME its own, shorter --time-limit,SECONDS so that time is left), e.g.
#   MODELS="pre-s0:dsconv_cbam_res:--recipe,strong,--time-limit,250,--seed,0
#           ft-s0:dsconv_cbam_res:--recipe,lesion-any,--init-from,@pre-s0,--epochs,12,--seed,0"
set -uo pipefail
{ # the whole script is read before it runs: editing this file cannot derail a running campaign

PYTHON=${PYTHON:-python3}
PACK=${PACK:-.gpu/pack.tar.gz}
EXTERNAL=${EXTERNAL:-.gpu/br35h-tumour.tar.gz}
OUT=${OUT:?set OUT to the folder that receives the results}
EPOCHS=${EPOCHS:-}  # empty: each run's recipe decides (paper 35, strong 40)
LIMIT=${LIMIT:-}
BUDGET=${BUDGET:-380}
HARD_STOP=${HARD_STOP:-470}
S=--recipe,strong
MODELS=${MODELS:-resnet18-s0:resnet18:$S,--seed,0 resnet18-s1:resnet18:$S,--seed,1 \
resnet18-s2:resnet18:$S,--seed,2 dsconv_cbam_res-s0:dsconv_cbam_res:$S,--seed,0 \
dsconv_cbam_res-s1:dsconv_cbam_res:$S,--seed,1 dsconv_cbam_res-s2:dsconv_cbam_res:$S,--seed,2}
WORK=${WORK:-/tmp/neuroedge-campaign}
SMALL_MODELS=${SMALL_MODELS:-}
RETURN=${RETURN:-rule}
RULE_MIN_OFFICIAL=${RULE_MIN_OFFICIAL:-0.975}
RETURN_PARTS=${RETURN_PARTS:-5}  # + results.tar.gz, weights.sha256, campaign.log = 8 files
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
external_args=(--no-external)
if [ -f "$EXTERNAL" ]; then  # the original files of the external check: never trained on
    mkdir -p "$WORK/external" && tar xzf "$EXTERNAL" -C "$WORK/external" || exit 1
    external_args=()
    for dir in "$WORK"/external/*/; do external_args+=(--external "${dir%/}"); done
    say "external check: ${external_args[*]}"
else
    say "no $EXTERNAL: the evaluations have no external check"
fi
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
say "training: $MODELS (epochs ${EPOCHS:-per recipe}, limit ${LIMIT:-none}, budget ${BUDGET}s each)"
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
    after=  # --init-from @NAME: a fine-tune of NAME, an earlier entry of this campaign
    if [[ " $options " == *" --init-from @"* ]]; then
        after=${options#*--init-from @} && after=${after%% *}
        if [[ " ${names[*]} " != *" $after "* ]]; then
            say "$model: --init-from @$after names no earlier entry of MODELS; not started"
            continue
        fi
        options=${options/--init-from @$after/--init-from $WORK/runs/$after}
    fi
    names+=("$model")
    (
        limit=$BUDGET
        if [ -n "$after" ]; then
            until grep -q '^exit status' "$WORK/logs/$after.log" 2>/dev/null; do sleep 5; done
            if [ ! -f "$WORK/runs/$after/model.keras" ]; then
                echo "$after left no model.keras: $model not started"; echo "exit status 1"; exit
            fi
            limit=$(( BUDGET - ($(date +%s) - started) ))
            echo "starting from $after with ${limit}s of the budget left"
            [ "$limit" -gt 0 ] || { echo "no time left"; echo "exit status 1"; exit; }
        fi
        # shellcheck disable=SC2046,SC2086
        "$PYTHON" -m trainer train --arch "$arch" --data "$WORK/data" \
            ${EPOCHS:+--epochs "$EPOCHS"} --runs-dir "$WORK/runs" --name "$model" \
            --time-limit "$limit" ${LIMIT:+--limit "$LIMIT"} $(extra_args "$arch") $options \
        && "$PYTHON" -m trainer evaluate "$WORK/runs/$model" \
            --dedup-list "$WORK/dedup_test.txt" ${LIMIT:+--limit "$LIMIT"} "${external_args[@]}" \
        && "$PYTHON" -m trainer evaluate "$WORK/runs/$model" --test-time mirror-mean \
            --dedup-list "$WORK/dedup_test.txt" ${LIMIT:+--limit "$LIMIT"} "${external_args[@]}"
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
    grep -A14 '^| ' "$WORK/logs/$model.log" | head -16
done

# Training throughput of one architecture alone on this device, if time is left.
THROUGHPUT_ARCH=${THROUGHPUT_ARCH:-resnet18}
if [ $(( $(date +%s) - started )) -lt "${THROUGHPUT_BEFORE:-430}" ]; then
    say "throughput: $THROUGHPUT_ARCH alone"
    timeout 60 "$PYTHON" -m trainer throughput --arch "$THROUGHPUT_ARCH" \
        --steps "${THROUGHPUT_STEPS:-30}" \
        --json "$WORK/logs/throughput-$THROUGHPUT_ARCH-$KERAS_BACKEND.json" 2>&1 | grep -v tpu
fi

say "collecting results"
"$PYTHON" -m trainer.campaign_select "$WORK/runs" --rule "$RETURN" \
    --min-official "$RULE_MIN_OFFICIAL" --above "${RETURN_ABOVE:-0}" \
    --max-parts "$RETURN_PARTS" --max-mib "${RETURN_MIB:-50}" --out "$WORK/return.txt" || : > "$WORK/return.txt"
best=$(tr '\n' ' ' < "$WORK/return.txt")
say "returning the weights of: ${best:-none}"
(
    cd "$WORK" || exit 1
    keep=(logs dedup_test.txt return.txt)
    for model in "${names[@]}"; do
        for f in run.json history.json history.csv data_split.json evaluation \
                evaluation-mirror-mean; do
            [ -e "runs/$model/$f" ] && keep+=("runs/$model/$f")
        done
    done
    for model in $SMALL_MODELS; do
        [ -e "runs/$model/model.keras" ] && keep+=("runs/$model/model.keras")
    done
    tar czf "$OUT/results.tar.gz" "${keep[@]}"
    weights=0  # what the returned runs' parts add: 64 MiB come back in all
    for run in $best; do weights=$(( weights + $(stat -c %s "runs/$run/model.keras") )); done
    size=$(stat -c %s "$OUT/results.tar.gz")
    if [ "$size" -gt 16000000 ] || [ $(( size + weights )) -gt $(( 62 * 1048576 )) ]; then
        say "results.tar.gz ($size bytes) is over 16 MB, or over what the weights leave of \
the 64 MiB that come back: packing it again without models and predictions"
        tar czf "$OUT/results.tar.gz" --exclude=model.keras --exclude='predictions*.csv' \
            "${keep[@]}"
    fi
)
: > "$WORK/weights.sha256"
for run in $best; do
    split -b 15M -d "$WORK/runs/$run/model.keras" "$OUT/weights-$run.part-"
    (cd "$WORK" && sha256sum "runs/$run/model.keras") >> "$WORK/weights.sha256"
done
[ -s "$WORK/weights.sha256" ] && cp "$WORK/weights.sha256" "$OUT/weights.sha256"
ls -la "$OUT"
say "done"
exit 0
}
