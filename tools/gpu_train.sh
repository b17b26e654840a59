#!/usr/bin/env bash
# Train a shipped model on a GPU machine from a carried preprocessing cache (no SimpleITK needed
# there). Usage: tools/gpu_train.sh CONFIG CACHE_TARBALL OUT_DIR [extra medseg train args]
set -euo pipefail
config=$1; tarball=$2; out=$3; shift 3
tmp=$(mktemp -d)
tar xjf "$tarball" -C "$tmp"
cache=$(find "$tmp" -name cache.json -printf '%h\n' | head -1)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
export PYTHONUNBUFFERED=1
python3 -m medseg_core.cli train --config "$config" --cache "$cache" --run "$out/run" --device cuda --progress none \
  --record-command "medseg train --config $config --cache <cache> --run RUN --device cuda $*" "$@"
