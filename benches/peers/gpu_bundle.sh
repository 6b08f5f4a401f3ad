#!/usr/bin/env bash
# Builds (here, release) the GPU test and bench binaries and copies them, stripped, into
# .gpu/bin/ for the GPU machine (which has no Rust): test-<name> for tests/gpu_nn.rs and,
# when they build, the other tests/gpu_*.rs; bench-<name> for benches/gpu.rs and the other
# benches/gpu*.rs. The test fixtures are read from the repository copy itself (the device
# script points /work/main at it, the path compiled into the binaries).
#
#   benches/peers/gpu_bundle.sh        then run benches/peers/gpu_device.sh there with
#                                      carry [".gpu"]
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .gpu
mkdir -p .gpu/bin
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude

# Prints the executables of one cargo build (JSON messages on stdin) as "kind name path".
exes() {
  python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        kind = m["target"]["kind"][0]
        print(kind, m["target"]["name"], m["executable"])
'
}

build() { # kind name: builds one target, copies its executable; a failure is reported, not fatal
  local kind=$1 name=$2 out
  if [[ $kind == test ]]; then
    out=$(cargo test --release --no-run --test "$name" --message-format=json 2>/dev/null) || { echo "bundle: test $name does not build, skipped" >&2; return 0; }
  else
    out=$(cargo bench --no-run --bench "$name" --message-format=json 2>/dev/null) || { echo "bundle: bench $name does not build, skipped" >&2; return 0; }
  fi
  echo "$out" | exes | while read -r k n p; do
    if [[ $n == "$name" ]]; then
      cp "$p" ".gpu/bin/$kind-$name"
      strip ".gpu/bin/$kind-$name" 2>/dev/null || true
      echo "bundle: .gpu/bin/$kind-$name ($(du -h ".gpu/bin/$kind-$name" | cut -f1))"
    fi
  done
}

for f in tests/gpu_*.rs; do build test "$(basename "$f" .rs)"; done
for f in benches/gpu*.rs; do build bench "$(basename "$f" .rs)"; done
# The command-line program, for an end-to-end `reconstruct --device cuda` check.
if cargo build --release --bin posterior 2>/dev/null; then
  cp target/release/posterior .gpu/bin/posterior && strip .gpu/bin/posterior 2>/dev/null || true
  echo "bundle: .gpu/bin/posterior ($(du -h .gpu/bin/posterior | cut -f1))"
fi
git rev-parse --short HEAD > .gpu/COMMIT
git status --short --untracked-files=no | head -20 > .gpu/DIRTY
du -sh .gpu
