#!/usr/bin/env bash
# Installs Debian's prometheus for the monitoring tier (tests/monitoring).
#
# Idempotent and quiet: exits at once when a prometheus binary is already on PATH (or at
# /usr/bin/prometheus). Otherwise installs the Debian package with apt-get, without starting the
# packaged service (the tests start their own prometheus on loopback with a temporary config).
# Needs root (or sudo) only when it has to install.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 || [ -x /usr/bin/prometheus ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
  else
    echo "install-prometheus.sh: prometheus is missing and this is not root (no sudo);" \
         "install it with: apt-get install prometheus" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
# The package's postinst would start a system service; policy-rc.d 101 forbids that in
# containers and CI images where no init system runs.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod +x /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi

if ! $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1; then
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
command -v prometheus >/dev/null 2>&1 || { echo "install-prometheus.sh: prometheus still missing" >&2; exit 1; }
