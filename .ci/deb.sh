#!/usr/bin/env bash
# Builds the Debian package (target/debian/xmpp-veil_*.deb) with cargo-deb: release binary, the
# systemd unit, the example configuration, README, dashboard and the --help text.
set -euo pipefail
cd "$(dirname "$0")/.."
# cargo-deb computes the package's dependencies (depends = "$auto") with dpkg-shlibdeps.
if ! command -v dpkg-shlibdeps >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends dpkg-dev
fi
if ! cargo deb --version >/dev/null 2>&1; then
  start=$(date +%s)
  cargo install cargo-deb --locked
  echo "cargo install cargo-deb: $(( $(date +%s) - start )) s"
fi
start=$(date +%s)
cargo build --release --locked --bin xmpp-veil
mkdir -p target/deb-doc
target/release/xmpp-veil --help > target/deb-doc/xmpp-veil.help.txt
target/release/xmpp-veil check --help > target/deb-doc/xmpp-veil-check.help.txt
cargo deb --no-build --locked --strip
echo "release build + cargo deb: $(( $(date +%s) - start )) s"
ls -l target/debian/*.deb
