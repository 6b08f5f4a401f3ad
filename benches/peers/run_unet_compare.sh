#!/usr/bin/env bash
# Runs the Rust network benches (criterion) and the PyTorch peers back to back, in one run,
# and prints ours / PyTorch / ratio per case.
#
#   benches/peers/run_unet_compare.sh [--ffhq] [--shipped] [--simd avx512|avx2|portable] [--threads N] [--quick N [--cpu-time]]
#
#   --ffhq     adds the FFHQ-256 cases (POSTERIOR_BENCH_FFHQ=1; several minutes on 2 cores)
#   --shipped  adds the shipped priors at batch 8 (priors/: fmnist-32, brain-mri,
#              ct-ellipses), PyTorch side benches/peers/shipped_priors_peer.py
#   --simd P   forces the engine's path (POSTERIOR_SIMD=P), and runs PyTorch twice: with
#              every instruction this CPU has ("full"), and restricted to the same vector
#              width ("same ISA": ATen, oneDNN and MKL capped at AVX2 for avx2, at SSE4 for
#              portable), which is what PyTorch does on a CPU that only has P.
#   --threads N  both sides on N threads (RAYON_NUM_THREADS, torch.set_num_threads; default
#              all cores). On a busy machine N = 1 keeps the comparison fair: PyTorch's
#              OpenMP threads spin at their barriers and lose far more than rayon's when
#              the cores are shared.
#   --quick N  plain medians of N runs on both sides (POSTERIOR_BENCH_QUICK=N, no criterion;
#              the peers' --runs N --warmup 1): a few minutes instead of a quarter hour.
#   --cpu-time with --quick and --threads 1: compare CPU seconds instead of wall seconds
#              (getrusage / time.process_time), which other processes sharing the cores
#              barely disturb. The only fair figure on a machine others are compiling on.
#
# PYTHON (default /tmp/torchenv/bin/python) must have torch, numpy and safetensors.
# NN_BENCH=PATH runs a bench binary built before (e.g. a copy of another commit's
# target/release/deps/nn-*) instead of `cargo bench --bench nn`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-/tmp/torchenv/bin/python}"
ffhq=()
filter="unet"
simd=""
threads=()
quick=""
cpu_time=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --ffhq) export POSTERIOR_BENCH_FFHQ=1; ffhq=(--ffhq) ;;
    --shipped) filter="unet|shipped" ;;
    --simd) simd="${2:?--simd needs avx512, avx2 or portable}"; shift ;;
    --cpu-time) cpu_time=1 ;;
    --quick) quick="${2:?--quick needs a run count}"; shift ;;
    --threads) threads=("--threads" "${2:?--threads needs a count}"); export RAYON_NUM_THREADS="$2"; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
peer_runs=()
if [[ -n "$quick" ]]; then
  export POSTERIOR_BENCH_QUICK="$quick"
  filter="${filter/unet|shipped/shipped}-none"  # criterion runs nothing; the quick medians print
  peer_runs=(--runs "$quick" --warmup 1)
  [[ -n "$cpu_time" ]] && peer_runs+=(--cpu-time)
fi
if [[ -n "$cpu_time" && ( -z "$quick" || "${RAYON_NUM_THREADS:-}" != 1 ) ]]; then
  echo "--cpu-time needs --quick N and --threads 1" >&2; exit 2
fi
same_isa=()
case "$simd" in
  "" | avx512) ;;
  avx2) same_isa=(ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2) ;;
  portable) same_isa=(ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_ENABLE_INSTRUCTIONS=SSE4_2) ;;
  *) echo "--simd takes avx512, avx2 or portable, not $simd" >&2; exit 2 ;;
esac
[[ -n "$simd" ]] && export POSTERIOR_SIMD="$simd"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
if [[ -n "${NN_BENCH:-}" ]]; then
  ours=("$NN_BENCH" --bench "$filter")
else
  ours=(cargo bench --bench nn -- "$filter")
fi
echo "== ours: POSTERIOR_SIMD=${POSTERIOR_SIMD:-auto} RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-all} ${ours[*]}" >&2
"${ours[@]}" 2>&1 | tee "$tmp/rust.txt" | grep -E "mean\||time:|^quick" >&2

peer() {  # peer OUT [ENV...]: both peer scripts into OUT, one JSON object per line
  local out="$1"; shift
  echo "== peer ($*): unet_peer.py ${ffhq[*]:-}" >&2
  env "$@" "$PY" benches/peers/unet_peer.py "${ffhq[@]}" "${threads[@]}" "${peer_runs[@]}" --json | tee -a "$out.log" | tail -1 >"$out"
  if [[ "$filter" == *shipped* ]]; then
    echo "== peer ($*): shipped_priors_peer.py" >&2
    env "$@" "$PY" benches/peers/shipped_priors_peer.py "${threads[@]}" "${peer_runs[@]}" --json | tee -a "$out.log" | tail -1 >>"$out"
  fi
}
peer "$tmp/peer_full" POSTERIOR_PEER=full
if [[ ${#same_isa[@]} -gt 0 ]]; then
  peer "$tmp/peer_same" "${same_isa[@]}"
else
  cp "$tmp/peer_full" "$tmp/peer_same"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$PY" - "$tmp/rust.txt" "$tmp/peer_full" "$tmp/peer_same" "${simd:-auto}" "${cpu_time:-}" <<'EOF'
import json, re, sys
unit = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
ours, name = {}, None
for line in open(sys.argv[1], encoding="utf-8"):
    m = re.match(r"^((?:unet|shipped)/\S+)", line)
    if m:
        name = m.group(1)
    m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
    if m and name:
        ours[name] = float(m.group(1)) * unit[m.group(2)]
        name = None
    m = re.match(r"quick (\S+): fwd (\S+) ms, fwd_vjp (\S+) ms .*; cpu fwd (\S+) ms, fwd_vjp (\S+) ms", line)
    if m:
        g = (4, 5) if sys.argv[5] else (2, 3)
        ours[m.group(1) + "_fwd"] = 1e-3 * float(m.group(g[0]))
        ours[m.group(1) + "_fwd_vjp"] = 1e-3 * float(m.group(g[1]))
def load(path):
    d = {}
    for line in open(path):
        for k, v in json.loads(line).items():
            d[k if "/" in k else "unet/" + k] = v
    return d
full, same = load(sys.argv[2]), load(sys.argv[3])
print(f"engine path: {sys.argv[4]}, {'CPU' if sys.argv[5] else 'wall'} time")
print(f"{'case':<30} {'ours ms':>9} {'torch ms':>9} {'ratio':>6} {'torch same-ISA ms':>18} {'ratio':>6}")
for k, p in full.items():
    o, q = ours.get(k), same.get(k, float("nan"))
    if o is None:
        print(f"{k:<30} {'-':>9} {1e3 * p:>9.2f} {'':>6} {1e3 * q:>18.2f}")
    else:
        print(f"{k:<30} {1e3 * o:>9.2f} {1e3 * p:>9.2f} {o / p:>6.3f} {1e3 * q:>18.2f} {o / q:>6.3f}")
EOF
