#!/bin/bash
# Starts a throwaway single-node Ceph Pacific (16.x) cluster with the RADOS Gateway (real S3) on
# 127.0.0.1:${RGW_PORT:-7480}, for the interop suite (test/interop/). Installs the packages first
# when they are missing (install.sh).
#   1 mon (no mgr), 1 BlueStore OSD on a sparse file, pools of size 1, cephx on, no dashboard.
#   BlueStore, not memstore: memstore keeps every object in RAM, and osd_memory_target does not
#   bound it.
#   Everything lives under $RGW_DIR (default /tmp/roboflow-rgw); the daemons write pid files to
#   $RGW_DIR/run, and stop.sh stops exactly those processes.
#   S3 user: roboflowtest / roboflowtestsecret123, any region (us-east-1), path-style requests
#   (no rgw_dns_name is set).
# Idempotent: when an S3 endpoint on that port already answers a request signed with these keys,
# it starts nothing. Otherwise it wipes $RGW_DIR and builds a fresh cluster (~10 s).
# On stdout, when an authenticated S3 request succeeds:
#   RGW_ENDPOINT=http://127.0.0.1:7480
#   RGW_STARTED=1    (0: it was already running, and whoever started it stops it)
# Env: RGW_DIR, RGW_PORT, RGW_DISK_GB (sparse OSD file, default 20), RGW_OSD_MEM (bytes, default
#      1 GiB), RGW_KEEP_ON_FAIL=1 (leave daemons and logs for a look after a failure).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
D=${RGW_DIR:-/tmp/roboflow-rgw}
CONF=$D/ceph.conf
PORT=${RGW_PORT:-7480}
AK=roboflowtest
SK=roboflowtestsecret123
DISK_GB=${RGW_DISK_GB:-20}
OSD_MEM=${RGW_OSD_MEM:-1073741824}
T0=$(date +%s)

log() { echo "[rgw +$(( $(date +%s) - T0 ))s] $*" >&2; }
# On failure: the tails of the logs, then stop what this script started (and wipe $D).
die() {
  log "ERROR: $*"
  for f in "$D"/log/*.log "$D"/log/*.out; do [ -s "$f" ] && { echo "--- $f" >&2; tail -n 15 "$f" >&2; }; done
  [ "${RGW_KEEP_ON_FAIL:-0}" = 1 ] || "$HERE/stop.sh"
  exit 1
}
# An authenticated (SigV4) ListBuckets: proves that rgw, the user and rados all work.
# curl 7.88 does not add x-amz-content-sha256 itself, and RGW refuses SigV4 without it.
s3_ok() {
  curl -sf -o /dev/null --max-time 5 --aws-sigv4 "aws:amz:us-east-1:s3" --user "$AK:$SK" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "http://127.0.0.1:$PORT/"
}
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
ceph_() { timeout 60 ceph -c "$CONF" "$@"; }
ready() { echo "RGW_ENDPOINT=http://127.0.0.1:$PORT"; echo "RGW_STARTED=$1"; }

# --- 0. already answering: nothing to start (ours from an earlier run, or someone else's)
if command -v curl >/dev/null && s3_ok; then
  log "an S3 endpoint with the test user already answers on 127.0.0.1:$PORT; starting nothing"
  ready 0; exit 0
fi

# --- 1. packages
"$HERE/install.sh"

# --- 2. clean slate (stops only our own daemons, by pid file) + port check
"$HERE/stop.sh"
for p in 3300 6789 "$PORT"; do
  if (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null; then
    log "ERROR: 127.0.0.1:$p is already in use by another process (not an RGW with the test user); free it or set RGW_PORT"
    exit 1
  fi
done
mkdir -p "$D"/run "$D"/log "$D"/crash "$D"/mon/ceph-a "$D"/osd/ceph-0 "$D"/rgw
FSID=$(cat /proc/sys/kernel/random/uuid)

# --- 3. config: everything points into $D; tiny pools; little memory
cat > "$CONF" <<CONF
[global]
fsid = $FSID
mon_host = [v2:127.0.0.1:3300,v1:127.0.0.1:6789]
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
auth_allow_insecure_global_id_reclaim = false
keyring = $D/keyring
run_dir = $D/run
pid_file = $D/run/\$name.pid
admin_socket = $D/run/\$name.asok
log_file = $D/log/\$name.log
crash_dir = $D/crash
ms_bind_ipv6 = false
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_num = 8
osd_pool_default_pgp_num = 8
osd_pool_default_pg_autoscale_mode = off
osd_crush_chooseleaf_type = 0
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
rgw_rados_pool_pg_num_min = 8

[mon]
mon_data = $D/mon/ceph-\$id
mon_cluster_log_file = $D/log/cluster.log
mon_data_avail_warn = 2
mon_data_avail_crit = 1
# commit map changes faster (default 1 s): rgw creates ~5 pools on its first start
paxos_propose_interval = 0.1

[osd]
osd_data = $D/osd/ceph-\$id
keyring = $D/osd/ceph-\$id/keyring
public_addr = 127.0.0.1
cluster_addr = 127.0.0.1
osd_objectstore = bluestore
bluestore_block_create = true
bluestore_block_size = $(( DISK_GB * 1024 * 1024 * 1024 ))
bluestore_block_db_create = false
bluestore_block_wal_create = false
osd_memory_target = $OSD_MEM

[client.rgw.a]
rgw_frontends = beast endpoint=127.0.0.1:$PORT
rgw_data = $D/rgw
rgw_thread_pool_size = 64
# reclaim the space of deleted or overwritten objects after 5 min instead of 2 h
rgw_gc_obj_min_wait = 300
rgw_gc_processor_period = 300
CONF

# --- 4. keys (mon., client.admin, client.rgw.a) + monmap + mon
log "creating the monitor (fsid $FSID)"
ceph-authtool --create-keyring "$D"/keyring --gen-key -n mon. --cap mon 'allow *' >/dev/null
ceph-authtool "$D"/keyring --gen-key -n client.admin \
  --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *' >/dev/null
ceph-authtool "$D"/keyring --gen-key -n client.rgw.a \
  --cap mon 'allow rw' --cap osd 'allow rwx' --cap mgr 'allow rw' >/dev/null
monmaptool --create --fsid "$FSID" --addv a '[v2:127.0.0.1:3300,v1:127.0.0.1:6789]' "$D"/monmap >/dev/null
ceph-mon -c "$CONF" -i a --mkfs --monmap "$D"/monmap --keyring "$D"/keyring >"$D"/log/mon-mkfs.out 2>&1 \
  || die "ceph-mon --mkfs failed"
ceph-mon -c "$CONF" -i a >"$D"/log/mon.out 2>&1 || die "ceph-mon failed to start"

# --- 5. one BlueStore OSD on a sparse file
log "creating the OSD (BlueStore on a ${DISK_GB} GiB sparse file)"
OSD_UUID=$(cat /proc/sys/kernel/random/uuid)
OSD_KEY=$(ceph-authtool --gen-print-key)
echo "{\"cephx_secret\": \"$OSD_KEY\"}" > "$D"/osd/new.json
OSD_ID=$(ceph_ osd new "$OSD_UUID" -i "$D"/osd/new.json) || die "ceph osd new failed"
rm -f "$D"/osd/new.json
[ "$OSD_ID" = 0 ] || die "unexpected osd id '$OSD_ID'"
ceph-osd -c "$CONF" -i 0 --mkfs --key "$OSD_KEY" --osd-uuid "$OSD_UUID" >"$D"/log/osd-mkfs.out 2>&1 \
  || die "ceph-osd --mkfs failed"
printf '[osd.0]\n\tkey = %s\n' "$OSD_KEY" > "$D"/osd/ceph-0/keyring
ceph-osd -c "$CONF" -i 0 >"$D"/log/osd.out 2>&1 || die "ceph-osd failed to start"
for i in $(seq 1 120); do
  ceph_ osd dump 2>/dev/null | grep -q '^osd.0 up' && break
  [ "$i" = 120 ] && die "osd.0 did not come up"
  sleep 1
done

# --- 6. radosgw (creates its .rgw.root / default.rgw.* pools on first start)
log "starting radosgw on 127.0.0.1:$PORT"
radosgw -c "$CONF" -n client.rgw.a >"$D"/log/rgw.out 2>&1 || die "radosgw failed to start"
for i in $(seq 1 180); do
  curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/" && break
  alive "$D"/run/client.rgw.a.pid || die "radosgw exited"
  [ "$i" = 180 ] && die "radosgw did not answer"
  sleep 1
done

# --- 7. S3 user with fixed keys
log "creating the S3 user $AK"
radosgw-admin -c "$CONF" user create --uid="$AK" --display-name="roboflow test" \
  --access-key="$AK" --secret-key="$SK" >"$D"/log/user-create.out 2>&1 || die "user create failed"

# --- 8. wait for an authenticated S3 request to succeed
for i in $(seq 1 60); do
  s3_ok && break
  [ "$i" = 60 ] && die "a signed S3 request never succeeded"
  sleep 1
done
log "ready (pids: mon $(cat "$D"/run/mon.a.pid), osd $(cat "$D"/run/osd.0.pid), rgw $(cat "$D"/run/client.rgw.a.pid))"
ready 1
