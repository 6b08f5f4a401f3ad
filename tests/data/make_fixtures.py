#!/usr/bin/env python3
"""Regenerates the fixtures in tests/data from public packages.

Needs: python3 with numpy, scikit-image, pydicom and nibabel
(`pip install numpy scikit-image pydicom nibabel`), pip (for `pip download`), and
apt-get (Debian) for the ITK example volume. Run from anywhere:

    python3 tests/data/make_fixtures.py

The sources are fetched into a temporary directory with the registries' own clients
(`pip download --no-deps pydicom-data`, `apt-get download insighttoolkit5-examples`).
See README.md beside this script for what each fixture is and its licence.
"""

import glob
import os
import shutil
import subprocess
import sys
import tempfile

import nibabel as nib
import numpy as np
import pydicom
import skimage
from pydicom.uid import ExplicitVRLittleEndian
from skimage import io as skio

HERE = os.path.dirname(os.path.abspath(__file__))


def block_mean(a, f):
    """Mean over non-overlapping f x f blocks of a 2-D (or 2-D + channel) array."""
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    a = a[:h, :w].astype(np.float64)
    return a.reshape(h // f, f, w // f, f, *a.shape[2:]).mean(axis=(1, 3))


def skimage_data(name):
    return os.path.join(os.path.dirname(skimage.__file__), "data", name)


def make_photos():
    # example.png: scikit-image `camera` (512x512 gray, CC0, Lav Varshney), 2x2 block
    # mean -> 256x256, rounded to uint8.
    cam = skio.imread(skimage_data("camera.png"))
    assert cam.shape == (512, 512), cam.shape
    out = np.clip(np.rint(block_mean(cam, 2)), 0, 255).astype(np.uint8)
    skio.imsave(os.path.join(HERE, "example.png"), out, check_contrast=False)

    # coffee_rgb.png: scikit-image `coffee` (400x600 RGB, CC0, Rachel Michetti):
    # central 384x384 crop (rows 8..392, cols 108..492), 6x6 block mean -> 64x64 RGB.
    cof = skio.imread(skimage_data("coffee.png"))
    assert cof.shape == (400, 600, 3), cof.shape
    crop = cof[8:392, 108:492, :3]
    out = np.clip(np.rint(block_mean(crop, 6)), 0, 255).astype(np.uint8)
    skio.imsave(os.path.join(HERE, "coffee_rgb.png"), out, check_contrast=False)


def make_brain(tmp):
    # brain_t1.nii.gz: ITK's KmeansTest_T1UCharRaw.nii.gz (128x128x62 int16, voxel axes
    # L, S, A: i = right->left, j = inferior->superior, k = posterior->anterior, i.e. the
    # k-slices are coronal). Keep 8 coronal slices k = 27..34 with nibabel's slicer, which
    # shifts the affine's origin accordingly; data and dtype unchanged (nibabel writes
    # scl_slope = NaN, which NIfTI readers take as "no scaling").
    subprocess.run(["apt-get", "download", "insighttoolkit5-examples"], cwd=tmp, check=True)
    deb = glob.glob(os.path.join(tmp, "insighttoolkit5-examples_*.deb"))[0]
    subprocess.run(["dpkg-deb", "-x", deb, os.path.join(tmp, "itk")], check=True)
    src = glob.glob(os.path.join(tmp, "itk", "**", "KmeansTest_T1UCharRaw.nii.gz"), recursive=True)[0]
    img = nib.load(src)
    assert img.shape == (128, 128, 62), img.shape
    assert nib.aff2axcodes(img.affine) == ("L", "S", "A")
    small = img.slicer[:, :, 27:35]
    nib.save(small, os.path.join(HERE, "brain_t1.nii.gz"))


def make_ct(tmp):
    # ct_slice.dcm: pydicom-data's 693_UNCI.dcm (512x512 CT, int16, rescale slope 1,
    # intercept -1024, explicit VR little endian). 2x2 block mean of the stored values,
    # rounded -> 256x256 int16; PixelSpacing doubled; rewritten uncompressed explicit VR
    # little endian; Modality and RescaleSlope/Intercept kept.
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                    "pydicom-data"], check=True)
    whl = glob.glob(os.path.join(tmp, "pydicom_data-*.whl"))[0]
    subprocess.run(["unzip", "-q", "-o", whl, "-d", os.path.join(tmp, "pdd")], check=True)
    src = glob.glob(os.path.join(tmp, "pdd", "**", "693_UNCI.dcm"), recursive=True)[0]
    ds = pydicom.dcmread(src)
    assert ds.Modality == "CT"
    px = ds.pixel_array
    small = np.rint(block_mean(px, 2)).astype(np.int16)
    ds.Rows, ds.Columns = small.shape
    ds.PixelSpacing = [float(v) * 2 for v in ds.PixelSpacing]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    for kw in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if kw in ds:
            delattr(ds, kw)
    ds.PixelData = small.astype("<i2").tobytes()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(os.path.join(HERE, "ct_slice.dcm"), enforce_file_format=True)
    hu = small * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    print("ct_slice.dcm HU range", hu.min(), hu.max(), "median", np.median(hu))

    # mr_frames.dcm: pydicom-data's emri_small.dcm copied unchanged (multi-frame MR,
    # 10 frames of 64x64, 12-bit, uncompressed explicit VR little endian).
    src = glob.glob(os.path.join(tmp, "pdd", "**", "emri_small.dcm"), recursive=True)[0]
    shutil.copyfile(src, os.path.join(HERE, "mr_frames.dcm"))


def main():
    make_photos()
    with tempfile.TemporaryDirectory() as tmp:
        make_brain(tmp)
        make_ct(tmp)
    for f in sorted(os.listdir(HERE)):
        print(f, os.path.getsize(os.path.join(HERE, f)))


if __name__ == "__main__":
    main()
