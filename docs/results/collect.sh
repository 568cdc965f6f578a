#!/usr/bin/env bash
# Copy the evaluation files that docs/results.md is built from out of the run folders
# (after trainer/campaign-collect.sh and the evaluations on the original test files):
#   bash docs/results/collect.sh runs/gpu-campaign1/runs runs/gpu-campaign2/runs
# For each run: run.json, history.json and the evaluation on the ORIGINAL test files
# (evaluation-original/) where the weights came back, else the one made on the GPU machine
# on the pack's copy of the test files (evaluation/).
set -euo pipefail
cd "$(dirname "$0")"
for runs in "$@"; do
    for run in "$OLDPWD/$runs"/*/; do
        name=$(basename "$run")
        eval_dir=$run/evaluation
        [ -d "$run/evaluation-original" ] && eval_dir=$run/evaluation-original
        mkdir -p "$name"
        cp "$run/run.json" "$run/history.json" "$name/"
        cp "$eval_dir/metrics.json" "$eval_dir/table.md" "$eval_dir/history.png" \
           "$eval_dir/confusion_matrix.png" "$eval_dir/confusion_matrix_dedup.png" "$name/"
        echo "$name <- $eval_dir"
    done
done
