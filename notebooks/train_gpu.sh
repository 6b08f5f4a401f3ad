#!/usr/bin/env bash
# Turns a few GPU minutes into better shipped priors, in one command that ends with export.
#
#   bash notebooks/train_gpu.sh --sources DIR --out OUT [--minutes 9] [--priors "brain-mri ct-ellipses fmnist-32"]
#        [--bf16] [--channels-last] [--compile MODE] [--batch-scale K] [--loss-weight eps|min-snr]
#        [--device cuda|cpu] [--sample-steps 50] [--sample-n 32] [--sanity-n 64] [--overhead-s 75]
#
# DIR is a source cache made on a machine with the registries (`python notebooks/data.py pack
# fmnist brain --out DIR`, ~30 MB: the Fashion-MNIST files, the brain volumes and the nibabel
# wheel); every data set is rendered here from it on the CPUs while the GPU trains
# (the CT phantoms need no sources). The priors are trained in the order given (largest
# expected gain first), each in its own process on a GPU (with several GPUs, one queue per GPU,
# dealt round-robin), each for its share of the time left (table below), so that the whole
# command, exports and checks included, ends before --minutes. Each run:
#   * continues from the shipped weights in priors/NAME when the architecture is the same
#     (train.py --init-if-compatible), else starts fresh;
#   * exports the EMA weights (f16) with a card that states minutes and steps, the held-out
#     denoising check and the sample check (export_prior.py);
#   * is compared with the shipped prior by notebooks/ship_gate.py (same settings for both):
#     it is shipped (copied to OUT/priors/NAME) only if held-out denoising AND the sample check
#     improve.
# OUT gets: report.md (one line per prior), runs/NAME/ (every exported run: model.safetensors,
# model.json, train.jsonl, train.log, gate.json), priors/NAME/ (only the shipped ones: copy them
# into the repository's priors/), data logs. Checkpoints stay in $TMPDIR (too big to carry back).
# After shipping, on a machine with the Rust build: `posterior sample ... --out priors/NAME/samples.png`
# and `posterior calibrate ...` (priors/README.md).
#
# Speed options are flags because only a GPU shows what they are worth: --bf16 (bf16 autocast),
# --channels-last, --compile default|reduce-overhead (CUDA graphs)|max-autotune, --batch-scale K
# (K times each prior's batch). Everything runs on the CPU too (--device cpu), just slowly; that
# is how it is tested (notebooks/test_train.py).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PY=${PYTHON:-python3}

MINUTES=9; OUT=""; SOURCES=""; PRIORS="brain-mri ct-ellipses fmnist-32"; DEVICE=cuda
SPEED=(); BATCH_SCALE=1; LOSS_WEIGHT=${LOSS_WEIGHT:-eps}; SAMPLE_STEPS=50; SAMPLE_N=32; SANITY_N=64
OVERHEAD_S=75; THREADS=2
while [ $# -gt 0 ]; do
  case $1 in
    --minutes) MINUTES=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --sources) SOURCES=$2; shift 2 ;;
    --priors) PRIORS=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --bf16) SPEED+=(--bf16); shift ;;
    --channels-last) SPEED+=(--channels-last); shift ;;
    --compile) SPEED+=(--compile "$2"); shift 2 ;;
    --batch-scale) BATCH_SCALE=$2; shift 2 ;;
    --loss-weight) LOSS_WEIGHT=$2; shift 2 ;;
    --sample-steps) SAMPLE_STEPS=$2; shift 2 ;;
    --sample-n) SAMPLE_N=$2; shift 2 ;;
    --sanity-n) SANITY_N=$2; shift 2 ;;
    --overhead-s) OVERHEAD_S=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "train_gpu.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ -n "$OUT" ] || { echo "train_gpu.sh: --out is required" >&2; exit 2; }

# name -> preset, data set, share of the time, batch size, data recipe arguments
declare -A PRESET=([brain-mri]=brain-64 [ct-ellipses]=ct-128 [fmnist-32]=fmnist-32 [brain-mri-128]=brain-128 [ct-ellipses-256]=ct-256)
declare -A DATA=([brain-mri]=brain-64 [ct-ellipses]=ct-128 [fmnist-32]=fmnist [brain-mri-128]=brain-128 [ct-ellipses-256]=ct-256)
declare -A SHARE=([brain-mri]=40 [ct-ellipses]=35 [fmnist-32]=25 [brain-mri-128]=40 [ct-ellipses-256]=40)
declare -A BATCH=([brain-mri]=64 [ct-ellipses]=32 [fmnist-32]=128 [brain-mri-128]=32 [ct-ellipses-256]=16)
declare -A RECIPE=(
  [brain-64]="brain --size 64"
  [brain-128]="brain --size 128"
  [ct-128]="ct-ellipses --size 128 --n-train 12000 --n-test 200"
  [ct-256]="ct-ellipses --size 256 --n-train 4000 --n-test 200"
  [fmnist]="fmnist")
for name in $PRIORS; do
  [ -n "${PRESET[$name]:-}" ] || { echo "train_gpu.sh: unknown prior $name (known: ${!PRESET[*]})" >&2; exit 2; }
done

t0=$(date +%s)
deadline=$(( t0 + $(awk -v m="$MINUTES" 'BEGIN { printf "%d", m * 60 }') - 20 ))
WORK=${TMPDIR:-/tmp}/posterior-train-$$
mkdir -p "$WORK/data" "$WORK/runs" "$OUT/runs" "$OUT/priors"
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=PASSIVE
CACHE=${SOURCES:-$HOME/.cache/posterior-data}
# nibabel (for the brain volumes) from the packed wheel when the machine lacks it
if ! $PY -c "import nibabel" 2>/dev/null && [ -d "$CACHE/wheel/nibabel/root" ]; then
  export PYTHONPATH="$CACHE/wheel/nibabel/root${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ "$DEVICE" = cuda ]; then
  nvidia-smi -L || true
  NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
  [ "$NGPU" -ge 1 ] || { echo "train_gpu.sh: PyTorch sees no GPU (use --device cpu to run on the CPU)" >&2; exit 1; }
else
  NGPU=1
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
echo "budget ${MINUTES} min on $NGPU $DEVICE device(s): ${PRIORS}"

# Render every needed data set in the background, all at once (the CPUs are free while the GPU
# trains); each training waits for its own.
NCPU=$(nproc)
declare -A RENDER=()
sets=$(for name in $PRIORS; do echo "${DATA[$name]}"; done | sort -u)
nsets=$(echo "$sets" | wc -w)
for d in $sets; do
  # shellcheck disable=SC2086
  ( $PY "$HERE/data.py" ${RECIPE[$d]} --cache "$CACHE" --out "$WORK/data/$d" \
      --workers $(( NCPU / nsets > 1 ? NCPU / nsets : 1 )) >"$OUT/data-$d.log" 2>&1 ) &
  RENDER[$d]=$!
done

run_prior() {  # gpu name share_left_total share
  local gpu=$1 name=$2 left_shares=$3 share=$4
  local d=${DATA[$name]} run="$WORK/runs/$name" res="$OUT/runs/$name"
  # (the renderer is the main shell's child, not this queue's: poll for its manifest, written last)
  while [ ! -f "$WORK/data/$d/manifest.json" ] && kill -0 "${RENDER[$d]}" 2>/dev/null; do sleep 2; done
  if [ ! -f "$WORK/data/$d/manifest.json" ]; then
    echo "| $name | data $d failed (see data-$d.log) | | | no |" >>"$OUT/report.md"; return 0
  fi
  local now left mins
  now=$(date +%s); left=$(( deadline - now - OVERHEAD_S ))
  mins=$(awk -v l="$left" -v s="$share" -v t="$left_shares" 'BEGIN { printf "%.3f", l * s / t / 60 }')
  if awk -v m="$mins" 'BEGIN { exit !(m < 0.2) }'; then
    echo "| $name | skipped: no time left | | | no |" >>"$OUT/report.md"; return 0
  fi
  mkdir -p "$run" "$res"
  echo "[$(date +%T)] $name on $DEVICE:$gpu for $mins min (data ready after $(( now - t0 )) s)"
  local dev=$DEVICE
  [ "$DEVICE" = cuda ] && dev=cuda:0
  CUDA_VISIBLE_DEVICES=$gpu $PY "$HERE/train.py" --preset "${PRESET[$name]}" --name "$name" \
      --data "$WORK/data/$d" --out "$run" --init-if-compatible "$REPO/priors/$name" \
      --device "$dev" --batch_size $(( ${BATCH[$name]} * BATCH_SCALE )) --loss_weight "$LOSS_WEIGHT" \
      --max-minutes "$mins" --ckpt-minutes 1000 --log-every 100 --heldout-every 250 --export-now --threads "$THREADS" \
      --sample-n "$SAMPLE_N" --sample-steps "$SAMPLE_STEPS" --sanity-n "$SANITY_N" "${SPEED[@]}" \
      >"$run/train.log" 2>&1 || { echo "train.py failed for $name:"; tail -n 20 "$run/train.log"; }
  cp "$run/train.log" "$run/train.jsonl" "$res/" 2>/dev/null || true
  if [ ! -f "$run/model.safetensors" ]; then
    echo "| $name | training failed (runs/$name/train.log) | | | no |" >>"$OUT/report.md"; return 0
  fi
  cp "$run/model.safetensors" "$run/model.json" "$res/"
  local old=() verdict
  [ -f "$REPO/priors/$name/model.json" ] && old=(--old "$REPO/priors/$name")
  set +e
  CUDA_VISIBLE_DEVICES=$gpu $PY "$HERE/ship_gate.py" "$res" "${old[@]}" --data "$WORK/data/$d" \
      --device "$dev" --sample-n "$SAMPLE_N" --sample-steps "$SAMPLE_STEPS" --sanity-n "$SANITY_N" \
      --threads "$THREADS" --json "$res/gate.json" >"$res/gate.log" 2>&1
  local rc=$?
  set -e
  verdict=$(tail -n 1 "$res/gate.log")
  local steps
  steps=$($PY -c "import json,sys; t=json.load(open(sys.argv[1]))['training']; print(t['steps'], 'steps,', t['train_minutes'], 'min')" "$res/model.json")
  if [ $rc = 0 ]; then
    mkdir -p "$OUT/priors/$name"
    cp "$res/model.safetensors" "$res/model.json" "$res/train.jsonl" "$res/train.log" "$OUT/priors/$name/"
  fi
  echo "| $name | ${PRESET[$name]}, $steps | $verdict | $(( $(date +%s) - t0 )) s | $([ $rc = 0 ] && echo yes || echo no) |" >>"$OUT/report.md"
  echo "[$(date +%T)] $name: $verdict"
}

run_queue() {  # gpu names... (priority order)
  # Next is the first pending prior whose data is ready (the GPU never waits for a render while
  # another prior could train); when none is, wait for one.
  local gpu=$1; shift
  local pending=("$@") total=0 n pick alive rest
  for n in "${pending[@]}"; do total=$(( total + SHARE[$n] )); done
  while [ ${#pending[@]} -gt 0 ]; do
    pick=""
    for n in "${pending[@]}"; do
      if [ -f "$WORK/data/${DATA[$n]}/manifest.json" ]; then pick=$n; break; fi
    done
    if [ -z "$pick" ]; then
      alive=0
      for n in "${pending[@]}"; do kill -0 "${RENDER[${DATA[$n]}]}" 2>/dev/null && alive=1; done
      if [ $alive = 1 ]; then sleep 2; continue; fi
      pick=${pending[0]}  # every render has ended without data: run_prior reports it
    fi
    run_prior "$gpu" "$pick" "$total" "${SHARE[$pick]}"
    total=$(( total - SHARE[$pick] ))
    rest=()
    for n in "${pending[@]}"; do [ "$n" = "$pick" ] || rest+=("$n"); done
    pending=("${rest[@]+"${rest[@]}"}")
  done
}

{
  echo "# train_gpu.sh $(date -u +%FT%TZ): ${MINUTES} min, $NGPU x $DEVICE, loss ${LOSS_WEIGHT}, speed: ${SPEED[*]:-none}, batch x${BATCH_SCALE}"
  echo
  echo "| prior | run | gate (ship_gate.py) | done after | shipped |"
  echo "| --- | --- | --- | --- | --- |"
} >"$OUT/report.md"
# deal the priors round-robin over the GPUs: one process at a time per GPU
declare -a QUEUES=()
i=0
for name in $PRIORS; do QUEUES[$(( i % NGPU ))]+="$name "; i=$(( i + 1 )); done
pids=()
for g in "${!QUEUES[@]}"; do
  # shellcheck disable=SC2086
  run_queue "$g" ${QUEUES[$g]} & pids+=($!)
done
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for p in "${RENDER[@]}"; do kill "$p" 2>/dev/null || true; done
echo "total $(( $(date +%s) - t0 )) s of ${MINUTES} min"
cat "$OUT/report.md"
rm -rf "$WORK"
exit $status
