"""Makes the "your own data" examples of the README (run by hand; needs numpy, scipy, pillow).

    /tmp/torchenv/bin/python tests/data/own/make_fixtures.py

- psf.png: a 9 x 9 Gaussian PSF (sigma 2 px), 8-bit, scaled to peak 255 (the reader
  normalises it to sum 1).
- blurred.png: tests/data/example.png (gray) blurred by that PSF with a symmetric boundary
  (scipy.ndimage `reflect`, half-sample symmetric: posterior's `boundary=reflect`), plus
  Gaussian noise sigma 0.01, 8-bit.
- blurred32.png: Fashion-MNIST held-out garment 0 (tests/data/heldout/fmnist-32.npy), blurred
  circularly (`wrap`) by the same PSF, noise sigma 0.01: the fmnist-32 prior's size.
- holes.png, mask.png: example.png with 60% of its pixels set to 0, and the mask (white =
  measured).
"""
import os

import numpy as np
from PIL import Image
from scipy import ndimage

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..")
rng = np.random.default_rng(0)


def save(name, a):
    Image.fromarray(np.clip(np.round(a * 255), 0, 255).astype(np.uint8)).save(os.path.join(HERE, name))


i, j = np.mgrid[-4:5, -4:5]
psf = np.exp(-(i**2 + j**2) / (2 * 2.0**2))
save("psf.png", psf / psf.max())
psf = np.asarray(Image.open(os.path.join(HERE, "psf.png")), np.float64)
psf /= psf.sum()
img = np.asarray(Image.open(os.path.join(DATA, "example.png")).convert("L"), np.float64) / 255
save("blurred.png", ndimage.convolve(img, psf, mode="reflect") + 0.01 * rng.standard_normal(img.shape))
garment = (np.load(os.path.join(DATA, "heldout", "fmnist-32.npy"))[0, 0].astype(np.float64) + 1) / 2
save("blurred32.png", ndimage.convolve(garment, psf, mode="wrap") + 0.01 * rng.standard_normal(garment.shape))
mask = rng.random(img.shape) > 0.6
save("mask.png", mask.astype(np.float64))
save("holes.png", img * mask)
