#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, after benches/peers/gpu_bundle.sh built
# .gpu/ here (carry [".gpu"]): shows the GPU and where the CUDA libraries are, points the
# run-time loader at them, runs every test binary in .gpu/bin (all their tests, --nocapture),
# the benches (plain f32, then TF32) and the PyTorch peer, and writes logs to $OUT
# (gpu_*.log, bench.log, peer.log, summary.md). Prints a summary table last.
#
# Env: SKIP_TESTS=1 / SKIP_BENCH=1 / SKIP_PEER=1 / SKIP_OTHER_BENCH=1 (benches other than
# benches/gpu.rs) / SKIP_PEER_TF32=1 / SKIP_E2E=1 leave parts out; ONLY_TESTS="gpu_nn ..." runs only those test binaries;
# TEST_ARGS adds test filters.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
echo "== commit $(cat .gpu/COMMIT 2>/dev/null) (dirty: $(wc -l < .gpu/DIRTY 2>/dev/null) files)"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | head -3
echo "== CUDA libraries"
ldconfig -p | grep -E 'libcuda\.so|libnvrtc\.so|libcublas\.so|libcufft\.so' | head -12
ls -d /usr/local/cuda*/lib64 2>/dev/null
PYNV=$(python3 -c 'import nvidia, os; print(os.path.dirname(nvidia.__path__[0]) + "/nvidia")' 2>/dev/null || true)
libdirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib "$PYNV"/cu13/lib "$PYNV"/*/lib; do
  [[ -d $d ]] && ls "$d" | grep -qE 'libnvrtc|libcublas|libcufft' && libdirs="$libdirs:$d"
done
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
# The test binaries read fixtures at the path they were built in.
if [[ ! -e /work/main ]]; then mkdir -p /work && ln -s "$PWD" /work/main; fi
summary="$OUT/summary.md"
: > "$summary"
if [[ -z ${SKIP_TESTS:-} ]]; then
  for b in .gpu/bin/test-*; do
    [[ -x $b ]] || continue
    name=${b##*/test-}
    [[ -n ${ONLY_TESTS:-} && " $ONLY_TESTS " != *" $name "* ]] && continue
    echo "== tests $name"
    t0=$(date +%s)
    timeout 150 "$b" --nocapture --test-threads=1 ${TEST_ARGS:-} > "$OUT/$name.log" 2>&1
    rc=$?
    grep -E "^test |rel err|skipped|panicked|result:|gpu forward|error" "$OUT/$name.log" | head -150
    echo "| tests $name | rc $rc | $(grep -E '^test result' "$OUT/$name.log" | tail -1) | $(( $(date +%s) - t0 )) s |" >> "$summary"
  done
fi
# End to end: the CLI reconstructs on the GPU and on the CPU from the same measurement and
# seed; the two estimates must agree (the network's per-call difference is ~1e-6).
if [[ -z ${SKIP_E2E:-} && -x .gpu/bin/posterior ]]; then
  echo "== end to end: posterior reconstruct --device cuda vs cpu"
  e2e=/tmp/e2e; mkdir -p $e2e
  python3 -c "
import numpy as np
i, j = np.mgrid[0:16, 0:16]
img = np.where((i >= 4) & (i < 12) & (j >= 4) & (j < 12), 0.8, 0.1).astype(np.float32)[None]
np.save('$e2e/img.npy', img)
i, j = np.mgrid[0:32, 0:32]
img = (0.5 + 0.4 * np.sin(i / 4.0) * np.cos(j / 5.0)).astype(np.float32)[None]
np.save('$e2e/img32.npy', img)"
  P=.gpu/bin/posterior
  $P degrade $e2e/img.npy --op blur:kernel=gaussian,sigma=1 --noise gaussian:sigma=0.02 --out $e2e/y.npy
  $P degrade $e2e/img32.npy --op inpaint:mask=random,fraction=0.5 --noise gaussian:sigma=0.02 --out $e2e/y32.npy 2>&1 | tail -2
  for dev in cuda cpu; do
    $P reconstruct $e2e/y.npy --sampler dps --prior tests/data/adm/plain_conv_f16 --steps 4 --seed 5 --device $dev --out $e2e/dps_$dev.npy 2>&1 | tail -2
    [[ -f $e2e/y32.npy ]] && $P reconstruct $e2e/y32.npy --sampler dps --prior priors/fmnist-32 --steps 100 --seed 5 --device $dev --out $e2e/fm_$dev.npy --truth $e2e/img32.npy 2>&1 | tail -2
  done
  python3 -c "
import numpy as np, os
for a in ['dps', 'fm']:
    g, c = '$e2e/%s_cuda.npy' % a, '$e2e/%s_cpu.npy' % a
    if os.path.exists(g) and os.path.exists(c):
        g, c = np.load(g), np.load(c)
        print(f'e2e {a}: max|cuda - cpu| / max|cpu| = {np.abs(g - c).max() / np.abs(c).max():.2e}')
    else:
        print(f'e2e {a}: missing output')" 2>&1 | tee -a "$summary"
  $P reconstruct $e2e/y.npy --sampler dps --prior tests/data/adm/plain_conv_f16 --steps 4 --device nonsense --out $e2e/x.npy 2>&1 | tail -1
fi
# Ours and the PyTorch peer first, then the other GPU benches (and their peers) if built.
if [[ -z ${SKIP_BENCH:-} && -x .gpu/bin/bench-gpu ]]; then
  echo "== bench gpu (f32)"
  timeout 120 .gpu/bin/bench-gpu 2>&1 | tee -a "$OUT/bench.log"
  echo "== bench gpu (TF32)"
  POSTERIOR_TF32=1 timeout 120 .gpu/bin/bench-gpu 2>&1 | sed 's/^| posterior |/| posterior tf32 |/' | tee -a "$OUT/bench.log"
fi
if [[ -z ${SKIP_PEER:-} ]]; then
  echo "== pytorch peer (f32)"
  PYTHONUNBUFFERED=1 timeout 120 python3 benches/peers/gpu_peer.py 2>&1 | tee "$OUT/peer.log"
  if [[ -z ${SKIP_PEER_TF32:-} ]]; then
    echo "== pytorch peer (TF32)"
    PYTHONUNBUFFERED=1 timeout 120 python3 benches/peers/gpu_peer.py --tf32 2>&1 | sed 's/^| pytorch |/| pytorch tf32 |/' | tee -a "$OUT/peer.log"
  fi
fi
if [[ -z ${SKIP_BENCH:-} && -z ${SKIP_OTHER_BENCH:-} ]]; then
  for b in .gpu/bin/bench-*; do
    [[ -x $b && ${b##*/bench-} != gpu ]] || continue
    name=${b##*/bench-}
    echo "== bench $name"
    timeout 120 "$b" > "$OUT/bench_$name.log" 2>&1
    tail -40 "$OUT/bench_$name.log"
    peer=benches/peers/${name}_peer.py
    if [[ -z ${SKIP_PEER:-} && -f $peer ]]; then
      echo "== peer $peer"
      PYTHONUNBUFFERED=1 timeout 120 python3 "$peer" ${PEER_ARGS:---runs 3 --dps-steps 100} >> "$OUT/bench_$name.log" 2>&1
      tail -30 "$OUT/bench_$name.log"
    fi
  done
fi
{
  echo
  echo "| impl | batch | pass | median ms | ms / sample | min ms | max ms | peak MiB |"
  echo "|---|---|---|---|---|---|---|---|"
  cat "$OUT"/bench.log "$OUT"/peer.log 2>/dev/null | grep -E '^\| (posterior|pytorch)' | sort -t'|' -k3,3n -k4,4 -k2,2
  cat "$OUT"/bench.log "$OUT"/peer.log 2>/dev/null | grep -E '^# '
} >> "$summary"
echo "== summary"
cat "$summary"
