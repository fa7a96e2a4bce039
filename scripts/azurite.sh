# Sourced by the test scripts: installs Azurite from scripts/azurite/package-lock.json (pinned)
# and starts its blob service on a free loopback port with a fresh data directory.
# Sets AZURITE_PID, AZURITE_DIR, AZURITE_PORT and FERRY_TEST_AZURITE_ENDPOINT.
# The caller stops it with azurite_stop (test.sh does so in an EXIT trap, whatever happens).

azurite_install() {
  local dir="$1/scripts/azurite"
  local stamp="$dir/node_modules/.ferry-lock-stamp"
  if [ -x "$dir/node_modules/.bin/azurite-blob" ] && cmp -s "$dir/package-lock.json" "$stamp"; then
    return 0
  fi
  command -v npm >/dev/null || { echo "npm is required to install Azurite (Node.js 18+)" >&2; return 1; }
  echo "installing Azurite from scripts/azurite/package-lock.json" >&2
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >&2)
  cp "$dir/package-lock.json" "$stamp"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

azurite_start() {
  local root="$1"
  azurite_install "$root" || return 1
  AZURITE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/ferry-azurite.XXXXXX")
  AZURITE_PORT=$(free_port)
  "$root/scripts/azurite/node_modules/.bin/azurite-blob" \
    --blobHost 127.0.0.1 --blobPort "$AZURITE_PORT" --location "$AZURITE_DIR" \
    --skipApiVersionCheck --disableTelemetry --loose --silent >"$AZURITE_DIR/azurite.log" 2>&1 &
  AZURITE_PID=$!
  local waited=0
  until (exec 3<>"/dev/tcp/127.0.0.1/$AZURITE_PORT") 2>/dev/null; do
    if ! kill -0 "$AZURITE_PID" 2>/dev/null; then
      echo "Azurite exited during start:" >&2; cat "$AZURITE_DIR/azurite.log" >&2; return 1
    fi
    waited=$((waited + 1))
    if [ "$waited" -gt 300 ]; then echo "Azurite did not listen within 30 s" >&2; return 1; fi
    sleep 0.1
  done
  export FERRY_TEST_AZURITE_ENDPOINT="http://127.0.0.1:$AZURITE_PORT/devstoreaccount1"
  echo "Azurite $(cd "$root/scripts/azurite" && node -p 'require("azurite/package.json").version') on 127.0.0.1:$AZURITE_PORT" >&2
}

azurite_stop() {
  if [ -n "${AZURITE_PID:-}" ]; then
    kill "$AZURITE_PID" 2>/dev/null || true
    wait "$AZURITE_PID" 2>/dev/null || true
    AZURITE_PID=
  fi
  if [ -n "${AZURITE_DIR:-}" ]; then rm -rf "$AZURITE_DIR"; AZURITE_DIR=; fi
}
