#!/usr/bin/env bash
# Fail a node's setup when its NVIDIA driver is older than the GPU stack needs
# (cluster/gpu_stack.yaml: torch 2.14 / CUDA 13 needs >= 580). Nodes without a GPU pass.
#   bash cluster/check_gpu_driver.sh 580
set -euo pipefail
needed="${1:?usage: check_gpu_driver.sh MIN_DRIVER_MAJOR}"
command -v nvidia-smi >/dev/null 2>&1 || exit 0
if ! version="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>&1 | head -n 1 | tr -d ' ')"; then
  version=""
fi
major="${version%%.*}"
if ! [[ "$major" =~ ^[0-9]+$ ]] || (( major < needed )); then
  echo "NVIDIA driver ${version:-unknown} on $(hostname): the GPU stack (torch 2.14, CUDA 13) needs >= ${needed};" \
       "use a node image with a newer driver (cluster/gpu_stack.yaml)" >&2
  exit 1
fi
echo "NVIDIA driver ${version} >= ${needed}: ok"
