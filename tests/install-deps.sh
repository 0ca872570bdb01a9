#!/usr/bin/env bash
# Installs what the end-to-end tests need: Prosody (with prosody-modules) and ejabberd (Debian
# packages), without letting the packages start system services on the machine's public ports.
set -euo pipefail
missing=()
command -v prosody >/dev/null 2>&1 || missing+=(prosody)
command -v ejabberdctl >/dev/null 2>&1 || missing+=(ejabberd)
# mod_privacy_lists (the privacy-list strategy on Prosody) comes from prosody-modules.
[ -f /usr/lib/prosody/modules/mod_privacy_lists/mod_privacy_lists.lua ] || missing+=(prosody-modules)
# tests/real_clients.rs: Psi under Xvfb with its own D-Bus session, xdotool to press keys,
# ImageMagick's `import` for screenshots; mcabber in tmux.
command -v psi >/dev/null 2>&1 || missing+=(psi)
command -v Xvfb >/dev/null 2>&1 || missing+=(xvfb)
command -v dbus-run-session >/dev/null 2>&1 || missing+=(dbus-daemon)
command -v dbus-send >/dev/null 2>&1 || missing+=(dbus-x11)
command -v xdotool >/dev/null 2>&1 || missing+=(xdotool)
command -v import >/dev/null 2>&1 || missing+=(imagemagick)
command -v mcabber >/dev/null 2>&1 || missing+=(mcabber)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
created_policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  # Exit code 101 tells invoke-rc.d not to start services during the install.
  printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
  $sudo chmod +x /usr/sbin/policy-rc.d
  created_policy=1
fi
trap '[ -n "$created_policy" ] && $sudo rm -f /usr/sbin/policy-rc.d' EXIT
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
# Packages may still have started a daemon (systemd present): stop it, the tests start their own.
for svc in prosody ejabberd; do $sudo service "$svc" stop >/dev/null 2>&1 || true; done
