#!/bin/bash
# Stops the daemons start.sh launched -- only by the pid files under $RGW_DIR/run (default
# /tmp/roboflow-rgw), and only while that pid's command line still names our ceph.conf -- then
# removes $RGW_DIR. Idempotent: does nothing when nothing is there. Takes ~6-10 s (rgw is slow
# to shut down).
D=${RGW_DIR:-/tmp/roboflow-rgw}
[ -e "$D" ] || exit 0

# The pid in a pid file, if that process is alive and really one of ours.
ours() {
  local f=$1 pid
  [ -s "$f" ] || return 1
  pid=$(cat "$f")
  [[ $pid =~ ^[0-9]+$ ]] && [ -r "/proc/$pid/cmdline" ] || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" | grep -qF -- "$D/ceph.conf" || return 1
  echo "$pid"
}

# SIGTERM, wait up to 10 s, then SIGKILL.
stop_one() {
  local pid
  pid=$(ours "$1") || return 0
  kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  echo "[rgw] force-killing pid $pid ($1)" >&2
  kill -KILL "$pid" 2>/dev/null
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
}
# One at a time, rgw -> osd -> mon: rgw hangs in its shutdown when the mon or osd is gone first.
stop_one "$D"/run/client.rgw.a.pid
stop_one "$D"/run/osd.0.pid
stop_one "$D"/run/mon.a.pid

rm -rf "$D"
