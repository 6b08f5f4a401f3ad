#!/usr/bin/env python3
"""Peer timings for benches/operators.rs: the same operator work in numpy / scikit-image.

Run by hand, not by CI:

    pip install numpy scikit-image
    python3 benches/peers/operators_peer.py

Each case times the forward map and its adjoint (the VJP for phase retrieval) on the same
sizes and in the same conventions as the Rust bench, and prints the median wall time in
milliseconds over several repeats. numpy's FFT (pocketfft) runs single-threaded and keeps
float32 / complex64 data in single precision (numpy >= 2.0); scikit-image's radon/iradon
rotate the image with interpolation once per view, also single-threaded.

Cases (matching benches/operators.rs):
- blur gaussian 3x256x256: circular convolution via rfft2 with a precomputed kernel
  spectrum (sigma 3, 61x61 kernel); adjoint with the conjugate spectrum.
- mri 8-coil 320x320: SENSE y_c = M . F(S_c x), centred orthonormal FFT, 1-D column mask;
  adjoint sum_c conj(S_c) . F^H(M . y_c).
- ct parallel 512x512 180 views: skimage.transform.radon(circle=False) and the unfiltered
  backprojection iradon(filter_name=None) (the adjoint up to interpolation and scale).
  scikit-image has no fan-beam projector, so the fan case has no peer.
- phase x2 256x256: |F P x| on a 512x512 grid and its VJP P^T Re F^H(v z/|z|).
"""

import statistics
import sys
import time

import numpy as np


def timeit(fn, repeats=10, min_time=1.0):
    fn()  # warm up
    times = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_time and len(times) < 200):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def blur_case():
    rng = np.random.default_rng(0)
    c, h, w = 3, 256, 256
    x = rng.random((c, h, w), dtype=np.float32)
    size, sigma = 61, 3.0
    r = np.arange(size) - size // 2
    k = np.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2)).astype(np.float32)
    k /= k.sum()
    kp = np.zeros((h, w), np.float32)
    kp[:size, :size] = k
    kp = np.roll(kp, (-(size // 2), -(size // 2)), axis=(0, 1))
    K = np.fft.rfft2(kp)
    Kc = np.conj(K)

    def fwd():
        return np.fft.irfft2(np.fft.rfft2(x) * K, s=(h, w))

    def adj():
        return np.fft.irfft2(np.fft.rfft2(x) * Kc, s=(h, w))

    return timeit(fwd), timeit(adj)


def mri_case():
    rng = np.random.default_rng(0)
    coils, h, w = 8, 320, 320
    x = (rng.standard_normal((h, w)) + 1j * rng.standard_normal((h, w))).astype(np.complex64)
    sens = (rng.standard_normal((coils, h, w)) + 1j * rng.standard_normal((coils, h, w))).astype(
        np.complex64
    )
    mask = np.zeros((1, 1, w), np.float32)
    mask[..., ::4] = 1
    mask[..., w // 2 - 13 : w // 2 + 13] = 1
    axes = (-2, -1)

    def fft2c(a):
        return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(a, axes=axes), norm="ortho"), axes=axes)

    def ifft2c(a):
        return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(a, axes=axes), norm="ortho"), axes=axes)

    y = fft2c(sens * x) * mask

    def fwd():
        return fft2c(sens * x) * mask

    def adj():
        return (np.conj(sens) * ifft2c(y * mask)).sum(axis=0)

    return timeit(fwd), timeit(adj)


def ct_case():
    from skimage.transform import iradon, radon

    rng = np.random.default_rng(0)
    img = rng.random((512, 512)).astype(np.float32)
    theta = np.arange(180, dtype=np.float64)
    sino = radon(img, theta=theta, circle=False)

    def fwd():
        return radon(img, theta=theta, circle=False)

    def adj():
        return iradon(sino, theta=theta, filter_name=None, circle=False, output_size=512)

    return timeit(fwd, repeats=3, min_time=0), timeit(adj, repeats=3, min_time=0)


def phase_case():
    rng = np.random.default_rng(0)
    n, big = 256, 512
    top = (big - n) // 2
    x = rng.random((n, n), dtype=np.float32)
    v = rng.standard_normal((big, big)).astype(np.float32)

    def pad(a):
        p = np.zeros((big, big), np.float32)
        p[top : top + n, top : top + n] = a
        return p

    def fwd():
        return np.abs(np.fft.fft2(pad(x), norm="ortho"))

    def vjp():
        z = np.fft.fft2(pad(x), norm="ortho")
        m = np.abs(z)
        u = np.where(m > 0, z / np.where(m > 0, m, 1), 0) * v
        return np.fft.ifft2(u, norm="ortho").real[top : top + n, top : top + n]

    return timeit(fwd), timeit(vjp)


def main():
    cases = [
        ("blur gaussian 3x256x256", blur_case),
        ("mri 8-coil 320x320", mri_case),
        ("ct parallel 512x512 180 views", ct_case),
        ("phase x2 256x256", phase_case),
    ]
    print(f"numpy {np.__version__}", end="")
    try:
        import skimage

        print(f", scikit-image {skimage.__version__}", end="")
    except ImportError:
        pass
    print(f", python {sys.version.split()[0]}")
    print(f"{'case':<32} {'forward ms':>12} {'adjoint ms':>12}")
    for name, fn in cases:
        try:
            f, a = fn()
            print(f"{name:<32} {f:>12.2f} {a:>12.2f}", flush=True)
        except ImportError as e:
            print(f"{name:<32} skipped ({e})", flush=True)


if __name__ == "__main__":
    main()
