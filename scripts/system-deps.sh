#!/usr/bin/env bash
# Install the Debian packages Bulwark or its tests need, only those missing.
# Usage: scripts/system-deps.sh PACKAGE... (package names as Debian spells them)
set -euo pipefail

declare -A probe=([git]=git [etcd-server]=etcd [haproxy]=haproxy [nginx]=nginx [fcgiwrap]=fcgiwrap
                  [chromium]=chromium [prometheus]=promtool [iproute2]=ip
                  [openssh-client]=ssh-keygen [openssh-server]=sshd [chromium-driver]=chromedriver
                  [cgit]=/usr/lib/cgit/cgit.cgi)
missing=()
for pkg in "$@"; do
  cmd=${probe[$pkg]:-$pkg}
  command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "installing ${missing[*]} ..." >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
