#!/usr/bin/env python3
"""Every convolution of an ADM U-Net, timed one by one in PyTorch (CPU), for
benches/conv_shapes.rs.

Runs the network once with forward hooks on every nn.Conv2d to record the distinct
convolutions (input size, in/out channels, kernel, stride, padding) and how often each
occurs, then times each alone (batch 1, under no_grad, 2 warm-up runs, then the median of
at least 5 runs and 0.2 s, at most 50)
and writes them as JSON (a list of {h, ci, co, k, s, p, count, gflop, torch_ms}, largest
total work first). The Rust side reads that file, times its own Conv2d on the same shapes
and prints the ratios.

    /tmp/torchenv/bin/python benches/peers/conv_shapes_peer.py [--small] --out shapes.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "notebooks"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adm  # noqa: E402
import unet_peer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="the small prior of benches/nn.rs instead of FFHQ-256")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    flags = dict(unet_peer.SMALL_FLAGS if a.small else adm.FFHQ256_FLAGS)
    in_ch = flags.pop("in_channels", 3)
    model = adm.create_model(**flags, in_channels=in_ch).eval()
    seen: Counter = Counter()

    def hook(mod, inp, _out):
        seen[(inp[0].shape[2], mod.in_channels, mod.out_channels, mod.kernel_size[0], mod.stride[0], mod.padding[0])] += 1

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    s = flags["image_size"]
    with torch.no_grad():
        model(torch.zeros(1, in_ch, s, s), torch.tensor([500]))
    for h in hooks:
        h.remove()
    rows = []
    for (h, ci, co, k, st, p), count in seen.items():
        conv = torch.nn.Conv2d(ci, co, k, st, p)
        x = torch.randn(1, ci, h, h)
        with torch.no_grad():
            for _ in range(2):
                conv(x)
            ts = []
            while len(ts) < 5 or (sum(ts) < 0.2 and len(ts) < 50):
                t0 = time.perf_counter()
                conv(x)
                ts.append(time.perf_counter() - t0)
        ho = (h + 2 * p - k) // st + 1
        gflop = 2 * ci * co * k * k * ho * ho / 1e9
        rows.append(dict(h=h, ci=ci, co=co, k=k, s=st, p=p, count=count, gflop=gflop, torch_ms=1e3 * statistics.median(ts)))
    rows.sort(key=lambda r: -r["count"] * r["gflop"])
    total = sum(r["count"] * r["torch_ms"] for r in rows)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads: {len(rows)} distinct convolutions, {total:.1f} ms in all", file=sys.stderr)
    with open(a.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
