"""Makes the scikit-image radon fixture (run by hand; CI has no scikit-image).

    /tmp/torchenv/bin/python tests/data/skimage/make_fixture.py

- truth63.npy: float32 (1, 63, 63), scikit-image's Shepp-Logan phantom area-resized to
  63 x 63, plus a bright 5 x 6 block at rows 10..15, columns 40..46 (breaks the symmetry).
- sino63.npy: float32 (30, 63) = `skimage.transform.radon(truth, theta, circle=True).T` with
  theta = 0, 6, ..., 174 degrees: posterior's (views, detectors) layout. An odd size puts
  scikit-image's rotation centre (pixel N // 2) on the grid's geometric centre, which is
  posterior's; for even sizes they differ by half a pixel.
"""
import os

import numpy as np
import skimage
from skimage.data import shepp_logan_phantom
from skimage.transform import radon, resize

HERE = os.path.dirname(os.path.abspath(__file__))
x = resize(shepp_logan_phantom(), (63, 63), anti_aliasing=True).astype(np.float32)
x[10:15, 40:46] = 1.0
theta = np.linspace(0.0, 180.0, 30, endpoint=False)
np.save(os.path.join(HERE, "truth63.npy"), x[None])
np.save(os.path.join(HERE, "sino63.npy"), radon(x, theta=theta, circle=True).T.astype(np.float32))
print("scikit-image", skimage.__version__)
