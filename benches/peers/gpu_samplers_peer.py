#!/usr/bin/env python3
"""PyTorch peer of benches/gpu_samplers.rs: the same DDS and DPS reconstructions, in
PyTorch eager on the same GPU.

Work per case (one 3x256x256 sample, FFHQ-256 ADM from notebooks/adm.py, box inpainting:
the 128x128 centre hole, sigma_y = 0.05, the VP linear schedule with T = 1000 and the
Rust toolkit's knots, t_k = 1 - k (1 - 1/T) / (steps - 1), then t = 0):

  dds_50  50 steps: eps = model(x, n)[:, :3] under no_grad; x0 = (x - s eps) / a;
          5 conjugate-gradient iterations on (I + gamma M) x = x0 + gamma M y from x0
          (M the 0/1 mask, gamma = 1; the residual test is evaluated on the GPU, no host
          sync); x = a' x0c + s' sqrt(1 - eta^2) eps + eta s' z (eta = 0.85).
  dps_N   N ancestral steps: x0 and d||y - M x0|| / dx by autograd (one forward, one
          backward), x = c_x0 x0 + c_x x + sd z - zeta grad (zeta = 0.5). N = 100 unless
          --dps-steps.

Weights: PyTorch's default initialisation (the timing does not depend on the values; the
Rust bench uses hash weights). Timing: one warm-up run per case, then --runs timed runs,
wall time with torch.cuda.synchronize() around each run; peak memory is
torch.cuda.max_memory_allocated() during the timed runs (tensors only, as the Rust bench's
pool high-water mark). Runs in plain f32, then with TF32 matmuls and convolutions allowed
(as the Rust bench); --tf32 runs the TF32 mode only, --f32 the f32 mode only; --bf16 runs
the network under bf16 autocast (after f32/TF32).

    python3 benches/peers/gpu_samplers_peer.py [--runs 3] [--dps-steps 100] [--f32|--tf32] [--bf16] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "notebooks"))
import adm  # noqa: E402


def vp_linear(T: int = 1000):
    """alpha_bar on the discrete grid (f64), as guided-diffusion's linear schedule."""
    betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, 0)


def coeffs(abar: torch.Tensor, t: float):
    """(a, s) at continuous time t: step n = t T - 1 interpolated linearly in log alpha_bar
    between grid points (t = 0 is clean). Close to the Rust schedule; the timing does not
    depend on the exact values."""
    T = abar.numel()
    if t <= 0.0:
        return 1.0, 0.0
    pos = min(max(t * T - 1.0, 0.0), T - 1.0)
    i = int(math.floor(pos))
    j = min(i + 1, T - 1)
    f = pos - i
    la = (1 - f) * math.log(abar[i].item()) + f * math.log(abar[j].item())
    ab = math.exp(la)
    return math.sqrt(ab), math.sqrt(1.0 - ab)


def knots(steps: int, T: int = 1000):
    t_min = 1.0 / T
    return [1.0 - k * (1.0 - t_min) / max(steps - 1, 1) for k in range(steps)] + [0.0]


def build(dev):
    model = adm.create_model(**adm.FFHQ256_FLAGS).to(dev).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def eps_of(model, x, t, T, bf16):
    n = torch.full((x.shape[0],), min(max(t * T - 1.0, 0.0), T - 1.0), device=x.device)
    if bf16:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model(x, n)[:, :3].float()
    return model(x, n)[:, :3]


def dds(model, abar, mask, y, steps=50, eta=0.85, cg_iters=5, gamma=1.0, bf16=False, seed=0):
    g = torch.Generator(device=y.device).manual_seed(seed)
    T = abar.numel()
    ks = knots(steps, T)
    a0, s0 = coeffs(abar, ks[0])
    x = s0 * torch.randn(y.shape, generator=g, device=y.device)
    aty = mask * y
    with torch.no_grad():
        for k in range(steps):
            t, tn = ks[k], ks[k + 1]
            a, s = coeffs(abar, t)
            eps = eps_of(model, x, t, T, bf16)
            x0 = (x - s * eps) / a
            b = x0 + gamma * aty
            xc = x0.clone()
            r = b - (xc + gamma * mask * xc)
            p = r.clone()
            rr = (r * r).sum()
            bn = b.norm()
            for _ in range(cg_iters):
                mp = p + gamma * mask * p
                alpha = rr / (p * mp).sum()
                active = (rr.sqrt() > 1e-5 * bn).float()
                xc = xc + active * alpha * p
                r = r - active * alpha * mp
                rr_new = (r * r).sum()
                p = r + (rr_new / rr) * p
                rr = rr_new
            if tn == 0.0:
                x = xc
            else:
                an, sn = coeffs(abar, tn)
                z = torch.randn(x.shape, generator=g, device=x.device)
                x = an * xc + sn * math.sqrt(1 - eta * eta) * eps + eta * sn * z
    torch.cuda.synchronize()
    return x


def dps(model, abar, mask, y, steps=100, zeta=0.5, bf16=False, seed=0):
    g = torch.Generator(device=y.device).manual_seed(seed)
    T = abar.numel()
    ks = knots(steps, T)
    _, s0 = coeffs(abar, ks[0])
    x = s0 * torch.randn(y.shape, generator=g, device=y.device)
    for k in range(steps):
        t, tn = ks[k], ks[k + 1]
        a, s = coeffs(abar, t)
        x = x.detach().requires_grad_(True)
        eps = eps_of(model, x, t, T, bf16)
        x0 = (x - s * eps) / a
        norm = (y - mask * x0).norm()
        (grad,) = torch.autograd.grad(norm, x)
        with torch.no_grad():
            if tn == 0.0:
                x = x0 - zeta * grad
            else:
                an, sn = coeffs(abar, tn)
                r = a / an
                v = max(s * s - r * r * sn * sn, 1e-300)
                var = 1.0 / (1.0 / (sn * sn) + r * r / v)
                c_x0, c_x, sd = var * an / (sn * sn), var * r / v, math.sqrt(var)
                z = torch.randn(x.shape, generator=g, device=x.device)
                x = c_x0 * x0 + c_x * x + sd * z - zeta * grad
    torch.cuda.synchronize()
    return x.detach()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--dps-steps", type=int, default=100)
    ap.add_argument("--tf32", action="store_true")
    ap.add_argument("--f32", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("skipped: torch sees no CUDA device")
        return
    dev = torch.device("cuda")
    model = build(dev)
    abar = vp_linear()
    torch.cuda.synchronize()
    weights = torch.cuda.memory_allocated()
    mask = torch.ones(1, 3, 256, 256, device=dev)
    mask[..., 64:192, 64:192] = 0.0
    ii = torch.arange(256, device=dev, dtype=torch.float32)
    c = torch.arange(3, device=dev, dtype=torch.float32).view(3, 1, 1)
    img = torch.sin(0.03 * ii.view(1, 256, 1) + 0.5 * c) * torch.cos(0.02 * ii.view(1, 1, 256))
    y = mask * (img.unsqueeze(0) + 0.05 * torch.randn(1, 3, 256, 256, device=dev))
    modes = [("f32", False, False), ("tf32", True, False)]
    if a.tf32:
        modes = [("tf32", True, False)]
    elif a.f32:
        modes = [("f32", False, False)]
    if a.bf16:
        modes.append(("bf16", False, True))
    out = {}
    for mode, tf32, bf16 in modes:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        cases = [
            ("dds_50", 50, lambda: dds(model, abar, mask, y, bf16=bf16)),
            (f"dps_{a.dps_steps}", a.dps_steps, lambda: dps(model, abar, mask, y, a.dps_steps, bf16=bf16)),
        ]
        print(
            f"gpu_samplers_peer: {torch.cuda.get_device_name()} torch {torch.__version__} "
            f"mode {mode}, {a.runs} timed runs"
        )
        print(f"{'case':<10} {'median_s':>10} {'min_s':>10} {'ms_per_step':>12} {'peak_MiB':>10} {'weights_MiB':>12}")
        for name, steps, f in cases:
            f()
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(a.runs):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                f()
                times.append(time.perf_counter() - t0)
            peak = torch.cuda.max_memory_allocated()
            med = statistics.median(times)
            out[f"{name}_{mode}"] = {"median_s": med, "min_s": min(times), "peak_bytes": peak}
            print(
                f"{name:<10} {med:>10.3f} {min(times):>10.3f} {1e3 * med / steps:>12.2f} "
                f"{peak / 2**20:>10.1f} {weights / 2**20:>12.1f}"
            )
    if a.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
