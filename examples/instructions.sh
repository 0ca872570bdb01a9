#!/usr/bin/env bash
# User-space instructions per message, xmpp-veil against the raw TLS relay, under the same load
# (run by hand, never in CI). callgrind counts instructions, not seconds: the figure does not
# move with whatever else the machine is doing, so it shows what a change to the hot path is
# worth before a full `examples/bench.sh` run measures time.
#
#   examples/instructions.sh [TARGETS] [RATE] [SECONDS]    # defaults: "relay veil" 300 10
#
# Each target runs under valgrind in front of a fresh `fastxmpp`, 20 sessions send RATE msgs/s
# in total for SECONDS; the report divides the target's instructions (login and shutdown
# included, the same for every target) by the messages relayed. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
targets=${1:-"relay veil"}
rate=${2:-300}
secs=${3:-10}
command -v valgrind >/dev/null || { echo "instructions.sh: needs valgrind" >&2; exit 1; }
cargo build --release --bin xmpp-veil --examples >&2
bin=target/release
out=target/instructions/$(date +%s)
mkdir -p "$out"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 600); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

for target in $targets; do
    up=$(port); up_tls=$(port); listen=$(port)
    "$bin/examples/fastxmpp" --listen "127.0.0.1:$up" --tls-listen "127.0.0.1:$up_tls" >"$out/$target-fastxmpp.log" 2>&1 &
    fast=$!
    wait_port "$up"
    case "$target" in
        relay) cmd=("$bin/examples/tls_relay" --listen "127.0.0.1:$listen" --upstream "127.0.0.1:$up") ;;
        veil) cmd=("$bin/xmpp-veil" --listen 127.0.0.1:0 --listen-direct-tls "127.0.0.1:$listen"
                   --upstream "127.0.0.1:$up" --upstream-tls plain --metrics-listen "127.0.0.1:$(port)"
                   --cert certs/localhost.pem --key certs/localhost.key --shutdown-timeout 2) ;;
        *) echo "unknown target $target" >&2; exit 1 ;;
    esac
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out/$target.callgrind" "${cmd[@]}" >"$out/$target.log" 2>&1 &
    vg=$!
    wait_port "$listen"
    # Logins, TLS handshakes and warm-up are left out: the counts are zeroed once the load
    # runs, and dumped SECONDS later, while it still runs.
    "$bin/examples/loadgen" --target "127.0.0.1:$listen" --sessions 20 --rate "$rate" \
        --warmup 4 --duration $((secs + 4)) >"$out/$target-loadgen.out" 2>"$out/$target-loadgen.err" &
    lg=$!
    sleep 4
    callgrind_control -z "$vg" >/dev/null
    sleep "$secs"
    callgrind_control -d "$vg" >/dev/null
    wait "$lg" || true
    kill -TERM "$vg" 2>/dev/null || true
    wait "$vg" 2>/dev/null || true
    kill "$fast" 2>/dev/null || true
    wait "$fast" 2>/dev/null || true
    dump=$(ls "$out/$target.callgrind".* | head -1)
    ir=$(grep -m1 '^summary:\|^totals:' "$dump" | awk '{print $2}')
    msgs=$((rate * secs))
    errors=$(grep -o 'errors=[0-9]*' "$out/$target-loadgen.out" || echo "errors=?")
    echo "$target: $ir instructions for about $msgs messages: $((ir / msgs)) per message ($errors)"
done | tee "$out/report.txt"
echo "callgrind files: $out (callgrind_annotate FILE | head -60)" >&2
