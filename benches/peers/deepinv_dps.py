#!/usr/bin/env python3
"""Peer comparison, run by hand: deepinv's DPS with OUR fmnist-32 prior, on the same
measurements as the suite problems/fmnist-restoration.toml, side by side with the suite's
results.

    python benches/peers/deepinv_dps.py [--suite problems/fmnist-restoration.toml]
        [--results problems/results/fmnist-restoration] [--steps 100]
        [--tasks deblur-gaussian,inpaint-box,inpaint-random]

Needs torch, deepinv (PyPI `deepinv`, tested with 0.5.0), safetensors, numpy,
a built `posterior` ($POSTERIOR, default target/release/posterior) and the suite's data.

The prior: priors/fmnist-32/model.safetensors loaded strictly into notebooks/adm.py's
PyTorch port of guided-diffusion's UNet (the architecture from model.json), wrapped as a
deepinv `Denoiser` the way deepinv's own DiffUNet wraps guided-diffusion checkpoints:
deepinv calls `denoiser(x, sigma)` with x = clean + sigma * noise in [0, 1]; on the
network's [-1, 1] scale that is VP state sqrt(a) (2x - 1) with a = 1 / (1 + 4 sigma^2),
fed at the discrete step whose sqrt(1 - abar) is nearest to 2 sigma sqrt(a); the Tweedie
estimate is clipped to [-1, 1] and mapped back to [0, 1].

The measurements: `posterior degrade` with the suite's operator, noise and seed
(s * 1000003 + 1009 i + t for image position i and task position t), exactly as the bench
makes them. deepinv's physics must be the same operator: inpainting takes the mask from
our operator (the image of an all-ones input), deblurring takes our kernel (the response to
a centred delta) in `BlurFFT` (circular, as ours); both are checked against `posterior
degrade` without noise before use (max difference < 1e-5). Super-resolution is not
compared (deepinv's bicubic downsampling is not Pillow's antialiased filter).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tomllib

import numpy as np
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "notebooks"))
import adm  # noqa: E402


def load_prior(name: str):
    from safetensors.torch import load_file

    d = os.path.join(ROOT, "priors", name)
    card = json.load(open(os.path.join(d, "model.json")))
    flags = card["flags"]
    keys = [
        "image_size", "num_channels", "num_res_blocks", "channel_mult", "learn_sigma", "class_cond",
        "attention_resolutions", "num_heads", "num_head_channels", "num_heads_upsample",
        "use_scale_shift_norm", "dropout", "resblock_updown", "use_new_attention_order",
    ]
    model = adm.create_model(**{k: flags[k] for k in keys if k in flags}, in_channels=card["channels"])
    state = {k: v.float() for k, v in load_file(os.path.join(d, "model.safetensors")).items()}
    model.load_state_dict(state, strict=True)
    betas = np.linspace(1e-4, 0.02, flags["diffusion_steps"]) if flags["noise_schedule"] == "linear" else None
    if betas is None:
        sys.exit("error: only the linear schedule is wired here")
    abar = torch.tensor(np.cumprod(1 - betas), dtype=torch.float32)
    return model.eval(), abar


def make_denoiser(model, abar):
    import deepinv

    class OurAdm(deepinv.models.Denoiser):
        def __init__(self):
            super().__init__()
            self.model = model
            self.sqrt_abar = abar.sqrt()
            self.sqrt_1m = (1 - abar).sqrt()

        def forward(self, x, sigma, *args, **kwargs):
            sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
            if sigma.numel() == 1:
                sigma = sigma.expand(x.shape[0])
            a = 1 / (1 + 4 * sigma**2)
            xs = a.sqrt().view(-1, 1, 1, 1) * (2 * x - 1)
            s = 2 * sigma * a.sqrt()
            t = (self.sqrt_1m.view(1, -1) - s.view(-1, 1)).abs().argmin(dim=1)
            eps = self.model(xs, t.to(x.dtype))[:, : x.shape[1]]
            x0 = (xs - self.sqrt_1m[t].view(-1, 1, 1, 1) * eps) / self.sqrt_abar[t].view(-1, 1, 1, 1)
            return (x0.clamp(-1, 1) + 1) / 2

    return OurAdm()


def ssim(x: np.ndarray, ref: np.ndarray, data_range: float) -> float:
    """SSIM as posterior's metrics (and scikit-image with gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False): 11-tap Gaussian window, population moments, the mean
    over the valid region (5 pixels cropped on every side)."""
    r = np.arange(-5, 6)
    w = np.exp(-(r**2) / (2 * 1.5**2))
    w /= w.sum()

    def filt(a):
        a = np.apply_along_axis(lambda v: np.convolve(v, w, mode="valid"), 0, a)
        return np.apply_along_axis(lambda v: np.convolve(v, w, mode="valid"), 1, a)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mx, my = filt(x), filt(ref)
    vx, vy, vxy = filt(x * x) - mx * mx, filt(ref * ref) - my * my, filt(x * ref) - mx * my
    m = (2 * mx * my + c1) * (2 * vxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return float(m.mean())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default=os.path.join(ROOT, "problems", "fmnist-restoration.toml"))
    p.add_argument("--results", default=None)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--tasks", default="deblur-gaussian,inpaint-box,inpaint-random")
    a = p.parse_args()
    import deepinv

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    posterior = os.environ.get("POSTERIOR", os.path.join(ROOT, "target", "release", "posterior"))
    suite = tomllib.load(open(a.suite, "rb"))
    lo, hi = suite["range"]
    if (lo, hi) != (0.0, 1.0):
        sys.exit("error: this adapter assumes a suite range of [0, 1] (deepinv's convention)")
    results = a.results or os.path.join(ROOT, "problems", "results", suite["name"])
    model, abar = load_prior(suite["prior"])
    den = make_denoiser(model, abar)
    images = []
    for src in suite["data"]:
        d = os.path.expanduser(src["path"])
        man = json.load(open(os.path.join(d, "manifest.json")))
        arr = np.load(os.path.join(d, man["files"]["test"]["file"]))
        s, o = man["to_model_range"]["scale"], man["to_model_range"]["offset"]
        for i in src["indices"]:
            images.append((f'{src["name"]}-{i}', ((arr[i].astype(np.float64) * s + o + 1) / 2).astype(np.float32)))
    wanted = a.tasks.split(",")
    work = tempfile.mkdtemp()

    def degrade(img, op, noise, seed):
        t, y = os.path.join(work, "x.npy"), os.path.join(work, "y.npy")
        np.save(t, img)
        subprocess.run([posterior, "degrade", t, "--op", op, "--noise", noise, "--seed", str(seed), "--out", y],
                       check=True, capture_output=True)
        return np.load(y)

    rows = []
    for ti, task in enumerate(suite["tasks"]):
        if task["name"] not in wanted:
            continue
        fam = task["op"].split(":")[0]
        for seed in suite.get("seeds", [0]):
            for pos, (iid, truth) in enumerate(images):
                mseed = seed * 1000003 + 1009 * pos + ti
                shape = truth.shape
                if fam == "inpaint":
                    mask = degrade(np.ones(shape, np.float32), task["op"], "none", mseed)
                    physics = deepinv.physics.Inpainting(img_size=shape, mask=torch.tensor(mask))
                elif fam == "blur":
                    delta = np.zeros(shape, np.float32)
                    delta[0, shape[1] // 2, shape[2] // 2] = 1
                    kern = degrade(delta, task["op"], "none", mseed)
                    physics = deepinv.physics.BlurFFT(img_size=shape, filter=torch.tensor(kern)[None])
                else:
                    sys.exit(f"error: task {task['name']}: only blur and inpaint are wired here")
                clean = degrade(truth, task["op"], "none", mseed)
                theirs = physics.A(torch.tensor(truth)[None]).numpy()[0]
                err = float(np.abs(theirs - clean).max())
                if err > 1e-5:
                    sys.exit(f"error: {task['name']}: deepinv's physics differs from ours by {err}")
                y = torch.tensor(degrade(truth, task["op"], task.get("noise", "none"), mseed))[None]
                rng = torch.Generator().manual_seed(seed)
                dps = deepinv.sampling.DPS(den, num_steps=a.steps, device="cpu", rng=rng)
                t0 = time.perf_counter()
                with torch.no_grad():
                    x = dps(y, physics, seed=seed)
                secs = time.perf_counter() - t0
                x = x.detach().numpy()[0, 0].astype(np.float64)
                ref = truth[0].astype(np.float64)
                ps = 10 * np.log10(1.0 / np.mean((x - ref) ** 2))
                q = ssim(x, ref, 1.0)
                rows.append((task["name"], ps, q, secs))
                print(f"{task['name']:>16} {iid:>10}  deepinv DPS  PSNR {ps:6.2f}  SSIM {q:.4f}  {secs:6.2f} s", flush=True)
    ours = {}
    rp = os.path.join(results, "results.jsonl")
    if os.path.exists(rp):
        for line in open(rp):
            r = json.loads(line)
            ours.setdefault((r["task"], r["method"]), []).append(r)

    def fmt(v):
        v = np.array(v)
        return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f}"

    print(f"\n| task | method | n | PSNR (dB) | SSIM | seconds |\n|---|---|---|---|---|---|")
    for name in wanted:
        r = [x for x in rows if x[0] == name]
        if r:
            print(f"| {name} | deepinv DPS ({a.steps} steps, our prior) | {len(r)} | {fmt([x[1] for x in r])} "
                  f"| {np.mean([x[2] for x in r]):.4f} | {np.mean([x[3] for x in r]):.2f} |")
        for m in suite["methods"]:
            v = ours.get((name, m["name"]), [])
            if v:
                print(f"| {name} | {m['name']} (posterior) | {len(v)} | {fmt([x['psnr'] for x in v])} "
                      f"| {np.mean([x['ssim'] for x in v]):.4f} | {np.mean([x['seconds'] for x in v]):.2f} |")


if __name__ == "__main__":
    main()
