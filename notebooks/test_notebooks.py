"""pytest tests for adm.py and convert_checkpoint.py (run: pytest notebooks/).

Needs torch, numpy, safetensors (see requirements.txt).  ~20 s on 2 cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import adm  # noqa: E402
import convert_checkpoint as cc  # noqa: E402
import make_golden as mg  # noqa: E402

SMALL = {
    "image_size": 16,
    "num_channels": 32,
    "num_res_blocks": 1,
    "channel_mult": "1,2",
    "attention_resolutions": "8",
    "num_heads": 2,
    "num_head_channels": -1,
    "num_heads_upsample": -1,
    "learn_sigma": True,
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "use_new_attention_order": False,
}
SMALL_ARGV = [f"--{k}={v}" for k, v in SMALL.items()]


def test_ffhq256_structure():
    # key names / shapes worked out by hand from guided-diffusion, and the
    # parameter count by an independent per-block formula.
    assert mg.check_ffhq256() == 93_563_910


def test_defaults_match_script_util():
    assert adm.parse_channel_mult("", 256) == (1, 1, 2, 2, 4, 4)
    assert adm.parse_channel_mult("", 64) == (1, 2, 3, 4)
    assert adm.parse_channel_mult("1,2,2", 32) == (1, 2, 2)
    assert adm.parse_attention_resolutions("32,16,8", 256) == (8, 16, 32)
    with pytest.raises(ValueError, match="unsupported image size"):
        adm.parse_channel_mult("", 48)
    with pytest.raises(ValueError, match="attention_resolutions"):
        adm.parse_attention_resolutions("16,x", 256)


def test_timestep_embedding_formula():
    t = torch.tensor([0, 1, 999])
    e = adm.timestep_embedding(t, 8).double().numpy()
    for n, tv in enumerate([0, 1, 999]):
        for i in range(4):
            f = math.exp(-math.log(10000) * i / 4)
            assert abs(e[n, i] - math.cos(tv * f)) < 2e-4  # f32 argument rounding at t=999
            assert abs(e[n, 4 + i] - math.sin(tv * f)) < 2e-4
    assert adm.timestep_embedding(t, 7).shape == (3, 7)
    assert torch.all(adm.timestep_embedding(t, 7)[:, -1] == 0)


@pytest.mark.parametrize("new_order", [False, True])
def test_attention_against_naive_loop(new_order):
    torch.manual_seed(0)
    blk = adm.AttentionBlock(64, num_heads=4, use_new_attention_order=new_order).double()
    mg_like = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in blk.parameters():
            p.copy_(torch.randn(p.shape, generator=mg_like, dtype=p.dtype) * 0.2)
    x = torch.randn(2, 64, 3, 5, dtype=torch.float64)
    got = blk(x)
    # naive: per batch, per head, softmax(q^T k / sqrt(ch)) applied to v
    xn = blk.norm(x.reshape(2, 64, 15))
    qkv = blk.qkv(xn)  # (2, 192, 15)
    want = torch.zeros(2, 64, 15, dtype=torch.float64)
    ch = 16
    for b in range(2):
        for h in range(4):
            if new_order:
                q = qkv[b, h * ch : (h + 1) * ch]
                k = qkv[b, 64 + h * ch : 64 + (h + 1) * ch]
                v = qkv[b, 128 + h * ch : 128 + (h + 1) * ch]
            else:
                base = h * 3 * ch
                q, k, v = (qkv[b, base + j * ch : base + (j + 1) * ch] for j in range(3))
            w = torch.softmax(q.T @ k / math.sqrt(ch), dim=-1)  # (t, s)
            want[b, h * ch : (h + 1) * ch] = v @ w.T
    want = x.reshape(2, 64, 15) + blk.proj_out(want)
    err = (got.reshape(2, 64, 15) - want).abs().max().item()
    assert err < 1e-12, err


def test_beta_schedules():
    b = adm.named_beta_schedule("linear", 1000)
    assert len(b) == 1000 and b[0] == pytest.approx(1e-4) and b[-1] == pytest.approx(0.02)
    b = adm.named_beta_schedule("linear", 250)  # scaled by 1000/T
    assert b[0] == pytest.approx(4e-4) and b[-1] == pytest.approx(0.08)
    c = adm.named_beta_schedule("cosine", 1000)
    abar = np.cumprod(1 - np.array(c))
    assert abar[499] == pytest.approx(
        math.cos((0.5 + 0.008) / 1.008 * math.pi / 2) ** 2 / math.cos(0.008 / 1.008 * math.pi / 2) ** 2, rel=1e-9
    )
    assert max(c) <= 0.999
    with pytest.raises(ValueError):
        adm.named_beta_schedule("quadratic", 10)


def _fake_checkpoint(tmp_path, flags, seed=0):
    m = adm.create_model(**flags)
    mg.randomise(m, seed)
    path = tmp_path / "ckpt.pt"
    torch.save(m.state_dict(), path)
    return m, path


def _run(argv):
    return subprocess.run(
        [sys.executable, os.path.join(HERE, "convert_checkpoint.py"), *argv], capture_output=True, text=True
    )


@pytest.mark.parametrize("dtype", ["f32", "f16"])
def test_convert_roundtrip(tmp_path, dtype):
    from safetensors.numpy import load_file

    m, ckpt = _fake_checkpoint(tmp_path, SMALL)
    out = tmp_path / "prior"
    r = _run([str(ckpt), "--out", str(out), *SMALL_ARGV, "--dtype", dtype, "--diffusion_steps", "500"])
    assert r.returncode == 0, r.stderr
    st = load_file(str(out / "model.safetensors"))
    sd = m.state_dict()
    assert set(st) == set(sd)
    for k, v in sd.items():
        want = v.numpy().astype(np.float16 if dtype == "f16" else np.float32)
        assert st[k].dtype == want.dtype and st[k].shape == want.shape
        assert np.array_equal(st[k], want), k
    card = json.loads((out / "model.json").read_text())
    a = card["architecture"]
    assert a["channel_mult"] == [1, 2] and a["attention_resolutions"] == [2]
    assert a["out_channels"] == 6 and a["in_channels"] == 3 and a["num_heads_upsample"] == 2
    assert a["num_parameters"] == sum(v.numel() for v in sd.values())
    assert card["schedule"]["diffusion_steps"] == 500 and card["intensity_range"] == [-1.0, 1.0]
    assert card["weights"] == {"file": "model.safetensors", "dtype": dtype}
    assert card["source_checkpoint"] == "ckpt.pt"


def test_convert_reports_mismatch(tmp_path):
    _, ckpt = _fake_checkpoint(tmp_path, SMALL)
    argv = [a for a in SMALL_ARGV if not a.startswith("--learn_sigma")] + ["--learn_sigma", "False"]
    r = _run([str(ckpt), "--out", str(tmp_path / "p"), *argv])
    assert r.returncode != 0
    assert "out.2.weight" in r.stderr and "(6, 32, 3, 3)" in r.stderr and "(3, 32, 3, 3)" in r.stderr
    assert not (tmp_path / "p").exists()
    argv = [a for a in SMALL_ARGV if not a.startswith("--resblock_updown")] + ["--resblock_updown", "False"]
    r = _run([str(ckpt), "--out", str(tmp_path / "p"), *argv])
    assert r.returncode != 0 and "unexpected key" in r.stderr and "missing" in r.stderr


def test_convert_bad_inputs(tmp_path):
    r = _run([str(tmp_path / "nope.pt"), "--out", str(tmp_path / "p")])
    assert r.returncode != 0 and "does not exist" in r.stderr
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    r = _run([str(bad), "--out", str(tmp_path / "p")])
    assert r.returncode != 0 and "cannot read" in r.stderr
    torch.save({"a": 1}, tmp_path / "notsd.pt")
    r = _run([str(tmp_path / "notsd.pt"), "--out", str(tmp_path / "p")])
    assert r.returncode != 0 and "state dict" in r.stderr
    r = _run([str(bad), "--out", str(tmp_path / "p"), "--learn_sigma", "maybe"])
    assert r.returncode != 0 and "boolean value expected" in r.stderr
    r = _run([str(bad), "--out", str(tmp_path / "p"), "--image_size", "48"])
    assert r.returncode != 0 and "unsupported image size" in r.stderr


def test_goldens_reproduce():
    """The committed fixtures are what the stored weights compute now."""
    from safetensors.numpy import load_file

    root = os.path.join(HERE, "..", "tests", "data", "adm")
    for name, cfg in mg.CONFIGS.items():
        d = os.path.join(root, name)
        card = json.load(open(os.path.join(d, "model.json")))
        flags = dict(mg.BASE_FLAGS)
        flags.update(cfg["flags"])
        assert card["flags"]["num_res_blocks"] == flags["num_res_blocks"]
        m = adm.create_model(**{k: flags[k] for k in cc.MODEL_KEYS}).double()
        st = load_file(os.path.join(d, "model.safetensors"))
        m.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in st.items()}, strict=True)
        x = np.load(os.path.join(d, "x.npy"))
        t = np.load(os.path.join(d, "t.npy"))
        v = np.load(os.path.join(d, "v.npy"))
        out, vjp = mg.reference_forward_vjp(m, x, t, v)
        assert np.allclose(out, np.load(os.path.join(d, "out.npy")), rtol=0, atol=1e-6 * np.abs(out).max())
        assert np.allclose(vjp, np.load(os.path.join(d, "vjp.npy")), rtol=0, atol=1e-6 * np.abs(vjp).max())
        # and the VJP is the true gradient: directional finite difference
        xt = torch.from_numpy(x.astype(np.float64))
        dx = torch.from_numpy(np.random.default_rng(0).standard_normal(x.shape))
        eps = 1e-5
        with torch.no_grad():
            fp = (m(xt + eps * dx, torch.from_numpy(t)) * torch.from_numpy(v.astype(np.float64))).sum()
            fm = (m(xt - eps * dx, torch.from_numpy(t)) * torch.from_numpy(v.astype(np.float64))).sum()
        fd = ((fp - fm) / (2 * eps)).item()
        assert fd == pytest.approx(float((vjp * dx.numpy()).sum()), rel=1e-6)


def test_hash_generator():
    # reference values: FNV-1a("a"), splitmix64 first output from state 0
    assert mg.fnv1a64("a") == 0xAF63DC4C8601EC8C
    assert mg.fnv1a64("") == 0xCBF29CE484222325

    # pure-Python splitmix64 against the vectorised one
    def sm(z):
        m = (1 << 64) - 1
        z = (z + 0x9E3779B97F4A7C15) & m
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
        return z ^ (z >> 31)

    assert sm(0) == 0xE220A8397B1DCDAF
    u = mg.hash_unit("time_embed.0.weight", 7)
    s = mg.fnv1a64("time_embed.0.weight")
    for i in range(7):
        assert u[i] == np.float32((sm(s ^ i) >> 40) / 2.0**23 - 1.0)
    # the "1-D weight = GroupNorm scale" rule holds for the FFHQ-256 model
    m = adm.create_model(**adm.FFHQ256_FLAGS)
    for k, p in m.named_parameters():
        if p.dim() == 1 and k.endswith("weight"):
            assert isinstance(m.get_submodule(k.rsplit(".", 1)[0]), torch.nn.GroupNorm), k
    w = mg.hash_param("out.0.weight", (128,))
    assert w.dtype == np.float32 and np.all(np.abs(w - 1) <= 0.1 * math.sqrt(3) + 1e-6)


def test_ffhq256_hash_fixture_consistent():
    """check.json's generator values agree with hash_param / hash_unit (the
    forward itself takes ~1 min in f64; make_golden.py --ffhq256 recomputes it)."""
    d = os.path.join(HERE, "..", "tests", "data", "adm", "ffhq256_hash")
    check = json.load(open(os.path.join(d, "check.json")))
    m = adm.create_model(**adm.FFHQ256_FLAGS)
    shapes = {k: tuple(p.shape) for k, p in m.named_parameters()}
    for k, first in check["weights_first"].items():
        assert mg.hash_param(k, shapes[k]).ravel()[:4].tolist() == first, k
    for k, s in check["weights_sum_f64"].items():
        assert mg.hash_param(k, shapes[k]).astype(np.float64).sum() == pytest.approx(s, rel=1e-12)
    assert mg.hash_unit("input.x", 4).tolist() == check["x_first"]
    assert mg.hash_unit("input.v", 4).tolist() == check["v_first"]
    rows = np.load(os.path.join(d, "rows.npy"))
    assert rows[0] == 0 and rows[-1] == 255 and len(rows) == 30
    assert np.load(os.path.join(d, "out_sub.npy")).shape == (2, 6, 30, 30)
    assert np.load(os.path.join(d, "vjp_sub.npy")).shape == (2, 3, 30, 30)
