#!/usr/bin/env bash
# Install (or upgrade) the NeuroEdge edge agent as a systemd service.
#
#   sudo deploy/install.sh --model DIR [options]
#
# Idempotent: running it again with the same inputs changes nothing; with a new wheel or
# model it upgrades in place. It never overwrites /etc/neuroedge/config.toml, never
# overwrites an installed model version, and never touches the inbox or outbox contents.
#
# What it creates (defaults; see --prefix, --data, --user):
#   user and group neuroedge (system user, no login, no home)
#   /opt/neuroedge/venvs/ID/               one virtual environment per install, neuroedge[edge]
#   /opt/neuroedge/venv                    symlink to the venv the agent runs (this one and
#                                          the one before it are kept)
#   /opt/neuroedge/models/NAME-VERSION/    model.tflite + model.json (read-only, root)
#   /opt/neuroedge/models/current          symlink to the model the agent runs
#   /etc/neuroedge/config.toml             0640 root:neuroedge, written once
#   /etc/neuroedge/config.example.toml     every key documented, refreshed on upgrade
#   /var/lib/neuroedge/inbox/              2770 neuroedge:neuroedge (staff in the group drop files)
#   /var/lib/neuroedge/outbox/             0750 neuroedge:neuroedge (staff in the group read reports)
#   /var/lib/neuroedge/outbox/.state/      0700 neuroedge:neuroedge (the agent's journal and lock)
#   /etc/systemd/system/edge-agent.service enabled, and (re)started unless --no-start
#   /etc/systemd/system/edge-agent.service.d/dicom.conf   only with --dicom/--dicom-port:
#                                          the DICOM receiver's port and the network it needs
#   /etc/neuroedge/offload.env, /etc/systemd/system/edge-agent-offload.{service,timer},
#   /opt/neuroedge/bin/neuroedge-offload   only with --offload-to: old days moved off the box
#                                          on a schedule (the timer enabled)
set -euo pipefail

usage() {
    cat <<'EOF'
Usage: deploy/install.sh [options]

  --model DIR       model folder holding model.json and the .tflite it names (required on
                    a first install unless the package ships a model; on an upgrade
                    without --model the current model is kept)
  --wheel FILE      install neuroedge from this wheel (default: this source tree)
  --wheels DIR      offline: take every package from this wheelhouse (pip --no-index);
                    build it on a connected machine with `pip download` (see the docs)
  --python PY       interpreter for the virtual environment (default: python3;
                    Jetson Nano: python3.8)
  --extras LIST     pip extras to install (default: edge; add ",dicom-codecs" to read
                    compressed DICOM)
  --prefix DIR      application folder: venv and models (default: /opt/neuroedge)
  --data DIR        data folder: inbox and outbox (default: /var/lib/neuroedge)
  --user NAME       service user and group (default: neuroedge)
  --destdir DIR     write everything under DIR instead of / (also $DESTDIR): for packaging
                    and tests; creates no user, changes no owner, runs no systemctl
  --no-user         do not create the user or change owners (implied when not root)
  --no-venv         build no virtual environment (the one venv names is kept, and runs the
                    check as the service user before the service uses a new model)
  --no-start        enable the service but do not (re)start it
  --no-systemctl    install the unit file but run no systemctl at all (images, containers)
  --dicom           run the DICOM receiver on port 11112 (the usual unprivileged port) and
                    give the agent the network it needs for it and for sending SRs to the
                    PACS: writes the drop-in edge-agent.service.d/dicom.conf
  --dicom-port PORT the same on PORT (1-65535; below 1024 the agent gets the one capability
                    CAP_NET_BIND_SERVICE)
  --dicom-allow ADDRS  who may talk to the agent, and whom it may reach (systemd's
                    IPAddressAllow=; default "localhost link-local 10.0.0.0/8 172.16.0.0/12
                    192.168.0.0/16 fc00::/7"); quote a list
  --no-dicom        remove the DICOM drop-in: no receiver, no network (the default when
                    never asked; an upgrade without these options keeps what is there)
  --offload-to DIR  move the outbox's old days to DIR on a schedule (edge-agent offload, as
                    the service user: DIR must be writable by it; a disk mounted there, or
                    the run is refused and moves nothing): writes edge-agent-offload.timer
  --offload-keep-days N  with --offload-to: days that stay on the box (default 90)
  --offload-when WHEN    with --offload-to: when, in systemd's calendar syntax (default
                    "Sun *-*-* 03:00:00"; the agent is stopped for the offload's minutes)
  --offload-max-minutes M  with --offload-to: begin no new day after M minutes (default
                    60; the rest moves at the next run); one still running 30 minutes
                    after that is stopped, and the agent started again
  --no-offload      remove the schedule (an upgrade without these options keeps it)
  -h, --help        this help
EOF
}

die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'install.sh: %s\n' "$*"; }

HERE=$(cd "$(dirname "$0")" && pwd)
SOURCE_TREE=$(cd "$HERE/.." && pwd)
MODEL="" WHEEL="" WHEELS="" PYTHON=python3 EXTRAS=edge
PREFIX=/opt/neuroedge DATA=/var/lib/neuroedge SVC_USER=neuroedge
DESTDIR=${DESTDIR:-}
MANAGE_USER=1 MAKE_VENV=1 START=1 SYSTEMCTL=1
DICOM_PORT="" DICOM_ALLOW="localhost link-local 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7"
DEFAULT_DICOM_PORT=11112
OFFLOAD_TO="" OFFLOAD_KEEP="" OFFLOAD_WHEN="" OFFLOAD_MAX=""

while [ $# -gt 0 ]; do
    case $1 in
        --model|--wheel|--wheels|--python|--extras|--prefix|--data|--user|--destdir|\
        --dicom-port|--dicom-allow|--offload-to|--offload-keep-days|--offload-when|\
        --offload-max-minutes)
            if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi
            case $1 in
                --model) MODEL=$2 ;; --wheel) WHEEL=$2 ;; --wheels) WHEELS=$2 ;;
                --python) PYTHON=$2 ;; --extras) EXTRAS=$2 ;; --prefix) PREFIX=$2 ;;
                --data) DATA=$2 ;; --user) SVC_USER=$2 ;; --destdir) DESTDIR=$2 ;;
                --dicom-port) DICOM_PORT=$2 ;; --dicom-allow) DICOM_ALLOW=$2 ;;
                --offload-to) OFFLOAD_TO=$2 ;; --offload-keep-days) OFFLOAD_KEEP=$2 ;;
                --offload-when) OFFLOAD_WHEN=$2 ;; --offload-max-minutes) OFFLOAD_MAX=$2 ;;
            esac
            shift 2 ;;
        --no-offload) OFFLOAD_TO=none; shift ;;
        --dicom) DICOM_PORT=${DICOM_PORT:-$DEFAULT_DICOM_PORT}; shift ;;
        --no-dicom) DICOM_PORT=none; shift ;;
        --no-user) MANAGE_USER=0; shift ;;
        --no-venv) MAKE_VENV=0; shift ;;
        --no-start) START=0; shift ;;
        --no-systemctl) SYSTEMCTL=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done

case $PREFIX in /*) ;; *) die "--prefix must be an absolute path, got '$PREFIX'" ;; esac
case $DATA in /*) ;; *) die "--data must be an absolute path, got '$DATA'" ;; esac
case $SVC_USER in *[!a-z0-9_-]*|"") die "--user must be a plain user name, got '$SVC_USER'" ;; esac
[[ $EXTRAS =~ ^[a-z0-9,_-]+$ ]] || die "--extras must look like 'edge,dicom-codecs'"
if [ -n "$DICOM_PORT" ] && [ "$DICOM_PORT" != none ]; then
    [[ $DICOM_PORT =~ ^[0-9]{1,5}$ ]] && [ "$DICOM_PORT" -ge 1 ] && [ "$DICOM_PORT" -le 65535 ] \
        || die "--dicom-port must be a port number from 1 to 65535 (usually $DEFAULT_DICOM_PORT), \
got '$DICOM_PORT'"
fi
[[ $DICOM_ALLOW =~ ^[A-Za-z0-9.:/\ -]+$ ]] || die "--dicom-allow takes addresses, prefixes \
(10.1.0.0/16) or the words localhost, link-local, multicast, any, separated by spaces"
if [ -z "$OFFLOAD_TO" ] || [ "$OFFLOAD_TO" = none ]; then
    [ -z "$OFFLOAD_KEEP$OFFLOAD_WHEN$OFFLOAD_MAX" ] || die "--offload-keep-days, --offload-when \
and --offload-max-minutes go with --offload-to DIR (the whole schedule is written again)"
else
    [[ $OFFLOAD_TO =~ ^/[A-Za-z0-9._/-]+$ ]] || die "--offload-to must be an absolute path of \
letters, digits and . _ - / (a disk's mount point, e.g. /media/usb/neuroedge), got '$OFFLOAD_TO'"
    OFFLOAD_TO=${OFFLOAD_TO%/}
    OFFLOAD_KEEP=${OFFLOAD_KEEP:-90}
    [[ $OFFLOAD_KEEP =~ ^[0-9]{1,5}$ ]] && [ "$OFFLOAD_KEEP" -ge 1 ] || die "--offload-keep-days \
must be a number of days, at least 1, got '$OFFLOAD_KEEP'"
    OFFLOAD_MAX=${OFFLOAD_MAX:-60}
    [[ $OFFLOAD_MAX =~ ^[0-9]{1,4}$ ]] && [ "$OFFLOAD_MAX" -ge 1 ] && [ "$OFFLOAD_MAX" -le 1440 ] \
        || die "--offload-max-minutes must be a number of minutes from 1 to 1440 (the agent \
is stopped meanwhile), got '$OFFLOAD_MAX'"
    OFFLOAD_WHEN=${OFFLOAD_WHEN:-Sun *-*-* 03:00:00}
    [[ $OFFLOAD_WHEN =~ ^[A-Za-z0-9*:.,/\ ~-]+$ ]] || die "--offload-when takes systemd's \
calendar syntax (man systemd.time), e.g. 'Sun *-*-* 03:00:00' or 'daily', got '$OFFLOAD_WHEN'"
    if command -v systemd-analyze >/dev/null \
            && ! systemd-analyze calendar "$OFFLOAD_WHEN" >/dev/null 2>&1; then
        die "--offload-when '$OFFLOAD_WHEN' is not a calendar event systemd understands \
(man systemd.time), e.g. 'Sun *-*-* 03:00:00' or 'daily'"
    fi
fi
PREFIX=${PREFIX%/} DATA=${DATA%/}
if [ -n "$DESTDIR" ]; then
    mkdir -p "$DESTDIR"
    DESTDIR=$(cd "$DESTDIR" && pwd)
    MANAGE_USER=0  # a staging tree: owners are set by whoever deploys it
fi
if [ "$(id -u)" != 0 ]; then
    [ -n "$DESTDIR" ] || die "run as root (sudo), or stage into a folder with --destdir DIR"
    MANAGE_USER=0
fi
D=$DESTDIR  # every path written below is "$D/absolute/path"

# The venv must see only what pip puts into it.
unset PYTHONPATH PYTHONHOME PYTHONUSERBASE
# The program is root's and readable by the service user, whatever the admin's umask
# (every file the agent must not read, such as config.toml, gets its mode explicitly).
umask 022

TMP=$(mktemp -d)
PENDING_VENV=""  # a venv this run built and has not switched to: removed if the run fails
trap 'rm -rf "$TMP"; [ -z "$PENDING_VENV" ] || rm -rf "$PENDING_VENV"' EXIT

# --- helpers ------------------------------------------------------------------------------

# set_owner PATH OWNER:GROUP: chown only when managing users and only if it differs.
set_owner() {
    [ "$MANAGE_USER" = 1 ] || return 0
    [ "$(stat -c %U:%G "$1")" = "$2" ] || chown -h "$2" "$1"
}

# make_dir PATH MODE OWNER:GROUP: create, or fix mode and owner (nothing else changes).
make_dir() {
    [ -d "$D$1" ] || mkdir -p "$D$1"
    # Five digits: GNU chmod keeps a folder's setgid bit unless the mode says otherwise.
    [ "$(stat -c %a "$D$1")" = "${2#0}" ] || chmod "$(printf '%05d' "${2#0}")" "$D$1"
    set_owner "$D$1" "$3"
}

# put_file SRC DEST MODE OWNER:GROUP: copy only when the content differs (keeps mtimes on
# an unchanged upgrade), atomically (temp file + rename in the same folder).
put_file() {
    local src=$1 dest=$D$2
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        [ "$(stat -c %a "$dest")" = "${3#0}" ] || chmod "$3" "$dest"
    else
        cp "$src" "$dest.tmp.$$"
        chmod "$3" "$dest.tmp.$$"
        mv -f "$dest.tmp.$$" "$dest"
        say "wrote $2"
    fi
    set_owner "$dest" "$4"
}

# switch_model FOLDER: point models/current at FOLDER, atomically and durably: the model's
# files reach the disk before the link that names them (a power cut right after an upgrade
# must not leave current naming empty files), and the link before the script goes on.
switch_model() {
    sync
    ln -sfn "$1" "$D$MODELS/.current.tmp.$$"
    mv -T "$D$MODELS/.current.tmp.$$" "$D$MODELS/current"
    sync
    if [ -n "$PINNED" ]; then
        say "models/current now names $1, but the agent does not run it: \
/etc/neuroedge/config.toml pins [paths] model = $PINNED. Set it to \"$MODELS/current\" to \
run the models this script installs"
    else
        say "the agent now runs model $1"
    fi
}

# switch_venv TARGET: point the link PREFIX/venv at TARGET (venvs/ID, relative), atomically
# and durably, as switch_model does. A running agent keeps the files it started from: they
# are never changed, only the link, and it runs the new ones from its next start.
switch_venv() {
    local link=$D$PREFIX/venv legacy=""
    sync
    if [ -d "$link" ] && [ ! -L "$link" ]; then
        # A venv from an install before venvs/ existed. A folder cannot be swapped for a
        # link in one rename, and the agent imports from it: stop the agent first (it is
        # started again below), move the folder aside, put the link in its place.
        stop_for_legacy_venv
        legacy=$D$PREFIX/.venv-old.$$
        mv -T "$link" "$legacy"
    fi
    ln -sfn "$1" "$D$PREFIX/.venv.tmp.$$"
    mv -T "$D$PREFIX/.venv.tmp.$$" "$link"
    sync
    [ -z "$legacy" ] || rm -rf "$legacy"
    PENDING_VENV=""
}

# stop_for_legacy_venv: stop a running service before its venv folder is replaced.
STOPPED_FOR_VENV=0
stop_for_legacy_venv() {
    if [ -z "$DESTDIR" ] && [ "$SYSTEMCTL" = 1 ] && command -v systemctl >/dev/null \
            && [ -d /run/systemd/system ] && systemctl is-active --quiet edge-agent.service; then
        say "stopping edge-agent to replace $PREFIX/venv (a folder from an older install) \
with a link: inputs wait in the inbox meanwhile"
        systemctl stop edge-agent.service
        STOPPED_FOR_VENV=1
    elif [ -z "$DESTDIR" ]; then
        say "$PREFIX/venv was a folder (an older install) and is replaced now: if an agent \
runs from it outside systemd, restart it"
    fi
}

# use_new_venv: switch to the venv this run built (if any) and remove the old ones but the
# one before it.
use_new_venv() {
    [ -n "$NEW_VENV" ] || return 0
    switch_venv "venvs/${NEW_VENV##*/}"
    say "the agent's program is now $NEW_VENV (from its next start)"
    prune_venvs "venvs/${NEW_VENV##*/}" "$VENV_WAS"
}

# prune_venvs KEEP...: remove the venvs under venvs/ not named (venvs/ID) and not in use
# by a running process (an agent started from it and not restarted since: --no-start).
prune_venvs() {
    local dir keep used
    for dir in "$D$VENVS"/*; do
        [ -d "$dir" ] && [ ! -L "$dir" ] || continue
        used=0
        for keep in "$@"; do [ "venvs/${dir##*/}" != "$keep" ] || used=1; done
        [ "$used" = 0 ] || continue
        if grep -qsF -- "$dir/" /proc/[0-9]*/cmdline; then
            say "kept $PREFIX/venvs/${dir##*/}: a running process still uses it"
            continue
        fi
        rm -rf "$dir"
        say "removed the old program $PREFIX/venvs/${dir##*/}"
    done
}

# venv_fingerprint PYTHON: what a venv holds: each distribution's name and version, and the
# content of neuroedge's own files (a source tree keeps its version while its code changes;
# the scripts in bin/ name their venv, so they are left out).
venv_fingerprint() {
    "$1" -I - <<'EOF'
import hashlib
from importlib import metadata
digest = hashlib.sha256()
for dist in sorted(metadata.distributions(), key=lambda d: str(d.metadata["Name"]).lower()):
    name = str(dist.metadata["Name"]).lower()
    digest.update(("%s==%s\n" % (name, dist.version)).encode())
    if name != "neuroedge":
        continue
    for entry in sorted(dist.files or (), key=str):
        rel = str(entry)
        if rel.startswith("..") or ".dist-info" in rel or rel.endswith(".pyc"):
            continue
        path = entry.locate()
        if path.is_file():
            digest.update(rel.encode() + hashlib.sha256(path.read_bytes()).digest())
print(digest.hexdigest())
EOF
}

# model_fields FILE: name, version, model_file and model_sha256 of a manifest, one a line,
# then the trust statistics file beside the model (format 2, docs/trust.md) or "-".
model_fields() {
    "$PY_JSON" -c 'import json, sys
try:
    data = json.load(open(sys.argv[1], encoding="utf-8"))
except ValueError as exc:
    sys.exit("%s is not valid JSON (%s)" % (sys.argv[1], exc))
for key in ("name", "version", "model_file", "model_sha256"):
    value = data.get(key) if isinstance(data, dict) else None
    if not isinstance(value, str) or not value:
        sys.exit("%s has no %s" % (sys.argv[1], key))
    print(value)
trust = data.get("trust") if isinstance(data.get("trust"), dict) else {}
ood = trust.get("ood") if isinstance(trust.get("ood"), dict) else {}
print(ood.get("statistics") or "-")' "$1"
}

# --- checks before touching anything ---------------------------------------------------------

command -v "$PYTHON" >/dev/null || die "no '$PYTHON' interpreter: install it (Raspberry Pi OS: \
apt install python3-venv; Jetson Nano: apt install python3.8 python3.8-venv) or pass --python"
PY_JSON=$PYTHON
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 8))' \
    || die "$PYTHON is Python $("$PYTHON" -c 'import platform; print(platform.python_version())'); \
neuroedge needs 3.8 or newer (Jetson Nano: --python python3.8)"
[ -z "$WHEEL" ] || [ -f "$WHEEL" ] || die "--wheel $WHEEL does not exist"
[ -z "$WHEELS" ] || [ -d "$WHEELS" ] || die "--wheels $WHEELS is not a folder"
[ -f "$HERE/systemd/edge-agent.service" ] || die "$HERE/systemd/edge-agent.service is missing"
EXAMPLE_CONFIG=$SOURCE_TREE/edge/config.example.toml
[ -f "$EXAMPLE_CONFIG" ] || die "$EXAMPLE_CONFIG is missing: run install.sh from a complete \
neuroedge source tree or release archive"

# The kept config.toml says where the agent reads and writes; the unit lets it write only
# under ReadWritePaths= ($DATA's inbox and outbox, and what a drop-in adds). An upgrade that
# forgot the first install's --data would leave the agent's folders read-only in its sandbox,
# and the service would stop with exit 78 ("must be readable and writable"), not restarted.
if [ -f "$D/etc/neuroedge/config.toml" ]; then
    outside=$("$PY_JSON" - "$D/etc/neuroedge/config.toml" "$DATA" \
        "$D/etc/systemd/system/edge-agent.service.d" <<'EOF'
import glob, os, re, sys
config, data, dropins = sys.argv[1:]
paths = re.search(r"(?ms)^\[paths\][^\n]*\n(.*?)(?=^\[|\Z)", open(config, encoding="utf-8").read())
writable = [data + "/inbox", data + "/outbox"]
for conf in sorted(glob.glob(os.path.join(dropins, "*.conf"))):
    for line in open(conf, encoding="utf-8", errors="replace"):
        if line.startswith("ReadWritePaths="):
            writable += [p.lstrip("-+") for p in line.split("=", 1)[1].split()]
for key in ("inbox", "outbox"):
    found = paths and re.search(r"(?m)^%s\s*=\s*[\"']([^\"']+)[\"']" % key, paths.group(1))
    if found:
        path = os.path.normpath(found.group(1))
        if not any(path == w or path.startswith(w.rstrip("/") + "/") for w in writable):
            print("%s = \"%s\"" % (key, found.group(1)))
EOF
)
    [ -z "$outside" ] || die "/etc/neuroedge/config.toml names ${outside//$'\n'/, }, where the \
service could not write (it may write only to $DATA/inbox, $DATA/outbox and what a drop-in \
adds with ReadWritePaths=): pass the --data the first install was given, or add the folder \
in a drop-in (systemctl edit edge-agent; docs/deployment/index.md). Nothing was changed"
fi

MODELS=$PREFIX/models
# A kept config.toml may pin [paths] model to one folder (or "", the package's own model):
# the agent then never runs models/current, whatever this script installs there.
PINNED=""
if [ -f "$D/etc/neuroedge/config.toml" ]; then
    PINNED=$("$PY_JSON" - "$D/etc/neuroedge/config.toml" "$MODELS/current" <<'EOF'
import os, re, sys
config, current = sys.argv[1:]
paths = re.search(r"(?ms)^\[paths\][^\n]*\n(.*?)(?=^\[|\Z)", open(config, encoding="utf-8").read())
found = paths and re.search(r"(?m)^model\s*=\s*[\"']([^\"']*)[\"']", paths.group(1))
if found and os.path.normpath(found.group(1) or ".") != os.path.normpath(current):
    print(found.group(1) or "(empty: the model inside the installed package)")
EOF
)
fi
if [ -z "$MODEL" ]; then
    if [ -L "$D$MODELS/current" ]; then
        kept=$(readlink "$D$MODELS/current")
        say "no --model given: keeping the current model $kept"
        # The package's own model may be newer: say so, never switch silently (the site's
        # acceptance test was run with the model it has).
        if [ -f "$SOURCE_TREE/edge/models/model.json" ] \
                && shipped=$(model_fields "$SOURCE_TREE/edge/models/model.json" 2>/dev/null); then
            shipped=$(printf '%s\n' "$shipped" | sed -n '1p;2p' | paste -sd-)
            if [ "$shipped" != "$kept" ]; then
                say "this package ships the model $shipped; to run it instead: sudo $0 \
--model $SOURCE_TREE/edge/models, then repeat the site acceptance test (edge-agent validate, \
docs/agent.md) before the clinic relies on it"
            fi
        fi
    elif [ -f "$SOURCE_TREE/edge/models/model.json" ]; then
        MODEL=$SOURCE_TREE/edge/models
    else
        die "no model to install: pass --model DIR (a folder with model.json and its .tflite, \
as written by python -m converters.tflite)"
    fi
fi
if [ -n "$MODEL" ]; then
    [ -d "$MODEL" ] || die "--model $MODEL is not a folder (give the folder holding model.json)"
    [ -f "$MODEL/model.json" ] || die "$MODEL has no model.json: every model needs the manifest \
written by python -m converters.tflite"
    fields=$(model_fields "$MODEL/model.json" 2>&1) || die "$fields: re-export the model \
with python -m converters.tflite"
    { read -r M_NAME; read -r M_VERSION; read -r M_FILE; read -r M_SHA; read -r M_STATS; } \
        <<<"$fields"
    M_FILES=(model.json "$M_FILE")
    [ "$M_STATS" = "-" ] || M_FILES+=("$M_STATS")
    for v in "$M_NAME" "$M_VERSION" "${M_FILES[@]}"; do
        [[ $v =~ ^[A-Za-z0-9][A-Za-z0-9._+-]*$ ]] || die "$MODEL/model.json: '$v' is not a \
safe file name (letters, digits, . _ + - only)"
    done
    for f in "${M_FILES[@]}"; do
        [ -f "$MODEL/$f" ] || die "$MODEL/$f (named by model.json) does not exist"
    done
    actual=$(sha256sum "$MODEL/$M_FILE" | cut -d' ' -f1)
    [ "$actual" = "$M_SHA" ] || die "$MODEL/$M_FILE has sha256 ${actual:0:12}..., its \
model.json expects ${M_SHA:0:12}...: the copy is corrupt or the files do not belong together"
fi

# --- user and group ------------------------------------------------------------------------

ROOT_OWN=root:root SVC_OWN=$SVC_USER:$SVC_USER CFG_OWN=root:$SVC_USER
if [ "$MANAGE_USER" = 1 ]; then
    if ! getent group "$SVC_USER" >/dev/null; then
        groupadd --system "$SVC_USER"
        say "created group $SVC_USER"
    fi
    if ! getent passwd "$SVC_USER" >/dev/null; then
        nologin=$(command -v nologin || echo /usr/sbin/nologin)
        useradd --system --gid "$SVC_USER" --no-create-home --home-dir "$DATA" \
            --shell "$nologin" --comment "NeuroEdge edge agent" "$SVC_USER"
        say "created system user $SVC_USER"
    fi
fi

# --- folders -------------------------------------------------------------------------------

make_dir "$PREFIX" 0755 "$ROOT_OWN"
make_dir "$MODELS" 0755 "$ROOT_OWN"
make_dir /etc/neuroedge 0750 "$CFG_OWN"
make_dir /etc/systemd/system 0755 "$ROOT_OWN"
make_dir "$DATA" 0750 "$SVC_OWN"
make_dir "$DATA/inbox" 2770 "$SVC_OWN"
make_dir "$DATA/outbox" 0750 "$SVC_OWN"
make_dir "$DATA/outbox/.state" 0700 "$SVC_OWN"
# Leftovers of a run cut off between two steps (a power cut): a link made and not yet
# renamed into place, a venv folder of an older install moved aside and not yet removed.
# Nothing uses them.
rm -rf "$D$PREFIX"/.venv-old.* "$D$PREFIX"/.venv.tmp.* "$D$MODELS"/.current.tmp.*

# --- virtual environment -----------------------------------------------------------------------

# Every install builds a new venv under venvs/ and points the link venv at it only once it
# runs (and, below, passed `edge-agent check`), as models/current is switched. pip used to
# upgrade the venv the running agent imports from: an input read mid-upgrade could fail on
# a half-written package and be quarantined as undecodable. The venv before stays for a
# rollback; an unchanged program (the same packages and code) keeps the venv it has.
VENVS=$PREFIX/venvs
NEW_VENV="" VENV_WAS=""
[ ! -L "$D$PREFIX/venv" ] || VENV_WAS=$(readlink "$D$PREFIX/venv")
if [ "$MAKE_VENV" = 1 ]; then
    make_dir "$VENVS" 0755 "$ROOT_OWN"
    NEW_VENV=$VENVS/$(date +%Y%m%d-%H%M%S)-$$
    VENV=$D$NEW_VENV
    PENDING_VENV=$VENV
    say "creating the virtual environment $NEW_VENV ($PYTHON)"
    "$PYTHON" -m venv "$VENV" || die "$PYTHON -m venv failed: install the venv module \
(Debian/Raspberry Pi OS: apt install python3-venv; Jetson Nano: apt install python3.8-venv)"
    pip_args=(--disable-pip-version-check --no-input)
    [ -z "$WHEELS" ] || pip_args+=(--no-index --find-links "$WHEELS")
    # Old pips (Ubuntu 18.04 ships pip 9) cannot read manylinux2014 wheels or pyproject.toml.
    "$VENV/bin/python" -m pip install -q "${pip_args[@]}" --upgrade "pip>=21" \
        || die "could not upgrade pip in $NEW_VENV${WHEELS:+ (does $WHEELS hold a pip wheel?)}"
    target=${WHEEL:-$SOURCE_TREE}
    say "installing neuroedge[$EXTRAS] from $target"
    "$VENV/bin/python" -m pip install -q "${pip_args[@]}" "${target}[$EXTRAS]" \
        || die "pip could not install neuroedge[$EXTRAS]${WHEELS:+ from $WHEELS} (see above); \
the agent still runs the program it had"
    version=$("$VENV/bin/edge-agent" --version) || die "$NEW_VENV/bin/edge-agent does not run; \
the agent still runs the program it had"
    if [ -x "$D$PREFIX/venv/bin/python" ] && was=$(venv_fingerprint "$D$PREFIX/venv/bin/python" \
            2>/dev/null) && [ "$was" = "$(venv_fingerprint "$VENV/bin/python")" ]; then
        rm -rf "$VENV"
        NEW_VENV="" VENV=$D$PREFIX/venv PENDING_VENV=""
        say "the program is unchanged (neuroedge ${version##* }): keeping $PREFIX/venv"
    else
        say "built neuroedge ${version##* } in $NEW_VENV"
    fi
    PY_JSON=$VENV/bin/python
fi
# The agent the checks below run: the new venv's, before the link names it.
AGENT=${NEW_VENV:-$PREFIX/venv}/bin/edge-agent

# --- model ---------------------------------------------------------------------------------

# The checks the service would fail on are run as the service user (below) wherever the
# agent is installed and the owners are managed, including with --no-venv over a kept venv.
CHECK=0 SWITCH_TO="" PREVIOUS=""
if [ -z "$DESTDIR" ] && [ "$MANAGE_USER" = 1 ] && [ -x "$AGENT" ]; then
    CHECK=1
fi

if [ -n "$MODEL" ]; then
    folder=$M_NAME-$M_VERSION
    dest=$D$MODELS/$folder
    if [ -d "$dest" ]; then
        for f in "${M_FILES[@]}"; do
            cmp -s "$MODEL/$f" "$dest/$f" || die "$MODELS/$folder already exists with a \
different $f: a published model version never changes; give the new model a new version"
        done
    else
        stage=$D$MODELS/.$folder.tmp.$$
        mkdir -p "$stage"
        for f in "${M_FILES[@]}"; do
            cp "$MODEL/$f" "$stage/"
            chmod 0644 "$stage/$f"
        done
        chmod 0755 "$stage"
        mv "$stage" "$dest"
        say "installed model $folder"
    fi
    set_owner "$dest" "$ROOT_OWN"
    for f in "${M_FILES[@]}"; do set_owner "$dest/$f" "$ROOT_OWN"; done
    PREVIOUS=$(readlink "$D$MODELS/current" 2>/dev/null || true)
    if [ "$PREVIOUS" != "$folder" ]; then
        SWITCH_TO=$folder
        # Where the service user can run the agent, current is switched only once
        # `edge-agent check` passed with the new model (below): a model the runtime cannot
        # load would otherwise wait in current for the next restart or reboot, and the
        # service would then stay failed (exit 69 or 78 are not restarted).
        [ "$CHECK" = 1 ] || switch_model "$folder"
    fi
fi

# --- configuration -------------------------------------------------------------------------

put_file "$EXAMPLE_CONFIG" /etc/neuroedge/config.example.toml 0644 "$ROOT_OWN"
if [ ! -e "$D/etc/neuroedge/config.toml" ]; then
    # The agent's own example with the [paths] filled in: every key stays documented.
    "$PY_JSON" - "$EXAMPLE_CONFIG" "$TMP/config.toml" "$DATA/inbox" "$DATA/outbox" \
        "$MODELS/current" <<'EOF'
import re, sys
src, dest, inbox, outbox, model = sys.argv[1:]
text = open(src, encoding="utf-8").read()
head, sep, rest = text.partition("[paths]")
section, nxt, tail = rest.partition("\n[")
for key, value in (("inbox", inbox), ("outbox", outbox), ("model", model)):
    section, n = re.subn(r'(?m)^%s = ".*"$' % key, '%s = "%s"' % (key, value), section)
    if n != 1:
        sys.exit("config.example.toml: no '%s = \"\"' line in [paths]" % key)
header = "# Written by deploy/install.sh; it never overwrites this file. Every key is\n" \
         "# documented in config.example.toml beside it.\n"
open(dest, "w", encoding="utf-8").write(header + head + sep + section + nxt + tail)
EOF
    put_file "$TMP/config.toml" /etc/neuroedge/config.toml 0640 "$CFG_OWN"
else
    set_owner "$D/etc/neuroedge/config.toml" "$CFG_OWN"
    say "kept the existing /etc/neuroedge/config.toml"
fi

# --- systemd unit ------------------------------------------------------------------------------

sed -e "s#/opt/neuroedge#$PREFIX#g" -e "s#/var/lib/neuroedge#$DATA#g" \
    -e "s#^User=neuroedge\$#User=$SVC_USER#" -e "s#^Group=neuroedge\$#Group=$SVC_USER#" \
    "$HERE/systemd/edge-agent.service" >"$TMP/edge-agent.service"
put_file "$TMP/edge-agent.service" /etc/systemd/system/edge-agent.service 0644 "$ROOT_OWN"

# The DICOM network drop-in: written with --dicom/--dicom-port, removed with --no-dicom,
# left as it is otherwise (an upgrade keeps the receiver it had).
DROPIN_DIR=/etc/systemd/system/edge-agent.service.d
if [ "$DICOM_PORT" = none ]; then
    if [ -e "$D$DROPIN_DIR/dicom.conf" ]; then
        rm -f "$D$DROPIN_DIR/dicom.conf"
        rmdir "$D$DROPIN_DIR" 2>/dev/null || true
        say "removed $DROPIN_DIR/dicom.conf: no DICOM receiver, no network"
    fi
elif [ -n "$DICOM_PORT" ]; then
    [ -f "$HERE/systemd/edge-agent-dicom.conf" ] || die "$HERE/systemd/edge-agent-dicom.conf \
is missing"
    make_dir "$DROPIN_DIR" 0755 "$ROOT_OWN"
    sed -e "s#/opt/neuroedge#$PREFIX#g" -e "s#@PORT@#$DICOM_PORT#g" \
        -e "s#@ALLOW@#$DICOM_ALLOW#g" "$HERE/systemd/edge-agent-dicom.conf" >"$TMP/dicom.conf"
    if [ "$DICOM_PORT" -lt 1024 ]; then
        printf '%s\n' "" \
            "# Port $DICOM_PORT is below 1024: binding it needs this one capability, nothing else." \
            "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" \
            "AmbientCapabilities=CAP_NET_BIND_SERVICE" >>"$TMP/dicom.conf"
    fi
    put_file "$TMP/dicom.conf" "$DROPIN_DIR/dicom.conf" 0644 "$ROOT_OWN"
fi

# The scheduled offload: offload.env written with --offload-to, everything removed with
# --no-offload, left as it is otherwise (an upgrade keeps the schedule it had). The units
# and the script are written again from offload.env on every run (a new program's script).
OFFLOAD_ENV=/etc/neuroedge/offload.env
OFFLOAD_UNIT=/etc/systemd/system/edge-agent-offload
if [ "$OFFLOAD_TO" = none ]; then
    if [ -e "$D$OFFLOAD_ENV" ] || [ -e "$D$OFFLOAD_UNIT.timer" ]; then
        if [ -z "$DESTDIR" ] && [ "$SYSTEMCTL" = 1 ] && command -v systemctl >/dev/null \
                && [ -d /run/systemd/system ]; then
            systemctl disable --now edge-agent-offload.timer >/dev/null 2>&1 || true
        fi
        rm -f "$D$OFFLOAD_ENV" "$D$OFFLOAD_UNIT.service" "$D$OFFLOAD_UNIT.timer" \
            "$D$PREFIX/bin/neuroedge-offload"
        rmdir "$D$PREFIX/bin" 2>/dev/null || true
        say "removed the scheduled offload (edge-agent-offload.timer)"
    fi
elif [ -n "$OFFLOAD_TO" ]; then
    {
        echo "# Written by deploy/install.sh --offload-to: what edge-agent-offload.service does"
        echo "# (install.sh --offload-to DIR [--offload-keep-days N] [--offload-when WHEN]"
        echo "# [--offload-max-minutes M] to change it, --no-offload to remove it;"
        echo "# docs/agent.md#edge-agent-offload)."
        echo "OFFLOAD_TO=\"$OFFLOAD_TO\""
        echo "KEEP_DAYS=\"$OFFLOAD_KEEP\""
        echo "OFFLOAD_WHEN=\"$OFFLOAD_WHEN\""
        echo "MAX_MINUTES=\"$OFFLOAD_MAX\""
        echo "OUTBOX=\"$DATA/outbox\""
        echo "SVC_USER=\"$SVC_USER\""
        echo "AGENT=\"$PREFIX/venv/bin/edge-agent\""
        echo "CONFIG=\"/etc/neuroedge/config.toml\""
    } >"$TMP/offload.env"
    put_file "$TMP/offload.env" "$OFFLOAD_ENV" 0644 "$ROOT_OWN"
    [ -d "$OFFLOAD_TO" ] || say "note: $OFFLOAD_TO does not exist (yet): mount the disk there \
and give the user $SVC_USER a folder it may write, or the scheduled offload moves nothing"
fi
if [ -e "$D$OFFLOAD_ENV" ] && [ "$OFFLOAD_TO" != none ]; then
    # shellcheck disable=SC1090 # our own file, its values checked when it was written
    WHEN=$(. "$D$OFFLOAD_ENV" && printf '%s' "$OFFLOAD_WHEN")
    make_dir "$PREFIX/bin" 0755 "$ROOT_OWN"
    put_file "$HERE/neuroedge-offload" "$PREFIX/bin/neuroedge-offload" 0755 "$ROOT_OWN"
    sed -e "s#/opt/neuroedge#$PREFIX#g" "$HERE/systemd/edge-agent-offload.service" \
        >"$TMP/offload.service"
    put_file "$TMP/offload.service" "$OFFLOAD_UNIT.service" 0644 "$ROOT_OWN"
    sed -e "s#@WHEN@#$WHEN#g" "$HERE/systemd/edge-agent-offload.timer" >"$TMP/offload.timer"
    put_file "$TMP/offload.timer" "$OFFLOAD_UNIT.timer" 0644 "$ROOT_OWN"
fi

# What was written above reaches the disk before the script says it is done or restarts
# the service: a power cut must not leave an empty config.toml or unit file behind.
sync
[ "$CHECK" = 1 ] || use_new_venv
if [ -n "$DESTDIR" ]; then
    say "staged into $DESTDIR (no user, owners or systemctl in a staging tree)"
    exit 0
fi
if [ "$CHECK" = 1 ]; then
    # The checks the service would fail on, run now as the service user: config, model
    # sha256, runtime, folder permissions; with a new model, that model; with a new
    # program, that program (the venv the link does not name yet).
    # setpriv, not su/runuser: no PAM session, works in a chroot too. Numeric IDs: older
    # util-linux (Ubuntu 18.04's 2.31) takes no names.
    check_args=(--config /etc/neuroedge/config.toml check)
    [ -z "$SWITCH_TO" ] || check_args+=(--model "$MODELS/$SWITCH_TO")
    if ! setpriv --reuid="$(id -u "$SVC_USER")" --regid="$(id -g "$SVC_USER")" --init-groups -- \
            "$AGENT" "${check_args[@]}"; then
        [ -z "$NEW_VENV" ] || say "the new program $NEW_VENV is removed again: $PREFIX/venv \
still names ${VENV_WAS:-the program it had}"
        [ -z "$SWITCH_TO" ] || die "edge-agent check failed (above) with the model $SWITCH_TO: \
$MODELS/current still names ${PREVIOUS:-no model}, so a restart or reboot keeps running that; \
the service was not restarted. Fix the model (or give it a new version), then run install.sh again"
        die "edge-agent check failed (above): fix /etc/neuroedge/config.toml or the model, \
then run install.sh again; the service was not (re)started"
    fi
    [ -z "$SWITCH_TO" ] || switch_model "$SWITCH_TO"
    use_new_venv
fi
if [ "$SYSTEMCTL" = 0 ]; then
    units=edge-agent
    [ ! -e "$OFFLOAD_ENV" ] || units="$units edge-agent-offload.timer"
    say "installed; --no-systemctl: enable it with: systemctl enable --now $units"
    exit 0
fi
if ! command -v systemctl >/dev/null || [ ! -d /run/systemd/system ]; then
    say "systemd is not running here: the unit is installed but not enabled"
    exit 0
fi
systemctl daemon-reload
systemctl enable edge-agent.service >/dev/null 2>&1 || die "systemctl enable edge-agent failed"
if [ -e "$OFFLOAD_ENV" ]; then
    systemctl enable --now edge-agent-offload.timer >/dev/null 2>&1 \
        || die "systemctl enable --now edge-agent-offload.timer failed"
    # shellcheck disable=SC1090 # our own file, its values checked when it was written
    schedule=$(. "$OFFLOAD_ENV" && printf '%s (%s days stay), %s' "$OFFLOAD_TO" "$KEEP_DAYS" \
        "$OFFLOAD_WHEN")
    say "old days move to $schedule: systemctl list-timers edge-agent-offload.timer"
fi
if [ "$START" = 1 ]; then
    if ! systemctl restart edge-agent.service; then
        # A model or program that passed the check but fails in the service (its sandbox):
        # go back to what ran, rather than leave the clinic without a service.
        back=""
        if [ -n "$SWITCH_TO" ] && [ -n "$PREVIOUS" ] && [ -d "$MODELS/$PREVIOUS" ]; then
            switch_model "$PREVIOUS"
            back="the model $PREVIOUS"
        fi
        if [ -n "$NEW_VENV" ] && [ -n "$VENV_WAS" ] && [ -d "$PREFIX/$VENV_WAS" ]; then
            switch_venv "$VENV_WAS"
            back="${back:+$back and }the program $PREFIX/$VENV_WAS"
        fi
        if [ -n "$back" ]; then
            systemctl restart edge-agent.service && die "the service did not start with \
the new ${SWITCH_TO:+model $SWITCH_TO}${SWITCH_TO:+${NEW_VENV:+ and }}${NEW_VENV:+program \
$NEW_VENV} (journalctl -u edge-agent -n 50): switched back to $back, which runs again"
        fi
        die "the service did not start: see journalctl -u edge-agent -n 50"
    fi
    say "edge-agent is running: systemctl status edge-agent; journalctl -u edge-agent -f"
elif [ "$STOPPED_FOR_VENV" = 1 ]; then
    systemctl start edge-agent.service || die "the service did not start again after its \
program was replaced: see journalctl -u edge-agent -n 50"
    say "edge-agent was stopped to replace its program and runs again (--no-start: not \
restarted otherwise)"
else
    say "edge-agent is enabled; start it with: systemctl start edge-agent"
fi
