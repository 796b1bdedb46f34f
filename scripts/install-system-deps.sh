#!/usr/bin/env bash
# Debian packages the test tiers use: PostgreSQL (database tests) and Prometheus (promtool, scrape test).
# Idempotent; skips what is already installed. Needs root (CI runs as root) or sudo.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v promtool >/dev/null || need+=(prometheus)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
echo "installing ${need[*]} from Debian's packages ..."
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# the Debian packages start system services; tests start their own instances on free ports
$SUDO systemctl disable --now postgresql prometheus >/dev/null 2>&1 || true
