#!/usr/bin/env bash
# Full reproduction (SPEC 8): 9 configs x (folds 0-3 with seeds 1001,1002 + fold -1 with seeds 2001..2008)
# = 144 runs, each a `python train.py -C <cfg> --fold <f> --seed <s>`.
#
#   ./run_train.sh [--gpus 0,1,2,3] [--shard i/n] [--configs cfg_2a,cfg_5a] [--dry-run] [train.py args...]
#
#   --gpus LIST    run one training per listed GPU at a time (CUDA_VISIBLE_DEVICES); default: one at a time
#   --shard i/n    take every n-th run starting at run i (i = 0..n-1), to split the work over machines
#   --configs L    only these configs (comma separated)
#   --dry-run      print the runs that would be started, one per line, and exit
#   other args     passed to every train.py call (e.g. --data_dir /data --output_dir /runs)
#
# Finished runs (checkpoint.pth present) are skipped; interrupted ones (last_state.pth only) are resumed.
# Each run logs to <output_dir>/logs/<cfg>_fold<f>_seed<s>.log; the first failure stops the script.
set -u -o pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python}
CONFIGS="cfg_1 cfg_2a cfg_2b cfg_3 cfg_4 cfg_5a cfg_5b cfg_5c cfg_5d"
GPUS=""
SHARD_I=0
SHARD_N=1
DRY=0
EXTRA=()
OUTPUT_DIR=output

die() { echo "error: $*" >&2; exit 2; }

while [ $# -gt 0 ]; do
  case "$1" in
    --gpus) [ $# -ge 2 ] || die "--gpus needs a value"; GPUS=${2//,/ }; shift 2 ;;
    --gpus=*) GPUS=${1#*=}; GPUS=${GPUS//,/ }; shift ;;
    --shard|--shard=*)
      if [ "$1" = --shard ]; then [ $# -ge 2 ] || die "--shard needs i/n"; S=$2; shift 2; else S=${1#*=}; shift; fi
      [[ $S =~ ^([0-9]+)/([0-9]+)$ ]] || die "--shard expects i/n (e.g. 0/4), got '$S'"
      SHARD_I=${BASH_REMATCH[1]}; SHARD_N=${BASH_REMATCH[2]}
      { [ "$SHARD_N" -ge 1 ] && [ "$SHARD_I" -lt "$SHARD_N" ]; } || die "--shard i/n needs 0 <= i < n, got '$S'" ;;
    --configs) [ $# -ge 2 ] || die "--configs needs a value"; CONFIGS=${2//,/ }; shift 2 ;;
    --configs=*) CONFIGS=${1#*=}; CONFIGS=${CONFIGS//,/ }; shift ;;
    --dry-run|--dry_run) DRY=1; shift ;;
    --output_dir|--output-dir) [ $# -ge 2 ] || die "--output_dir needs a value"; OUTPUT_DIR=$2; EXTRA+=(--output_dir "$2"); shift 2 ;;
    --output_dir=*) OUTPUT_DIR=${1#*=}; EXTRA+=("$1"); shift ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done

# every run of the reproduction, in a fixed order: "cfg fold seed"
RUNS=()
for cfg in $CONFIGS; do
  [ -f "configs/$cfg.py" ] || die "unknown config '$cfg' (no configs/$cfg.py)"
  for fold in 0 1 2 3; do
    for seed in 1001 1002; do RUNS+=("$cfg $fold $seed"); done
  done
  for seed in 2001 2002 2003 2004 2005 2006 2007 2008; do RUNS+=("$cfg -1 $seed"); done
done

TODO=()
for k in "${!RUNS[@]}"; do
  [ $((k % SHARD_N)) -eq "$SHARD_I" ] || continue
  read -r cfg fold seed <<< "${RUNS[$k]}"
  dir="$OUTPUT_DIR/$cfg/fold$fold/seed$seed"
  if [ -f "$dir/checkpoint.pth" ]; then
    echo "skip (finished): $cfg fold $fold seed $seed" >&2
    continue
  fi
  TODO+=("${RUNS[$k]}")
done

log_of() { echo "$OUTPUT_DIR/logs/${1}_fold${2}_seed${3}.log"; }

train_args() {  # train_args <cfg> <fold> <seed>: sets ARGS to that run's train.py arguments (--resume if interrupted)
  ARGS=(train.py -C "$1" --fold "$2" --seed "$3")
  [ -f "$OUTPUT_DIR/$1/fold$2/seed$3/last_state.pth" ] && ARGS+=(--resume)
  ARGS+=("${EXTRA[@]}")
}

if [ "$DRY" -eq 1 ]; then
  for r in "${TODO[@]}"; do
    train_args $r
    printf '%s' "$PYTHON"; printf ' %q' "${ARGS[@]}"; printf '\n'
  done
  exit 0
fi

echo "${#TODO[@]} run(s) to do (shard $SHARD_I/$SHARD_N, ${#RUNS[@]} in the reproduction)"
mkdir -p "$OUTPUT_DIR/logs"

launch() {  # launch <gpu> <cfg> <fold> <seed>: runs in the background on that GPU, sets PID
  local gpu=$1 log
  log=$(log_of "$2" "$3" "$4")
  train_args "$2" "$3" "$4"
  echo "start: $2 fold $3 seed $4 on GPU $gpu (log $log)"
  CUDA_VISIBLE_DEVICES=$gpu "$PYTHON" "${ARGS[@]}" > "$log" 2>&1 &
  PID=$!
}

failed() {  # failed <cfg> <fold> <seed> <status>
  local log
  log=$(log_of "$1" "$2" "$3")
  echo "FAILED: $1 fold $2 seed $3 (exit status $4); last lines of $log:" >&2
  tail -n 20 "$log" >&2
  echo "stopping (no new runs start); finished runs are kept and skipped when ./run_train.sh is started again" >&2
}

if [ -z "$GPUS" ]; then  # one run at a time, shown on the console and kept in its log
  for r in "${TODO[@]}"; do
    read -r cfg fold seed <<< "$r"
    log=$(log_of "$cfg" "$fold" "$seed")
    train_args "$cfg" "$fold" "$seed"
    echo "start: $cfg fold $fold seed $seed (log $log)"
    "$PYTHON" "${ARGS[@]}" 2>&1 | tee "$log"
    status=${PIPESTATUS[0]}
    [ "$status" -eq 0 ] || { failed "$cfg" "$fold" "$seed" "$status"; exit 1; }
  done
  echo "all runs finished"
  exit 0
fi

# one run per GPU at a time
declare -A SLOT_PID SLOT_RUN
next=0
fail=0
while :; do
  for gpu in $GPUS; do
    pid=${SLOT_PID[$gpu]:-}
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      wait "$pid"; status=$?
      read -r cfg fold seed <<< "${SLOT_RUN[$gpu]}"
      if [ "$status" -ne 0 ]; then failed "$cfg" "$fold" "$seed" "$status"; fail=1; fi
      [ "$status" -eq 0 ] && echo "done: $cfg fold $fold seed $seed"
      SLOT_PID[$gpu]=""
      pid=""
    fi
    if [ -z "$pid" ] && [ "$fail" -eq 0 ] && [ "$next" -lt "${#TODO[@]}" ]; then
      read -r cfg fold seed <<< "${TODO[$next]}"
      launch "$gpu" "$cfg" "$fold" "$seed"
      SLOT_PID[$gpu]=$PID; SLOT_RUN[$gpu]=${TODO[$next]}; next=$((next + 1))
    fi
  done
  busy=0
  for gpu in $GPUS; do [ -n "${SLOT_PID[$gpu]:-}" ] && busy=1; done
  [ "$busy" -eq 0 ] && break
  sleep 1
done
[ "$fail" -eq 0 ] || { echo "the runs already started on other GPUs were allowed to finish; exiting with failure" >&2; exit 1; }
echo "all runs finished"
