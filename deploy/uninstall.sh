#!/usr/bin/env bash
# Remove the NeuroEdge service and its program; keep every piece of data.
#
#   sudo deploy/uninstall.sh [--prefix DIR] [--data DIR] [--destdir DIR] [--no-systemctl]
#
# Removed: the systemd unit (stopped and disabled first), the DICOM drop-in install.sh
# wrote (dicom.conf), the scheduled offload's timer, service and script (its settings,
# /etc/neuroedge/offload.env, stay with the configuration), and the virtual environments
# (PREFIX/venv and PREFIX/venvs).
# Kept, because they are records or configuration someone may need: the inbox and outbox
# (reports, archive, quarantine, the daily index, the journal), the installed models
# (reports name the model's sha256), /etc/neuroedge, the site's own drop-ins (systemctl
# edit: a share's ReadWritePaths=, RequiresMountsFor=, limits), which a reinstall picks up
# again, and the neuroedge user and group (they own the kept files). The script prints how
# to remove them by hand.
set -euo pipefail

die() { printf 'uninstall.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'uninstall.sh: %s\n' "$*"; }

PREFIX=/opt/neuroedge DATA=/var/lib/neuroedge DESTDIR=${DESTDIR:-} SYSTEMCTL=1
while [ $# -gt 0 ]; do
    case $1 in
        --prefix|--data|--destdir)
            if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi
            case $1 in --prefix) PREFIX=$2 ;; --data) DATA=$2 ;; --destdir) DESTDIR=$2 ;; esac
            shift 2 ;;
        --no-systemctl) SYSTEMCTL=0; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
case $PREFIX in /*) ;; *) die "--prefix must be an absolute path" ;; esac
PREFIX=${PREFIX%/}
if [ -n "$DESTDIR" ]; then
    [ -d "$DESTDIR" ] || die "--destdir $DESTDIR does not exist"
    DESTDIR=$(cd "$DESTDIR" && pwd)
    SYSTEMCTL=0
elif [ "$(id -u)" != 0 ]; then
    die "run as root (sudo), or name a staging tree with --destdir DIR"
fi
D=$DESTDIR
UNIT=/etc/systemd/system/edge-agent.service

if [ "$SYSTEMCTL" = 1 ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    # Stopping lets the agent finish the file in hand (SIGTERM); nothing is lost either way.
    systemctl disable --now edge-agent.service 2>/dev/null || true
    systemctl disable --now edge-agent-offload.timer 2>/dev/null || true
fi
for unit in edge-agent-offload.timer edge-agent-offload.service; do
    if [ -e "$D/etc/systemd/system/$unit" ]; then
        rm -f "$D/etc/systemd/system/$unit"
        say "removed /etc/systemd/system/$unit"
    fi
done
if [ -e "$D$PREFIX/bin/neuroedge-offload" ]; then
    rm -f "$D$PREFIX/bin/neuroedge-offload"
    rmdir "$D$PREFIX/bin" 2>/dev/null || true
    say "removed $PREFIX/bin/neuroedge-offload"
fi
if [ -e "$D$UNIT" ]; then
    rm -f "$D$UNIT"
    say "removed $UNIT"
fi
if [ -e "$D$UNIT.d/dicom.conf" ]; then
    rm -f "$D$UNIT.d/dicom.conf"
    say "removed $UNIT.d/dicom.conf"
fi
rmdir "$D$UNIT.d" 2>/dev/null || true
# Only install.sh's own files go: a drop-in the site wrote is its configuration.
KEPT_DROPINS=""
if [ -d "$D$UNIT.d" ]; then
    KEPT_DROPINS=$UNIT.d
    say "kept the site's own drop-ins in $UNIT.d ($(ls -A "$D$UNIT.d" | paste -sd' ')): \
a reinstall uses them again"
fi
if [ "$SYSTEMCTL" = 1 ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl reset-failed edge-agent.service 2>/dev/null || true
fi
# The program: the link venv and the venvs it named (older installs: venv was a folder).
if [ -e "$D$PREFIX/venv" ] || [ -L "$D$PREFIX/venv" ] || [ -d "$D$PREFIX/venvs" ]; then
    rm -rf "$D$PREFIX/venv" "$D$PREFIX/venvs"
    say "removed the program ($PREFIX/venv, $PREFIX/venvs)"
fi

say "kept the data: $DATA (inbox, outbox: reports, archive, quarantine)"
say "kept the models in $PREFIX/models and the configuration in /etc/neuroedge"
say "to delete them too, after saving what you need: rm -r $DATA $PREFIX /etc/neuroedge\
${KEPT_DROPINS:+ $KEPT_DROPINS}; userdel neuroedge"
