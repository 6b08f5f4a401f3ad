#!/usr/bin/env python3
"""Golden fixtures for the Rust ADM U-Net engine (run by hand; see README.md).

    python notebooks/make_golden.py [--out tests/data/adm] [--check-only]

1. Checks adm.create_model against guided-diffusion's FFHQ-256 structure:
   parameter count and a set of key names and shapes worked out by hand from
   guided-diffusion's unet.py / script_util.py.
2. For each small configuration in CONFIGS, builds the model with seeded random
   weights (ALL parameters re-randomised, including the convolutions
   guided-diffusion zero-initialises and the GroupNorm affines, so every layer
   changes the output), stores them exactly as convert_checkpoint.py does, and
   writes into OUT/<name>/:
     model.safetensors, model.json   prior directory (f32 or f16 weights)
     x.npy        (N, C, H, W) f32   input
     t.npy        (N,) int64          timesteps
     out.npy      (N, Cout, H, W) f32 model(x, t)
     v.npy        (N, Cout, H, W) f32 cotangent
     vjp.npy      (N, C, H, W) f32    d/dx sum(model(x, t) * v)
   For f16-stored weights the reference is computed with the f16 values
   widened to f32 (what a loader that upcasts on load computes).
   The forward and VJP are computed in float64 from the (f32 / f16) weights
   and the f32 input, then stored as f32, so the fixtures carry no f32
   rounding of their own: an f32 engine should match them to ~1e-5 relative.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adm  # noqa: E402
import convert_checkpoint as cc  # noqa: E402

# Each config: guided-diffusion flags (+in_channels), batch size, weight dtype, seed.
# Each config: guided-diffusion flags (+in_channels), batch size, weight dtype,
# seed.  Sizes are the smallest that keep guided-diffusion's structure
# (GroupNorm(32) needs >= 32 channels; the weights dominate the fixture size).
CONFIGS = {
    # learned sigma, scale-shift norm, resblock up/down, attention at two
    # resolutions (16 and 8 px -> ds 1 and 2, 2 heads of 16 channels, legacy
    # qkv order), RGB, batch 2, f32-stored weights.
    "sigma_ss_updown": dict(
        flags=dict(
            image_size=16,
            num_channels=32,
            num_res_blocks=1,
            channel_mult="1,1",
            attention_resolutions="16,8",
            num_heads=2,
            num_head_channels=-1,
            num_heads_upsample=-1,
            learn_sigma=True,
            use_scale_shift_norm=True,
            resblock_updown=True,
            use_new_attention_order=False,
            in_channels=3,
        ),
        batch=2,
        timesteps=[3, 998],
        dtype="f32",
        seed=1,
    ),
    # no learned sigma, additive time embedding (no scale-shift), strided-conv
    # downsampling and nearest+conv upsampling (resblock_updown False),
    # num_head_channels 16, new attention order at 8 px (ds 2: 4 heads at 64
    # channels in the output blocks) and in the middle block (2 heads at 32),
    # num_res_blocks 0 (legal in guided-diffusion: the input side is conv +
    # downsample only), grayscale, batch 3, f16-stored weights.  channel_mult
    # (1,2) so that some ResBlocks have 64 channels: with 32 channels (one per
    # GroupNorm group) the additive time embedding is removed by the norm.
    "plain_conv_f16": dict(
        flags=dict(
            image_size=16,
            num_channels=32,
            num_res_blocks=0,
            channel_mult="1,2",
            attention_resolutions="8",
            num_heads=4,
            num_head_channels=16,
            num_heads_upsample=-1,
            learn_sigma=False,
            use_scale_shift_norm=False,
            resblock_updown=False,
            use_new_attention_order=True,
            in_channels=1,
        ),
        batch=3,
        timesteps=[0, 417, 999],
        dtype="f16",
        seed=2,
    ),
}

BASE_FLAGS = dict(
    dropout=0.0,
    class_cond=False,
    use_checkpoint=False,
    use_fp16=False,
    diffusion_steps=1000,
    noise_schedule="linear",
)


def randomise(model: torch.nn.Module, seed: int):
    """Re-draw every parameter: weights N(0, 1/fan_in) (unit gain, so
    activations neither vanish nor explode through the depth), biases
    N(0, 0.1^2), GroupNorm weight 1 + N(0, 0.1^2), bias N(0, 0.1^2)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if isinstance(_module_of(model, name), torch.nn.GroupNorm):
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)


def _module_of(model, pname):
    return model.get_submodule(pname.rsplit(".", 1)[0])


def ffhq256_param_count():
    """Parameter count of the FFHQ-256 U-Net, by hand from guided-diffusion's
    block list (independent of adm.py's construction loop)."""
    E = 512  # time embedding width

    def conv(ci, co, k=3):
        return ci * co * k * k + co

    def gn(c):
        return 2 * c

    def res(ci, co):  # scale-shift norm: emb linear to 2*co
        n = gn(ci) + conv(ci, co) + (E * 2 * co + 2 * co) + gn(co) + conv(co, co)
        return n + (conv(ci, co, 1) if ci != co else 0)

    def attn(c):
        return gn(c) + (c * 3 * c + 3 * c) + (c * c + c)

    n = (128 * E + E) + (E * E + E) + conv(3, 128)
    # input: per level (ch_in -> ch_out), attention at level 4, down after levels 0-4
    n += res(128, 128) + res(128, 128)  # level 0 + down
    n += res(128, 128) + res(128, 128)  # level 1 + down
    n += res(128, 256) + res(256, 256)  # level 2 + down
    n += res(256, 256) + res(256, 256)  # level 3 + down
    n += res(256, 512) + attn(512) + res(512, 512)  # level 4 + down
    n += res(512, 512)  # level 5
    n += res(512, 512) + attn(512) + res(512, 512)  # middle
    # output (skip channels popped: 512 512 | 512 256 | 256 256 | 256 128 | 128 128 | 128 128)
    n += res(1024, 512) + res(1024, 512) + res(512, 512)  # level 5 (+ up)
    n += res(1024, 512) + attn(512) + res(768, 512) + attn(512) + res(512, 512)  # level 4 (+ up)
    n += res(768, 256) + res(512, 256) + res(256, 256)  # level 3 (+ up)
    n += res(512, 256) + res(384, 256) + res(256, 256)  # level 2 (+ up)
    n += res(384, 128) + res(256, 128) + res(128, 128)  # level 1 (+ up)
    n += res(256, 128) + res(256, 128)  # level 0
    n += gn(128) + conv(128, 6)
    return n


def check_ffhq256():
    """adm.create_model(FFHQ-256 flags) has guided-diffusion's structure."""
    m = adm.create_model(**adm.FFHQ256_FLAGS)
    sd = m.state_dict()
    n = sum(v.numel() for v in sd.values())
    expected = {
        # mc=128, emb 512; channel_mult (1,1,2,2,4,4); attention at 16 px = ds 16
        "time_embed.0.weight": (512, 128),
        "time_embed.2.weight": (512, 512),
        "input_blocks.0.0.weight": (128, 3, 3, 3),
        "input_blocks.1.0.in_layers.0.weight": (128,),
        "input_blocks.1.0.in_layers.2.weight": (128, 128, 3, 3),
        "input_blocks.1.0.emb_layers.1.weight": (256, 512),
        "input_blocks.1.0.out_layers.0.weight": (128,),
        "input_blocks.1.0.out_layers.3.weight": (128, 128, 3, 3),
        # level 0 down (resblock), level 1 res 128->128, down; level 2 res 128->256 (skip 1x1)
        "input_blocks.2.0.in_layers.2.weight": (128, 128, 3, 3),
        "input_blocks.5.0.skip_connection.weight": (256, 128, 1, 1),
        # level 4 (ds 16, 16x16 px): res 256->512 with attention, 8 heads of 64
        "input_blocks.9.0.skip_connection.weight": (512, 256, 1, 1),
        "input_blocks.9.1.norm.weight": (512,),
        "input_blocks.9.1.qkv.weight": (1536, 512, 1),
        "input_blocks.9.1.proj_out.weight": (512, 512, 1),
        "input_blocks.10.0.in_layers.2.weight": (512, 512, 3, 3),  # down 16 -> 8
        "input_blocks.11.0.in_layers.2.weight": (512, 512, 3, 3),  # level 5, no attention
        "middle_block.0.emb_layers.1.weight": (1024, 512),
        "middle_block.1.qkv.weight": (1536, 512, 1),
        "middle_block.2.out_layers.3.weight": (512, 512, 3, 3),
        "output_blocks.0.0.in_layers.0.weight": (1024,),
        "output_blocks.0.0.skip_connection.weight": (512, 1024, 1, 1),
        "output_blocks.1.0.in_layers.2.weight": (512, 1024, 3, 3),
        "output_blocks.1.1.in_layers.2.weight": (512, 512, 3, 3),  # up resblock 8 -> 16
        "output_blocks.2.1.qkv.weight": (1536, 512, 1),  # 16 px attention
        "output_blocks.3.1.qkv.weight": (1536, 512, 1),
        "output_blocks.3.0.in_layers.0.weight": (768,),  # 512 + 256 skip
        "output_blocks.3.2.in_layers.2.weight": (512, 512, 3, 3),  # up 16 -> 32
        "output_blocks.4.0.in_layers.0.weight": (768,),  # 512 + 256
        "output_blocks.5.1.in_layers.2.weight": (256, 256, 3, 3),  # up 32 -> 64
        "output_blocks.7.0.in_layers.0.weight": (384,),  # 256 + 128
        "output_blocks.11.0.in_layers.0.weight": (256,),  # 128 + 128
        "out.0.weight": (128,),
        "out.2.weight": (6, 128, 3, 3),
    }
    for k, shape in expected.items():
        if k not in sd:
            raise AssertionError(f"FFHQ-256: key {k} missing")
        if tuple(sd[k].shape) != shape:
            raise AssertionError(f"FFHQ-256: {k} has shape {tuple(sd[k].shape)}, expected {shape}")
    n_attn = sum(1 for k in sd if k.endswith("qkv.weight"))
    assert n_attn == 4, f"FFHQ-256: expected 4 attention blocks (1 in, 1 mid, 2 out), got {n_attn}"
    assert len(m.input_blocks) == 12 and len(m.output_blocks) == 12, (len(m.input_blocks), len(m.output_blocks))
    assert not any(k.startswith(("input_blocks.12", "output_blocks.12")) for k in sd)
    n_hand = ffhq256_param_count()
    assert n == n_hand, f"FFHQ-256: {n} parameters, hand count {n_hand}"
    return n


def reference_forward_vjp(model, x32: np.ndarray, t: np.ndarray, v32: np.ndarray):
    """out = model(x, t) and d/dx sum(out * v), evaluated in float64."""
    m64 = model.double()
    x = torch.from_numpy(x32.astype(np.float64)).requires_grad_(True)
    out = m64(x, torch.from_numpy(t))
    (g,) = torch.autograd.grad((out * torch.from_numpy(v32.astype(np.float64))).sum(), x)
    return out.detach().numpy(), g.numpy()


def make_config(name: str, cfg: dict, out_root: str):
    flags = dict(BASE_FLAGS)
    flags.update(cfg["flags"])
    for k in cc.MODEL_FLAG_DEFAULTS:
        flags.setdefault(k, cc.MODEL_FLAG_DEFAULTS[k])
    seed = cfg["seed"]
    torch.manual_seed(seed)
    model = adm.create_model(**{k: flags[k] for k in cc.MODEL_KEYS}).eval()
    randomise(model, seed)
    if cfg["dtype"] == "f16":
        # The stored values are f16; the reference uses them widened.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    d = os.path.join(out_root, name)
    cc.write_prior_dir(
        d,
        model,
        flags,
        cfg["dtype"],
        None,
        extra={
            "training_data": "none: seeded random weights (golden test fixture)",
            "golden": {
                "generator": "notebooks/make_golden.py",
                "seed": seed,
                "torch": torch.__version__,
                "numpy": np.__version__,
                "reference_precision": "float64 from the stored weights, saved as float32",
            },
        },
    )

    rng = np.random.default_rng(1000 + seed)
    n, c, s = cfg["batch"], flags["in_channels"], flags["image_size"]
    x = rng.standard_normal((n, c, s, s)).astype(np.float32)
    t = np.array(cfg["timesteps"], dtype=np.int64)
    assert t.shape == (n,)
    cout = model.out_channels
    v = rng.standard_normal((n, cout, s, s)).astype(np.float32)
    out, vjp = reference_forward_vjp(model, x, t, v)

    # Sanity: the f32 model agrees with the f64 reference (so the fixture is
    # meaningful at f32 tolerances) and no layer is inert.
    m32 = model.float()
    with torch.no_grad():
        out32 = m32(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    rel = np.abs(out32 - out).max() / np.abs(out).max()
    assert rel < 1e-4, f"{name}: f32 vs f64 forward relative error {rel}"
    xt = torch.from_numpy(x).requires_grad_(True)
    (g32,) = torch.autograd.grad((m32(xt, torch.from_numpy(t)) * torch.from_numpy(v)).sum(), xt)
    vrel = np.abs(g32.numpy() - vjp).max() / np.abs(vjp).max()
    assert vrel < 1e-4, f"{name}: f32 vs f64 VJP relative error {vrel}"
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(vjp))

    # Round trip: the stored prior directory reproduces the model.
    from safetensors.numpy import load_file

    stored = load_file(os.path.join(d, "model.safetensors"))
    m2 = adm.create_model(**{k: flags[k] for k in cc.MODEL_KEYS})
    m2.load_state_dict({k: torch.from_numpy(a.astype(np.float32)) for k, a in stored.items()}, strict=True)
    want_dt = np.float16 if cfg["dtype"] == "f16" else np.float32
    assert all(a.dtype == want_dt for a in stored.values())
    with torch.no_grad():
        out2 = m2(torch.from_numpy(x), torch.from_numpy(t)).numpy()
    assert np.abs(out2 - out32).max() <= 1e-6 * np.abs(out32).max(), f"{name}: stored weights do not reproduce"

    # The sinusoidal timestep embedding as guided-diffusion computes it (f32),
    # for checking the engine's embedding on its own.
    temb = adm.timestep_embedding(torch.from_numpy(t), flags["num_channels"]).numpy()

    arrays = (
        ("x", x),
        ("t", t),
        ("temb", temb),
        ("out", out.astype(np.float32)),
        ("v", v),
        ("vjp", vjp.astype(np.float32)),
    )
    for fname, arr in arrays:
        np.save(os.path.join(d, f"{fname}.npy"), arr)
    return dict(
        out_absmax=float(np.abs(out).max()),
        vjp_absmax=float(np.abs(vjp).max()),
        f32_rel=float(rel),
        f32_vjp_rel=float(vrel),
    )


def check_every_parameter_matters(name: str, cfg: dict):
    """Perturbing any single parameter tensor changes the output (no inert layer)."""
    flags = dict(BASE_FLAGS)
    flags.update(cfg["flags"])
    model = adm.create_model(**{k: flags[k] for k in cc.MODEL_KEYS}).double().eval()
    randomise(model, cfg["seed"])
    model = model.double()
    rng = np.random.default_rng(7)
    g = torch.Generator().manual_seed(7)
    n, c, s = 2, flags["in_channels"], flags["image_size"]
    x = torch.from_numpy(rng.standard_normal((n, c, s, s)))
    t = torch.from_numpy(rng.integers(0, 1000, size=n))
    with torch.no_grad():
        base = model(x, t)
        for pname, p in model.named_parameters():
            old = p.clone()
            p.add_(0.01 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            diff = (model(x, t) - base).abs().max().item()
            p.copy_(old)
            # Exempt (and checked to be exactly inert): biases that add a
            # per-channel constant right before a GroupNorm with one channel
            # per group (32 channels), which subtracts it again - a true
            # invariance of the architecture, in guided-diffusion too:
            # a ResBlock's in_layers conv bias, and the biases of the last
            # output block (its out conv, skip conv, attention proj_out),
            # whose sum feeds out.0 directly.
            last = f"output_blocks.{len(model.output_blocks) - 1}."
            # With additive time embedding, the emb_layers Linear of a
            # 32-channel block is removed the same way (the shared time_embed
            # MLP is not: it also feeds the 64-channel blocks).
            inert = p.shape[0] == 32 and (
                pname.endswith("in_layers.2.bias")
                or "emb_layers.1." in pname
                or (
                    pname.startswith(last)
                    and pname.endswith(("out_layers.3.bias", "skip_connection.bias", "proj_out.bias"))
                )
            )
            if inert:
                assert diff < 1e-9, f"{name}: {pname} expected inert, changed output by {diff}"
            else:
                assert diff > 1e-8, f"{name}: parameter {pname} does not affect the output"


# --------------------------------------------------------------------------
# FFHQ-256 with hash-generated weights (no weight file shipped)

MASK64 = (1 << 64) - 1
HASH_SQRT3 = math.sqrt(3.0)


def fnv1a64(key: str) -> int:
    h = 0xCBF29CE484222325
    for b in key.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & MASK64
    return h


def hash_unit(key: str, n: int) -> np.ndarray:
    """n values in [-1, 1), exactly representable in f32:
    u_i = splitmix64(fnv1a64(key) XOR i), value_i = (u_i >> 40) / 2^23 - 1."""
    z = np.uint64(fnv1a64(key)) ^ np.arange(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    k = (z >> np.uint64(40)).astype(np.float64)
    return (k / 2.0**23 - 1.0).astype(np.float32)


def hash_param(key: str, shape) -> np.ndarray:
    """The deterministic weight of `key` (all arithmetic in f32, no FMA):
    >= 2-D (conv / linear weight):  unit * f32(sqrt(3 / fan_in)), fan_in = numel / shape[0]
    1-D ending in "weight" (GroupNorm): 1 + unit * f32(0.1 sqrt 3)
    1-D ending in "bias":               unit * f32(0.1 sqrt 3)."""
    n = int(np.prod(shape))
    u = hash_unit(key, n)
    if len(shape) >= 2:
        a = u * np.float32(math.sqrt(3.0 / (n // shape[0])))
    elif key.endswith("weight"):
        a = np.float32(1.0) + u * np.float32(0.1 * HASH_SQRT3)
    else:
        a = u * np.float32(0.1 * HASH_SQRT3)
    return a.astype(np.float32).reshape(shape)


def make_ffhq256_hash(out_root: str, batch: int = 2):
    """Golden values for the FFHQ-256 configuration with hash_param weights.

    Writes OUT/ffhq256_hash/: model.json (card, no weights file), rows.npy
    (the sampled row/column indices), out_sub.npy = out[:, :, rows][:, :, :, rows],
    vjp_sub.npy likewise, and check.json (t, first values of a few weights
    and of x, v, and f64 sums over the full out / vjp).  x = hash_unit("input.x"),
    v = hash_unit("input.v") reshaped to (N, C, 256, 256) / (N, 2C, 256, 256).
    """
    flags = dict(BASE_FLAGS)
    flags.update(adm.FFHQ256_FLAGS)
    flags["in_channels"] = 3
    model = adm.create_model(**{k: flags[k] for k in cc.MODEL_KEYS}).eval()
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(torch.from_numpy(hash_param(k, tuple(p.shape))))
    d = os.path.join(out_root, "ffhq256_hash")
    os.makedirs(d, exist_ok=True)
    card = cc.model_card(
        flags, model, "f32", None, {"training_data": "none: hash-generated weights (make_golden.hash_param)"}
    )
    card["weights"] = {"file": None, "generator": "make_golden.hash_param (see notebooks/README.md)"}
    with open(os.path.join(d, "model.json"), "w") as f:
        json.dump(card, f, indent=1)
        f.write("\n")
    n, s = batch, 256
    x = hash_unit("input.x", n * 3 * s * s).reshape(n, 3, s, s)
    v = hash_unit("input.v", n * 6 * s * s).reshape(n, 6, s, s)
    t = np.array([10, 900][:n], dtype=np.int64)
    out, vjp = reference_forward_vjp(model, x, t, v)
    # PyTorch's own f32 evaluation agrees with the f64 reference (recorded).
    m32 = model.float()
    xt = torch.from_numpy(x).requires_grad_(True)
    o32 = m32(xt, torch.from_numpy(t))
    (g32,) = torch.autograd.grad((o32 * torch.from_numpy(v)).sum(), xt)
    f32_out_rel = float(np.abs(o32.detach().numpy() - out).max() / np.abs(out).max())
    f32_vjp_rel = float(np.abs(g32.numpy() - vjp).max() / np.abs(vjp).max())
    del o32, g32, xt
    assert f32_out_rel < 1e-4 and f32_vjp_rel < 1e-4, (f32_out_rel, f32_vjp_rel)
    rows = np.r_[0:s:9, s - 1].astype(np.int64)
    np.save(os.path.join(d, "rows.npy"), rows)
    np.save(os.path.join(d, "out_sub.npy"), out[:, :, rows][:, :, :, rows].astype(np.float32))
    np.save(os.path.join(d, "vjp_sub.npy"), vjp[:, :, rows][:, :, :, rows].astype(np.float32))
    sd = {k: v_.float().numpy() for k, v_ in model.float().state_dict().items()}
    check = {
        "t": t.tolist(),
        "x_first": x.ravel()[:4].tolist(),
        "v_first": v.ravel()[:4].tolist(),
        "weights_first": {
            k: sd[k].ravel()[:4].tolist()
            for k in ("time_embed.0.weight", "input_blocks.0.0.bias", "out.0.weight", "middle_block.1.qkv.weight")
        },
        "weights_sum_f64": {k: float(sd[k].astype(np.float64).sum()) for k in ("out.2.weight", "time_embed.2.weight")},
        "out_sum": float(out.sum()),
        "out_sumsq": float((out**2).sum()),
        "vjp_sum": float(vjp.sum()),
        "vjp_abssum": float(np.abs(vjp).sum()),
        "out_absmax": float(np.abs(out).max()),
        "vjp_absmax": float(np.abs(vjp).max()),
        "torch_f32_vs_f64_max_rel": {"out": f32_out_rel, "vjp": f32_vjp_rel},
    }
    with open(os.path.join(d, "check.json"), "w") as f:
        json.dump(check, f, indent=1)
        f.write("\n")
    return check


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "data", "adm"))
    ap.add_argument("--check-only", action="store_true", help="only run the structure checks")
    ap.add_argument("--ffhq256", action="store_true", help="also write the FFHQ-256 hash-weight golden (minutes)")
    a = ap.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(min(4, torch.get_num_threads()))
    n = check_ffhq256()
    print(f"FFHQ-256 structure OK: {n} parameters")
    for name, cfg in CONFIGS.items():
        check_every_parameter_matters(name, cfg)
    print("every parameter of every config affects the output")
    if a.check_only:
        return
    for name, cfg in CONFIGS.items():
        info = make_config(name, cfg, a.out)
        print(f"{name}: {info}")
    if a.ffhq256:
        info = make_ffhq256_hash(a.out)
        print(f"ffhq256_hash: out_absmax {info['out_absmax']:.4g}, vjp_absmax {info['vjp_absmax']:.4g}")


if __name__ == "__main__":
    main()
