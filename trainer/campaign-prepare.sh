#!/usr/bin/env bash
# Make what one GPU campaign call carries, and check that it travels:
#   bash trainer/campaign-prepare.sh          (from the repository root)
# Writes, in folders git ignores:
#   .gpu/pack.tar.gz          the data set at 224x224 as lossy WebP (python -m trainer pack),
#                             in one tar file: 7,023 loose pack files were refused, one tar
#                             file of them passed
#   .gpu/br35h-tumour.tar.gz  the external check's original files (evaluated, never trained on)
#   .whl/                     keras, namex and optree for the GPU machine's Python 3.12 (it has
#                             JAX, not these), at this Python's versions
# then measures the call (python -m trainer travel --carry .gpu --carry .whl). The pack is
# made at the first of QUALITIES (default "85 80 75") whose call fits the device tool's
# 64 MiB; a pack already there that fits is kept (FRESH=1 makes everything again). Exit 0:
# ready, and the call to make is printed; 1: nothing fits (the largest files are named).
# docs/gpu-campaign.md has the call and what comes back.
set -euo pipefail
PYTHON=${PYTHON:-python3}
DATA=${DATA:-../shared/data/brain-tumor-mri}
EXTERNAL=${EXTERNAL:-../shared/data/br35h-tumour}  # "none": no external check (not advised)
QUALITIES=${QUALITIES:-85 80 75}
LIMIT_MIB=${LIMIT_MIB:-64}
MARGIN_MIB=${MARGIN_MIB:-1}
FRESH=${FRESH:-}

fail() { echo "error: $1" >&2; exit "${2:-1}"; }
say() { echo "[prepare] $*"; }
travel() {
    "$PYTHON" -m trainer travel --carry .gpu --carry .whl --limit-mib "$LIMIT_MIB" \
        --margin-mib "$MARGIN_MIB"
}
fits() {  # 0: the call fits; 1: it does not; anything else stops the script
    local status=0
    travel >/dev/null 2>&1 || status=$?
    [ "$status" -le 1 ] || { travel || true; fail "could not measure the call (exit $status, above)"; }
    return "$status"
}

[ -e .git ] && [ -f trainer/campaign.sh ] \
    || fail "run this from the repository root (the checkout the device tool sends)" 2
for folder in .gpu .whl; do  # an unignored folder would travel twice and could be committed
    git check-ignore -q "$folder/probe" \
        || fail "$folder/ is not ignored by git; add /$folder/ to .gitignore" 2
done
[ -d "$DATA/Training" ] && [ -d "$DATA/Testing" ] \
    || fail "no data set at $DATA (Training/ and Testing/ wanted); set DATA=FOLDER" 2
mkdir -p .gpu .whl
if [ -n "$FRESH" ]; then
    rm -rf .gpu/pack .gpu/pack.tar.gz .gpu/br35h-tumour.tar.gz .whl/*.whl
fi

# 1. the wheels, one version each (two versions of one package stop the whole install there)
for name in keras namex optree; do
    version=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$name'))" \
        2>/dev/null) || fail "$name is not installed in $PYTHON: install the train extra" 2
    have=(.whl/"$name"-*.whl)
    if [ -e "${have[0]}" ]; then
        [ "${#have[@]}" -eq 1 ] || fail "several $name wheels in .whl/: keep one" 2
        [[ ${have[0]} == .whl/"$name-$version"-* ]] || fail "${have[0]} is not the \
$name $version installed here: remove it (or FRESH=1 makes all again)" 2
        say "have ${have[0]}"
        continue
    fi
    say "downloading $name==$version for the GPU machine's Python 3.12"
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
        "$name==$version" || fail "pip could not download $name==$version (a package index \
must be reachable from here; or put its wheel in .whl/ by hand)"
done

# 2. the external check, as its original files
if [ "$EXTERNAL" = none ]; then
    rm -f .gpu/br35h-tumour.tar.gz
    say "EXTERNAL=none: the campaign's evaluations will have no external check"
elif [ ! -f .gpu/br35h-tumour.tar.gz ]; then
    [ -d "$EXTERNAL" ] || fail "no external check at $EXTERNAL; set EXTERNAL=FOLDER (or none)" 2
    tar czf .gpu/br35h-tumour.tar.gz.tmp -C "$(dirname "$EXTERNAL")" "$(basename "$EXTERNAL")"
    mv .gpu/br35h-tumour.tar.gz.tmp .gpu/br35h-tumour.tar.gz
    say "packed the external check: $(du -h .gpu/br35h-tumour.tar.gz | cut -f1)"
fi

# 3. the data pack, at the best quality that travels
rm -rf .gpu/pack .gpu/*.tmp  # loose files never travel; a tar file only whole
if [ -f .gpu/pack.tar.gz ] && fits; then
    say "keeping .gpu/pack.tar.gz (it fits; FRESH=1 makes it again)"
else
    fitted=
    for quality in $QUALITIES; do
        rm -f .gpu/pack.tar.gz
        say "packing $DATA at WebP quality $quality"
        "$PYTHON" -m trainer pack --data "$DATA" --out .gpu/pack --quality "$quality" \
            || fail "packing failed (above)"
        if ! tar czf .gpu/pack.tar.gz.tmp -C .gpu pack; then
            rm -rf .gpu/pack .gpu/pack.tar.gz.tmp
            fail "tar could not write .gpu/pack.tar.gz (above)"
        fi
        mv .gpu/pack.tar.gz.tmp .gpu/pack.tar.gz
        rm -rf .gpu/pack
        if fits; then
            fitted=$quality
            break
        fi
        say "quality $quality does not fit"
    done
    if [ -z "$fitted" ]; then
        travel >&2 || true  # with the last pack: the table and the largest files
        rm -f .gpu/pack.tar.gz
        fail "no pack quality of \"$QUALITIES\" makes the call fit: carry less (above)"
    fi
fi
[ -f .gpu/pack.tar.gz ] || fail "no .gpu/pack.tar.gz was made"

travel
quality=$(tar xzf .gpu/pack.tar.gz -O pack/pack.json | "$PYTHON" -c \
    "import json, sys; print(json.load(sys.stdin)['quality'])")
say "ready: pack at WebP quality $quality. The call: the device tool's run with"
say "  carry [\".gpu\", \".whl\"] and the command of docs/gpu-campaign.md (OUT=\$OUT bash trainer/campaign.sh)"
