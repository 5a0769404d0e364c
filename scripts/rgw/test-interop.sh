#!/bin/bash
# `npm run test:interop`: the interop suite (test/interop/) against a Ceph RADOS Gateway.
# Starts RGW when none answers (installing it first when needed), runs the suite, and stops RGW
# again only if this script started it. Exits with the suite's status. With ROBOFLOW_RGW_ENDPOINT
# set, runs the suite against that endpoint and starts nothing. Arguments go to vitest.
set -euo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
if [ -n "${ROBOFLOW_RGW_ENDPOINT:-}" ]; then
  # An RGW the caller runs (with the test user of start.sh): use it, start and stop nothing.
  exec npx vitest run --config vitest.interop.config.ts "$@"
fi
out=$(scripts/rgw/start.sh)
endpoint=$(sed -n 's/^RGW_ENDPOINT=//p' <<<"$out")
started=$(sed -n 's/^RGW_STARTED=//p' <<<"$out")
[ -n "$endpoint" ] || { echo "[rgw] start.sh printed no endpoint" >&2; exit 1; }
if [ "$started" = 1 ]; then
  trap 'scripts/rgw/stop.sh' EXIT
  # Untrapped, these would end bash without its EXIT trap.
  trap 'exit 130' INT
  trap 'exit 143' TERM
fi
echo "[rgw] $endpoint ready after $(( $(date +%s) - T0 )) s ($([ "$started" = 1 ] && echo "started here, stopped at the end" || echo "already running, left running"))" >&2
ROBOFLOW_RGW_ENDPOINT=$endpoint npx vitest run --config vitest.interop.config.ts "$@"
