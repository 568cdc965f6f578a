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
# How:
#   1. debootstrap's first stage only (--foreign): it downloads the arm64 .debs; they are
#      unpacked on the host with dpkg-deb (the second stage takes ~10 min under qemu).
#   2. The aarch64 wheels are installed from the host (`pip install --target /opt/site
#      --platform manylinux_2_X_aarch64` for every X from 17 up to the userland's glibc:
#      pip does not expand perennial manylinux tags downwards, so naming only one makes it
#      silently pick old releases), then byte-compiled once by the userland's Python.
#   3. The host builds the agent's int8 toy model (tests/edge/toy_model.py; TensorFlow is
#      on the host only) and hands it to the tests as NEUROEDGE_TEST_MODEL=/model.
#   4. chroot with /proc mounted, as the unprivileged user nobody (like the service), and
#      run pytest on TESTS. /sys is NOT bind-mounted: ai-edge-litert's CPU detection
#      crashed reading the x86 host's /sys under qemu (without /sys it prints "Error in
#      cpuinfo: failed to parse the list of possible processors" and works).
#   5. bookworm only: deploy/install.sh for real, as root in the userland (user, folders,
#      a venv made by Debian's python3-venv, filled by pip >= 24 from an offline wheelhouse,
#      config, model, unit), then a staff member in the neuroedge group drops the sample
#      inbox and the agent, as user neuroedge, classifies it; uninstall.sh keeps the reports.
#   The chroot never touches the network.
#
# What runs: the edge tests of native code, not marked slow: the decoders (Pillow, pydicom
# with pylibjpeg), the PNG encoder, the runtime and the model, the numerics of trust and
# test-time views, and the agent end to end through its CLI. qemu-user runs on the host's
# kernel, so what it proves is the aarch64 code (wheels, runtimes, Python and glibc
# versions): the slow tests (kill -9, live inotify watching) exercise the kernel, the same
# as on the host, and the rest of the edge suite is pure Python, run on the host's Python
# (3.11, as bookworm's) and on Python 3.8 at bullseye's library versions
# (.ci/py38-tests.sh). Until 2026-12-07 both userlands ran the whole edge suite: 13-14
# minutes each under emulation, most of .ci/run's time. NEUROEDGE_ARM64_TESTS="tests/edge
# tests/deploy/test_model_runtime.py" still runs it all.
#
# The userland (steps 1-2) is cached in $NEUROEDGE_CACHE/arm64/<suite>-<hash of the recipe
# and of pyproject's dependencies>; a change to either rebuilds it, --rebuild forces it.
# Measured times: docs/testing.md.
#
# Environment:
#   NEUROEDGE_ARM64_SUITES  suites to run (default: "bookworm bullseye")
#   NEUROEDGE_ARM64_TESTS   pytest paths (default: the native-code tests, NATIVE_TESTS below)
#   NEUROEDGE_ARM64_SELECT  pytest -m expression (default: "not slow"; "" runs everything)
#   NEUROEDGE_ARM64_E2E     1 or 0: force the install.sh end-to-end run on or off
#   NEUROEDGE_ARM64_JOBS    suites run at once (default: the number of CPUs; 1: in turn)
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
NATIVE_TESTS="tests/edge/test_agent_inputs.py tests/edge/test_agent_dicom.py
    tests/edge/test_png.py tests/edge/test_agent_fuzz.py tests/edge/test_trust.py
    tests/edge/test_views.py tests/edge/test_manifest_preprocess.py
    tests/edge/test_manifest_external.py tests/edge/test_shipped_model.py
    tests/edge/test_agent_cli.py tests/deploy/test_model_runtime.py"
# shellcheck disable=SC2086 # one line for the log: the paths have no spaces
TESTS=${NEUROEDGE_ARM64_TESTS:-$(echo $NATIVE_TESTS)}
SELECT=${NEUROEDGE_ARM64_SELECT-not slow}
REBUILD=0
PYTEST_ARGS=()

log() { printf '[arm64 %4ss] %s\n' "$SECONDS" "$*" >&2; }
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

# Sets PYVER, GLIBC_MINOR, EXTRA_REQS, RUNTIMES (NEUROEDGE_RUNTIME for the agent; each
# runs the tests once), E2E (1: also install with deploy/install.sh and run the agent as
# its service user) and CPU, the core qemu emulates (QEMU_CPU). Not qemu's default "max":
# with it, XNNPACK picks int8 kernels for CPU features no Pi or Jetson has, and under
# qemu 7.2 those compute wrong results (measured: docs/notes/arm64-emulation-findings.md).
suite_recipe() {
    case $1 in
        bookworm)  # Raspberry Pi OS 12: what `pip install neuroedge[edge]` gets on a Pi.
            PYVER=3.11 GLIBC_MINOR=36 EXTRA_REQS="" RUNTIMES="ai-edge-litert" E2E=1
            CPU=cortex-a72 ;;  # the Raspberry Pi 4's core
        bullseye)  # The oldest glibc we can build, and the Jetson runtime (tflite-runtime
                   # 2.13.0) on real aarch64 code. The agent runs on tflite-runtime;
                   # tests/deploy/test_model_runtime.py runs both runtimes and compares them.
                   # A Jetson Nano has Python 3.8 and glibc 2.27, which no Debian userland
                   # here has: wheels are picked for glibc <= 2.27 and the libraries pinned
                   # to what `pip install neuroedge[edge,dicom-codecs]` resolves on Python 3.8
                   # (their last releases for 3.8; docs/testing.md says how to check).
            PYVER=3.9 GLIBC_MINOR=27
            EXTRA_REQS="tflite-runtime==2.13.0 numpy==1.24.4 pillow==10.4.0 watchdog==4.0.2
                click==8.1.8 pydicom==2.4.4 pynetdicom==2.0.2 pylibjpeg==2.0.1
                pylibjpeg-libjpeg==2.2.0 pylibjpeg-openjpeg==2.3.0 pylibjpeg-rle==2.0.0"
            RUNTIMES="tflite-runtime" E2E=0
            CPU=cortex-a57 ;;  # the Jetson Nano's core
        *) die "unknown suite '$1' (choose bookworm or bullseye)" ;;
    esac
}

platform_args() {
    local x
    for x in $(seq 17 "$GLIBC_MINOR"); do printf -- '--platform manylinux_2_%s_aarch64 ' "$x"; done
    printf -- '--platform manylinux2014_aarch64'
}

# Run by the userland's Python with /opt/site on its path: prints the requirements of the
# installed distributions (neuroedge with the extras installed here) that this Python's
# markers ask for and that are not installed.
# shellcheck disable=SC2016
MISSING_REQUIREMENTS='
import sys
from importlib import metadata
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
site = sys.argv[1]
dists = list(metadata.distributions(path=[site]))
have = {canonicalize_name(d.metadata["Name"]) for d in dists}
missing = set()
for dist in dists:
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker is not None and not any(
                req.marker.evaluate({"extra": e}) for e in ("", "edge", "dicom-codecs")):
            continue
        if canonicalize_name(req.name) not in have:
            missing.add(str(req).split(";")[0].replace(" ", ""))
print(" ".join(sorted(missing)))
'

# Build the userland for $1 into $2: first-stage debootstrap, .debs unpacked on the host;
# the aarch64 wheels of the edge + dicom-codecs extras and pytest installed from the host
# into /opt/site (pip --target, native speed), byte-compiled once by the userland's own
# Python; and (E2E suites) the same wheels as an offline wheelhouse in /opt/wheelhouse.
build_rootfs() {
    local suite=$1 dest=$2 wheel=$3 tmp="$2.partial" deb
    remove_rootfs "$tmp"
    mkdir -p "$CACHE/debs-$suite"
    log "$suite: debootstrap (first stage) into $tmp"
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3,python3-venv \
        --cache-dir="$CACHE/debs-$suite" "$suite" "$tmp" "$MIRROR" >"$tmp.log" 2>&1 \
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
    # A 4-core CPU list where the kernel would show it. The host's /sys is not mounted (see
    # above); without these files XNNPACK's CPU detection fails and the runtimes silently
    # fall back to their built-in kernels, which is not what a device runs.
    mkdir -p "$tmp/sys/devices/system/cpu"
    for f in possible present online; do echo 0-3 >"$tmp/sys/devices/system/cpu/$f"; done

    log "$suite: installing aarch64 wheels for Python $PYVER, glibc <= 2.$GLIBC_MINOR"
    local pick=(--only-binary=:all: --python-version "$PYVER" --implementation cp
                --abi "cp${PYVER/./}")
    # shellcheck disable=SC2046,SC2086 # word splitting wanted
    "$PYTHON" -m pip install -q --no-compile --no-warn-conflicts --target "$tmp/opt/site" \
        "${pick[@]}" $(platform_args) "${wheel}[edge,dicom-codecs]" pytest hypothesis $EXTRA_REQS
    if [ "$E2E" = 1 ]; then
        # shellcheck disable=SC2046,SC2086
        "$PYTHON" -m pip download -q "${pick[@]}" $(platform_args) -d "$tmp/opt/wheelhouse" \
            "${wheel}[edge,dicom-codecs]" "pip>=24" $EXTRA_REQS
        rm -f "$tmp"/opt/wheelhouse/neuroedge-*.whl
    fi
    # pip evaluates environment markers (python_version < "3.11": tomli, exceptiongroup) for
    # the host's Python, not --python-version's: let the userland's Python name what is
    # missing, and add it.
    local missing _
    for _ in 1 2 3; do
        missing=$(in_root "$tmp" /usr/bin/python3 -c "$MISSING_REQUIREMENTS" /opt/site) \
            || die "$suite: cannot list the missing requirements"
        [ -n "$missing" ] || break
        log "$suite: adding what this Python's markers require: ${missing//$'\n'/ }"
        # shellcheck disable=SC2046,SC2086
        "$PYTHON" -m pip install -q --no-compile --no-warn-conflicts --upgrade \
            --target "$tmp/opt/site" "${pick[@]}" $(platform_args) $missing
    done
    # The project itself is installed fresh on every run; console scripts would carry the
    # host's interpreter path.
    local info top
    info=$(ls -d "$tmp"/opt/site/neuroedge-*.dist-info)
    while read -r top; do rm -rf "${tmp:?}/opt/site/$top"; done <"$info/top_level.txt"
    rm -rf "$info" "$tmp/opt/site/bin"
    if [ "$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$PYVER" ]; then
        log "$suite: byte-compiling /opt/site (host Python $PYVER: same bytecode)"
        "$PYTHON" -m compileall -q -j 0 -s "$tmp" -p / "$tmp/opt/site" >/dev/null
    else
        log "$suite: byte-compiling /opt/site (under qemu)"
        in_root "$tmp" /usr/bin/python3 -m compileall -q -j 0 /opt/site >/dev/null \
            || die "compileall failed in the $suite userland"
    fi
    mv "$tmp" "$dest"
    rm -f "$tmp.log"
}

# --- helpers ----------------------------------------------------------------------------

MOUNTED=()
unmount_all() {
    local m
    for m in "${MOUNTED[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" || true; done
    MOUNTED=()
}
cleanup() {
    unmount_all
    if [ -n "${WORK:-}" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT

# Run a command inside the userland with a clean environment (no host PIP_* settings).
in_root() {
    local root=$1
    shift
    with_proc "$root" chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 QEMU_CPU="$CPU" \
        PYTHONPATH=/opt/project:/opt/site PATH=/usr/sbin:/usr/bin:/sbin:/bin "$@"
}

# rm -rf a userland, never through a /proc left mounted by an interrupted run.
remove_rootfs() {
    [ -e "$1" ] || return 0
    local m
    for m in "$1/dev/shm" "$1/proc"; do
        if [ ! -L "$m" ] && mountpoint -q "$m"; then umount "$m" || die "cannot unmount $m"; fi
    done
    rm -rf "$1"
}

# Run "$@" with $1/proc and a tmpfs on $1/dev/shm mounted: Python's subprocess and os need
# /proc; multiprocessing's semaphores need /dev/shm to be a tmpfs on glibc 2.31 (bullseye).
with_proc() {
    local root=$1 rc=0 m
    shift
    if [ ! -d "$root/proc" ] || [ -L "$root/proc" ]; then die "$root/proc is not a plain folder"; fi
    if [ ! -d "$root/dev/shm" ] || [ -L "$root/dev/shm" ]; then die "$root/dev/shm is not a folder"; fi
    mount -t proc proc "$root/proc"
    MOUNTED=("$root/proc")
    mount -t tmpfs -o mode=1777,size=256m,nosuid,nodev shm "$root/dev/shm"
    MOUNTED=("$root/dev/shm" "$root/proc")
    "$@" || rc=$?
    for m in "${MOUNTED[@]}"; do
        umount "$m" 2>/dev/null || { sleep 1; umount "$m"; } || umount -l "$m"
    done
    MOUNTED=()
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
        # only what shapes the userland: how a run uses it does not invalidate the cache
        echo "suite=$1 mirror=$MIRROR python=$PYVER glibc=$GLIBC_MINOR extra=$EXTRA_REQS e2e=$E2E"
        declare -f platform_args build_rootfs
        sed -n '/^\[project.optional-dependencies\]/,/^\[project.scripts\]/p' \
            "$REPO/pyproject.toml"
    } | sha256sum | cut -c1-12
}

# Sum the counts in pytest's last line ("3 passed, 1 skipped in 2.00s").
count() { grep -Eo "[0-9]+ $1" <<<"$2" | awk '{s += $1} END {print s + 0}'; }

# Runs inside the userland as root: the real install, as on a Pi, offline.
e2e_install() {
    set -euo pipefail
    local wheel=$1 data=/var/lib/neuroedge
    unset PYTHONPATH  # the test packages in /opt/site must not leak into the real venv
    as() { local who=$1; shift; setpriv --reuid="$who" --regid="$who" --init-groups -- "$@"; }
    # Start clean: the userland is cached between runs.
    rm -rf "$data" /opt/neuroedge /etc/neuroedge /etc/systemd/system/edge-agent.service
    # PIP_NO_COMPILE: byte-compiling ~100 MB of packages under qemu takes minutes.
    PIP_NO_COMPILE=1 bash /src/deploy/install.sh --wheel "$wheel" --wheels /opt/wheelhouse \
        --model /model --extras edge,dicom-codecs --no-systemctl
    getent passwd clinician >/dev/null || useradd --create-home --groups neuroedge clinician
    # A staff member (group neuroedge, umask 022) copies files into the inbox.
    as clinician sh -c "umask 022; /opt/neuroedge/venv/bin/edge-agent sample-inbox $data/inbox" \
        >/dev/null
    as neuroedge /opt/neuroedge/venv/bin/edge-agent --config /etc/neuroedge/config.toml watch \
        --once
    /opt/neuroedge/venv/bin/python - "$data/outbox" <<'EOF'
import json, pathlib, sys
outbox = pathlib.Path(sys.argv[1])
reports = [json.loads(p.read_text()) for p in (outbox / "reports").glob("*.json")]
formats = sorted({r["input"]["format"] for r in reports})
quarantined = len(list((outbox / "quarantine").glob("*.reason.json")))
assert "dicom" in formats and "png" in formats, formats
assert not any((outbox.parent / "inbox").iterdir()), "files left in the inbox"
print(f"e2e: {len(reports)} reports ({', '.join(formats)}), {quarantined} quarantined")
EOF
    bash /src/deploy/uninstall.sh --no-systemctl >/dev/null
    [ ! -e /opt/neuroedge/venv ] && [ -d "$data/outbox/reports" ] && [ -d /opt/neuroedge/models ]
}

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

log "building the int8 test model on the host (tests/edge/toy_model.py)"
"$PYTHON" -c 'import tensorflow' 2>/dev/null \
    || die "the host Python ($PYTHON) has no TensorFlow to build the test model: install '.[train]'"
PYTHONPATH="$REPO" TF_CPP_MIN_LOG_LEVEL=2 "$PYTHON" tests/edge/toy_model.py "$WORK/model" \
    >"$WORK/model.log" 2>&1 || { cat "$WORK/model.log" >&2; die "building the toy model failed"; }

# One suite: build (or reuse) its userland, run the tests, then the install end to end.
# Writes its summary lines to $WORK/summary.$suite; returns non-zero on any failure.
run_suite() {
    local suite=$1 root start rc failed=0 runtime label last info result lock
    trap unmount_all EXIT  # a background job has its own mounts to undo
    suite_recipe "$suite"
    # Another run on this machine (another checkout, another version) waits for this one:
    # it could otherwise rebuild, and so delete, the userland under our feet.
    mkdir -p "$CACHE"
    exec {lock}>"$CACHE/$suite.lock"
    if ! flock -n "$lock"; then
        log "$suite: waiting for another run to finish with the $suite userland"
        flock "$lock"
    fi
    root="$CACHE/$suite-$(recipe_hash "$suite")"
    if [ "$REBUILD" = 1 ] || [ ! -d "$root/opt/site" ]; then
        for old in "$CACHE/$suite"-*; do remove_rootfs "$old"; done
        start=$SECONDS
        build_rootfs "$suite" "$root" "$WHEEL"
        log "$suite: userland built in $((SECONDS - start)) s, cached at $root"
    fi
    if [ "$(in_root "$root" /usr/bin/uname -m)" != aarch64 ]; then
        die "$suite: the userland does not run as aarch64"
    fi

    # Fresh each run: the source tree (/src, where the tests run: like on the host they
    # import the package from it, and their subprocesses do too), the project's wheel
    # installed into /opt/project (its metadata and entry points), and the model (/model).
    rm -rf "$root/src" "$root/model" "$root/opt/project"
    mkdir -p "$root/src"
    (cd "$REPO" && { git ls-files -co --exclude-standard 2>/dev/null || find . -type f \
        -not -path './.git/*'; } | tar -c -T - -f -) | tar -x -C "$root/src"
    cp -r "$WORK/dist" "$root/src/dist"
    cp -r "$WORK/model" "$root/model"
    cat >"$root/src/userland_info.py" <<'EOF'
import os, platform, sys
from edge.runtime import load_runtime
runtime = load_runtime()
print("userland:", platform.machine(), "Python", sys.version.split()[0], runtime.name,
      runtime.version, os.environ.get("QEMU_CPU", ""))
EOF
    "$PYTHON" -m pip install -q --no-compile --no-deps --target "$root/opt/project" "$WHEEL"
    rm -rf "$root/opt/project/bin"
    chmod -R a+rX "$root/src" "$root/model" "$root/opt/project"

    local select=()
    [ -z "$SELECT" ] || select=(-m "$SELECT")
    [ -z "${NEUROEDGE_ARM64_E2E:-}" ] || E2E=$NEUROEDGE_ARM64_E2E
    for runtime in $RUNTIMES; do
        label="$suite/$runtime"
        log "$label: pytest $TESTS ${select[*]} ${PYTEST_ARGS[*]:-}"
        start=$SECONDS
        rc=0
        # shellcheck disable=SC2086 # TESTS is a list of paths
        with_proc "$root" chroot --userspec=65534:65534 "$root" /usr/bin/env -i \
            HOME=/tmp PATH=/usr/bin:/bin LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 \
            PYTHONPATH=/opt/project:/opt/site \
            NEUROEDGE_TEST_MODEL=/model NEUROEDGE_RUNTIME="$runtime" QEMU_CPU="$CPU" \
            /bin/sh -c 'cd /src && python3 userland_info.py && exec python3 -m pytest \
                -p no:cacheprovider -q "$@"' pytest $TESTS "${select[@]}" "${PYTEST_ARGS[@]}" \
            >"$WORK/pytest.$suite.$runtime.log" 2>&1 || rc=$?
        cat "$WORK/pytest.$suite.$runtime.log"
        last=$(grep -E '[0-9]+ (passed|failed|error|skipped|deselected)' \
            "$WORK/pytest.$suite.$runtime.log" | tail -1 || true)
        info=$(grep -m1 '^userland:' "$WORK/pytest.$suite.$runtime.log" | cut -d' ' -f2- || true)
        printf '%-26s %-56s %6s %6s %7s %5s %5ss\n' "$label" "$info" "$(count passed "$last")" \
            "$(count failed "$last")" "$(count skipped "$last")" "$(count error "$last")" \
            "$((SECONDS - start))" >>"$WORK/summary.$suite"
        [ "$rc" = 0 ] || failed=1
    done

    if [ "$E2E" = 1 ]; then
        label="$suite/install.sh"
        log "$label: install as root, a staff member drops the sample inbox, the agent runs"
        start=$SECONDS
        rc=0
        [ -d "$root/opt/wheelhouse" ] || die "$suite: no wheelhouse (E2E=0 when it was built)"
        in_root "$root" /bin/bash -c "$(declare -f e2e_install); e2e_install \
            /src/dist/$(basename "$WHEEL")" >"$WORK/e2e.$suite.log" 2>&1 || rc=$?
        cat "$WORK/e2e.$suite.log"
        result=$(grep -m1 '^e2e:' "$WORK/e2e.$suite.log" | cut -d' ' -f2- || true)
        printf '%-26s %-56s %6s %6s %7s %5s %5ss\n' "$label" \
            "${result:-failed: see the log above}" "$([ $rc = 0 ] && echo 1 || echo 0)" \
            "$([ $rc = 0 ] && echo 0 || echo 1)" 0 0 "$((SECONDS - start))" \
            >>"$WORK/summary.$suite"
        [ "$rc" = 0 ] || failed=1
    fi
    return "$failed"
}

# The suites run side by side when there are cores to spare (qemu runs each mostly on one);
# their output is printed one suite after the other.
FAILED=0
if [ "${NEUROEDGE_ARM64_JOBS:-$(nproc)}" -gt 1 ] && [ "$(wc -w <<<"$SUITES")" -gt 1 ]; then
    declare -A PIDS=()
    for suite in $SUITES; do
        log "$suite: started in the background (log: $WORK/run.$suite.log)"
        run_suite "$suite" >"$WORK/run.$suite.log" 2>&1 &
        PIDS[$suite]=$!
    done
    for suite in $SUITES; do
        wait "${PIDS[$suite]}" || FAILED=1
        printf '\n===== %s =====\n' "$suite"
        grep -v "^WARNING: Location '" "$WORK/run.$suite.log" || true
    done
else
    for suite in $SUITES; do run_suite "$suite" || FAILED=1; done
fi

printf '\n%-26s %-56s %6s %6s %7s %5s %6s\n' suite/runtime "machine, Python, runtime, core" \
    passed failed skipped error time
for suite in $SUITES; do cat "$WORK/summary.$suite" 2>/dev/null || printf '%-26s failed before its tests ran\n' "$suite"; done
[ "$FAILED" = 0 ] || { echo "arm64 emulation tests FAILED"; exit 1; }
echo "arm64 emulation tests passed"
