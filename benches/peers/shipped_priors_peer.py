#!/usr/bin/env python3
"""PyTorch (CPU) peer of the `shipped/*` cases in benches/nn.rs: the shipped priors.

For each prior directory under priors/ (fmnist-32, brain-mri, ct-ellipses), builds the
guided-diffusion U-Net of its card (`flags`) with notebooks/adm.py, loads the f16 weights
of model.safetensors (widened to f32, as the Rust engine does), and times at batch 8 (by
default), step 500:

  fwd      model(x, t) under torch.no_grad()
  fwd_vjp  y = model(x, t); d/dx sum(y * v) by autograd

x and v are the seeded unit-variance streams of unet_peer.py (seeds 1 and 2, as the Rust
bench). Median of --runs timed runs after --warmup untimed ones; prints a table and, with
--json, one JSON line {"shipped/<name>_<case>": seconds}. The mean |out| / |vjp|
fingerprints on stderr must equal the Rust bench's up to f32 rounding.

    /tmp/torchenv/bin/python benches/peers/shipped_priors_peer.py [--batch 8] [--threads N]

To stand in for a CPU with fewer vector instructions, restrict PyTorch the same way as
POSTERIOR_SIMD restricts the engine (run_unet_compare.sh does this for --simd):
ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "notebooks"))
import adm  # noqa: E402
from convert_checkpoint import MODEL_KEYS  # noqa: E402
import unet_peer  # noqa: E402
from unet_peer import inp, time_model  # noqa: E402

PRIORS = ("fmnist-32", "brain-mri", "ct-ellipses")
STEP = 500


def load(name: str) -> tuple[torch.nn.Module, dict]:
    from safetensors.torch import load_file

    d = os.path.join(ROOT, "priors", name)
    card = json.load(open(os.path.join(d, "model.json")))
    flags = card["flags"]
    model = adm.create_model(**{k: flags[k] for k in MODEL_KEYS})
    sd = {k: v.float() for k, v in load_file(os.path.join(d, card["weights"]["file"])).items()}
    model.load_state_dict(sd, strict=True)
    return model.eval(), card


def bench(name: str, batch: int, warmup: int, runs: int) -> dict:
    model, card = load(name)
    c, (h, w) = card["channels"], card["resolution"]
    out_c = card["architecture"]["out_channels"]
    x = inp((batch, c, h, w), 1)
    v = inp((batch, out_c, h, w), 2)
    return time_model(f"shipped/{name}", model, x, v, torch.full((batch,), STEP), warmup, runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    unet_peer.add_common_args(ap, warmup=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--priors", default=",".join(PRIORS), help="comma-separated prior names under priors/")
    a = ap.parse_args()
    unet_peer.apply_common_args(a)
    print(
        f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads, batch {a.batch}",
        file=sys.stderr,
    )
    res = {}
    for name in a.priors.split(","):
        res.update(bench(name, a.batch, a.warmup, a.runs))
    unet_peer.report(res, a.json)


if __name__ == "__main__":
    main()
