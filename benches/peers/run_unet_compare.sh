#!/usr/bin/env bash
# Runs the Rust `unet_*` benches (criterion) and the PyTorch peer back to back, in one run,
# and prints ours / PyTorch / ratio per case.
#
#   benches/peers/run_unet_compare.sh [--ffhq]
#
# PYTHON (default /tmp/torchenv/bin/python) must have torch and numpy. --ffhq adds the
# FFHQ-256 cases (POSTERIOR_BENCH_FFHQ=1 for the Rust side; several minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY="${PYTHON:-/tmp/torchenv/bin/python}"
ffhq=()
if [[ "${1:-}" == "--ffhq" ]]; then
  export POSTERIOR_BENCH_FFHQ=1
  ffhq=(--ffhq)
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')" >&2
echo "== ours: cargo bench --bench nn -- unet" >&2
cargo bench --bench nn -- unet 2>&1 | tee "$tmp/rust.txt" | grep -E "mean\||time:" >&2
echo "== peer: $PY benches/peers/unet_peer.py ${ffhq[*]:-} --json" >&2
"$PY" benches/peers/unet_peer.py "${ffhq[@]}" --json | tee "$tmp/peer.txt" >&2
"$PY" - "$tmp/rust.txt" "$tmp/peer.txt" <<'EOF'
import json, re, sys
unit = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
ours, name = {}, None
for line in open(sys.argv[1], encoding="utf-8"):
    m = re.match(r"^unet/(\S+)", line)
    if m:
        name = m.group(1)
    m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
    if m and name:
        ours[name] = float(m.group(1)) * unit[m.group(2)]
        name = None
peer = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
print(f"{'case':<24} {'ours ms':>10} {'pytorch ms':>11} {'ratio':>7}")
for k, p in peer.items():
    o = ours.get(k)
    if o is None:
        print(f"{k:<24} {'-':>10} {1e3 * p:>11.2f}")
    else:
        print(f"{k:<24} {1e3 * o:>10.2f} {1e3 * p:>11.2f} {o / p:>7.3f}")
EOF
