#!/usr/bin/env bash
# GameSense one-shot GPU check. From the repository root on the GPU machine:   bash benchmarks/gpu/run.sh
# (first, here: bash benchmarks/gpu/prepare.sh, then carry benchmarks/gpu/{whl,tok,data} with the tree)
# Writes $OUT/log.txt (everything) and $OUT/summary.json, and prints a short summary at the end.
# Every part runs in its own process under `timeout`; a failed or hung part is reported and the next one runs.
# The whole run keeps to GPU_CHECK_BUDGET_S (default 460 s): a part gets at most what is left, none starts
# with under 20 s left. GPU_CHECK_SMOKE=1 (with GPU_CHECK_PYTHON=<a venv python>, GPU_CHECK_INSTALL=0): tiny
# models on a CPU, to try the script itself. GPU_CHECK_PARTS="decode serve": a rerun of some parts only.
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
G=$ROOT/benchmarks/gpu
SMOKE=${GPU_CHECK_SMOKE:-0}
OUT=${OUT:-$G/out}
WORK=${GPU_CHECK_WORK:-/tmp/gpucheck}
SITE=${GPU_CHECK_SITE:-/tmp/site}
# The device image's own interpreter (Python 3.12, torch 2.11 + CUDA); the carried wheels go to $SITE.
PY=${GPU_CHECK_PYTHON:-python3}
INSTALL=${GPU_CHECK_INSTALL:-1}
BUDGET=${GPU_CHECK_BUDGET_S:-460}
mkdir -p "$OUT" "$WORK"
rm -rf "$WORK/results" "$WORK/train"
mkdir -p "$WORK/results"
: > "$WORK/status.tsv"
LOG=$OUT/log.txt
: > "$LOG"

export PYTHONUNBUFFERED=1 GPU_CHECK_SMOKE=$SMOKE GPU_CHECK_WORK=$WORK OUT
if [ -d "$G/data/viggo" ]; then DATA_DEFAULT=$G/data/viggo; else DATA_DEFAULT=$ROOT/../shared/datasets/viggo; fi
export GPU_CHECK_DATA=${GPU_CHECK_DATA:-$DATA_DEFAULT}
export GAMESENSE_HOME=$WORK/home GAMESENSE_WORKDIR=$WORK/workdir GAMESENSE_ALLOCATOR=system
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export HF_DATASETS_DISABLE_PROGRESS_BARS=1 TQDM_DISABLE=1
export HF_DATASETS_CACHE=$WORK/hf-datasets TORCHINDUCTOR_CACHE_DIR=$WORK/inductor TRITON_CACHE_DIR=$WORK/triton
if [ "$INSTALL" = 1 ]; then
  export PYTHONPATH=$SITE:$ROOT/src
else
  export PYTHONPATH=$ROOT/src
fi
START=$(date +%s)

log() { echo "$*" | tee -a "$LOG"; }

# GPU_CHECK_PARTS="decode serve" (a rerun): only these measurement parts; install, env and prep always run
wanted() {
  case $1 in install|nvidia-smi|env|prep) return 0 ;; esac
  [ -z "${GPU_CHECK_PARTS:-}" ] || [[ " $GPU_CHECK_PARTS " == *" $1 "* ]]
}

# part NAME CAP_SECONDS COMMAND...: run COMMAND under timeout, output appended to the log, status recorded
part() {
  local name=$1 cap=$2
  shift 2
  wanted "$name" || return 0
  local now left t0 rc secs state note first
  now=$(date +%s)
  left=$((START + BUDGET - now))
  if [ "$left" -lt 20 ]; then
    printf '%s\tskipped\t-\t0\tbudget of %ss spent\n' "$name" "$BUDGET" >> "$WORK/status.tsv"
    log "== part $name: SKIPPED (budget spent)"
    return
  fi
  [ "$cap" -gt "$left" ] && cap=$left
  log "== [$(date +%T)] part $name (cap ${cap}s, ${left}s of budget left): $*"
  t0=$(date +%s)
  first=$(($(wc -l < "$LOG") + 1))
  GPU_CHECK_PART_DEADLINE=$((t0 + cap - 8)) timeout -k 10 "$cap" "$@" >> "$LOG" 2>&1 < /dev/null
  rc=$?
  secs=$(($(date +%s) - t0))
  case $rc in
    0) state=ok; note="" ;;
    124|137) state=timeout; note="killed at its ${cap}s cap" ;;
    3) state=partial; note="$(tail -n +"$first" "$LOG" | grep -E '^error: ' | tail -1 | cut -c1-200)" ;;
    *) state=failed; note="exit code $rc: $(tail -n +"$first" "$LOG" | grep -E '^[A-Za-z_.]+(Error|Exception|Exit)|^error' | tail -1 | cut -c1-200)" ;;
  esac
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$state" "$rc" "$secs" "$note" >> "$WORK/status.tsv"
  log "== part $name: $state (rc $rc, ${secs}s) $note"
}

log "GameSense GPU check $(date -u +%FT%TZ) smoke=$SMOKE python=$(command -v "$PY") ($("$PY" --version 2>&1)) root=$ROOT"
log "PYTHONPATH=$PYTHONPATH WORK=$WORK OUT=$OUT budget=${BUDGET}s"
if [ ! -f "$GPU_CHECK_DATA/train.csv" ]; then
  log "ViGGO data missing at $GPU_CHECK_DATA"
fi

if [ "$INSTALL" = 1 ]; then
  rm -rf "$SITE"
  part install 90 "$PY" "$G/install.py" --target "$SITE" --qlora --report "$WORK/results/install.json"
fi
part nvidia-smi 20 bash -c 'nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv'
part env 60 "$PY" "$G/check.py" env
part prep 90 "$PY" "$G/check.py" prep
part train_135m 110 "$PY" "$G/check.py" train 135m
part train_1.7b 100 "$PY" "$G/check.py" train 1.7b
part anchor 75 "$PY" "$G/check.py" anchor
part decode 80 "$PY" "$G/check.py" decode
part serve 80 "$PY" "$G/check.py" serve
part qlora 70 "$PY" "$G/check.py" qlora

log "== total $(($(date +%s) - START))s"
# the summary runs whatever the budget says
timeout -k 5 30 "$PY" "$G/check.py" summary 2>&1 | tee -a "$LOG"
