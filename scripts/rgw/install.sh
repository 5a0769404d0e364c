#!/bin/bash
# Installs what scripts/rgw/start.sh needs: Debian's Ceph Pacific (16.x) monitor, OSD and
# RADOS Gateway, the ceph CLI and curl. No ceph-mgr: S3 does not need it.
# Idempotent: does nothing (and needs no network) when every binary is already there.
# Runs as root with no stdin (CI); prints apt's output only when it fails.
set -euo pipefail
T0=$(date +%s)
need=(ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool curl)
missing=()
for b in "${need[@]}"; do command -v "$b" >/dev/null || missing+=("$b"); done
[ ${#missing[@]} = 0 ] && exit 0

PKGS=(ceph-mon ceph-osd radosgw ceph-common curl)
LOG=$(mktemp /tmp/rgw-apt.XXXXXX.log)
echo "[rgw-install] missing: ${missing[*]}; apt-get install ${PKGS[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
sudo_=()
[ "$(id -u)" = 0 ] || sudo_=(sudo -n)
# The package lists of a fresh machine are empty or stale: update first.
if ! { "${sudo_[@]}" apt-get update -qq && "${sudo_[@]}" apt-get install -y -qq --no-install-recommends "${PKGS[@]}"; } \
    >"$LOG" 2>&1 </dev/null; then
  tail -n 30 "$LOG" >&2
  echo "[rgw-install] ERROR: apt-get failed (full log: $LOG)" >&2
  exit 1
fi
rm -f "$LOG"
for b in "${need[@]}"; do
  command -v "$b" >/dev/null || { echo "[rgw-install] ERROR: $b still missing after apt-get" >&2; exit 1; }
done
echo "[rgw-install] installed in $(( $(date +%s) - T0 )) s" >&2
