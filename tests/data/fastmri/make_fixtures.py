"""Makes the fastMRI-layout HDF5 fixtures under tests/data/fastmri (run by hand; CI has no h5py).

    /tmp/torchenv/bin/python tests/data/fastmri/make_fixtures.py     # needs numpy and h5py

- brain_2slice.h5: fastMRI's multi-coil layout, gzip-compressed as fastMRI ships it:
  `kspace` complex64 (2, 4, 64, 64) = the first 4 coils of tests/data/bart/kspace.cfl
  (slice 0) and the same scaled by 0.5 and mirrored left-right (slice 1, whose zero pattern
  is then mirrored too); `mask` bool (64,) = the sampled columns of slice 0 (the file's mask
  wins over the zero pattern); `reconstruction_rss` float32 (2, 64, 64), the RSS of the
  fully sampled coil images of the first 4 coils (slice 1 mirrored about column 32, halved);
  `ismrmrd_header` an XML string with encodedSpace and reconSpace 64 x 64 (no readout crop).
- wrong_dtype.h5: `kspace` float32 (1, 2, 8, 8) (not complex).
- no_kspace.h5: only `reconstruction_rss`.
"""
import os
import subprocess

import h5py
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BART = os.path.join(HERE, "..", "bart")


def cfl_read(name):
    dims = [int(d) for d in open(os.path.join(BART, name + ".hdr")).read().split("\n")[1].split()]
    return np.fromfile(os.path.join(BART, name + ".cfl"), np.complex64).reshape(dims, order="F")


HEADER = """<?xml version="1.0" encoding="utf-8"?>
<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"><encoding><encodedSpace><matrixSize>
<x>64</x><y>64</y><z>1</z></matrixSize><fieldOfView_mm><x>220</x><y>220</y><z>5</z>
</fieldOfView_mm></encodedSpace><reconSpace><matrixSize><x>64</x><y>64</y><z>1</z>
</matrixSize><fieldOfView_mm><x>220</x><y>220</y><z>5</z></fieldOfView_mm></reconSpace>
</encoding></ismrmrdHeader>"""


def main():
    k = cfl_read("kspace").reshape(64, 64, 8, order="F")[:, :, :4].transpose(2, 0, 1)  # (4, H, W)
    sampled = np.abs(k).sum(axis=(0, 1)) > 0
    k1 = 0.5 * k[:, :, ::-1]
    kspace = np.stack([k, k1]).astype(np.complex64)
    # RSS reference of the noise-free full k-space: regenerate from BART's phantom if bart
    # is present, else from the noisy data's fully sampled columns only (not used in CI).
    try:
        subprocess.run(["bart", "phantom", "-x", "64", "-k", "-s", "8", "/tmp/_full"], check=True)
        dims = [int(d) for d in open("/tmp/_full.hdr").read().split("\n")[1].split()]
        full = np.fromfile("/tmp/_full.cfl", np.complex64).reshape(dims, order="F").reshape(64, 64, 8, order="F")
        full = full[:, :, :4].transpose(2, 0, 1)
    except (OSError, subprocess.CalledProcessError):
        full = k
    img = np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(full, axes=(1, 2)), norm="ortho"), axes=(1, 2))
    rss = np.sqrt((np.abs(img) ** 2).sum(axis=0)).astype(np.float32)
    # Mirroring k-space columns j -> 63 - j mirrors the image about column 32: p -> (64 - p) % 64.
    refs = np.stack([rss, 0.5 * np.roll(rss[:, ::-1], 1, axis=1)]).astype(np.float32)
    with h5py.File(os.path.join(HERE, "brain_2slice.h5"), "w") as f:
        f.create_dataset("kspace", data=kspace, compression="gzip", chunks=(1, 4, 64, 64))
        f.create_dataset("mask", data=sampled)
        f.create_dataset("reconstruction_rss", data=refs)
        f.create_dataset("ismrmrd_header", data=HEADER)
        f.attrs["acquisition"] = "AXT1"
    with h5py.File(os.path.join(HERE, "wrong_dtype.h5"), "w") as f:
        f.create_dataset("kspace", data=np.ones((1, 2, 8, 8), np.float32))
    with h5py.File(os.path.join(HERE, "no_kspace.h5"), "w") as f:
        f.create_dataset("reconstruction_rss", data=np.ones((1, 8, 8), np.float32))
    print("h5py", h5py.__version__, "numpy", np.__version__)


if __name__ == "__main__":
    main()
