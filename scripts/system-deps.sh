#!/usr/bin/env bash
# Installs the Debian packages recess's demo and tests use, only when they are missing:
# HAProxy (routes traffic for the `local` and `docker` platforms), PostgreSQL (migration-safety
# tests), and Podman with runc and a static busybox (the `docker` platform's tests build their
# images FROM scratch, since no registry is reachable), and Chromium with its driver (the web
# dashboard's browser tests drive /usr/bin/chromium through /usr/bin/chromedriver).
set -euo pipefail
need=()
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then need+=(postgresql); fi
command -v podman >/dev/null 2>&1 || need+=(podman)
command -v runc >/dev/null 2>&1 || need+=(runc)
dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || need+=(busybox-static)
[ -x /usr/bin/chromium ] || need+=(chromium)
[ -x /usr/bin/chromedriver ] || need+=(chromium-driver)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null 2>&1; then
  echo "recess needs: ${need[*]}. Install them with: apt-get install ${need[*]}" >&2
  exit 1
fi
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "installing ${need[*]} (apt-get)" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
