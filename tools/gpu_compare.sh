#!/usr/bin/env bash
# Train several configs side by side on one GPU (same wall-clock budget each), from a carried
# preprocessing cache. Usage: tools/gpu_compare.sh CACHE_TARBALL OUT_DIR BUDGET_S CONFIG...
set -uo pipefail
tarball=$1; out=$2; budget=$3; shift 3
tmp=$(mktemp -d)
tar xjf "$tarball" -C "$tmp"
cache=$(find "$tmp" -name cache.json -printf '%h\n' | head -1)
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
export PYTHONUNBUFFERED=1
pids=()
for config in "$@"; do
  name=$(basename "$config" .json)
  python3 -m medseg_core.cli train --config "$config" --cache "$cache" --run "$tmp/run-$name" --device cuda \
    --progress none --time-budget "$budget" \
    --record-command "medseg train --config $config --cache <cache> --run RUN --device cuda --time-budget $budget" \
    > "$out/$name.log" 2>&1 &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for config in "$@"; do
  name=$(basename "$config" .json)
  cp "$tmp/run-$name/history.json" "$out/$name.history.json" 2>/dev/null
  tail -3 "$out/$name.log"
  [ -d "$tmp/run-$name/best" ] && tar cf "$out/pkg-$name.tar" -C "$tmp/run-$name" best
done
(cd "$out" && tar cf logs.tar ./*.log ./*.history.json 2>/dev/null && rm -f ./*.log ./*.history.json)
