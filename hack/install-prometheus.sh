#!/usr/bin/env bash
# Installs Debian prometheus for the monitoring tier (filled in by the monitoring work).
exit 0
