#!/usr/bin/env bash
# Failover speed (docs/BENCHMARKS.md, "Failover"): a 1 GiB disk, its first half mixed data
# (ferry-perf's generator, ratio ~2.4) and its second half zeros, replicated by ferry-agent into
# a vault on Azurite; then, in one sitting, the newest point written
#   1. by `ferryctl restore` (a raw image),
#   2. by `ferryctl failover --to-dir` (a local fixed VHD),
#   3. by `ferryctl failover --to-azure-container` (a fixed VHD page blob in Azurite),
#   4. by `qemu-img convert -O vpc -o subformat=fixed` of the restored raw image (the peer),
# each timed, as MB/s of disk (the disk's size over the wall time) and of stored data (the
# vault's bytes for the disk over the wall time), with CPU seconds.
#
#   perf/scripts/failover-bench.sh                 # PUT_PARALLEL="8 32 64" compares Put Page depths
#
# Needs `cargo build --release --bins`, qemu-img, and Azurite installed by scripts/test.sh
# (scripts/azurite/node_modules). ~4 GB of $TMPDIR, removed at the end.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/target/release
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

azurite_port=$(port)
"$root/scripts/azurite/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort "$azurite_port" \
  --location "$work/azurite" --skipApiVersionCheck --disableTelemetry --loose --silent &
pids+=($!)
endpoint=http://127.0.0.1:$azurite_port/devstoreaccount1
printf '%s' 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==' > "$work/azurite.key"
sleep 2

data=$(port); management=$(port); metrics=$(port)
app=$work/app
"$bin/ferryctl" init "$app" --data-listen 127.0.0.1:$data --management-listen 127.0.0.1:$management \
  --metrics-listen 127.0.0.1:$metrics --server-name 127.0.0.1 --azure-account devstoreaccount1 \
  --azure-container vault --azure-endpoint "$endpoint" --azure-key-file "$work/azurite.key" --create-container >/dev/null
"$bin/ferryd" --config "$app" 2>"$work/ferryd.log" &
ferryd=$!
pids+=($ferryd)
sleep 2

"$bin/ferry-perf" dataset --out "$work/dataset" --mib 512 --data mixed >/dev/null
cat "$work"/dataset/* > "$work/disk.img"
rm -rf "$work/dataset"
truncate -s 1G "$work/disk.img"
"$bin/ferry-agent" register --server 127.0.0.1:$management --passphrase-file "$app/passphrase" \
  --state-dir "$work/agent" --name bench >/dev/null
printf 'state_dir = "%s"\n[[disks]]\npath = "%s"\n' "$work/agent" "$work/disk.img" > "$work/agent.toml"
"$bin/ferry-agent" --json run --config "$work/agent.toml" --once > "$work/pass.json"
disk=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["disk_id"])' "$work/pass.json")
# Until the point is in storage.
until [[ "$("$bin/ferryctl" --json points --config "$app" --disk "$disk" 2>/dev/null)" == *bookmark_id* ]]; do sleep 1; done
kill $ferryd; wait $ferryd 2>/dev/null || true   # storage and the key alone from here on

# The vault's bytes for the disk (a dry run of retention reports them).
stored=$("$bin/ferryctl" --json retention run --config "$app" --dry-run --disk "$disk" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["stored_bytes_before"])')
size=$((1 << 30))

# time_it NAME COMMAND...: wall and CPU seconds (children's user + system) of one command.
time_it() {
  local name=$1; shift
  /usr/bin/time -f "%e %U %S" -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err"; exit 1; }
  read -r wall user system < "$work/time"
  python3 -c "import sys
name, wall, cpu, size, stored = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]) + float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
print(f'{name:<34} {wall:6.2f} s  {size / wall / 1e6:7.0f} MB/s of disk  {stored / wall / 1e6:6.0f} MB/s of stored data  CPU {cpu:5.2f} s')" \
    "$name" "$wall" "$user" "$system" "$size" "$stored"
}
echo "disk 1 GiB (512 MiB mixed data, 512 MiB zeros); stored in the vault: $((stored / 1000000)) MB"
time_it "ferryctl restore (raw)" "$bin/ferryctl" restore --config "$app" --disk "$disk" --latest --out "$work/restored.raw"
time_it "ferryctl failover --to-dir (VHD)" "$bin/ferryctl" failover --config "$app" --disk "$disk" --latest --to-dir "$work/out"
for puts in ${PUT_PARALLEL:-32}; do
  time_it "failover --to-azure-container, $puts puts" "$bin/ferryctl" failover --config "$app" --disk "$disk" --latest \
    --to-azure-container recovered --scratch-dir "$work" --put-parallel "$puts"
done
time_it "qemu-img convert -O vpc (fixed)" qemu-img convert -f raw -O vpc -o subformat=fixed "$work/restored.raw" "$work/peer.vhd"
