#!/usr/bin/env python3
"""Fixtures for `posterior import` and the checkpoint formats (run by hand; CI has no PyTorch).

    python notebooks/make_ckpt_fixtures.py [--out tests/data/ckpt]

Writes into OUT/:

gd/        a guided-diffusion checkpoint as training scripts save it: `ema.pt`, the nested
           {'ema': state_dict, 'step': 1200} (official key layout, f16 tensors) holding the
           weights of tests/data/adm/plain_conv_f16; `args.json`, the converter flags; and
           `converted.json`, the card notebooks/convert_checkpoint.py writes for it (its
           model.safetensors is checked here to equal tests/data/adm/plain_conv_f16's, so
           the test compares against that file instead of a second copy).
diffusers/ a diffusers UNet2DModel directory as `save_pretrained` writes it (config.json,
           diffusion_pytorch_model.safetensors; random weights, small config exercising
           attention, freq_shift 1 and sine-first embedding) with a DDPMScheduler
           `scheduler_config.json` beside it (scaled_linear betas, v_prediction); golden
           x.npy, t.npy (int64 steps), out.npy = unet(x, t).sample, v.npy, vjp.npy =
           d/dx sum(out * v), x0.npy = sqrt(abar_t) x - sqrt(1 - abar_t) out (the scheduler's
           prediction of the clean image).
edm/       an EDM DhariwalUNet under EDMPrecond: `edm.pt`, the wrapper's state dict (keys
           `model.*`, resample_filter buffers included, f16) from notebooks/edm_reference.py;
           `model.json`, a posterior-card/2 naming it; golden x_in.npy, labels.npy (c_noise),
           out.npy = F(x_in, labels), v.npy, vjp.npy; x.npy, sigma.npy, denoised.npy =
           D(x; sigma).
song_ddpmpp/, song_ncsnpp/, song_skip/
           EDM SongUNets from notebooks/edm_reference.py (checked against NVlabs/edm's own
           classes, see its docstring), each a wrapper state dict `song.pt` (f16) with its
           `model.json` and the same goldens as edm/: DDPM++ (EDM's ddpmpp preset scaled down:
           an input conv narrower than level 0, attention at 8x8, augment_dim 9) under
           VPPrecond; NCSN++ (Fourier embedding, residual encoder, [1, 3, 3, 1] filter) under
           VEPrecond; and a tiny network with the `skip` encoder and decoder under EDMPrecond.
views/     tensor views and dtypes (`views.pt`, `views_deflated.pt`, expected `views.json`).
zip64/     `views_zip64.pt`: views.pt rewritten with zip64 records everywhere (the local and
           central extra fields with saturated 32-bit sizes and offsets, the zip64 end
           record and its locator), as torch.save writes for files over 4 GiB.
bad/       small hostile checkpoints: `namespace.pt` (an argparse.Namespace beside the
           weights: a class outside the allowed set) and `code.pt` (a pickle that would call
           os.system when unpickled by Python).

All references are computed in float64 from the stored (f32 or f16) weights and saved as
float32, so an f32 engine should match them to ~1e-5 relative.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import shutil
import sys
import tempfile
import zipfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import adm  # noqa: E402
import convert_checkpoint as cc  # noqa: E402
import edm_reference as edm  # noqa: E402
from make_golden import randomise  # noqa: E402

ROOT = os.path.join(HERE, "..")


def f64_forward_vjp(fn, x32, v32):
    x = torch.from_numpy(x32.astype(np.float64)).requires_grad_(True)
    out = fn(x)
    (g,) = torch.autograd.grad((out * torch.from_numpy(v32.astype(np.float64))).sum(), x)
    return out.detach().numpy(), g.numpy()


def make_gd(out):
    d = os.path.join(out, "gd")
    os.makedirs(d, exist_ok=True)
    src = os.path.join(ROOT, "tests", "data", "adm", "plain_conv_f16")
    card = json.load(open(os.path.join(src, "model.json")))
    flags = card["flags"]
    args = []
    for k in cc.MODEL_KEYS:
        if k in ("class_cond", "use_checkpoint", "dropout", "use_fp16"):
            continue
        args += [f"--{k}", str(flags[k])]
    args += ["--diffusion_steps", "1000", "--noise_schedule", "linear", "--dtype", "f16"]
    from safetensors.torch import load_file

    sd = load_file(os.path.join(src, "model.safetensors"))
    model = adm.create_model(**{k: flags[k] for k in cc.MODEL_KEYS})
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    ema = {k: v.half() for k, v in model.state_dict().items()}
    torch.save({"ema": ema, "step": 1200}, os.path.join(d, "ema.pt"))
    with tempfile.TemporaryDirectory() as tmp:
        cc.main([os.path.join(d, "ema.pt"), "--out", tmp] + args)
        conv = load_file(os.path.join(tmp, "model.safetensors"))
        assert conv.keys() == sd.keys()
        for k in sd:
            assert torch.equal(conv[k], sd[k]), k
        shutil.copy(os.path.join(tmp, "model.json"), os.path.join(d, "converted.json"))
    json.dump(args, open(os.path.join(d, "args.json"), "w"), indent=1)


def make_diffusers(out):
    from diffusers import DDPMScheduler, UNet2DModel

    d = os.path.join(out, "diffusers")
    if os.path.isdir(d):
        shutil.rmtree(d)
    torch.manual_seed(3)
    unet = UNet2DModel(
        sample_size=16,
        in_channels=2,
        out_channels=2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=8,
        norm_num_groups=4,
        freq_shift=1,
        flip_sin_to_cos=False,
    ).eval()
    randomise(unet, 3)
    unet.save_pretrained(d, safe_serialization=True)
    sched = DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        prediction_type="v_prediction",
    )
    sched.save_config(d)
    rng = np.random.default_rng(33)
    x = rng.standard_normal((2, 2, 16, 16)).astype(np.float32)
    t = np.array([3, 800], dtype=np.int64)
    v = rng.standard_normal((2, 2, 16, 16)).astype(np.float32)
    m64 = unet.double()
    tt = torch.from_numpy(t)
    o, g = f64_forward_vjp(lambda xx: m64(xx, tt).sample, x, v)
    ac = sched.alphas_cumprod.double().numpy()[t][:, None, None, None]
    x0 = np.sqrt(ac) * x - np.sqrt(1 - ac) * o
    for name, arr in (("x", x), ("t", t), ("out", o), ("v", v), ("vjp", g), ("x0", x0)):
        np.save(os.path.join(d, f"{name}.npy"), arr.astype(np.float32) if arr.dtype != np.int64 else arr)
    return sum(p.numel() for p in unet.parameters())


EDM_ARCH = dict(
    img_resolution=16,
    in_channels=2,
    out_channels=2,
    model_channels=8,
    channel_mult=[1, 8],
    channel_mult_emb=4,
    num_blocks=1,
    attn_resolutions=[8],
    dropout=0.0,
)


SONG_BASE = dict(img_resolution=16, in_channels=2, out_channels=2, dropout=0.0)
SONG = {
    # EDM's train.py presets at a small size (model_channels 8 instead of 128).
    "song_ddpmpp": dict(
        precond=("vp", {}),
        arch=dict(
            model_channels=8, channel_mult=[2, 2, 2], num_blocks=2, attn_resolutions=[8], augment_dim=9,
            embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
            decoder_type="standard", resample_filter=[1, 1],
        ),
        sigma=[0.05, 3.0],
    ),
    "song_ncsnpp": dict(
        precond=("ve", {}),
        arch=dict(
            model_channels=8, channel_mult=[2, 2, 2], num_blocks=2, attn_resolutions=[8],
            embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
            decoder_type="standard", resample_filter=[1, 3, 3, 1],
        ),
        sigma=[0.05, 30.0],
    ),
    "song_skip": dict(
        precond=("edm", dict(sigma_data=0.5)),
        arch=dict(
            model_channels=4, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8],
            embedding_type="positional", channel_mult_noise=1, encoder_type="skip",
            decoder_type="skip", resample_filter=[1, 3, 3, 1],
        ),
        sigma=[0.05, 3.0],
    ),
}
SCHEDULE_KIND = {"vp": "vp-precond", "ve": "ve-precond", "edm": "edm"}


def make_song(out, name, seed):
    spec = SONG[name]
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(seed)
    arch = dict(SONG_BASE, **spec["arch"])
    net = edm.SongUNet(**arch).eval()
    randomise(net, seed)
    with torch.no_grad():
        for b in net.buffers():  # NCSN++'s Fourier frequencies are stored f16 as well
            b.copy_(b.half().float())
        for p in net.parameters():
            p.copy_(p.half().float())
    kind, params = spec["precond"]
    pre = edm.Precond(kind, net, **params)
    sd = {k: v.half() for k, v in pre.state_dict().items()}
    torch.save(sd, os.path.join(d, "song.pt"))
    n_values = sum(v.numel() for v in sd.values())
    schedule = {"kind": SCHEDULE_KIND[kind], **params}
    card = {
        "format": "posterior-card/2",
        "architecture": dict(type="edm-song-unet", **arch, num_parameters=n_values),
        "schedule": schedule,
        "intensity_range": [-1.0, 1.0],
        "channels": 2,
        "resolution": [16, 16],
        "weights": {"file": "song.pt", "dtype": "f16"},
        "training_data": "none: seeded random weights (test fixture, notebooks/make_ckpt_fixtures.py)",
    }
    json.dump(card, open(os.path.join(d, "model.json"), "w"), indent=1)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((2, 2, 16, 16)) * 1.5).astype(np.float32)
    sigma = np.array(spec["sigma"], dtype=np.float32)
    x_in = rng.standard_normal((2, 2, 16, 16)).astype(np.float32)
    # The network's own labels at the fixture's noise levels.
    _, _, _, c_noise = edm.precond_coefficients(kind, torch.from_numpy(sigma.astype(np.float64)), **params)
    labels = c_noise.numpy().astype(np.float32)
    v = rng.standard_normal((2, 2, 16, 16)).astype(np.float32)
    n64 = net.double()
    lab = torch.from_numpy(labels.astype(np.float64))
    o, g = f64_forward_vjp(lambda xx: n64(xx, lab), x_in, v)
    with torch.no_grad():
        den = pre.double()(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(sigma.astype(np.float64))).numpy()
    arrays = dict(x_in=x_in, labels=labels, out=o, v=v, vjp=g, x=x, sigma=sigma, denoised=den)
    for k, arr in arrays.items():
        np.save(os.path.join(d, f"{k}.npy"), arr.astype(np.float32))
    return n_values


def zip64_copy(src, dst):
    """Rewrites the zip `src` into `dst` with every zip64 record Python's zipfile writes
    (its limits lowered to 0 for the duration, so each size and offset counts as large)."""
    saved = zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT
    zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = 0, 0
    try:
        with zipfile.ZipFile(src) as a, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as b:
            for info in a.infolist():
                with b.open(info.filename, "w", force_zip64=True) as f:
                    f.write(a.read(info.filename))
    finally:
        zipfile.ZIP64_LIMIT, zipfile.ZIP_FILECOUNT_LIMIT = saved
    # zipfile keeps the classic end record's fields exact when they fit; saturate them, as
    # writers do for large archives, so that readers must take the zip64 end record.
    raw = bytearray(open(dst, "rb").read())
    assert raw.count(b"PK\x06\x06") == 1 and raw.count(b"PK\x06\x07") == 1, "zip64 end records"
    e = raw.rindex(b"PK\x05\x06")
    raw[e + 8 : e + 12] = b"\xff" * 4
    raw[e + 12 : e + 20] = b"\xff" * 8
    open(dst, "wb").write(bytes(raw))
    # Every central record carries the zip64 extra field (id 1) with saturated 32-bit fields.
    with zipfile.ZipFile(dst) as z:
        for info in z.infolist():
            assert info.extra[:2] == b"\x01\x00", info.filename
            assert info.header_offset == 0 or b"\xff\xff\xff\xff" in raw, info.filename


def make_zip64(out):
    d = os.path.join(out, "zip64")
    os.makedirs(d, exist_ok=True)
    dst = os.path.join(d, "views_zip64.pt")
    zip64_copy(os.path.join(out, "views", "views.pt"), dst)
    # PyTorch reads it back as the original.
    a = torch.load(os.path.join(out, "views", "views.pt"))
    b = torch.load(dst)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def make_edm(out):
    d = os.path.join(out, "edm")
    os.makedirs(d, exist_ok=True)
    torch.manual_seed(4)
    net = edm.DhariwalUNet(**EDM_ARCH).eval()
    randomise(net, 4)
    with torch.no_grad():
        for p in net.parameters():  # stored as f16: the reference uses the widened values
            p.copy_(p.half().float())
    pre = edm.Precond("edm", net, sigma_data=0.5)
    sd = {k: v.half() for k, v in pre.state_dict().items()}
    assert any(k.endswith("resample_filter") for k in sd)
    torch.save(sd, os.path.join(d, "edm.pt"))
    n_values = sum(v.numel() for v in sd.values())
    card = {
        "format": "posterior-card/2",
        "architecture": dict(type="edm-dhariwal-unet", **EDM_ARCH, num_parameters=n_values),
        "schedule": {"kind": "edm", "sigma_data": 0.5, "sigma_min": 0.002, "sigma_max": 80.0},
        "intensity_range": [-1.0, 1.0],
        "channels": 2,
        "resolution": [16, 16],
        "weights": {"file": "edm.pt", "dtype": "f16"},
        "training_data": "none: seeded random weights (test fixture, notebooks/make_ckpt_fixtures.py)",
    }
    json.dump(card, open(os.path.join(d, "model.json"), "w"), indent=1)
    rng = np.random.default_rng(44)
    x_in = rng.standard_normal((2, 2, 16, 16)).astype(np.float32)
    labels = np.array([-0.7, 0.9], dtype=np.float32)
    v = rng.standard_normal((2, 2, 16, 16)).astype(np.float32)
    n64 = net.double()
    lab = torch.from_numpy(labels.astype(np.float64))
    o, g = f64_forward_vjp(lambda xx: n64(xx, lab), x_in, v)
    x = (rng.standard_normal((2, 2, 16, 16)) * 1.5).astype(np.float32)
    sigma = np.array([0.05, 3.0], dtype=np.float32)
    with torch.no_grad():
        den = pre.double()(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(sigma.astype(np.float64))).numpy()
    arrays = dict(x_in=x_in, labels=labels, out=o, v=v, vjp=g, x=x, sigma=sigma, denoised=den)
    for name, arr in arrays.items():
        np.save(os.path.join(d, f"{name}.npy"), arr.astype(np.float32))
    return n_values


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/posterior_pwned",))


def make_bad(out):
    d = os.path.join(out, "bad")
    os.makedirs(d, exist_ok=True)
    torch.save({"args": argparse.Namespace(lr=1e-4), "model": {"w": torch.zeros(2)}}, os.path.join(d, "namespace.pt"))
    # A .pt whose data.pkl runs os.system under pickle.load: written with the same zip layout.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("code/data.pkl", pickle.dumps({"w": _Evil()}, protocol=2))
        z.writestr("code/byteorder", "little")
    open(os.path.join(d, "code.pt"), "wb").write(buf.getvalue())


def make_views(out):
    """Tensor views and element types: a transposed f64 matrix, a slice with a storage offset
    (sharing its storage with a second tensor), f16 / bf16 / f32 values, a 0-d tensor; the
    same archive again with deflated entries; the expected values as JSON."""
    d = os.path.join(out, "views")
    os.makedirs(d, exist_ok=True)
    base = torch.arange(12, dtype=torch.float32) * 0.5 - 2.0
    sd = {
        "transposed": (torch.arange(6, dtype=torch.float64).reshape(2, 3) / 4).t(),
        "offset": base[5:9].reshape(2, 2),
        "shared": base,
        "half": torch.tensor([1.5, -0.25, 65504.0], dtype=torch.float16),
        "bf16": torch.tensor([3.0, -1.0 / 3.0], dtype=torch.bfloat16),
        "scalar": torch.tensor(7.25),
    }
    torch.save(sd, os.path.join(d, "views.pt"))
    with zipfile.ZipFile(os.path.join(d, "views.pt")) as src, zipfile.ZipFile(
        os.path.join(d, "views_deflated.pt"), "w", zipfile.ZIP_DEFLATED
    ) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    expect = {k: {"shape": list(v.shape), "values": v.double().flatten().tolist()} for k, v in sd.items()}
    json.dump(expect, open(os.path.join(d, "views.json"), "w"), indent=1)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "ckpt"))
    ap.add_argument("--only", help="comma-separated subset of gd,diffusers,edm,bad,views,zip64,song")
    a = ap.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    os.makedirs(a.out, exist_ok=True)
    want = set(a.only.split(",")) if a.only else {"gd", "diffusers", "edm", "bad", "views", "zip64", "song"}
    if "gd" in want:
        make_gd(a.out)
    if "diffusers" in want:
        print(f"diffusers: {make_diffusers(a.out)} parameters")
    if "edm" in want:
        print(f"edm: {make_edm(a.out)} stored values")
    if "bad" in want:
        make_bad(a.out)
    if "views" in want:
        make_views(a.out)
    if "zip64" in want:
        make_zip64(a.out)
    if "song" in want:
        for i, name in enumerate(SONG):
            print(f"{name}: {make_song(a.out, name, 5 + i)} stored values")
    for root, _, files in os.walk(a.out):
        for f in sorted(files):
            p = os.path.join(root, f)
            print(f"  {os.path.relpath(p, a.out)}: {os.path.getsize(p)} bytes")


if __name__ == "__main__":
    main()
