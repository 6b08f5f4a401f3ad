#!/usr/bin/env bash
# Trains the three shipped priors at once on one GPU (run on the lent GPU machine, which
# has PyTorch but no network): fmnist-32, brain-mri (brain-64 preset) and ct-ellipses
# (ct-128 preset), each for MINUTES of wall time, then exports each (EMA weights, f16,
# denoising sanity check on its held-out set) and packs the prior directories into
# OUT/<name>.tar.gz (checkpoints stay behind: they are 40-80 MB; a later run continues
# from the exported weights with train.py --init-from).
#
#   bash notebooks/train_gpu.sh DATA_DIR OUT_DIR [MINUTES [NAME...]]
#
# NAMEs (default all three) pick which priors to train. With CONTINUE=1 each starts from
# the committed weights in priors/NAME (train.py --init-from; the card then counts the
# earlier steps under training.initialised_from). Batch sizes: BATCH_FMNIST (128),
# BATCH_BRAIN (64), BATCH_CT (32).
#
# DATA_DIR holds fmnist/ (train.npy or train.npy.gz, test.npy, manifest.json) and
# brain-64/ as notebooks/data.py writes them; the ct-ellipses set is rendered on the
# machine (notebooks/data.py ct-ellipses, all CPUs), since 12,000 phantoms at 128x128
# are 390 MB.
set -euo pipefail
DATA=$1; OUT=$2; MIN=${3:-8}; shift 3 || shift $#
NAMES=${*:-fmnist-32 brain-mri ct-ellipses}
want() { [[ " $NAMES " == *" $1 "* ]]; }
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=${TMPDIR:-/tmp}/posterior-train
mkdir -p "$WORK/data" "$WORK/out" "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi -L || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
t0=$(date +%s)
deadline=$((t0 + ${MIN%.*} * 60))

cp -r "$DATA/fmnist" "$DATA/brain-64" "$WORK/data/"
if [ -f "$WORK/data/fmnist/train.npy.gz" ]; then gunzip -f "$WORK/data/fmnist/train.npy.gz"; fi
gen=""
want ct-ellipses && ( python3 "$HERE/data.py" ct-ellipses --size 128 --n-train 12000 --n-test 200 --out "$WORK/data/ct-128" \
    >"$WORK/ct-data.log" 2>&1 ) &
want ct-ellipses && gen=$!

train() {  # name preset data batch
  local name=$1 preset=$2 data=$3 batch=$4
  local left=$(( deadline - $(date +%s) ))
  local init=()
  if [ "${CONTINUE:-0}" = 1 ]; then init=(--init-from "$HERE/../priors/$name/model.safetensors"); fi
  python3 "$HERE/train.py" --preset "$preset" --name "$name" --data "$data" --out "$WORK/out/$name" "${init[@]}" \
      --device cuda --batch_size "$batch" --max-minutes "$(python3 -c "print(max($left, 30) / 60)")" \
      --ckpt-minutes 3 --log-every 200 --export-now --threads 2 >"$WORK/$name.log" 2>&1
}
pids=()
if want fmnist-32; then train fmnist-32 fmnist-32 "$WORK/data/fmnist" "${BATCH_FMNIST:-128}" & pids+=($!); fi
if want brain-mri; then train brain-mri brain-64 "$WORK/data/brain-64" "${BATCH_BRAIN:-64}" & pids+=($!); fi
if want ct-ellipses; then
  wait $gen || { cat "$WORK/ct-data.log"; exit 1; }
  echo "ct-ellipses data rendered in $(( $(date +%s) - t0 )) s"
  train ct-ellipses ct-128 "$WORK/data/ct-128" "${BATCH_CT:-32}" & pids+=($!)
fi
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
for name in $NAMES; do
  echo "== $name"; tail -n 25 "$WORK/$name.log"
  cp "$WORK/$name.log" "$WORK/out/$name/train.log" 2>/dev/null || true
  if [ -f "$WORK/out/$name/model.safetensors" ]; then
    tar -C "$WORK/out" --exclude ckpt -czf "$OUT/$name.tar.gz" "$name"
  fi
done
cp "$WORK/ct-data.log" "$OUT/" || true
ls -la "$OUT"
exit $status
