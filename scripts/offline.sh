#!/usr/bin/env bash
# Runs a command in a fresh network namespace whose only interface is loopback (needs root).
set -euo pipefail
if [ "$(id -u)" = 0 ] && command -v unshare >/dev/null && unshare -n true 2>/dev/null; then
  exec unshare -n bash -c 'ip link set lo up && exec "$@"' offline "$@"
fi
echo "offline.sh: cannot create a network namespace here (needs root and unshare); running as is" >&2
exec "$@"
