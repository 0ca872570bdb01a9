#!/usr/bin/env bash
# The load benchmark of issue 6, in one command (run by hand, never in CI):
#
#   examples/bench.sh                  # everything: ~10 minutes on 2 cores
#   examples/bench.sh --rates 5000,20000,40000    # the fixed-rate scenarios (default 5000,20000)
#   examples/bench.sh --rounds 1 --duration 3 --idle 1000    # a quick look
#
# Builds xmpp-veil and the benchmark tools in release, installs HAProxy (Debian package) if it is
# missing, raises the open-file limit as far as allowed, then runs examples/bench.rs, which starts
# the fast upstream, each proxy in turn and the load generator, and prints the table of ratios
# against the raw TLS relay (also written to target/bench/<time>/report.md with every log).
# Extra arguments go to the driver (see `target/release/examples/bench --help`).
# Loopback only; every run is bounded in time.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v haproxy >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "bench.sh: installing haproxy (Debian package; its service is not started)" >&2
        created_policy=0
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            created_policy=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >/dev/null ||
            { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y haproxy >/dev/null; } ||
            echo "bench.sh: could not install haproxy; its rows will be missing" >&2
        if [ "$created_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    else
        echo "bench.sh: haproxy not installed (needs root and apt-get); its rows will be missing" >&2
    fi
fi

# A proxy holds two descriptors per session (client and upstream legs): 10 000 sessions need
# more than 20 000. Raise the limit as far as this machine allows; the driver caps the idle
# runs at what fits and says so.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

cargo build --release --bin xmpp-veil --examples
exec target/release/examples/bench "$@"
