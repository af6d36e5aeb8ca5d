#!/usr/bin/env bash
# Builds the control plane binaries (filled in by the control-plane work).
echo "${TOOLS_CACHE:-$HOME/.cache/finetune-operator/tools}"
