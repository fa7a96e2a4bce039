#!/usr/bin/env bash
# Two builds of ferryd and ferry-perf compared on one scenario, alternated in one sitting
# (docs/BENCHMARKS.md): A B, B A, A B, ... so that the machine's drift (the same binary can run
# 1.5-2x slower from one hour to the next here) falls on both alike. Prints each run's CPU per
# byte by thread, then for every role the ratio B/A within each round and their median: a
# change is shown when the ratios of all rounds lie on one side of 1, not by one pair.
#
#   perf/scripts/ab.sh DIR_A DIR_B SCENARIO [ROUNDS] [LIMITS_JSON]
#
# DIR_A and DIR_B each hold a release `ferryd`, `ferry-perf` and `ferryctl` (copy them out of
# target/release after each build; ferry-perf starts the ferryd beside it). SCENARIO is a
# name in perf/scenarios. ROUNDS defaults to 3. Without LIMITS_JSON one `ferry-perf limits`
# runs first (from DIR_A). The appliance, cache and local target go under $TMPDIR: put it on
# the filesystem being measured (XFS for a cache as docs/SIZING.md advises). Reports are kept
# in $AB_OUT (default: a new directory under $TMPDIR, printed at the end).
set -euo pipefail
usage="usage: $0 DIR_A DIR_B SCENARIO [ROUNDS] [LIMITS_JSON]"
a=$(cd "${1:?$usage}" && pwd)
b=$(cd "${2:?$usage}" && pwd)
scenario_name=${3:?$usage}
rounds=${4:-3}
scenario=$(cd "$(dirname "$0")/.." && pwd)/scenarios/$scenario_name.toml
[ -f "$scenario" ] || { echo "no scenario $scenario" >&2; exit 2; }
for dir in "$a" "$b"; do
  for bin in ferryd ferry-perf ferryctl; do
    [ -x "$dir/$bin" ] || { echo "$dir/$bin is missing" >&2; exit 2; }
  done
done
out=${AB_OUT:-$(mktemp -d "${TMPDIR:-/tmp}/ferry-ab.XXXXXX")}
mkdir -p "$out"
limits=${5:-$out/limits.json}
[ -f "$limits" ] || "$a/ferry-perf" limits --out "$limits" >"$out/limits.log" 2>&1

for round in $(seq 1 "$rounds"); do
  # A B, then B A: a machine that drifts within a round favours neither side overall.
  order="A B"; [ $((round % 2)) -eq 0 ] && order="B A"
  for side in $order; do
    dir=$a; [ "$side" = B ] && dir=$b
    run=$out/$side-$round
    rm -rf "$run"  # one report per directory: the comparison reads the only one there
    "$dir/ferry-perf" run --scenario "$scenario" --limits "$limits" --out-dir "$run" >"$run.log" 2>&1 \
      || { echo "run $side $round failed: see $run.log" >&2; exit 1; }
    echo "$side round $round: $(grep -E '^  (CPU vs|ferryd peak)' "$run.log" | tr -s ' ' | tr '\n' ' ')"
  done
done

python3 - "$out" "$rounds" <<'EOF'
import glob, json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def report(side, r):
    [path] = glob.glob(f"{out}/{side}-{r}/*.json")
    with open(path) as f:
        d = json.load(f)
    rows = {t["role"]: t["ns_per_byte"] for t in d["cpu_by_thread"]}
    rows["ferryd (all)"] = d["ferryd_cpu_seconds_per_gb"]
    rows["peak RSS MiB"] = d["ferryd_peak_rss_mib"]
    return rows
pairs = [(report("A", r), report("B", r)) for r in range(1, rounds + 1)]
# Roles under 1% of ferryd's CPU are folded into `other` by ferry-perf, so a role can be
# missing from a run: only those every run reports are compared.
roles = set.intersection(*(set(a) & set(b) for a, b in pairs))
roles = sorted(roles, key=lambda k: -pairs[0][0][k])
print(f"\n{'role':<16} {'A ns/B (each round)':<28} {'B ns/B (each round)':<28} B/A each round -> median")
for role in roles:
    ratios = [b[role] / a[role] for a, b in pairs if a[role] > 0]
    fmt = lambda side: " ".join(f"{p[side][role]:.2f}" for p in pairs)
    median = f"{statistics.median(ratios):.3f}" if ratios else "-"
    print(f"{role:<16} {fmt(0):<28} {fmt(1):<28} {' '.join(f'{x:.3f}' for x in ratios)} -> {median}")
print(f"\nreports in {out}")
EOF
