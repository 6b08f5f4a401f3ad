#!/usr/bin/env bash
# Peer comparison, run by hand: our ESPIRiT coil maps against BART's `ecalib -m1` on the same
# k-space, and our reconstructions against `bart pics`.
#
#     benches/peers/bart_espirit.sh [SIZE] [COILS]      # default 128 8
#
# Needs: `bart` (Debian package `bart`), python3 with numpy, a built `posterior`
# ($POSTERIOR, default target/release/posterior).
#
# It simulates k-space with BART (`bart phantom -x SIZE -k -s COILS`), adds complex Gaussian
# noise (1% of the image's maximum per complex entry, numpy seed 0) and undersamples the
# phase-encode columns (BART dim 1): the 24 central ones and every 3rd outside. Then, on the
# same k-space:
#   - maps: `bart ecalib -m1` vs `posterior maps` (agreement |<ours, bart>| per pixel);
#   - CG-SENSE (l2): `bart pics -S -l2 -r 0.001` vs `posterior reconstruct --method cg
#     --lambda 0.001` with our maps and with BART's maps;
#   - TV: `bart pics -S -R T:3:0:0.0005` vs `posterior reconstruct --method tv --lambda 1`
#     with our maps and with BART's maps;
# and prints PSNRs of the magnitudes against the RSS of the fully sampled noise-free coil
# images (peak = its maximum) and the wall times.
set -euo pipefail
cd "$(dirname "$0")/../.."
size=${1:-128}
coils=${2:-8}
POSTERIOR=${POSTERIOR:-target/release/posterior}
command -v bart >/dev/null || { echo "error: bart not found (apt-get install bart)" >&2; exit 1; }
[[ -x "$POSTERIOR" ]] || { echo "error: $POSTERIOR not built (cargo build --release)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 - "$work" "$size" "$coils" "$POSTERIOR" <<'PY'
import os, subprocess, sys, time
import numpy as np

work, size, coils, posterior = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
os.chdir(work)

def run(*args):
    t = time.perf_counter()
    subprocess.run(list(args), check=True, capture_output=True)
    return time.perf_counter() - t

def cfl_read(name):
    dims = [int(d) for d in open(name + ".hdr").read().split("\n")[1].split()]
    return np.fromfile(name + ".cfl", np.complex64).reshape(dims, order="F")

def cfl_write(name, a):
    a = np.asarray(a, np.complex64)
    with open(name + ".hdr", "w") as f:
        f.write("# Dimensions\n" + " ".join(str(d) for d in a.shape) + "\n")
    a.ravel(order="F").tofile(name + ".cfl")

run("bart", "phantom", "-x", str(size), "-k", "-s", str(coils), "full")
full = cfl_read("full").reshape(size, size, 1, coils, order="F")
img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(full, axes=(0, 1)), axes=(0, 1), norm="ortho"), axes=(0, 1))
ref = np.sqrt((np.abs(img) ** 2).sum(axis=(2, 3)))
rng = np.random.default_rng(0)
sigma = 0.01 * ref.max()
k = full + (rng.standard_normal(full.shape) + 1j * rng.standard_normal(full.shape)) * sigma / np.sqrt(2)
cols = np.arange(size)
k = k * ((np.abs(cols - size // 2) < 12) | (cols % 3 == 0))[None, :, None, None]
cfl_write("k", k)

def psnr(x):
    x = np.abs(x).reshape(size, size)
    return 10 * np.log10(ref.max() ** 2 / np.mean((x - ref) ** 2))

t_ecalib = run("bart", "ecalib", "-m1", "k", "bart_maps")
t_maps = run(posterior, "maps", "k.cfl", "--out", "our_maps.cfl")
b, o = cfl_read("bart_maps").reshape(size, size, coils, order="F"), cfl_read("our_maps").reshape(size, size, coils, order="F")
both = (np.abs(b).sum(-1) > 0) & (np.abs(o).sum(-1) > 0)
ip = np.abs((o * np.conj(b)).sum(-1))[both]
print(f"maps: {both.sum()} pixels kept by both, {int(((np.abs(b).sum(-1) > 0) != (np.abs(o).sum(-1) > 0)).sum())} by one only; "
      f"|<ours, bart>| median {np.median(ip):.4f}, 1st percentile {np.percentile(ip, 1):.4f}; "
      f"ecalib {t_ecalib:.2f} s, posterior maps {t_maps:.2f} s")
rows = []
for name, pics_args, ours_args in [
    ("l2 (CG-SENSE)", ["-l2", "-r", "0.001", "-i", "100"], ["--method", "cg", "--lambda", "0.001"]),
    ("TV", ["-R", "T:3:0:0.0005", "-i", "200"], ["--method", "tv", "--lambda", "1"]),
]:
    t = run("bart", "pics", "-S", *pics_args, "k", "bart_maps", "x_pics")
    rows.append((name, "bart pics (BART maps)", psnr(cfl_read("x_pics")), t))
    for maps, label in [("espirit", "posterior (our ESPIRiT maps)"), ("bart_maps.cfl", "posterior (BART's maps)")]:
        t = run(posterior, "reconstruct", "k.cfl", "--op", "mri", "--maps", maps, *ours_args, "--noise", "0", "--out", "x.npy")
        rows.append((name, label, psnr(np.load("x.npy")[0]), t))
print("\n| regulariser | method | PSNR (dB) | seconds |\n|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]:.2f} | {r[3]:.2f} |")
PY
