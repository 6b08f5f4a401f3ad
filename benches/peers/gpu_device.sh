#!/usr/bin/env bash
# Runs on the GPU machine, from the repository root, after benches/peers/gpu_bundle.sh built
# .gpu/ here (carry [".gpu"]): shows the GPU and where the CUDA libraries are, points the
# run-time loader at them, runs every test binary in .gpu/bin (all their tests, --nocapture),
# the benches (plain f32, then TF32) and the PyTorch peer, and writes logs to $OUT
# (gpu_*.log, bench.log, peer.log, summary.md). Prints a summary table last.
#
# Env: SKIP_TESTS=1 / SKIP_BENCH=1 / SKIP_PEER=1 / SKIP_OTHER_BENCH=1 (benches other than
# benches/gpu.rs) leave parts out; TEST_ARGS adds test filters.
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
    echo "== tests $name"
    t0=$(date +%s)
    timeout 150 "$b" --nocapture --test-threads=1 ${TEST_ARGS:-} > "$OUT/$name.log" 2>&1
    rc=$?
    grep -E "^test |rel err|skipped|panicked|result:|gpu forward|error" "$OUT/$name.log" | head -150
    echo "| tests $name | rc $rc | $(grep -E '^test result' "$OUT/$name.log" | tail -1) | $(( $(date +%s) - t0 )) s |" >> "$summary"
  done
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
  echo "== pytorch peer (TF32)"
  PYTHONUNBUFFERED=1 timeout 120 python3 benches/peers/gpu_peer.py --tf32 2>&1 | sed 's/^| pytorch |/| pytorch tf32 |/' | tee -a "$OUT/peer.log"
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
