#!/bin/bash
# Start-up of `raysl pretrain` (command to first step, and to exit) when it starts its own local
# Ray ("own") against joining the long-lived one of `raysl up` ("joined"), interleaved round by
# round, in one invocation:
#   benchmarks/startup_up.sh 3
#   benchmarks/startup_up.sh 3 train.num_workers=1     # KEY=VALUE...: more --set, both sides
# Each run: the demo recipe on 2,048 images, 1 epoch, evaluation off (as startup_ab.sh).
set -uo pipefail
ROOT=$(realpath "$(dirname "$0")/..")
RAYSL=$ROOT/.venv/bin/raysl
ROUNDS=${1:-3}
EXTRA=("${@:2}")
EXTRA=("${EXTRA[@]/#/--set=}")
WORK=$(mktemp -d)
trap 'RAYSL_HOME=$WORK/up-home "$RAYSL" down >/dev/null 2>&1; rm -rf "$WORK"' EXIT
mkdir -p "$WORK/own-home" "$WORK/up-home"   # RAYSL_HOME: no `raysl up` record, and one
RAYSL_HOME=$WORK/up-home "$RAYSL" up
run() {  # run SIDE HOME
  rm -rf "$WORK/run" && mkdir -p "$WORK/run" && cd "$WORK/run"
  start=$(date +%s.%N)
  env -u RAY_ADDRESS RAYSL_HOME="$2" "$RAYSL" pretrain --config "$ROOT/pipelines/configs/demo.yaml" \
    --set data.source.limit=2048 --set train.epochs=1 --set eval.enabled=false \
    --set eval.monitor_every=0 --set tracking.register=false \
    --set "tracking.tracking_uri=sqlite:///$WORK/run/mlflow.db" \
    --set "train.storage_path=$WORK/run/runs" "${EXTRA[@]}" > "$WORK/pretrain-$1.log" 2>&1
  end=$(date +%s.%N)
  first=$(grep -o 'first step [0-9.]*s' "$WORK/pretrain-$1.log" || echo "first step ?")
  joined=$(grep -c "joining the local Ray" "$WORK/pretrain-$1.log")
  printf "round %s  %-6s  %s  exit %.1fs  (joined raysl up: %s; load %s)\n" "$round" "$1" \
    "$first" "$(echo "$end - $start" | bc)" "$joined" "$(cut -d' ' -f1 /proc/loadavg)"
}
for round in $(seq "$ROUNDS"); do
  run own "$WORK/own-home"
  run joined "$WORK/up-home"
done
