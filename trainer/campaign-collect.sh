#!/usr/bin/env bash
# Unpack what trainer/campaign.sh sent back into run folders that `python -m trainer
# evaluate` and the converter read:
#   bash trainer/campaign-collect.sh FILES_DIR DEST
# FILES_DIR holds results.tar.gz, weights.part-*, weights.sha256; DEST receives runs/<model>/
# (with model.keras for the returned models), logs/ and campaign.log.
set -euo pipefail
src=${1:?usage: campaign-collect.sh FILES_DIR DEST}
dest=${2:?usage: campaign-collect.sh FILES_DIR DEST}
[ -f "$src/results.tar.gz" ] || { echo "error: $src/results.tar.gz not found" >&2; exit 2; }
mkdir -p "$dest"
tar xzf "$src/results.tar.gz" -C "$dest"
[ -f "$src/campaign.log" ] && cp "$src/campaign.log" "$dest/"
if [ -f "$src/weights.sha256" ]; then
    read -r sum rel < "$src/weights.sha256"
    cat "$src"/weights.part-* > "$dest/$rel.tmp"
    echo "$sum  $dest/$rel.tmp" | sha256sum --check --quiet \
        || { echo "error: reassembled $rel does not match its sha256" >&2; exit 1; }
    mv "$dest/$rel.tmp" "$dest/$rel"
    echo "reassembled $dest/$rel (sha256 $sum)"
fi
find "$dest/runs" -name model.keras -printf '%p %s bytes\n'
