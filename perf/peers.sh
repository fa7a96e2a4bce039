#!/usr/bin/env bash
# Peers measured beside Ferry on this machine, on the same bytes (docs/BENCHMARKS.md):
#   restic (Debian's package) backing the dataset up to a local repository (compression auto
#   and encryption: what a user might pick instead), and rclone copying it to Azurite (an
#   upload peer); Ferry storing the same number of bytes of the same generator's data with
#   ferry-perf (8 disks, local target, then Azurite), timed until everything is in storage.
# Usage: perf/peers.sh [MiB]   (default 2048). Installs restic and rclone with apt-get if they
# are missing (root). Needs `cargo build --release --bins` first.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
mib="${1:-2048}"
bin="$root/target/release"
work="$(mktemp -d "${TMPDIR:-/tmp}/ferry-peers.XXXXXX")"
. "$root/scripts/azurite.sh"
trap 'azurite_stop; rm -rf "$work"' EXIT
for tool in restic rclone; do
  command -v "$tool" >/dev/null || { apt-get update -qq && apt-get install -y -qq "$tool" >/dev/null; }
done
echo "restic $(restic version | awk '{print $2}'), rclone $(rclone version | head -1 | awk '{print $2}')" >&2

"$bin/ferry-perf" dataset --out "$work/data" --mib "$mib" >&2
bytes=$((mib * 1024 * 1024))
TIMEFORMAT='%R %U %S'
timed() { { time "$@" >/dev/null 2>&1; } 2>&1 | tail -1; }
rate() { python3 -c "import sys; w,u,s=map(float,sys.argv[2:5]); print(f'{int(sys.argv[1])/1e6/w:.0f} MB/s, {w:.1f} s, CPU {(u+s)/(int(sys.argv[1])/1e9):.2f} s/GB')" "$@"; }

export RESTIC_PASSWORD=ferry-peers
restic init --repo "$work/restic" --repository-version 2 -q >/dev/null
read -r w u s < <(timed restic backup --repo "$work/restic" --compression auto -q "$work/data")
stored=$(du -sb "$work/restic" | awk '{print $1}')
echo "| restic backup, local repository (compression auto, AES-256) | $(rate "$bytes" "$w" "$u" "$s") | ratio $(python3 -c "print(f'{$bytes/$stored:.2f}')") |"

# Debian's rclone (1.60) cannot reach an emulator on another port by account and key, but
# takes a SAS URL: the container is made by ferryctl init (Shared Key), the copy uses an
# account SAS signed with Azurite's published key.
azurite_start "$root" 2>/dev/null
key="Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
printf '%s' "$key" > "$work/azurite.key"
"$bin/ferryctl" --json init "$work/container-maker" --azure-account devstoreaccount1 --azure-container peers \
    --azure-endpoint "$FERRY_TEST_AZURITE_ENDPOINT" --azure-key-file "$work/azurite.key" --create-container >/dev/null
sas=$(python3 - "$FERRY_TEST_AZURITE_ENDPOINT" "$key" <<'PY'
import base64, hashlib, hmac, sys
from urllib.parse import quote
endpoint, key = sys.argv[1], base64.b64decode(sys.argv[2])
sv, ss, srt, sp, se = "2019-12-12", "b", "sco", "rwdlac", "2035-01-01T00:00:00Z"
to_sign = "\n".join(["devstoreaccount1", sp, ss, srt, "", se, "", "", sv, ""])
sig = base64.b64encode(hmac.new(key, to_sign.encode(), hashlib.sha256).digest()).decode()
print(f"{endpoint}/peers?sv={sv}&ss={ss}&srt={srt}&sp={sp}&se={quote(se, safe='')}&sig={quote(sig, safe='')}")
PY
)
remote=":azureblob,sas_url='$sas':peers"
read -r w u s < <(timed rclone copy "$work/data" "$remote" --transfers 8)
copied=$(rclone size --json "$remote" 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes"])')
[ "$copied" -ge "$bytes" ] || { echo "rclone copied $copied bytes, not $bytes" >&2; exit 1; }
echo "| rclone copy to Azurite (8 transfers, no compression, no encryption) | $(rate "$bytes" "$w" "$u" "$s") | - |"
azurite_stop

for target in local azurite; do
  "$bin/ferry-perf" --json run --name "peer-$target" --machines 1 --disks-per-machine 8 --duration-secs 0 \
      --total-bytes "$bytes" --data mixed --target "$target" --no-limits --poll-ms 200 --out-dir "$work/results" > "$work/ferry.json"
  python3 - "$work/ferry.json" "$target" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
total = r["load_seconds"] + r["drain_seconds"]
ratio = f'ratio {r["compression_ratio"]:.2f}' if r["compression_ratio"] else "-"
cpu = r["ferryd_cpu_seconds"] or 0
print(f'| Ferry, 8 disks to {sys.argv[2]} (zstd-1, AES-256-GCM), until stored | '
      f'{r["ingested_bytes"]/1e6/total:.0f} MB/s, {total:.1f} s, CPU {cpu/(r["ingested_bytes"]/1e9):.2f} s/GB (ferryd) | {ratio} |')
PY
done
