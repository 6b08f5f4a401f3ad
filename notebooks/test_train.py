"""pytest tests for data.py, train.py and export_prior.py (run by hand, not in CI):

    /tmp/torchenv/bin/python -m pytest -q notebooks/test_train.py

Fast: tiny networks, a few steps, synthetic stand-ins for the downloads.  The
real Fashion-MNIST files are checked too when they are already in the cache
(~/.cache/posterior-data or $POSTERIOR_DATA_CACHE); otherwise that test skips.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import data  # noqa: E402
import export_prior  # noqa: E402
import train  # noqa: E402

PY = sys.executable
TINY = ["--image_size", "8", "--in_channels", "1", "--num_channels", "32", "--channel_mult", "1",
        "--num_res_blocks", "1", "--attention_resolutions", "1", "--num_heads", "1",
        "--use_scale_shift_norm", "True", "--batch_size", "8", "--lr_warmup", "0", "--log-every", "1"]


def run_py(script, *argv):
    return subprocess.run([PY, os.path.join(HERE, script), *argv], capture_output=True, text=True)


def toy_dataset(path, n=64, size=8, seed=0):
    """A few smooth blobs: easy to learn, so the loss must drop quickly."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1
    imgs = []
    for _ in range(n):
        cy, cx = rng.uniform(-0.5, 0.5, 2)
        imgs.append(np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.2) * 2 - 1)
    arr = np.stack(imgs)[:, None].astype(np.float16)
    man = {"name": "toy", "description": "toy blobs", "to_model_range": {"scale": 1.0, "offset": 0.0},
           "split": "toy", "sources": []}
    return data.write_dataset(str(path), arr[: n - 8], arr[n - 8 :], man)


# ---------------------------------------------------------------- data recipes


def write_idx(path, imgs):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">IIII", 2051, *imgs.shape) + imgs.astype(np.uint8).tobytes())


def test_fmnist_recipe_on_stand_in(tmp_path, monkeypatch):
    root = tmp_path / "deb"
    d = root / "usr/share/datasets/fashion-mnist"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    tr = rng.integers(0, 256, (50, 28, 28))
    te = rng.integers(0, 256, (10, 28, 28))
    write_idx(d / "train-images-idx3-ubyte.gz", tr)
    write_idx(d / "t10k-images-idx3-ubyte.gz", te)
    monkeypatch.setattr(data, "fetch_deb", lambda pkg, cache: str(root))
    assert data.main(["fmnist", "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c")]) == 0
    train_arr, man = data.load_dataset(str(tmp_path / "out"), "train")
    test_arr, _ = data.load_dataset(str(tmp_path / "out"), "test")
    assert train_arr.shape == (50, 1, 32, 32) and test_arr.shape == (10, 1, 32, 32)
    assert train_arr.dtype == np.uint8
    # 2 px zero border, content unchanged, the official split kept as is
    assert not train_arr[:, :, :2].any() and not train_arr[:, :, :, -2:].any()
    np.testing.assert_array_equal(train_arr[:, 0, 2:30, 2:30], tr)
    np.testing.assert_array_equal(test_arr[:, 0, 2:30, 2:30], te)
    x = data.to_model(train_arr, man)
    assert x.min() >= -1 and x.max() <= 1 and np.isclose(data.to_model(np.uint8([255]), man)[0], 1.0)
    assert man["counts"] == {"train": 50, "test": 10}
    assert all(len(s["sha256"]) == 64 for s in man["sources"])


def test_fmnist_real_if_cached():
    cache = os.environ.get("POSTERIOR_DATA_CACHE", data.DEFAULT_CACHE)
    d = os.path.join(cache, "deb/dataset-fashion-mnist/root/usr/share/datasets/fashion-mnist")
    if not os.path.isdir(d):
        pytest.skip(f"Fashion-MNIST not in the cache ({d}); run notebooks/data.py fmnist first")
    tr = data.read_idx_images(os.path.join(d, "train-images-idx3-ubyte.gz"))
    te = data.read_idx_images(os.path.join(d, "t10k-images-idx3-ubyte.gz"))
    assert tr.shape == (60000, 28, 28) and te.shape == (10000, 28, 28)


def test_idx_reader_rejects_garbage(tmp_path):
    p = tmp_path / "bad.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"\x00" * 40)
    with pytest.raises(data.DataError):
        data.read_idx_images(str(p))


def synthetic_head(shape, zooms, seed):
    """An ellipsoid 'head' with an inner 'brain' and noise, in a NIfTI image."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[(np.arange(n) - n / 2) * z for n, z in zip(shape, zooms)], indexing="ij")
    r = sum((gi / (0.4 * n * z)) ** 2 for gi, n, z in zip(g, shape, zooms))
    vol = np.where(r < 1, 60.0, 0.0) + np.where(r < 0.7, 40.0, 0.0) + rng.normal(0, 2, shape) * (r < 1)
    return nib.Nifti1Image(vol.astype(np.float32), np.diag(list(zooms) + [1.0]))


def test_brain_recipe_on_stand_ins(tmp_path, monkeypatch):
    pytest.importorskip("nibabel")
    import nibabel as nib

    roots = {}
    layout = {
        "mricron-data": ("usr/share/mricron/templates/ch2.nii.gz", (40, 48, 40), (1.0, 1.0, 1.0), 1),
        "nilearn": ("nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                    (44, 52, 42), (1.0, 1.0, 1.0), 2),
        "insighttoolkit5-examples": (
            "usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz",
            (32, 16, 32), (2.0, 3.0, 2.0), 3),
    }
    for pkg, (rel, shape, zooms, seed) in layout.items():
        root = tmp_path / pkg
        (root / os.path.dirname(rel)).mkdir(parents=True)
        nib.save(synthetic_head(shape, zooms, seed), str(root / rel))
        roots[pkg] = str(root)
    monkeypatch.setattr(data, "fetch_deb", lambda pkg, cache: roots[pkg])
    monkeypatch.setattr(data, "fetch_wheel", lambda pkg, cache: roots[pkg])
    out = tmp_path / "out"
    assert data.main(["brain", "--out", str(out), "--cache", str(tmp_path / "c"), "--size", "32"]) == 0
    tr, man = data.load_dataset(str(out), "train")
    te, _ = data.load_dataset(str(out), "test")
    assert tr.shape[1:] == (1, 32, 32) and te.shape[1:] == (1, 32, 32) and tr.dtype == np.float16
    for a in (tr, te):
        x = data.to_model(a, man)
        assert x.min() >= -1 and x.max() <= 1
        # near-empty slices were skipped
        assert ((x > -0.8).reshape(len(x), -1).mean(1) >= 0.15 - 0.02).all()
    kept = {s["package"]: sum(s["slices_kept"].values()) for s in man["sources"]}
    assert kept["mricron-data"] + kept["nilearn"] == len(tr) and kept["insighttoolkit5-examples"] == len(te)
    assert kept["mricron-data"] < 40 + 48 + 40  # edge slices skipped
    roles = {s["package"]: s["role"] for s in man["sources"]}
    assert roles == {"mricron-data": "train", "nilearn": "train", "insighttoolkit5-examples": "test"}
    # no held-out slice appears among the training slices
    trs = {a.tobytes() for a in tr}
    assert not any(a.tobytes() in trs for a in te)


def test_square_resample_respects_spacing():
    # a 10 x 20 slice with 2 x 1 mm pixels covers 20 x 20 mm: no padding needed
    sl = np.ones((10, 20), np.float32)
    out = data.square_resample(sl, (2.0, 1.0), 16)
    assert out.shape == (16, 16) and np.allclose(out, 1.0, atol=1e-6)
    # a 10 x 20 slice with 1 x 1 mm pixels is padded top and bottom
    out = data.square_resample(sl, (1.0, 1.0), 16)
    assert np.allclose(out[8], 1.0) and np.allclose(out[0], 0.0) and np.allclose(out[-1], 0.0)


def test_ct_ellipses(tmp_path):
    out = tmp_path / "ct"
    assert data.main(["ct-ellipses", "--out", str(out), "--size", "32", "--n-train", "12", "--n-test", "4",
                      "--seed", "5"]) == 0
    tr, man = data.load_dataset(str(out), "train")
    te, _ = data.load_dataset(str(out), "test")
    assert tr.shape == (12, 1, 32, 32) and te.shape == (4, 1, 32, 32) and tr.dtype == np.float16
    assert tr.min() >= -1 and tr.max() <= 1 and te.min() >= -1 and te.max() <= 1
    # air outside the body at the corners, water-like tissue inside
    assert np.all(tr[:, 0, 0, 0] == -1)
    assert np.all(np.abs(tr[:, 0, 16, 16].astype(np.float32)) < 1)
    # seeded: the same seed gives the same phantoms; train and test streams differ
    np.testing.assert_array_equal(data.ellipse_set(5, 12, 32), tr)
    trs = {a.tobytes() for a in tr}
    assert not any(a.tobytes() in trs for a in te)
    assert man["generator"]["test_seed"] != man["generator"]["train_seed"]


def test_data_cli_bad_input(tmp_path):
    r = run_py("data.py", "nonsense", "--out", str(tmp_path))
    assert r.returncode == 2 and "invalid choice" in r.stderr and "Traceback" not in r.stderr
    r = run_py("data.py", "ct-ellipses", "--out", str(tmp_path), "--size", "2")
    assert r.returncode == 2 and "--size" in r.stderr
    with pytest.raises(data.DataError, match="manifest.json"):
        data.load_dataset(str(tmp_path / "none"))


# ---------------------------------------------------------------- training


def ckpt(out):
    import torch

    return torch.load(os.path.join(out, "ckpt", "latest.pt"), weights_only=False)


def test_loss_decreases(tmp_path):
    toy_dataset(tmp_path / "d")
    out = str(tmp_path / "run")
    assert train.main(["--data", str(tmp_path / "d"), "--out", out, *TINY, "--lr", "1e-3", "--steps", "150",
                       "--no-export"]) == 0
    losses = ckpt(out)["recent_losses"]
    assert len(losses) == 150
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < 0.6 * first, (first, last)
    rows = [json.loads(l) for l in open(os.path.join(out, "train.jsonl"))]
    assert rows[0]["event"] == "start" and rows[-1]["event"] == "stop" and rows[-1]["step"] == 150
    assert sum(1 for r in rows if "loss" in r) == 150


def test_resume_is_bit_identical(tmp_path):
    import torch

    toy_dataset(tmp_path / "d")
    common = ["--data", str(tmp_path / "d"), *TINY, "--flip", "True", "--no-export"]
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert train.main([*common, "--out", a, "--steps", "8"]) == 0
    assert train.main([*common, "--out", b, "--steps", "3"]) == 0
    assert train.main([*common, "--out", b, "--steps", "8"]) == 0
    ca, cb = ckpt(a), ckpt(b)
    assert ca["step"] == cb["step"] == 8
    for part in ("model", "ema"):
        for k in ca[part]:
            assert torch.equal(ca[part][k], cb[part][k]), (part, k)
    assert ca["recent_losses"] == cb["recent_losses"]
    assert torch.equal(ca["gen"], cb["gen"])


def test_resume_refuses_other_config(tmp_path, capsys):
    toy_dataset(tmp_path / "d")
    out = str(tmp_path / "r")
    common = ["--data", str(tmp_path / "d"), "--out", out, *TINY, "--no-export", "--steps", "1"]
    assert train.main(common) == 0
    assert train.main([*common, "--lr", "5e-4"]) == 1
    assert "different configuration" in capsys.readouterr().err
    assert train.main([*common, "--lr", "5e-4", "--fresh"]) == 0


def test_train_cli_bad_input(tmp_path):
    r = run_py("train.py", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "manifest.json" in r.stderr and "Traceback" not in r.stderr
    toy_dataset(tmp_path / "d")
    r = run_py("train.py", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--image_size", "16")
    assert r.returncode == 1 and "expects" in r.stderr and "Traceback" not in r.stderr
    r = run_py("train.py", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), "--batch_size", "0")
    assert r.returncode == 2 and "--batch_size" in r.stderr
    r = run_py("train.py", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o"), *TINY,
               "--channel_mult", "1,x")
    assert r.returncode == 1 and "channel_mult" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------- export


def test_export_round_trip(tmp_path):
    import torch
    from safetensors.torch import load_file

    import adm
    import convert_checkpoint as cc

    toy_dataset(tmp_path / "d")
    out = str(tmp_path / "prior")
    assert train.main(["--data", str(tmp_path / "d"), "--out", out, *TINY, "--steps", "4", "--sanity-n", "4",
                       "--name", "toy-8"]) == 0
    card = json.load(open(os.path.join(out, "model.json")))
    assert card["format"] == cc.CARD_FORMAT and card["name"] == "toy-8"
    assert card["weights"] == {"file": "model.safetensors", "dtype": "f16"}
    assert card["training"]["steps"] == 4 and card["training"]["final_loss"] > 0
    assert card["training_data"]["name"] == "toy" and card["intensity_range"] == [-1.0, 1.0]
    rows = card["sanity"]["rows"]
    assert [r["t"] for r in rows] == list(export_prior.SANITY_T) and card["sanity"]["images"] == 4
    assert all(np.isfinite(r["psnr_tweedie_db"]) for r in rows)
    sd = load_file(os.path.join(out, "model.safetensors"))
    ema = ckpt(out)["ema"]
    assert set(sd) == set(ema)
    for k in sd:
        assert sd[k].dtype == torch.float16
        assert torch.equal(sd[k], ema[k].to(torch.float16))
    # the stored weights load strictly into the architecture the card's flags describe
    model = adm.create_model(**{k: card["flags"][k] for k in cc.MODEL_KEYS})
    cc.check_and_load(model, sd)
    assert not os.path.exists(os.path.join(out, ".export.tmp"))


def test_export_cli_bad_input(tmp_path):
    r = run_py("export_prior.py", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    r = run_py("export_prior.py", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "o"))
    assert r.returncode == 1 and "cannot read" in r.stderr and "Traceback" not in r.stderr


def test_init_from_an_exported_prior(tmp_path):
    """--init-from starts from exported weights (not a random init), and the new card counts
    the earlier steps under training.initialised_from; a file of another shape is refused."""
    import torch
    from safetensors.torch import load_file

    toy_dataset(tmp_path / "d")
    first = str(tmp_path / "first")
    assert train.main(["--data", str(tmp_path / "d"), "--out", first, *TINY, "--steps", "3", "--sanity-n", "4"]) == 0
    second = str(tmp_path / "second")
    a = train.parse_args(["--data", str(tmp_path / "d"), "--out", second, *TINY, "--steps", "2", "--sanity-n", "4",
                          "--init-from", first])
    tr = train.Trainer(a)
    sd = load_file(os.path.join(first, "model.safetensors"))
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v, sd[k].to(v.dtype)), k
    assert train.main(["--data", str(tmp_path / "d"), "--out", second, *TINY, "--steps", "2", "--sanity-n", "4",
                       "--init-from", first]) == 0
    card = json.load(open(os.path.join(second, "model.json")))
    assert card["training"]["steps"] == 2
    assert card["training"]["initialised_from"]["steps"] == 3
    other = [x if x != "32" else "64" for x in TINY]  # --num_channels 64: shapes differ
    r = run_py("train.py", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "third"), *other,
               "--steps", "1", "--init-from", first)
    assert r.returncode == 1 and "does not fit this configuration" in r.stderr, r.stderr
