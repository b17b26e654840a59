#!/usr/bin/env bash
# The CPU comparison of docs/results.md: train each config in turn (never two at once: two
# 2-thread jobs on 2 cores slow each other 5-8 times), segment the validation split, evaluate.
#
# Usage: tools/cpu_compare.sh DATA OUT SEED STEPS CONFIG...
#   DATA   nnU-Net raw dataset with splits.json (../shared/data/HNOAR)
#   OUT    output folder: OUT/NAME/{train.log,run,pkg,pred,validation.json} and OUT/times.txt
#   SEED   random seed (the configs say 0)
#   STEPS  0: the configs' own budget (480 s of wall time); N: exactly N steps, no time budget
# Example: tools/cpu_compare.sh ../shared/data/HNOAR runs/cmp 1 0 configs/cpu-compare/*.json
set -euo pipefail
data=$1; out=$2; seed=$3; steps=$4; shift 4
medseg=${MEDSEG:-medseg}
mkdir -p "$out"
cache=${CACHE:-$out/cache}
# The validation cases' images and a reference folder of their labels (links) with dataset.json.
python3 - "$data" "$out" <<'EOF'
import json, os, sys
from pathlib import Path
data, out = Path(sys.argv[1]).resolve(), Path(sys.argv[2])
cases = json.loads((data / "splits.json").read_text())["validation"]
ref = out / "ref"
ref.mkdir(exist_ok=True)
(ref / "dataset.json").write_text((data / "dataset.json").read_text())
for c in cases:
    link = ref / f"{c}.nii.gz"
    if not link.exists():
        os.symlink(data / "labelsTr" / f"{c}.nii.gz", link)
(out / "validation.txt").write_text("\n".join(str(data / "imagesTr" / f"{c}_0000.nii.gz") for c in cases))
EOF
budget=(); [ "$steps" != 0 ] && budget=(--steps "$steps" --time-budget 0)
for config in "$@"; do
  name=$(basename "$config" .json); d=$out/$name; mkdir -p "$d"
  s=$(date +%s)
  "$medseg" train --data "$data" --config "$config" --seed "$seed" "${budget[@]}" --run "$d/run" \
    --cache "$cache" --export "$d/pkg" --device cpu --progress none > "$d/train.log" 2>&1
  echo "$name train seconds $(( $(date +%s) - s ))" >> "$out/times.txt"
done
for config in "$@"; do
  name=$(basename "$config" .json); d=$out/$name
  s=$(date +%s)
  # shellcheck disable=SC2046
  "$medseg" segment $(cat "$out/validation.txt") --model "$d/pkg" --output "$d/pred" --device cpu \
    --no-confidence --progress none --overwrite > "$d/segment.log" 2>&1
  echo "$name segment seconds $(( $(date +%s) - s ))" >> "$out/times.txt"
  "$medseg" evaluate --pred "$d/pred" --ref "$out/ref" --card "$d/pkg" > "$d/evaluate.log"
  cp "$d/pred/metrics.json" "$d/validation.json"
done
cat "$out/times.txt"
