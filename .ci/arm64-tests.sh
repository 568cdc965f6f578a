#!/usr/bin/env bash
# The edge test suite inside real arm64 Debian userlands, under qemu user-mode emulation.
#
# Nothing here has ARM hardware, so this is the closest proof that the device side works
# on a Raspberry Pi (Debian 12 bookworm, Python 3.11) and on the oldest target we can
# build (Debian 11 bullseye, Python 3.9, glibc 2.31, like Ubuntu 20.04), with the real
# aarch64 wheels from PyPI and no TensorFlow.
#
#   bash .ci/arm64-tests.sh [--suite bookworm|bullseye]... [--rebuild] [-- PYTEST ARGS]
#
# How (measured: the bookworm userland builds in about a minute, and is cached):
#   1. debootstrap's first stage only (--foreign): it downloads the arm64 .debs; they are
#      unpacked on the host with dpkg-deb (the second stage takes ~10 min under qemu).
#   2. The aarch64 wheels are downloaded on the host with `pip download --platform
#      manylinux_2_X_aarch64` for every X from 17 up to the userland's glibc (pip does not
#      expand perennial manylinux tags downwards: list only one and it silently picks old
#      releases). Inside the chroot a pip >= 24 (run from its own wheel) installs them into
#      /opt/venv with --no-index: the chroot never touches the network.
#   3. The host trains a tiny int8 model (tests/deploy/toy_model.py, TensorFlow is on the
#      host only) and hands it to the tests as NEUROEDGE_TEST_MODEL=/model.
#   4. chroot with /proc mounted, as the unprivileged user nobody (like the service), and
#      run pytest on TESTS. /sys is NOT bind-mounted: ai-edge-litert's CPU detection
#      crashes reading the x86 host's /sys under qemu.
#
# The userland (steps 1-2) is cached in $NEUROEDGE_CACHE/arm64/<suite>-<hash of the recipe
# and of pyproject's dependencies>; a change to either rebuilds it, --rebuild forces it.
#
# Environment:
#   NEUROEDGE_ARM64_SUITES  suites to run (default: "bookworm bullseye")
#   NEUROEDGE_ARM64_TESTS   pytest paths (default: "tests/edge tests/deploy/test_model_runtime.py")
#   NEUROEDGE_CACHE         cache root (default: ${XDG_CACHE_HOME:-~/.cache}/neuroedge)
#   NEUROEDGE_DEBIAN_MIRROR Debian mirror (default: http://deb.debian.org/debian)
#   PYTHON                  host Python with pip, and TensorFlow for the test model
#                           (default: python3)
#
# Exit status: 0 when every suite passed, or SKIPPED (printed with the reason) where this
# machine cannot run arm64 binaries (no root, no binfmt_misc, no qemu); 1 on a failure.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
CACHE=${NEUROEDGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/neuroedge}/arm64
MIRROR=${NEUROEDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITES=${NEUROEDGE_ARM64_SUITES:-bookworm bullseye}
TESTS=${NEUROEDGE_ARM64_TESTS:-tests/edge tests/deploy/test_model_runtime.py}
REBUILD=0
PYTEST_ARGS=()

log() { printf '[arm64] %s\n' "$*" >&2; }
die() { printf '[arm64] error: %s\n' "$*" >&2; exit 1; }
skip() { printf 'SKIPPED: arm64 emulation tests: %s\n' "$*"; exit 0; }

while [ $# -gt 0 ]; do
    case $1 in
        --suite) [ $# -ge 2 ] || die "--suite needs a name (bookworm or bullseye)"
                 if [ "${suites_set:-0}" = 0 ]; then SUITES=""; suites_set=1; fi
                 SUITES="$SUITES $2"; shift 2 ;;
        --rebuild) REBUILD=1; shift ;;
        --) shift; PYTEST_ARGS=("$@"); break ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

# --- the recipe: everything that determines a userland's contents --------------------

# Sets PYVER, GLIBC_MINOR, EXTRA_REQS and RUNTIMES (each runtime runs the tests once).
suite_recipe() {
    case $1 in
        bookworm)  # Raspberry Pi OS 12: what `pip install neuroedge[edge]` gets on a Pi.
            PYVER=3.11 GLIBC_MINOR=36 EXTRA_REQS="" RUNTIMES="ai-edge-litert" ;;
        bullseye)  # The oldest glibc we can build; also the Jetson runtime (tflite-runtime
                   # 2.13.0, numpy<2) on real aarch64 code, beside ai-edge-litert.
            PYVER=3.9 GLIBC_MINOR=31 EXTRA_REQS="tflite-runtime==2.13.0 numpy<2"
            RUNTIMES="ai-edge-litert tflite-runtime" ;;
        *) die "unknown suite '$1' (choose bookworm or bullseye)" ;;
    esac
}

platform_args() {
    local x
    for x in $(seq 17 "$GLIBC_MINOR"); do printf -- '--platform manylinux_2_%s_aarch64 ' "$x"; done
    printf -- '--platform manylinux2014_aarch64'
}

# Build the userland for $1 into $2: first-stage debootstrap, .debs unpacked on the host,
# a venv with the edge + dicom-codecs extras and pytest from aarch64 wheels.
build_rootfs() {
    local suite=$1 dest=$2 wheel=$3 tmp="$2.partial" deb
    remove_rootfs "$tmp"
    mkdir -p "$CACHE/debs"
    log "$suite: debootstrap (first stage) into $tmp"
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 \
        --cache-dir="$CACHE/debs" "$suite" "$tmp" "$MIRROR" >"$tmp.log" 2>&1 \
        || { tail -20 "$tmp.log" >&2; die "debootstrap failed (log: $tmp.log)"; }
    log "$suite: unpacking $(find "$tmp/var/cache/apt/archives" -name '*.deb' | wc -l) packages"
    for deb in "$tmp"/var/cache/apt/archives/*.deb; do
        # --keep-directory-symlink keeps the merged /usr (bin -> usr/bin) intact.
        dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --keep-directory-symlink
    done
    rm -f "$tmp"/var/cache/apt/archives/*.deb
    # debootstrap makes proc a symlink to the host's /proc when it thinks it runs in a
    # container (/.dockerenv); mounting through it would cover the host's /proc.
    for d in proc sys; do
        if [ -L "$tmp/$d" ]; then rm "$tmp/$d"; mkdir -m 555 "$tmp/$d"; fi
    done
    for f in passwd group; do  # base-passwd's maintainer script never ran
        [ -e "$tmp/etc/$f" ] || cp "$tmp/usr/share/base-passwd/$f.master" "$tmp/etc/$f"
    done
    chmod 1777 "$tmp/dev/shm" "$tmp/tmp"

    log "$suite: downloading aarch64 wheels for Python $PYVER, glibc <= 2.$GLIBC_MINOR"
    mkdir -p "$tmp/wheels"
    # shellcheck disable=SC2046,SC2086 # word splitting wanted
    "$PYTHON" -m pip download -q --only-binary=:all: $(platform_args) \
        --python-version "$PYVER" --implementation cp --abi "cp${PYVER/./}" \
        -d "$tmp/wheels" "${wheel}[edge,dicom-codecs]" pytest "pip>=24" $EXTRA_REQS
    log "$suite: creating /opt/venv inside the userland (under qemu)"
    in_root "$tmp" /usr/bin/python3 -m venv --without-pip /opt/venv
    local pip_wheel
    pip_wheel=$(cd "$tmp/wheels" && ls pip-*.whl)
    in_root "$tmp" /opt/venv/bin/python3 "/wheels/$pip_wheel/pip" install -q \
        --no-index --find-links /wheels pip
    # shellcheck disable=SC2086
    in_root "$tmp" /opt/venv/bin/python3 -m pip install -q --no-index \
        --find-links /wheels "neuroedge[edge,dicom-codecs]" pytest $EXTRA_REQS
    rm -rf "$tmp/wheels"
    mv "$tmp" "$dest"
    rm -f "$tmp.log"
}

# --- helpers ----------------------------------------------------------------------------

MOUNTED=""
cleanup() {
    if [ -n "$MOUNTED" ]; then umount "$MOUNTED" || umount -l "$MOUNTED" || true; fi
    if [ -n "${WORK:-}" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Run a command inside the userland with a clean environment (no host PIP_* settings).
in_root() {
    local root=$1
    shift
    with_proc "$root" chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 \
        PATH=/opt/venv/bin:/usr/bin:/bin "$@"
}

# rm -rf a userland, never through a /proc left mounted by an interrupted run.
remove_rootfs() {
    [ -e "$1" ] || return 0
    if [ ! -L "$1/proc" ] && mountpoint -q "$1/proc"; then
        umount "$1/proc" || die "cannot unmount $1/proc"
    fi
    rm -rf "$1"
}

# Run "$@" with $1/proc mounted (a chroot without /proc breaks Python's subprocess/os).
with_proc() {
    local root=$1 rc=0
    shift
    if [ ! -d "$root/proc" ] || [ -L "$root/proc" ]; then die "$root/proc is not a plain folder"; fi
    mount -t proc proc "$root/proc"
    MOUNTED="$root/proc"
    "$@" || rc=$?
    umount "$root/proc" 2>/dev/null || { sleep 1; umount "$root/proc"; } || umount -l "$root/proc"
    MOUNTED=""
    return "$rc"
}

ensure_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    if [ "$(uname -m)" != aarch64 ] && ! command -v qemu-aarch64-static >/dev/null \
        && [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
        missing+=(qemu-user-static binfmt-support)
    fi
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || skip "${missing[*]} not installed and no apt-get to install them"
    log "installing ${missing[*]} with apt-get"
    { apt-get install -y -q "${missing[@]}" || { apt-get update -q && \
        apt-get install -y -q "${missing[@]}"; }; } >/dev/null 2>&1 \
        || skip "could not apt-get install ${missing[*]}"
}

ensure_binfmt() {
    [ "$(uname -m)" = aarch64 ] && return 0
    local entry=/proc/sys/fs/binfmt_misc/qemu-aarch64
    if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
            || skip "binfmt_misc is not mounted and cannot be (a container without privileges?)"
    fi
    if [ ! -e "$entry" ]; then
        if command -v update-binfmts >/dev/null; then
            update-binfmts --enable qemu-aarch64 2>/dev/null || true
        fi
    fi
    if [ ! -e "$entry" ] && [ -x /usr/bin/qemu-aarch64-static ]; then
        # Register it ourselves; F = the kernel opens the interpreter now, so it works
        # inside the chroot without a copy of qemu there.
        printf '%s' ':qemu-aarch64:M::\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:/usr/bin/qemu-aarch64-static:F' \
            >/proc/sys/fs/binfmt_misc/register 2>/dev/null || true
    fi
    [ -e "$entry" ] || skip "cannot register qemu-aarch64 with binfmt_misc"
    grep -q '^enabled' "$entry" || skip "the qemu-aarch64 binfmt entry is disabled"
    grep -q '^flags:.*F' "$entry" \
        || skip "the qemu-aarch64 binfmt entry lacks the F flag (install qemu-user-static)"
}

recipe_hash() {
    {
        echo "suite=$1 mirror=$MIRROR"
        declare -f suite_recipe platform_args build_rootfs
        sed -n '/^\[project.optional-dependencies\]/,/^\[project.scripts\]/p' \
            "$REPO/pyproject.toml"
    } | sha256sum | cut -c1-12
}

# Sum the counts in pytest's last line ("3 passed, 1 skipped in 2.00s").
count() { grep -Eo "[0-9]+ $1" <<<"$2" | awk '{s += $1} END {print s + 0}'; }

# --- main -------------------------------------------------------------------------------

[ "$(uname -s)" = Linux ] || skip "needs Linux (chroot + binfmt_misc); this is $(uname -s)"
[ "$(id -u)" = 0 ] || skip "needs root for chroot and mounting /proc (CI runs as root)"
ensure_tools
ensure_binfmt
command -v "$PYTHON" >/dev/null || die "no host Python '$PYTHON' (set PYTHON=...)"

WORK=$(mktemp -d /tmp/neuroedge-arm64.XXXXXX)
chmod 755 "$WORK"
cd "$REPO"

log "building the project wheel"
"$PYTHON" -m pip wheel -q --no-deps -w "$WORK/dist" "$REPO" >"$WORK/wheel.log" 2>&1 \
    || { cat "$WORK/wheel.log" >&2; die "building the project wheel failed"; }
WHEEL=$(ls "$WORK"/dist/neuroedge-*.whl)

log "training the int8 test model on the host (tests/deploy/toy_model.py)"
if "$PYTHON" -c 'import tensorflow' 2>/dev/null; then
    PYTHONPATH="$REPO" TF_CPP_MIN_LOG_LEVEL=2 "$PYTHON" tests/deploy/toy_model.py \
        "$WORK/model" >"$WORK/model.log" 2>&1 || { cat "$WORK/model.log" >&2; die "toy model failed"; }
else
    die "the host Python ($PYTHON) has no TensorFlow to build the test model: install '.[train]'"
fi

declare -a SUMMARY=()
FAILED=0
for suite in $SUITES; do
    suite_recipe "$suite"
    root="$CACHE/$suite-$(recipe_hash "$suite")"
    if [ "$REBUILD" = 1 ] || [ ! -x "$root/opt/venv/bin/python" ]; then
        for old in "$CACHE/$suite"-*; do remove_rootfs "$old"; done
        start=$SECONDS
        build_rootfs "$suite" "$root" "$WHEEL"
        log "$suite: userland built in $((SECONDS - start)) s, cached at $root"
    fi
    if [ "$(in_root "$root" /usr/bin/uname -m)" != aarch64 ]; then
        die "$suite: the userland does not run as aarch64"
    fi

    # The code and tests under test, fresh each run; the model readable by nobody.
    rm -rf "$root/src" "$root/model"
    mkdir -p "$root/src"
    (cd "$REPO" && { git ls-files -co --exclude-standard -- tests pyproject.toml 2>/dev/null \
        || find tests pyproject.toml -type f; } | tar -c -T - -f -) | tar -x -C "$root/src"
    cp -r "$WORK/dist" "$root/src/dist"
    cp -r "$WORK/model" "$root/model"
    cat >"$root/src/userland_info.py" <<'EOF'
import platform, sys
from edge.runtime import load_runtime
runtime = load_runtime()
print("userland:", platform.machine(), "Python", sys.version.split()[0], runtime.name,
      runtime.version)
EOF
    chmod -R a+rX "$root/src" "$root/model"
    in_root "$root" /opt/venv/bin/python -m pip install -q --no-index \
        --no-deps --force-reinstall "/src/dist/$(basename "$WHEEL")"

    for runtime in $RUNTIMES; do
        label="$suite/$runtime"
        log "$label: python -m pytest $TESTS ${PYTEST_ARGS[*]:-}"
        start=$SECONDS
        rc=0
        # shellcheck disable=SC2086 # TESTS is a list of paths
        with_proc "$root" chroot --userspec=65534:65534 "$root" /usr/bin/env -i \
            HOME=/tmp PATH=/opt/venv/bin:/usr/bin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 \
            NEUROEDGE_TEST_MODEL=/model NEUROEDGE_RUNTIME="$runtime" \
            /bin/sh -c 'cd /src && python userland_info.py && exec python -m pytest \
                -p no:cacheprovider -q "$@"' pytest $TESTS "${PYTEST_ARGS[@]}" \
            > >(tee "$WORK/pytest.log") 2>&1 || rc=$?
        wait $! 2>/dev/null || true  # let tee finish writing the log
        last=$(grep -E '[0-9]+ (passed|failed|error|skipped|deselected)' "$WORK/pytest.log" | tail -1 || true)
        info=$(grep -m1 '^userland:' "$WORK/pytest.log" | cut -d' ' -f2- || true)
        SUMMARY+=("$(printf '%-26s %-46s %6s %6s %7s %5s %5ss' "$label" "$info" \
            "$(count passed "$last")" "$(count failed "$last")" "$(count skipped "$last")" \
            "$(count error "$last")" "$((SECONDS - start))")")
        [ "$rc" = 0 ] || FAILED=1
    done
done

printf '\n%-26s %-46s %6s %6s %7s %5s %6s\n' suite/runtime "machine, Python, runtime" \
    passed failed skipped error time
printf '%s\n' "${SUMMARY[@]}"
[ "$FAILED" = 0 ] || { echo "arm64 emulation tests FAILED"; exit 1; }
echo "arm64 emulation tests passed"
