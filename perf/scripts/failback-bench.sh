#!/usr/bin/env bash
# Failback speed (docs/BENCHMARKS.md, "Failback"): a 1 GiB disk (768 MiB of ferry-perf's mixed
# data, then zeros) replicated by ferry-agent into a vault on a local-directory target, failed
# over to a raw file and committed (after a retention run, as a running appliance consolidates:
# the vault holds a base). Then, for each case THERE:HERE (by default 1:0, a planned failover
# with the original left alone; 1:0.33 and 10:3.33), on a fresh appliance: THERE% of the
# failed-over copy's 64 KiB blocks and HERE% of the original's changed independently, and in
# one sitting
#   1. the reprotect: ferry-agent on the failed-over copy with reprotect_from, its first pass,
#   2. `ferryctl failback --latest --onto` the original (only the blocks that differ),
#   3. the full-copy peers on the same bytes: `ferryctl restore` of the reprotected disk's point
#      (what a failback without digests writes: every block), and `dd` of the failed-over copy
#      onto the original with fsync (a plain full copy),
# each timed (wall and CPU seconds), with the bytes each read and wrote. Also checks that the
# original equals the failed-over copy after failback (cmp).
#
#   perf/scripts/failback-bench.sh              # CASES="1:0 1:0.33 10:3.33"
#
# Needs `cargo build --release --bins`. ~8 GB of $TMPDIR, removed at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/target/release
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$@"; }

# time_it NAME COMMAND...: wall and CPU seconds (user + system of the command and its children).
time_it() {
  local name=$1; shift
  /usr/bin/time -f "%e %U %S" -o "$work/time" "$@" >"$work/out.json" 2>"$work/err" || { cat "$work/err"; exit 1; }
  read -r wall user system < "$work/time"
  cpu=$(python3 -c "print(f'{$user + $system:.2f}')")
  printf '  %-44s %6.2f s  CPU %5s s' "$name" "$wall" "$cpu"
}

# change FILE SIZE PERCENT SEED: overwrites PERCENT% of the file's 64 KiB blocks with noise.
change() {
  python3 - "$@" <<'PY'
import os, random, sys
path, size, percent, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
blocks = size // 65536
rng = random.Random(seed)
chosen = rng.sample(range(blocks), int(blocks * percent / 100))
with open(path, "r+b") as f:
    for b in chosen:
        f.seek(b * 65536)
        f.write(rng.randbytes(65536))
    f.flush(); os.fsync(f.fileno())
PY
}

size=$((1 << 30))
"$bin/ferry-perf" dataset --out "$work/dataset" --mib 768 --data mixed >/dev/null
cat "$work"/dataset/* > "$work/disk.img"
rm -rf "$work/dataset"
truncate -s 1G "$work/disk.img"

cp "$work/disk.img" "$work/pristine.img"
echo "disk 1 GiB (768 MiB mixed data, 256 MiB zeros), local-directory target; $(nproc) cores"
for case in ${CASES:-1:0 1:0.33 10:3.33}; do
  rate=${case%%:*} here=${case##*:}
  # A fresh appliance, replication and committed failover for each rate (a disk fails back once).
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true
  pids=()
  rm -rf "$work/app" "$work/forward" "$work/reverse" "$work/fo"
  cp "$work/pristine.img" "$work/disk.img"
  data=$(port); management=$(port); metrics=$(port)
  app=$work/app
  "$bin/ferryctl" init "$app" --data-listen 127.0.0.1:$data --management-listen 127.0.0.1:$management \
    --metrics-listen 127.0.0.1:$metrics --server-name 127.0.0.1 >/dev/null
  "$bin/ferryd" --config "$app" 2>"$work/ferryd.log" &
  pids+=($!)
  sleep 2

  "$bin/ferry-agent" register --server 127.0.0.1:$management --passphrase-file "$app/passphrase" \
    --state-dir "$work/forward" --name onprem >/dev/null
  printf 'state_dir = "%s"\n[[disks]]\npath = "%s"\n' "$work/forward" "$work/disk.img" > "$work/forward.toml"
  "$bin/ferry-agent" --json run --config "$work/forward.toml" --once > "$work/pass.json"
  disk=$(json "$work/pass.json" 'd[0]["disk_id"]')
  until [[ "$("$bin/ferryctl" --json points --config "$app" --disk "$disk" 2>/dev/null)" == *bookmark_id* ]]; do sleep 1; done
  "$bin/ferryctl" --json retention run --config "$app" >/dev/null
  "$bin/ferryctl" --json failover --config "$app" --disk "$disk" --latest --to-dir "$work/fo" --format raw > "$work/failover.json"
  failover=$(json "$work/failover.json" 'd["failover_id"]')
  "$bin/ferryctl" --json failover commit "$failover" --config "$app" >/dev/null
  mv "$work/fo/$failover/$disk.raw" "$work/there.raw"
  rm -rf "$work/fo"
  change "$work/there.raw" $size "$rate" 17
  change "$work/disk.img" $size "$here" 29
  echo "changes: $rate% of the failed-over copy's blocks, $here% of the original's"

  "$bin/ferry-agent" register --server 127.0.0.1:$management --passphrase-file "$app/passphrase" \
    --state-dir "$work/reverse" --name "azure-$rate" >/dev/null
  printf 'state_dir = "%s"\n[[disks]]\npath = "%s"\nreprotect_from = "%s"\n' \
    "$work/reverse" "$work/there.raw" "$failover" > "$work/reverse.toml"
  time_it "reprotect: first pass (ferry-agent)" "$bin/ferry-agent" --json run --config "$work/reverse.toml" --once
  cp "$work/out.json" "$work/reverse.json"
  echo "   sent $(json "$work/reverse.json" 'd[0]["sent_bytes"] // 1000000') MB ($(json "$work/reverse.json" 'd[0]["changed_blocks"]') blocks; a full copy sends the whole disk)"
  reverse_disk=$(json "$work/reverse.json" 'd[0]["disk_id"]')
  bookmark=$(json "$work/reverse.json" 'd[0]["bookmark_id"]')
  until [[ "$("$bin/ferryctl" --json points --config "$app" --disk "$reverse_disk" 2>/dev/null)" == *"$bookmark"* ]]; do sleep 1; done

  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  time_it "ferryctl failback (only what differs)" "$bin/ferryctl" --json failback --config "$app" --failover "$failover" \
    --disk "$disk" --latest --onto "$work/disk.img" --agent-state "$work/forward" --scratch-dir "$work"
  echo "   read $(json "$work/out.json" 'd["read_bytes"] // 1000000') MB, written $(json "$work/out.json" 'd["written_bytes"] // 1000000') MB ($(json "$work/out.json" 'd["changed_here_blocks"]') blocks changed here, $(json "$work/out.json" 'd["changed_there_blocks"]') there, $(json "$work/out.json" 'd["from_failover_point_blocks"]') of them from the failover point)"
  cmp "$work/disk.img" "$work/there.raw" || { echo "the original differs from the failed-over copy after failback"; exit 1; }

  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  rm -f "$work/full.raw"
  time_it "full copy: ferryctl restore of the point" "$bin/ferryctl" restore --config "$app" --disk "$reverse_disk" \
    --latest --out "$work/full.raw"
  echo "   wrote the whole disk ($((size / 1000000)) MB of disk, from the vault)"
  sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
  time_it "full copy: dd the failed-over copy (fsync)" dd if="$work/there.raw" of="$work/disk.img" bs=4M conv=notrunc,fsync status=none
  echo "   read and wrote $((size / 1000000)) MB"
  "$bin/ferry-agent" --json run --config "$work/forward.toml" --once > "$work/forward-pass.json" 2>/dev/null
  echo "  forward replication after failback: phase $(json "$work/forward-pass.json" 'd[0]["phase"]'), sent $(json "$work/forward-pass.json" 'd[0]["sent_bytes"] // 1000000') MB"
  rm -f "$work/full.raw"
done
