#!/usr/bin/env bash
# The images' locks, with hashes (pip install --require-hashes), at the versions of requirements.lock:
#   service.lock      pyproject's dependencies: router and stream workers (no torch, no onnxruntime)
#   trainer-cpu.lock  + the trainer extra (torch from PyPI carries its CUDA wheels)
#   trainer-gpu.lock  + the trainer extra with onnxruntime-gpu in place of onnxruntime
# Run after requirements.lock changes; tests/unit/test_deploy_images.py fails while they disagree.
set -euo pipefail
cd "$(dirname "$0")/../.."
ONNXRUNTIME_GPU_VERSION=1.31.1   # trails onnxruntime on the package index
common=(--generate-hashes -c requirements.lock --python-version 3.11 --python-platform x86_64-manylinux_2_28 -q)
uv pip compile pyproject.toml "${common[@]}" -o deploy/docker/service.lock
uv pip compile pyproject.toml --extra trainer "${common[@]}" -o deploy/docker/trainer-cpu.lock
{ EXTRAS=trainer VARIANT=gpu python3 deploy/image_requirements.py; echo "onnxruntime-gpu==$ONNXRUNTIME_GPU_VERSION"; } \
  > deploy/docker/trainer-gpu.in
uv pip compile deploy/docker/trainer-gpu.in "${common[@]}" -o deploy/docker/trainer-gpu.lock
