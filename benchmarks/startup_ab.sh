#!/bin/bash
# Start-up of `raysl pretrain` (command to first step, and to exit), two source trees A/B,
# interleaved round by round:
#   git worktree add /tmp/before <rev>
#   benchmarks/startup_ab.sh /tmp/before . 3
# Each run: the demo recipe on 2,048 images, 1 epoch, evaluation off; the tree is chosen with
# PYTHONPATH (Ray's local workers inherit it), the venv is this checkout's.
set -euo pipefail
BEFORE=$(realpath "$1"); AFTER=$(realpath "$2"); ROUNDS=${3:-3}
RAYSL=$(realpath "$(dirname "$0")/../.venv/bin/raysl")
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
for round in $(seq "$ROUNDS"); do
  for tree in "$BEFORE" "$AFTER"; do
    rm -rf "$WORK/run" && mkdir -p "$WORK/run" && cd "$WORK/run"
    start=$(date +%s.%N)
    PYTHONPATH=$tree "$RAYSL" pretrain --config "$tree/pipelines/configs/demo.yaml" \
      --set data.source.limit=2048 --set train.epochs=1 --set eval.enabled=false \
      --set eval.monitor_every=0 --set tracking.register=false \
      --set "tracking.tracking_uri=sqlite:///$WORK/run/mlflow.db" \
      --set "train.storage_path=$WORK/run/runs" > "$WORK/pretrain.log" 2>&1
    end=$(date +%s.%N)
    first=$(grep -o 'first step [0-9.]*s' "$WORK/pretrain.log" || echo "first step ?")
    printf "round %s  %-40s  %s  exit %.1fs\n" "$round" "$tree" "$first" \
      "$(echo "$end - $start" | bc)"
  done
done
