#!/usr/bin/env bash
# The packages' life cycle on this machine, as a user lives it (scripts/test.sh runs it as
# root; it installs system-wide, so it refuses a machine that already has Ferry installed):
#   1. build ferry-server and ferry-agent twice (two versions, for the upgrade) and lint them
#      (lintian: no errors, no warnings);
#   2. install ferry-server: the `ferry` user and /var/lib/ferry exist, nothing runs;
#   3. `ferryctl preflight` and `ferryctl init` as that user, then ferryd from the installed
#      unit's own ExecStart, User and capabilities (no systemd as PID 1 here: setpriv plays it);
#   4. install ferry-agent, register, replicate a 32 MiB image, restore the point from the
#      vault and compare;
#   5. upgrade both packages in place (a local edit of the conffile survives), restart ferryd
#      on the new binary, replicate a change, restore it;
#   6. stop ferryd, purge both packages: every packaged file is gone, the data stays
#      (/var/lib/ferry, /var/lib/ferry-agent, the agent.toml the user wrote, the `ferry` user).
# Usage: scripts/package-check.sh [--profile dev|release]   (default dev: CI's build)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
profile=dev
if [ "${1:-}" = "--profile" ]; then profile="${2:?--profile needs dev or release}"; fi

fail() { echo "package-check: FAIL: $*" >&2; exit 1; }
step() { echo "== package-check: $*"; }

[ "$(id -u)" = 0 ] || fail "needs root (it installs the packages system-wide)"
for tool in dpkg apt-get lintian setpriv runuser sha256sum; do
  command -v "$tool" >/dev/null || fail "needs $tool"
done
if dpkg-query -W -f='${Status}' ferry-server 2>/dev/null | grep -q installed ||
  dpkg-query -W -f='${Status}' ferry-agent 2>/dev/null | grep -q installed ||
  [ -e /var/lib/ferry ] || [ -e /var/lib/ferry-agent ] || [ -e /etc/ferry ] || getent passwd ferry >/dev/null; then
  fail "this machine already has Ferry installed or its data (/var/lib/ferry, /etc/ferry, user ferry); run this on a scratch machine"
fi

work="$(mktemp -d /tmp/ferry-package-check.XXXXXX)"
chmod 0755 "$work"
ferryd_pid=""
cleanup() {
  set +e
  [ -n "$ferryd_pid" ] && kill "$ferryd_pid" 2>/dev/null && wait "$ferryd_pid" 2>/dev/null
  for package in ferry-server ferry-agent; do
    dpkg-query -W "$package" >/dev/null 2>&1 && dpkg --purge "$package" >/dev/null 2>&1
  done
  rm -rf /var/lib/ferry /var/lib/ferry-agent /etc/ferry "$work"
  getent passwd ferry >/dev/null && userdel ferry
  getent group ferry >/dev/null && groupdel ferry
}
trap cleanup EXIT

# --- 1. build and lint ---------------------------------------------------------------------
step "building the packages (profile $profile), two versions"
build_flag=--no-build
[ "$profile" = release ] && build_flag=""
scripts/package.sh --profile "$profile" $build_flag --version 0.1.0~ci1 --out "$work/v1" >/dev/null
scripts/package.sh --profile "$profile" --no-build --version 0.1.0~ci2 --out "$work/v2" >/dev/null
step "lintian"
lintian --fail-on error,warning "$work"/v1/*.deb 2> >(grep -v 'running with root privileges' >&2) ||
  fail "lintian reported errors or warnings"

# --- 2. install ferry-server -----------------------------------------------------------------
step "installing ferry-server"
apt-get install -y --no-install-recommends "$work"/v1/ferry-server_*.deb >"$work/install.log" 2>&1 ||
  { cat "$work/install.log"; fail "apt-get install ferry-server"; }
getent passwd ferry >/dev/null || fail "postinst made no ferry user"
[ "$(stat -c '%U %a' /var/lib/ferry)" = "ferry 700" ] || fail "/var/lib/ferry is $(stat -c '%U %a' /var/lib/ferry), not 'ferry 700'"
[ -f /etc/ferry/ferryd.env ] || fail "no /etc/ferry/ferryd.env"
! pgrep -x ferryd >/dev/null || fail "ferryd runs before ferryctl init"
grep -q '^ConditionPathExists=/var/lib/ferry/ferry.toml' /lib/systemd/system/ferryd.service ||
  fail "the installed unit does not wait for ferryctl init"

# --- 3. preflight, init, ferryd as the unit runs it --------------------------------------------
as_ferry() { runuser -u ferry -- "$@"; }
step "ferryctl preflight before init"
as_ferry ferryctl preflight --cache-dir /var/lib/ferry --disks 10 --churn-mb-s 0.1 --outage-hours 1 >"$work/preflight.txt" 2>&1 ||
  { cat "$work/preflight.txt"; echo "(preflight warned or failed on this machine; shown above, not fatal before init)"; }
step "ferryctl init as the ferry user"
as_ferry ferryctl --json init /var/lib/ferry --server-name 127.0.0.1 --metrics-listen 127.0.0.1:19464 >"$work/init.json" ||
  { cat "$work/init.json"; fail "ferryctl init as the ferry user"; }
fingerprint="$(sed -n 's/.*"server_cert_sha256": *"\([0-9A-Fa-f:]*\)".*/\1/p' "$work/init.json")"
[ -n "$fingerprint" ] || fail "init printed no certificate fingerprint: $(cat "$work/init.json")"
grep -q '"systemctl enable --now ferryd"' "$work/init.json" ||
  fail "init does not tell the package's user to start the unit: $(cat "$work/init.json")"

unit=/lib/systemd/system/ferryd.service
start_ferryd() {
  local exec user caps
  exec="$(sed -n 's/^ExecStart=//p' "$unit")"
  user="$(sed -n 's/^User=//p' "$unit")"
  caps="$(sed -n 's/^AmbientCapabilities=//p' "$unit" | tr 'A-Z' 'a-z' | sed 's/cap_/+/g; s/ /,/g')"
  [ -n "$exec" ] && [ -n "$user" ] || fail "the installed unit has no ExecStart or User"
  (
    set -a
    . /etc/ferry/ferryd.env
    set +a
    # shellcheck disable=SC2086  # ExecStart is a command line
    exec setpriv --reuid="$user" --regid="$user" --init-groups --inh-caps="$caps" --ambient-caps="$caps" -- $exec
  ) >>"$work/ferryd.log" 2>&1 &
  ferryd_pid=$!
  for _ in $(seq 1 300); do
    if (exec 3<>/dev/tcp/127.0.0.1/9443) 2>/dev/null && (exec 3<>/dev/tcp/127.0.0.1/443) 2>/dev/null; then
      return 0
    fi
    kill -0 "$ferryd_pid" 2>/dev/null || { cat "$work/ferryd.log"; fail "ferryd exited at start"; }
    sleep 0.1
  done
  cat "$work/ferryd.log"
  fail "ferryd did not listen on 443 and 9443 within 30 s"
}
stop_ferryd() {
  kill -TERM "$ferryd_pid"
  wait "$ferryd_pid" || fail "ferryd exited with $? on SIGTERM"
  ferryd_pid=""
}
step "ferryd from the installed unit's command line, as user ferry with CAP_NET_BIND_SERVICE only"
start_ferryd
[ "$(ps -o user= -p "$(pgrep -x ferryd)")" = ferry ] || fail "ferryd does not run as ferry"
# Warnings allowed: what this machine is, not what the package does: an undisciplined clock,
# and a root file system of ext4 without a journal (the project's VMs have one).
step "ferryctl preflight after init (warnings only for the clock and an ext4 without a journal)"
status=0
as_ferry ferryctl preflight --config /var/lib/ferry >"$work/preflight-after.txt" 2>&1 || status=$?
cat "$work/preflight-after.txt"
if [ "$status" -gt 1 ] ||
  grep -qv '^ok\|^WARN  clock\|^WARN  cache file system .*ext4 without a journal\|^preflight:' "$work/preflight-after.txt"; then
  fail "preflight does not pass the installed appliance (exit $status)"
fi

# --- 4. the agent: register, replicate, restore ---------------------------------------------
step "installing ferry-agent, registering, replicating a 32 MiB image"
apt-get install -y --no-install-recommends "$work"/v1/ferry-agent_*.deb >"$work/install-agent.log" 2>&1 ||
  { cat "$work/install-agent.log"; fail "apt-get install ferry-agent"; }
image="$work/disk.img"
head -c $((8 << 20)) /dev/urandom >"$image"
head -c $((24 << 20)) /dev/zero >>"$image"
ferry-agent --json register --server 127.0.0.1:443 --passphrase-file /var/lib/ferry/passphrase \
  --fingerprint "$fingerprint" --name package-check >"$work/register.json"
cat >/etc/ferry/agent.toml <<EOF
state_dir = "/var/lib/ferry-agent"
[[disks]]
path = "$image"
name = "data"
EOF
install -d -o ferry -g ferry "$work/out"

# replicate_and_restore LABEL: one agent pass, then the pass's point restored from the vault
# by the installed ferryctl and compared with the image.
replicate_and_restore() {
  local label="$1" before report disk bookmark points
  before="$(sha256sum <"$image")"
  report="$(ferry-agent --json run --config /etc/ferry/agent.toml --once)"
  disk="$(echo "$report" | sed -n 's/.*"disk_id": *"\([^"]*\)".*/\1/p' | head -1)"
  bookmark="$(echo "$report" | sed -n 's/.*"bookmark_id": *"\([^"]*\)".*/\1/p' | head -1)"
  [ -n "$disk" ] && [ -n "$bookmark" ] || fail "$label: the agent reported no disk or bookmark: $report"
  # The listing is read whole before it is searched: `| grep -q` would leave as soon as it
  # matched, and under pipefail the listing's SIGPIPE would fail a pipeline that had found it.
  for _ in $(seq 1 600); do
    points="$(as_ferry ferryctl --json points --config /var/lib/ferry --disk "$disk" 2>&1)" || true
    [[ "$points" == *"$bookmark"* ]] && break
    sleep 0.2
  done
  [[ "$points" == *"$bookmark"* ]] ||
    fail "$label: point $bookmark did not reach the vault within 120 s; the last listing: $points"
  rm -f "$work/out/restored.img"
  as_ferry ferryctl --json restore --config /var/lib/ferry --disk "$disk" --point "$bookmark" \
    --out "$work/out/restored.img" >/dev/null
  [ "$(sha256sum <"$work/out/restored.img")" = "$before" ] || fail "$label: the restored point differs from the image"
  echo "   $label: point $bookmark restored, SHA-256 equal to the image"
}
replicate_and_restore "initial copy"

# --- 5. upgrade in place ---------------------------------------------------------------------
step "upgrading both packages (ferryd running, a local edit in /etc/ferry/ferryd.env)"
echo "FERRY_LOG=debug  # local edit" >>/etc/ferry/ferryd.env
apt-get install -y --no-install-recommends "$work"/v2/ferry-server_*.deb "$work"/v2/ferry-agent_*.deb \
  >"$work/upgrade.log" 2>&1 || { cat "$work/upgrade.log"; fail "the upgrade"; }
[ "$(dpkg-query -W -f='${Version}' ferry-server)" = 0.1.0~ci2 ] || fail "ferry-server was not upgraded"
[ "$(dpkg-query -W -f='${Version}' ferry-agent)" = 0.1.0~ci2 ] || fail "ferry-agent was not upgraded"
grep -q "local edit" /etc/ferry/ferryd.env || fail "the upgrade lost the local edit of ferryd.env"
stop_ferryd
start_ferryd
dd if=/dev/urandom of="$image" bs=1M seek=20 count=2 conv=notrunc status=none
replicate_and_restore "after the upgrade"

# --- 6. remove ------------------------------------------------------------------------------
step "stopping ferryd, purging both packages"
stop_ferryd
dpkg -L ferry-server ferry-agent | sort -u >"$work/packaged-paths"
apt-get purge -y ferry-server ferry-agent >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "apt-get purge"; }
left=""
while read -r path; do
  # files and links the packages shipped (directories such as /lib -> usr/lib are shared)
  if { [ -e "$path" ] || [ -L "$path" ]; } && [ ! -d "$path" ]; then left="$left $path"; fi
done <"$work/packaged-paths"
[ -z "$left" ] || fail "files left after purge:$left"
[ "$(ls -A /etc/ferry)" = agent.toml ] || fail "/etc/ferry holds more than the agent.toml the user wrote: $(ls -A /etc/ferry)"
[ -f /var/lib/ferry/ferry.toml ] && [ -f /var/lib/ferry/vault.key ] || fail "the purge removed the appliance's data"
[ -d /var/lib/ferry-agent ] || fail "the purge removed the agent's state"
step "OK: built, linted, installed, initialised, replicated, upgraded, replicated, purged; the data stays"
