#!/usr/bin/env bash
# Consolidation under steady load (docs/BENCHMARKS.md, "Retention"): how much ingest and
# uploads lose while ferryd consolidates, and how fast consolidation goes meanwhile.
#
#   perf/scripts/consolidation-under-load.sh NICE [LIMITS_JSON]
#
# Starts a release ferryd (loopback ports, local-directory target under $TMPDIR) with
# retention.nice = NICE and a policy that drops everything older than a minute; ferry-perf's
# steady scenario (64 disks) fills the vault; 70 s later the same scenario runs again with
# `ferryctl retention run` (through ferryd) started 3 s into it. Prints both runs' ingest,
# upload and CPU lines, and what consolidation did while load 2 ran: disks done and the CPU
# seconds of ferryd's consolidation threads (`ferry-retention`); then stops (a full run over
# 128 disks of 64 GiB takes many minutes). Needs `cargo build --release --bins` first; ~8 GB
# of $TMPDIR, removed at the end.
set -euo pipefail
nice_value=${1:?usage: $0 NICE [LIMITS_JSON]}
bin=$(cd "$(dirname "$0")/../.." && pwd)/target/release
work=$(mktemp -d)
trap 'kill $ferryd 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
limits=${2:-$work/limits.json}
[ -f "$limits" ] || "$bin/ferry-perf" limits --out "$limits" >/dev/null
scenario=$(cd "$(dirname "$0")/.." && pwd)/scenarios/steady.toml
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
data=$(port); management=$(port); metrics=$(port)
app=$work/app
"$bin/ferryctl" init "$app" --data-listen 127.0.0.1:$data --management-listen 127.0.0.1:$management \
  --metrics-listen 127.0.0.1:$metrics --server-name 127.0.0.1 >/dev/null
sed -i '/^\[retention\]/,/^\[storage_retry\]/{s/^window = .*/window = "1m"/; s/^keep_all = .*/keep_all = "0"/;
        s/^crash_every = .*/crash_every = "0"/; s/^run_every = .*/run_every = "0"/; s/^nice = .*/nice = '"$nice_value"'/}' \
  "$app/ferry.toml"
sed -n '/^\[retention\]/,/^\[storage_retry\]/p' "$app/ferry.toml" | grep -E '^(window|keep_all|crash_every|run_every|parallel|nice) '
"$bin/ferryd" --config "$app" 2>"$work/ferryd.log" &
ferryd=$!
sleep 2
kill -0 $ferryd 2>/dev/null || { tail -5 "$work/ferryd.log"; exit 1; }
load() {
  "$bin/ferry-perf" run --management 127.0.0.1:$management --data-endpoint 127.0.0.1:$data \
    --passphrase-file "$app/passphrase" --ferryd-pid $ferryd --scenario "$scenario" --limits "$limits" \
    --out-dir "$work/reports" 2>&1 | grep -v '^\[' | grep -E "ingest  |upload  |CPU|ceiling" || true
}
progress() {
  "$bin/ferryctl" --json status --config "$app" | python3 -c 'import json, sys
r = json.load(sys.stdin)["retention"]
if not r["running"]:
    print("not running")
elif r["run_disks_total"] == 0:
    print("running, no disk finished yet")
else:
    print(r["run_disks_done"], "of", r["run_disks_total"], "disks done")'
}
echo "== load 1: fills the vault, no consolidation"
load
echo "== waiting 70 s for the points to leave the 1-minute window"
sleep 70
# CPU seconds so far of ferryd's consolidation threads (named ferry-retention).
retention_cpu() {
  ps -L -o comm=,times= -p "$ferryd" | awk '$1 ~ /^ferry-retention/ { s += $2 } END { print s + 0 }'
}
echo "== load 2, with ferryctl retention run from 3 s in"
cpu_before=$(retention_cpu)
started=$(date +%s.%N)
( sleep 3; "$bin/ferryctl" --json retention run --config "$app" >"$work/retention.json" 2>"$work/retention.err";
  date +%s.%N >"$work/retention.done" ) &
load
load_ended=$(date +%s.%N)
cpu_after=$(retention_cpu)
echo "consolidation when load 2 ended: $(progress)"
python3 -c "import sys; cpu, wall = float(sys.argv[2]) - float(sys.argv[1]), float(sys.argv[4]) - float(sys.argv[3])
print(f'consolidation threads during load 2: {cpu:.1f} CPU-s in {wall:.0f} s ({cpu / wall * 100:.0f}% of one core)')" \
  "$cpu_before" "$cpu_after" "$started" "$load_ended"
