#!/usr/bin/env bash
# Demo: a local Prosody on loopback with two users, and xmpp-veil in front of it.
#
#   examples/demo.sh
#
# Then point an XMPP client at localhost:5222 (STARTTLS) or localhost:5223 (direct TLS) as
# alice@localhost / alice or bob@localhost / bob. The proxy uses the development certificate
# in certs/ (trust certs/dev-ca.pem in the client, or accept the certificate once).
# Metrics: http://127.0.0.1:9477/metrics. Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

if ! command -v prosody >/dev/null 2>&1 ||
   [ ! -f /usr/lib/prosody/modules/mod_privacy_lists/mod_privacy_lists.lua ]; then
  echo "Installing Prosody and prosody-modules (Debian packages)…"
  # The install script is the one the tests use; it also installs ejabberd.
  tests/install-deps.sh
fi

PROSODY_PORT=${PROSODY_PORT:-15222}
dir=$(mktemp -d /tmp/xmpp-veil-demo.XXXXXX)
cleanup() {
  [ -n "${prosody_pid:-}" ] && kill "$prosody_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

mkdir -p "$dir/data"
cat > "$dir/prosody.cfg.lua" <<CFG
run_as_root = true
pidfile = "$dir/prosody.pid"
data_path = "$dir/data"
log = { info = "$dir/prosody.log" }
interfaces = { "127.0.0.1" }
c2s_ports = { $PROSODY_PORT }
s2s_ports = { }
http_ports = { }
https_ports = { }
modules_disabled = { "s2s" }
-- offline storage and privacy lists as operators run them: invisible users stay reachable
-- (the proxy's privacy-list strategy; see README, "Two strategies").
modules_enabled = { "roster", "saslauth", "disco", "ping", "lastactivity", "offline",
                    "carbons", "blocklist", "privacy_lists" }
authentication = "internal_plain"
-- The upstream leg is plaintext on loopback: the recommended setup (see README).
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
VirtualHost "localhost"
CFG

for u in alice bob; do
  prosodyctl --config "$dir/prosody.cfg.lua" register "$u" localhost "$u" >/dev/null
done
prosody --config "$dir/prosody.cfg.lua" -F >"$dir/prosody.out" 2>&1 &
prosody_pid=$!
for _ in $(seq 50); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PROSODY_PORT") 2>/dev/null && break
  sleep 0.1
done
echo "Prosody on 127.0.0.1:$PROSODY_PORT (users alice/alice, bob/bob); log: $dir/prosody.log"

cargo build --release --quiet
"$root/target/release/xmpp-veil" \
  --listen 127.0.0.1:5222 --listen-direct-tls 127.0.0.1:5223 \
  --upstream "127.0.0.1:$PROSODY_PORT" --upstream-tls plain \
  --metrics-listen 127.0.0.1:9477 "$@"
