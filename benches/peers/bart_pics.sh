#!/usr/bin/env bash
# Peer comparison, run by hand: BART's `pics` (L1-wavelet compressed sensing with ESPIRiT
# coil maps) on the same measurements as the suite problems/mri-brain-4x.toml (or -8x),
# side by side with the suite's methods.
#
#     benches/peers/bart_pics.sh [SUITE.toml] [RESULTS_DIR] [LAMBDA]
#
# SUITE.toml   default problems/mri-brain-4x.toml
# RESULTS_DIR  a `posterior bench` output directory of that suite (for our numbers);
#              default problems/results/<suite name>
# LAMBDA       pics's L1-wavelet weight (default 0.005, on data in the suite's units)
#
# Needs: `bart` (Debian package `bart`: apt-get install bart), python3 with numpy and
# scikit-image, the suite's data (see problems/README.md) and a built `posterior`
# ($POSTERIOR, default target/release/posterior).
#
# For each image and task it rebuilds the suite's measurement exactly as the bench does:
# `posterior degrade` with the same operator, noise and seed (s * 1000003 + 1009 i + t for
# image position i and task position t). The k-space (coils, 2, H, W) becomes a BART .cfl
# [H, W, 1, coils]; `bart ecalib -m1` estimates the coil maps from the ACS lines (BART
# does not know our synthetic maps: the real-world set-up), `bart pics -l1 -r LAMBDA -w 1`
# reconstructs (-w 1: no internal data scaling, so the image comes out in the suite's
# units), and the magnitude is scored against the truth with scikit-image's PSNR / SSIM
# using the settings of posterior's metrics (Gaussian 11x11 window, sigma 1.5, population
# covariance, data range 1). Wall time is bart ecalib + pics.
set -euo pipefail
cd "$(dirname "$0")/../.."
suite=${1:-problems/mri-brain-4x.toml}
POSTERIOR=${POSTERIOR:-target/release/posterior}
command -v bart >/dev/null || { echo "error: bart not found (apt-get install bart)" >&2; exit 1; }
[[ -x "$POSTERIOR" ]] || { echo "error: $POSTERIOR not built (cargo build --release)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 - "$suite" "$work" "${2:-}" "${3:-0.005}" "$POSTERIOR" <<'PY'
import json, os, subprocess, sys, time, tomllib
import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

suite_path, work, results_dir, lam, posterior = sys.argv[1:6]
suite = tomllib.load(open(suite_path, "rb"))
if suite.get("volume"):
    sys.exit("error: volume suites are not supported here; use mri-brain-4x or -8x")
results_dir = results_dir or os.path.join("problems", "results", suite["name"])
lo, hi = suite["range"]

def cfl_write(name, a):
    a = np.asarray(a, np.complex64)
    with open(name + ".hdr", "w") as f:
        f.write("# Dimensions\n" + " ".join(str(d) for d in a.shape) + "\n")
    a.ravel(order="F").tofile(name + ".cfl")

def cfl_read(name):
    dims = [int(d) for d in open(name + ".hdr").read().split("\n")[1].split()]
    return np.fromfile(name + ".cfl", np.complex64).reshape(dims, order="F")

# The suite's images, as the bench cuts them (dataset sources only).
images = []
for src in suite["data"]:
    if src["kind"] != "dataset":
        sys.exit("error: only dataset sources are supported here")
    d = os.path.expanduser(src["path"])
    man = json.load(open(os.path.join(d, "manifest.json")))
    arr = np.load(os.path.join(d, man["files"][src.get("split", "test")]["file"]))
    s, o = man["to_model_range"]["scale"], man["to_model_range"]["offset"]
    for i in src["indices"]:
        model = arr[i].astype(np.float64) * s + o
        images.append((f'{src["name"]}-{i}', (lo + (model + 1) / 2 * (hi - lo)).astype(np.float32)))

ours = {}
rpath = os.path.join(results_dir, "results.jsonl")
if os.path.exists(rpath):
    for line in open(rpath):
        r = json.loads(line)
        ours.setdefault((r["task"], r["method"]), []).append(r)

rows = []
for ti, task in enumerate(suite["tasks"]):
    for seed in suite.get("seeds", [0]):
        for pos, (iid, truth) in enumerate(images):
            mseed = seed * 1000003 + 1009 * pos + ti
            t = os.path.join(work, "truth.npy")
            np.save(t, truth)
            y = os.path.join(work, "y.npy")
            subprocess.run([posterior, "degrade", t, "--op", task["op"], "--noise", task.get("noise", "none"),
                            "--seed", str(mseed), "--out", y], check=True, capture_output=True)
            k = np.load(y)  # (coils, 2, H, W)
            ksp = (k[:, 0] + 1j * k[:, 1]).transpose(1, 2, 0)[:, :, None, :]  # [H, W, 1, coils]
            kn, sn, xn = (os.path.join(work, n) for n in ("k", "s", "x"))
            cfl_write(kn, ksp)
            # ESPIRiT kernel no wider than the fully sampled centre (BART's calibration
            # region can be one line narrower than ours once centred): min(6, width - 2), and
            # no cropping of the maps (-c 0): with 5 ACS lines the default 0.8 crop zeroes
            # parts of the brain (12.5 dB instead of 23.4 on uniform1d-4x).
            samp = np.abs(ksp[:, :, 0, 0]) > 0
            width = 0
            for axis in (0, 1):
                lines = samp.all(axis=1 - axis)
                c = len(lines) // 2
                a = b = c
                while a > 0 and lines[a - 1]:
                    a -= 1
                while b < len(lines) and lines[b]:
                    b += 1
                width = b - a if width == 0 else min(width, b - a)
            kernel = str(max(3, min(6, width - 2)))
            t0 = time.perf_counter()
            subprocess.run(["bart", "ecalib", "-m1", "-c", "0", "-k", kernel, kn, sn], check=True, capture_output=True)
            subprocess.run(["bart", "pics", "-l1", "-r", lam, "-w", "1", "-i", "100", kn, sn, xn],
                           check=True, capture_output=True)
            secs = time.perf_counter() - t0
            h, w = truth.shape[1:]
            x = np.abs(cfl_read(xn).reshape(h, w, -1, order="F")[:, :, 0]).astype(np.float64)
            ref = truth[0].astype(np.float64)
            p = peak_signal_noise_ratio(ref, x, data_range=hi - lo)
            q = structural_similarity(ref, x, data_range=hi - lo, gaussian_weights=True, sigma=1.5,
                                      use_sample_covariance=False)
            rows.append((task["name"], iid, p, q, secs))
            print(f"{task['name']:>14} {iid:>16}  bart pics  PSNR {p:6.2f}  SSIM {q:.4f}  {secs:5.2f} s", flush=True)

print(f"\n| task | method | n | PSNR (dB) | SSIM | seconds |\n|---|---|---|---|---|---|")
for task in suite["tasks"]:
    r = [x for x in rows if x[0] == task["name"]]
    ps, qs, ts = (np.array([x[i] for x in r]) for i in (2, 3, 4))
    print(f"| {task['name']} | bart pics (l1-wavelet, r={lam}) | {len(r)} | {ps.mean():.2f} ± {ps.std(ddof=1) if len(r) > 1 else 0:.2f} "
          f"| {qs.mean():.4f} ± {qs.std(ddof=1) if len(r) > 1 else 0:.4f} | {ts.mean():.2f} |")
    for m in suite["methods"]:
        v = ours.get((task["name"], m["name"]), [])
        if not v:
            continue
        ps = np.array([x["psnr"] for x in v]); qs = np.array([x["ssim"] for x in v]); ts = np.array([x["seconds"] for x in v])
        print(f"| {task['name']} | {m['name']} (posterior) | {len(v)} | {ps.mean():.2f} ± {ps.std(ddof=1) if len(v) > 1 else 0:.2f} "
              f"| {qs.mean():.4f} ± {qs.std(ddof=1) if len(v) > 1 else 0:.4f} | {ts.mean():.2f} |")
PY
