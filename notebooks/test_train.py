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


def brain_stand_ins(tmp_path, monkeypatch):
    """Synthetic heads at every brain source's path (the fetchers return their roots)."""
    import nibabel as nib

    roots = {}
    shapes = {  # id -> (shape, zooms, seed)
        "colin27": ((40, 48, 40), (1.0, 1.0, 1.0), 1),
        "colin27-hires": ((72, 88, 72), (0.5, 0.5, 0.5), 4),
        "colin27-brain": ((40, 48, 40), (1.0, 1.0, 1.0), 5),
        "mni152": ((44, 52, 42), (1.0, 1.0, 1.0), 2),
        "itk-kmeans": ((32, 16, 32), (2.0, 3.0, 2.0), 3),
    }
    for src in data.BRAIN_SOURCES:
        root = tmp_path / src["package"]
        rel = root / src["path"]
        rel.parent.mkdir(parents=True, exist_ok=True)
        if src["kind"] == "slice":
            img = np.asarray(synthetic_head((48, 3, 48), (1.0, 1.0, 1.0), 6).get_fdata())[:, 1, :]
            np.save(str(rel), np.flipud(img.T))
        else:
            shape, zooms, seed = shapes[src["id"]]
            nib.save(synthetic_head(shape, zooms, seed), str(rel))
        roots[src["package"]] = str(root)
    monkeypatch.setattr(data, "fetch_deb", lambda pkg, cache: roots[pkg])
    monkeypatch.setattr(data, "fetch_wheel", lambda pkg, cache: roots[pkg])
    return roots


def test_brain_recipe_on_stand_ins(tmp_path, monkeypatch):
    pytest.importorskip("nibabel")
    brain_stand_ins(tmp_path, monkeypatch)
    out = tmp_path / "out"
    assert data.main(["brain", "--out", str(out), "--cache", str(tmp_path / "c"), "--size", "32",
                      "--augment", "40", "--workers", "1"]) == 0
    tr, man = data.load_dataset(str(out), "train")
    te, _ = data.load_dataset(str(out), "test")
    assert tr.shape[1:] == (1, 32, 32) and te.shape[1:] == (1, 32, 32) and tr.dtype == np.float16
    for a in (tr, te):
        x = data.to_model(a, man)
        assert x.min() >= -1 and x.max() <= 1
        # near-empty slices were skipped (and augmented ones redrawn)
        assert ((x > -0.8).reshape(len(x), -1).mean(1) >= 0.15 - 0.02).all()
    src = {s["id"]: s for s in man["sources"]}
    base = sum(sum(s["slices_kept"].values()) for s in man["sources"] if s["role"] == "train")
    assert man["base_slices"] == base and base + 40 == len(tr)
    assert sum(s["augmented_slices"] for s in man["sources"] if s["role"] == "train") == 40
    assert sum(src["itk-kmeans"]["slices_kept"].values()) == len(te)
    assert sum(src["colin27"]["slices_kept"].values()) < 40 + 48 + 40  # edge slices skipped
    # the 0.5 mm volume is sliced 1 mm apart: at most its extent in mm per view
    assert sum(src["colin27-hires"]["slices_kept"].values()) <= 36 + 44 + 36
    assert src["dipy-coronal"]["slices_kept"] == {"coronal": 1}
    assert {k: v["role"] for k, v in src.items()}["itk-kmeans"] == "test"
    assert [k for k, v in src.items() if v["role"] == "train"] == data.BRAIN_TRAIN_DEFAULT.split(",")
    # no held-out slice appears among the training slices
    trs = {a.tobytes() for a in tr}
    assert not any(a.tobytes() in trs for a in te)
    # augmented slices differ from every base slice
    assert not any(tr[i].tobytes() in {b.tobytes() for b in tr[:base]} for i in range(base, len(tr)))
    # the set does not depend on how many processes render it
    out2 = tmp_path / "out2"
    assert data.main(["brain", "--out", str(out2), "--cache", str(tmp_path / "c"), "--size", "32",
                      "--augment", "40", "--workers", "2"]) == 0
    assert np.array_equal(data.load_dataset(str(out2), "train")[0], tr)


def test_brain_recipe_sources_and_errors(tmp_path, monkeypatch, capsys):
    pytest.importorskip("nibabel")
    brain_stand_ins(tmp_path, monkeypatch)
    out = tmp_path / "v1"
    # the shipped brain-mri's sources, no augmentation
    assert data.main(["brain", "--out", str(out), "--cache", str(tmp_path / "c"), "--size", "32",
                      "--volumes", data.BRAIN_V1, "--augment", "0"]) == 0
    tr, man = data.load_dataset(str(out), "train")
    assert [s["id"] for s in man["sources"]] == ["colin27", "mni152", "itk-kmeans"]
    assert len(tr) == man["base_slices"]
    assert data.main(["brain", "--out", str(out), "--cache", str(tmp_path / "c"), "--volumes", "colin27,nope"]) == 1
    assert "nope" in capsys.readouterr().err
    assert data.main(["brain", "--out", str(out), "--cache", str(tmp_path / "c"), "--volumes", "itk-kmeans"]) == 1


def asymmetric_volume():
    """A head with a bright blob right-anterior-superior of centre: any orientation slip shows."""
    shape, z = (40, 48, 44), (1.0, 1.0, 1.0)
    g = np.meshgrid(*[np.arange(n) - n / 2 for n in shape], indexing="ij")
    r = sum((gi / (0.4 * n)) ** 2 for gi, n in zip(g, shape))
    vol = np.where(r < 1, 0.4, 0.0)
    blob = (g[0] - 6) ** 2 + (g[1] - 8) ** 2 + (g[2] - 5) ** 2 < 16
    vol[blob] = 1.0
    return vol.astype(np.float32), z


@pytest.mark.parametrize("view,axis", [("sagittal", 0), ("coronal", 1), ("axial", 2)])
def test_augment_identity_cut_matches_the_base_slices(view, axis):
    """With no jitter, augment.render cuts the same slice as volume_slices shows (orientation,
    field of view, centring), up to the two resamplers' difference."""
    import torch

    import augment

    vol, z = asymmetric_volume()
    size = 32
    base, _, kept = data.volume_slices(vol, z, size, min_fraction=0.0)
    t = torch.from_numpy(vol)[None, None]
    through_blob = vol.shape[axis] // 2 + (6, 8, 5)[axis]
    sl = base[kept.index((view, through_blob))]
    got = augment.render(t, vol.shape, z, view, through_blob, size, augment.Jitter.identity(), 4)
    err = np.abs(got - sl).mean()
    assert err < 0.01, (view, err)
    # a cut mirrored up-down or left-right (an orientation slip) differs by far more
    assert np.abs(got[::-1] - sl).mean() > 3 * err and np.abs(got[:, ::-1] - sl).mean() > 3 * err


def test_augment_flip_mirrors_left_right():
    import torch

    import augment

    vol, z = asymmetric_volume()
    t = torch.from_numpy(vol)[None, None]
    j = augment.Jitter.identity()
    a = augment.render(t, vol.shape, z, "axial", 27, 32, j, 2)
    j.flip = True
    b = augment.render(t, vol.shape, z, "axial", 27, 32, j, 2)
    assert np.allclose(a[:, ::-1], b, atol=1e-5)


def test_augment_draws_are_seeded_and_bounded():
    import augment

    cfg = augment.DEFAULTS
    a = augment.draw(np.random.default_rng([0, 5]), cfg)
    b = augment.draw(np.random.default_rng([0, 5]), cfg)
    assert a.angle == b.angle and np.array_equal(a.elastic, b.elastic)
    for i in range(200):
        j = augment.draw(np.random.default_rng([1, i]), cfg)
        assert abs(j.angle) <= np.radians(cfg["rotate_deg"]) and abs(j.tilt_row) <= np.radians(cfg["tilt_deg"])
        assert cfg["zoom_min"] <= j.zoom <= cfg["zoom_max"] and abs(j.slice_offset) <= 0.5
        assert cfg["gamma_min"] <= j.gamma <= cfg["gamma_max"]
    flat = augment.draw(np.random.default_rng([1, 0]), cfg, three_d=False)
    assert flat.tilt_row == flat.tilt_col == flat.slice_offset == 0.0


def test_pack_sources_makes_an_offline_cache(tmp_path, monkeypatch):
    pytest.importorskip("nibabel")
    roots = brain_stand_ins(tmp_path, monkeypatch)
    cache = tmp_path / "c"
    for src in data.BRAIN_SOURCES:  # the markers fetch_* leaves
        kind = "deb" if src["registry"] == "debian" else "wheel"
        (cache / kind / src["package"]).mkdir(parents=True, exist_ok=True)
        (cache / kind / src["package"] / "done").write_text("x\n")
    packed = tmp_path / "packed"
    assert data.main(["pack", "brain", "--out", str(packed), "--cache", str(cache)]) == 0
    monkeypatch.undo()  # real fetchers: they must find everything in the packed cache
    out = tmp_path / "out"
    assert data.main(["brain", "--out", str(out), "--cache", str(packed), "--size", "16", "--augment", "4",
                      "--workers", "1"]) == 0
    del roots


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


def test_train_gpu_sh_runs_end_to_end_on_the_cpu(tmp_path):
    """The GPU run's one command, on the CPU with a tiny budget: renders the data from a packed
    source cache, continues the shipped fmnist-32 (same architecture), exports a card with steps,
    minutes and both checks, and the gate keeps the shipped prior (a few steps on noise images do
    not improve it). Slow: 2-5 minutes (the budget is 5; the run may end early)."""
    cache = tmp_path / "src"
    d = cache / "deb" / "dataset-fashion-mnist" / "root" / "usr/share/datasets/fashion-mnist"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(d / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (64, 28, 28)))
    write_idx(d / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, (16, 28, 28)))
    (cache / "deb" / "dataset-fashion-mnist" / "done").write_text("stand-in\n")
    out = tmp_path / "out"
    r = subprocess.run(
        ["bash", os.path.join(HERE, "train_gpu.sh"), "--device", "cpu", "--minutes", "5", "--priors", "fmnist-32",
         "--sources", str(cache), "--out", str(out), "--sample-steps", "2", "--sample-n", "4", "--sanity-n", "4",
         "--overhead-s", "100", "--threads", "1"],
        env={**os.environ, "PYTHON": PY, "TMPDIR": str(tmp_path)}, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    report = (out / "report.md").read_text()
    assert "| fmnist-32 | fmnist-32, " in report, report
    card = json.load(open(out / "runs" / "fmnist-32" / "model.json"))
    tr = card["training"]
    assert tr["steps"] >= 1 and tr["train_minutes"] > 0
    shipped = json.load(open(os.path.join(HERE, "..", "priors", "fmnist-32", "model.json")))["training"]
    assert tr["initialised_from"]["steps"] == shipped["steps"]  # continued from the shipped weights
    assert card["sanity"]["samples"]["sampler"]["steps"] == 2 and len(card["sanity"]["rows"]) == 6
    gate = json.load(open(out / "runs" / "fmnist-32" / "gate.json"))
    assert gate["old"] is not None and gate["settings"]["sample_steps"] == 2
    assert (out / "priors" / "fmnist-32" / "model.json").exists() == gate["ship"]
    assert not gate["ship"], gate["why"]


def test_ship_gate_verdicts():
    import ship_gate

    old = {"mean_tweedie_psnr_db": 25.0, "outside": 5, "samples": 32, "passes": False}
    better = {"mean_tweedie_psnr_db": 25.5, "outside": 1, "samples": 32, "passes": True, "gain_t250_db": 12.0}
    assert ship_gate.verdict(better, old)[0]
    assert not ship_gate.verdict({**better, "mean_tweedie_psnr_db": 24.9}, old)[0]  # denoising worse
    assert not ship_gate.verdict({**better, "outside": 6, "passes": False}, old)[0]  # samples worse
    assert not ship_gate.verdict({**better, "outside": 5, "passes": False}, old)[0]  # as bad, still failing
    assert ship_gate.verdict(better, None)[0]  # a new preset that passes
    assert not ship_gate.verdict({**better, "gain_t250_db": 5.0}, None)[0]
    assert not ship_gate.verdict({**better, "passes": False}, None)[0]


def test_loss_weights():
    abar = np.array([0.999, 0.5, 0.01])
    assert np.allclose(train.loss_weights("eps", abar), 1.0)
    w = train.loss_weights("min-snr", abar, 5.0)
    snr = abar / (1 - abar)
    # clean steps (SNR 999) weighted 5 / 999; SNR <= 5 weighted 1
    assert np.allclose(w, [5 / snr[0], 1.0, 1.0])
    with pytest.raises(ValueError):
        train.loss_weights("nope", abar)


def test_sample_check_grid_matches_the_rust_knots():
    """sample_check.ddim_grid reproduces the Rust Schedule::knots for the discrete linear VP path:
    t from 1 to 1/T, a(1/T)^2 = abar_0 = 1 - beta_0 exactly, a(1)^2 = abar_{T-1}, then clean."""
    import adm
    import sample_check

    card = {"schedule": {"noise_schedule": "linear", "diffusion_steps": 1000}}
    la = sample_check.log_abar_knots(card)
    grid = sample_check.ddim_grid(la, 5)
    betas = np.asarray(adm.named_beta_schedule("linear", 1000), dtype=np.float64)
    abar = np.cumprod(1 - betas)
    assert grid[0][0] == 1.0 and abs(grid[0][1] ** 2 - abar[-1]) < 1e-12
    assert abs(grid[4][0] - 1e-3) < 1e-15 and abs(grid[4][1] ** 2 - abar[0]) < 1e-12
    assert grid[-1] == (0.0, 1.0, 0.0)
    for t, a, s in grid[:-1]:
        assert abs(a * a + s * s - 1) < 1e-12


STUB_PYTHON = r'''#!/usr/bin/env bash
# Stands in for python in train_gpu.sh: renders take STUB_DELAY_<set> seconds, training and the
# gate are instant; every script call is logged to $STUB_LOG.
if [ "$1" = -c ]; then exec "$REAL_PY" "$@"; fi
script=$(basename "$1"); shift
echo "$script $*" >>"$STUB_LOG"
arg() { local k=$1; shift; while [ $# -gt 0 ]; do [ "$1" = "$k" ] && { echo "$2"; return; }; shift; done; }
case $script in
  data.py)
    out=$(arg --out "$@"); set_=$(basename "$out"); d=STUB_DELAY_${set_//-/_}
    sleep "${!d:-0}"; mkdir -p "$out"; echo '{}' >"$out/manifest.json" ;;
  train.py)
    out=$(arg --out "$@"); mkdir -p "$out"; : >"$out/model.safetensors"; : >"$out/train.jsonl"
    echo '{"training": {"steps": 3, "train_minutes": 0.1}}' >"$out/model.json" ;;
  ship_gate.py) echo "KEEP the old prior: stub"; exit 3 ;;
esac
'''


def test_train_gpu_sh_trains_whichever_prior_is_ready_first(tmp_path):
    """Queue order with stand-in scripts: brain-mri comes first by priority but its data takes
    longer to render, so fmnist-32 trains first and brain-mri next; every prior gets a report
    line and a gate run, and nothing is shipped when the gate says keep."""
    stub = tmp_path / "python"
    stub.write_text(STUB_PYTHON)
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": str(stub), "REAL_PY": PY, "STUB_LOG": str(log), "TMPDIR": str(tmp_path),
           "STUB_DELAY_brain_64": "4", "STUB_DELAY_fmnist": "0"}
    r = subprocess.run(["bash", os.path.join(HERE, "train_gpu.sh"), "--device", "cpu", "--minutes", "3",
                        "--priors", "brain-mri fmnist-32", "--sources", str(tmp_path), "--out", str(out),
                        "--overhead-s", "5"], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    trains = [line.split("--name ")[1].split()[0] for line in log.read_text().splitlines()
              if line.startswith("train.py")]
    assert trains == ["fmnist-32", "brain-mri"], trains
    report = (out / "report.md").read_text()
    assert report.count("KEEP the old prior: stub") == 2, report
    assert not any((out / "priors").iterdir())
    # each continues from the shipped weights when compatible
    assert all("--init-if-compatible" in line for line in log.read_text().splitlines() if line.startswith("train.py"))


def test_speed_flags_and_min_snr_train_and_resume(tmp_path):
    """--bf16 and --channels-last train (on the CPU too) to the same neighbourhood as f32: after
    the same 6 steps from the same start, the weights differ only by bf16 rounding; the speed flags
    are not part of the resume configuration; min-snr is, and its loss is the weighted one."""
    import torch

    toy_dataset(tmp_path / "d")
    common = ["--data", str(tmp_path / "d"), *TINY, "--no-export", "--steps", "6"]
    assert train.main([*common, "--out", str(tmp_path / "f32")]) == 0
    assert train.main([*common, "--out", str(tmp_path / "fast"), "--bf16", "--channels-last"]) == 0
    a, b = ckpt(str(tmp_path / "f32")), ckpt(str(tmp_path / "fast"))
    va = torch.cat([v.flatten() for v in a["model"].values()])
    vb = torch.cat([v.flatten() for v in b["model"].values()])
    rel = ((va - vb).norm() / va.norm()).item()
    assert 0 < rel < 1e-3, rel  # bf16 changes the rounding, not the training
    # the same losses up to bf16 rounding (relative 2^-8 per op; 2% is generous, a wrong loss is not)
    assert all(abs(x - y) < 0.02 * abs(x) for x, y in zip(a["recent_losses"], b["recent_losses"]))
    # resuming the bf16 run without the speed flags is allowed; the held-out curve is logged
    assert train.main([*common[:-1], "8", "--out", str(tmp_path / "fast"), "--heldout-every", "1"]) == 0
    with open(tmp_path / "fast" / "train.jsonl") as f:
        pts = [json.loads(line) for line in f if '"heldout"' in line]
    assert [p["step"] for p in pts] == [7, 8] and all(p["heldout_eps_mse"] > 0 and p["train_eps_mse"] > 0
                                                      for p in pts)
    # min-snr: a different configuration for resume purposes
    assert train.main([*common, "--out", str(tmp_path / "f32"), "--loss_weight", "min-snr"]) == 1
    assert train.main([*common, "--out", str(tmp_path / "snr"), "--loss_weight", "min-snr"]) == 0
    c = ckpt(str(tmp_path / "snr"))
    assert c["config"]["loss_weight"] == "min-snr"
    # weighted losses are smaller than plain ones (every weight <= 1, most clean steps << 1)
    assert sum(c["recent_losses"]) < sum(a["recent_losses"])
    del torch
