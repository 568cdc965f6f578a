#!/usr/bin/env bash
# Unpack what trainer/campaign.sh sent back into run folders that `python -m trainer
# evaluate` and the converter read:
#   bash trainer/campaign-collect.sh FILES_DIR DEST
# FILES_DIR holds results.tar.gz, weights.sha256 and the weight parts (weights-RUN.part-NN,
# or weights.part-NN from the first campaigns, which returned one model); DEST receives
# runs/<run>/ (with model.keras for every returned run, its sha256 checked), logs/ and
# campaign.log.
set -euo pipefail
src=${1:?usage: campaign-collect.sh FILES_DIR DEST}
dest=${2:?usage: campaign-collect.sh FILES_DIR DEST}
[ -f "$src/results.tar.gz" ] || { echo "error: $src/results.tar.gz not found" >&2; exit 2; }
mkdir -p "$dest"
tar xzf "$src/results.tar.gz" -C "$dest"
[ -f "$src/campaign.log" ] && cp "$src/campaign.log" "$dest/"
if [ -f "$src/weights.sha256" ]; then
    while read -r sum rel; do
        [ -n "$sum" ] || continue
        run=$(basename "$(dirname "$rel")")
        parts=("$src/weights-$run".part-*)
        if [ ! -e "${parts[0]}" ]; then
            parts=("$src"/weights.part-*)  # the first campaigns: one model, unnamed parts
        fi
        [ -e "${parts[0]}" ] || { echo "error: no weight parts for $rel in $src" >&2; exit 1; }
        mkdir -p "$dest/$(dirname "$rel")"
        cat "${parts[@]}" > "$dest/$rel.tmp"
        echo "$sum  $dest/$rel.tmp" | sha256sum --check --quiet \
            || { echo "error: reassembled $rel does not match its sha256" >&2; exit 1; }
        mv "$dest/$rel.tmp" "$dest/$rel"
        echo "reassembled $dest/$rel (sha256 $sum)"
    done < "$src/weights.sha256"
fi
find "$dest/runs" -name model.keras -printf '%p %s bytes\n'
