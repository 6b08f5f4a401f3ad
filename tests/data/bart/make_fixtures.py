"""Makes the BART fixtures under tests/data/bart (run by hand; CI has no `bart`).

    python tests/data/bart/make_fixtures.py        # needs `bart` (Debian: apt-get install bart) and numpy

What it writes (BART .cfl/.hdr pairs, dimensions [H, W, 1, coils] as BART orders them):
- kspace:      `bart phantom -x 64 -k -s 8` (8-coil Shepp-Logan k-space, noise-free), plus
               complex Gaussian noise (numpy seed 0, std 1% of the image's largest
               magnitude per complex entry), undersampled along the phase-encode axis
               (BART dim 1 = our W): the 24 central columns (ESPIRiT's default calibration
               region) and every 3rd column outside, zeros elsewhere.
- maps, ev:    `bart ecalib -m1 kspace maps ev` (one set of ESPIRiT maps, its eigenvalues).
- pics_l2:     `bart pics -S -l2 -r 0.001 -i 100 kspace maps` (Tikhonov / CG-SENSE).
- pics_tv:     `bart pics -S -R T:3:0:0.0005 -i 200 kspace maps` (total variation).
- reference.npy: float32 (64, 64), the root-sum-of-squares of the fully sampled, noise-free
               coil images (unitary centred inverse FFT), the reference the tests score
               against.
`-S` rescales pics' output to the data's units; the regularisation weights are relative to
the data after BART's own scaling (it divides by the median-based scale of the zero-filled
image). The versions used are printed into tests/data/bart/VERSION.
"""
import os
import subprocess

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def bart(*args):
    subprocess.run(["bart", *args], check=True, capture_output=True, cwd=HERE)


def cfl_read(name):
    dims = [int(d) for d in open(os.path.join(HERE, name + ".hdr")).read().split("\n")[1].split()]
    return np.fromfile(os.path.join(HERE, name + ".cfl"), np.complex64).reshape(dims, order="F")


def cfl_write(name, a):
    a = np.asarray(a, np.complex64)
    with open(os.path.join(HERE, name + ".hdr"), "w") as f:
        f.write("# Dimensions\n" + " ".join(str(d) for d in a.shape) + "\n")
    a.ravel(order="F").tofile(os.path.join(HERE, name + ".cfl"))


def main():
    tmp = "_full"
    bart("phantom", "-x", "64", "-k", "-s", "8", tmp)
    full = cfl_read(tmp).reshape(64, 64, 1, 8, order="F")  # [H, W, 1, coils]
    for ext in (".cfl", ".hdr"):
        os.remove(os.path.join(HERE, tmp + ext))
    h, w = full.shape[:2]
    coil_images = np.fft.fftshift(
        np.fft.ifft2(np.fft.ifftshift(full, axes=(0, 1)), axes=(0, 1), norm="ortho"), axes=(0, 1))
    reference = np.sqrt((np.abs(coil_images) ** 2).sum(axis=(2, 3))).astype(np.float32)
    np.save(os.path.join(HERE, "reference.npy"), reference)
    rng = np.random.default_rng(0)
    sigma = 0.01 * reference.max()
    noise = (rng.standard_normal(full.shape) + 1j * rng.standard_normal(full.shape)) * sigma / np.sqrt(2)
    cols = np.arange(w)
    sampled = (np.abs(cols - w // 2) < 12) | (cols % 3 == 0)
    kspace = (full + noise) * sampled[None, :, None, None]
    cfl_write("kspace", kspace)
    bart("ecalib", "-m1", "kspace", "maps", "ev")
    bart("pics", "-S", "-l2", "-r", "0.001", "-i", "100", "kspace", "maps", "pics_l2")
    bart("pics", "-S", "-R", "T:3:0:0.0005", "-i", "200", "kspace", "maps", "pics_tv")
    version = subprocess.run(["bart", "version"], capture_output=True, text=True).stdout.strip()
    with open(os.path.join(HERE, "VERSION"), "w") as f:
        f.write(f"BART {version}; numpy {np.__version__}; noise sigma {sigma:.6g} per complex entry; "
                f"{int(sampled.sum())} of {w} phase-encode columns sampled\n")


if __name__ == "__main__":
    main()
