#!/usr/bin/env python3
"""PyTorch eager (CUDA) peer of benches/gpu.rs: the FFHQ-256 ADM U-Net of notebooks/adm.py
with the same hash weights (make_golden.hash_param, what the Rust bench's `HashWeights`
generates), the same inputs (hash_unit("input.x"/"input.v")) and timesteps (500 + 10 i),
timed the same way:

  forward      model(x, t) under torch.no_grad()
  forward+vjp  y = model(x, t); torch.autograd.grad(y, x, v)

WARMUP untimed calls, then --repeats timed calls, each ended by torch.cuda.synchronize();
median (min, max) of the wall-clock times. Peak memory: torch.cuda.max_memory_allocated
over the timed calls (weights included), reset before each pass. TF32 is off for matmuls
and cuDNN convolutions unless --tf32 (PyTorch's default allows it for convolutions);
cudnn.benchmark is on (autotuned convolution algorithms: PyTorch's best eager setting).
Also prints, for a numerical cross-check with the Rust side, max|out| and max|vjp| of the
batch-1 call.

    python3 benches/peers/gpu_peer.py [--batches 1,16] [--repeats N] [--tf32]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "notebooks"))
import adm  # noqa: E402
import make_golden as mg  # noqa: E402

WARMUP = 2


def build(device):
    model = adm.create_model(**adm.FFHQ256_FLAGS, in_channels=3).eval()
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(torch.from_numpy(mg.hash_param(k, tuple(p.shape))))
    return model.to(device)


def time_calls(fn, repeats):
    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated() / 2**20
    return statistics.median(times), min(times), max(times), peak


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=0, help="0: 10 at batch <= 2, else 5")
    ap.add_argument("--tf32", action="store_true")
    a = ap.parse_args(argv)
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    t0 = time.perf_counter()
    model = build(dev)
    torch.cuda.synchronize()
    wmib = torch.cuda.memory_allocated() / 2**20
    print(
        f"# pytorch {torch.__version__} eager: {torch.cuda.get_device_name(0)}, "
        f"{'TF32' if a.tf32 else 'f32'}, FFHQ-256 ADM, weights {wmib:.0f} MiB "
        f"(build + upload {time.perf_counter() - t0:.1f} s)"
    )
    rows = []
    s = 256
    for n in [int(b) for b in a.batches.split(",") if b.strip()]:
        x = torch.from_numpy(mg.hash_unit("input.x", n * 3 * s * s).reshape(n, 3, s, s)).to(dev)
        v = torch.from_numpy(mg.hash_unit("input.v", n * 6 * s * s).reshape(n, 6, s, s)).to(dev)
        t = torch.tensor([500.0 + 10 * i for i in range(n)], device=dev)
        reps = a.repeats or (10 if n <= 2 else 5)

        def fwd():
            with torch.no_grad():
                return model(x, t)

        def fwd_vjp():
            xg = x.detach().requires_grad_(True)
            y = model(xg, t)
            (g,) = torch.autograd.grad(y, xg, v)
            return y, g

        if n == 1:
            y, g = fwd_vjp()
            print(f"# batch 1 check: max|out| {y.abs().max().item():.6e}, max|vjp| {g.abs().max().item():.6e}")
            del y, g
        rows.append((n, "forward") + time_calls(fwd, reps))
        rows.append((n, "forward+vjp") + time_calls(fwd_vjp, reps))
        del x, v
    print("| impl | batch | pass | median ms | ms / sample | min ms | max ms | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for n, p, med, lo, hi, peak in rows:
        print(f"| pytorch | {n} | {p} | {med:.2f} | {med / n:.2f} | {lo:.2f} | {hi:.2f} | {peak:.0f} |")


if __name__ == "__main__":
    main()
