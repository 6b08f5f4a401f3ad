#!/usr/bin/env python3
"""PyTorch (CPU) peer of the `unet_*` cases in benches/nn.rs.

Builds the same ADM U-Nets with notebooks/adm.py, fills every parameter with the same
seeded values as the Rust bench's `HashParams` (a splitmix64 stream per parameter name),
and times, at batch 1 with timestep 500:

  fwd      model(x, t) under torch.no_grad()
  fwd_vjp  y = model(x, t); d/dx sum(y * v) by autograd

Median of --runs timed runs after --warmup untimed ones. Prints a table, and with --json
one JSON line {case: seconds}. The mean |out| / |vjp| fingerprints printed on stderr must
equal the Rust bench's (same model, same input) up to f32 rounding.

    /tmp/torchenv/bin/python benches/peers/unet_peer.py [--ffhq] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "notebooks"))
import adm  # noqa: E402

M64 = (1 << 64) - 1

SMALL_FLAGS = dict(
    image_size=32,
    num_channels=64,
    num_res_blocks=2,
    channel_mult="1,2,2",
    attention_resolutions="16",  # pixel size 16 at 32 px = ds 2
    num_heads=4,
    num_head_channels=-1,
    num_heads_upsample=-1,
    learn_sigma=False,
    use_scale_shift_norm=True,
    resblock_updown=False,
    use_new_attention_order=False,
    in_channels=1,
)


def splitmix64(z: np.ndarray) -> np.ndarray:
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def unit(seed: int, n: int) -> np.ndarray:
    """Uniform in [-0.5, 0.5): elements 0..n of the stream `seed` (as the Rust `unit`)."""
    j = np.arange(n, dtype=np.uint64) + np.uint64(seed)
    with np.errstate(over="ignore"):
        z = splitmix64(j)
    return ((z >> np.uint64(40)).astype(np.float32) / np.float32(1 << 24)) - np.float32(0.5)


def fnv1a(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & M64
    return h


def fill(model: torch.nn.Module) -> None:
    s12 = np.float32(math.sqrt(12.0))
    with torch.no_grad():
        for name, p in model.named_parameters():
            u = unit(fnv1a(name), p.numel())
            if name.endswith(".bias"):
                v = np.float32(0.1) * s12 * u
            elif p.dim() == 1:
                v = np.float32(1.0) + np.float32(0.1) * s12 * u
            else:
                fan_in = p[0].numel()
                v = np.float32(math.sqrt(12.0 / fan_in)) * u
            p.copy_(torch.from_numpy(v.astype(np.float32)).reshape(p.shape))


def inp(shape, seed: int) -> torch.Tensor:
    n = int(np.prod(shape))
    return torch.from_numpy(np.float32(math.sqrt(12.0)) * unit(seed, n)).reshape(shape)


# The clock median_time reads: wall time, or with --cpu-time the process's CPU time (robust
# to other processes sharing the cores; meaningful at --threads 1 only, since idle OpenMP
# threads spin).
CLOCK = time.perf_counter


def median_time(f, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        f()
    ts = []
    for _ in range(runs):
        t0 = CLOCK()
        f()
        ts.append(CLOCK() - t0)
    return statistics.median(ts)


def time_model(name: str, model, x, v, t, warmup: int, runs: int) -> dict:
    """Prints the output fingerprints of `model` on (x, t), then times `fwd` (under no_grad)
    and `fwd_vjp` (d/dx sum(model(x, t) * v) by autograd): {name_fwd: s, name_fwd_vjp: s}."""

    def fwd():
        with torch.no_grad():
            return model(x, t)

    def fwd_vjp():
        xr = x.clone().requires_grad_(True)
        y = model(xr, t)
        (g,) = torch.autograd.grad(y, xr, v)
        return y.detach(), g

    y = fwd()
    _, g = fwd_vjp()
    print(
        f"{name}: mean|out| {y.abs().mean().item():.6e}, mean|vjp| {g.abs().mean().item():.6e}",
        file=sys.stderr,
    )
    return {
        f"{name}_fwd": median_time(fwd, warmup, runs),
        f"{name}_fwd_vjp": median_time(fwd_vjp, warmup, runs),
    }


def bench(name: str, flags: dict, warmup: int, runs: int) -> dict:
    flags = dict(flags)
    in_ch = flags.pop("in_channels", 3)
    model = adm.create_model(**flags, in_channels=in_ch).eval()
    fill(model)
    s = flags["image_size"]
    out_ch = in_ch * (2 if flags["learn_sigma"] else 1)
    x = inp((1, in_ch, s, s), 1)
    v = inp((1, out_ch, s, s), 2)
    return time_model(name, model, x, v, torch.tensor([500]), warmup, runs)


def add_common_args(ap: argparse.ArgumentParser, warmup: int) -> None:
    """The options both peers take: --threads, --runs, --warmup, --json, --cpu-time."""
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=warmup)
    ap.add_argument("--json", action="store_true", help="also print one JSON line of seconds per case")
    ap.add_argument("--cpu-time", action="store_true", help="time CPU seconds of the process, not wall (use with --threads 1)")


def apply_common_args(a: argparse.Namespace) -> None:
    """Sets the thread count and the clock from the common options."""
    global CLOCK
    if a.cpu_time:
        CLOCK = time.process_time
    torch.set_num_threads(a.threads)


def report(res: dict, as_json: bool) -> None:
    """Prints a table of median milliseconds per case, and the JSON line when asked."""
    width = max(len(k) for k in res) + 2
    print(f"{'case':<{width}} {'median ms':>12}")
    for k, sec in res.items():
        print(f"{k:<{width}} {1e3 * sec:>12.2f}")
    if as_json:
        print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(ap, warmup=3)
    ap.add_argument("--ffhq", action="store_true", help="also the FFHQ-256 configuration (slow)")
    ap.add_argument("--ffhq-runs", type=int, default=5)
    a = ap.parse_args()
    apply_common_args(a)
    print(f"torch {torch.__version__}, CPU, {torch.get_num_threads()} threads", file=sys.stderr)
    res = bench("unet_small", SMALL_FLAGS, a.warmup, a.runs)
    if a.ffhq:
        res.update(bench("unet_ffhq256", adm.FFHQ256_FLAGS, 1, a.ffhq_runs))
    report(res, a.json)


if __name__ == "__main__":
    main()
