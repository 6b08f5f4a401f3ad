#!/usr/bin/env python3
"""Cross-check adm.py against an independent port of guided-diffusion's UNet.

deepinv's `DiffUNet` is a port of guided-diffusion's UNetModel that loads the
original FFHQ-256 (`ffhq_10m.pt`) and ImageNet-256 checkpoints with
`load_state_dict(strict=True)`.  Its configuration is fixed to those two
models, so this script checks both: it builds adm.create_model with the same
flags, re-randomises every parameter, loads the state dict into DiffUNet
(no download: pretrained=None) and compares the forward outputs.

    pip install deepinv   # optional; not needed by anything else here
    python notebooks/check_against_deepinv.py [--large]

It also compares every block type in all the variants the configurations do
not reach (check_blocks).

Passes when the key sets are identical (shapes included) and the outputs agree
to 1e-5 relative (both f32; the remaining difference is summation order).
"""

from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import adm  # noqa: E402
from make_golden import randomise  # noqa: E402

IMAGENET256_FLAGS = dict(
    image_size=256,
    num_channels=256,
    num_res_blocks=2,
    channel_mult="",
    attention_resolutions="32,16,8",
    num_heads=4,
    num_head_channels=64,
    num_heads_upsample=-1,
    learn_sigma=True,
    use_scale_shift_norm=True,
    resblock_updown=True,
    use_new_attention_order=False,
)


def check(large: bool, batch: int = 1, size: int = 256):
    from deepinv.models import DiffUNet

    flags = IMAGENET256_FLAGS if large else adm.FFHQ256_FLAGS
    ours = adm.create_model(**flags).eval()
    randomise(ours, seed=11)
    theirs = DiffUNet(in_channels=3, out_channels=3, large_model=large, pretrained=None).eval()
    sd_ours = ours.state_dict()
    sd_theirs = {k: v for k, v in theirs.state_dict().items() if not k.startswith("sqrt_")}
    missing = sorted(set(sd_theirs) - set(sd_ours))
    extra = sorted(set(sd_ours) - set(sd_theirs))
    assert not missing and not extra, f"key sets differ: missing {missing[:5]}, extra {extra[:5]}"
    for k, v in sd_theirs.items():
        assert tuple(v.shape) == tuple(sd_ours[k].shape), f"{k}: {tuple(v.shape)} vs {tuple(sd_ours[k].shape)}"
    res = theirs.load_state_dict(sd_ours, strict=False)
    assert not res.unexpected_keys and all(k.startswith("sqrt_") for k in res.missing_keys), res
    g = torch.Generator().manual_seed(5)
    x = torch.randn(batch, 3, size, size, generator=g)
    t = torch.tensor([17, 905][:batch])
    with torch.no_grad():
        a = ours(x, t)
        b = theirs.forward_diffusion(x, t)
    rel = ((a - b).abs().max() / b.abs().max()).item()
    n = sum(v.numel() for v in sd_ours.values())
    print(f"{'ImageNet-256' if large else 'FFHQ-256'}: {n} parameters, keys identical, max rel diff {rel:.2e}")
    assert rel < 1e-5, rel


def check_blocks():
    """Block-level check of the code paths the fixed DiffUNet configurations do
    not reach: additive time embedding, conv up/down-sampling, average-pool and
    nearest up/down ResBlocks, new attention order, 1x1/3x3 skip, embedding."""
    from deepinv.models import diffunet as di

    g = torch.Generator().manual_seed(3)

    def same(ours, theirs, *args):
        randomise(ours, seed=int(torch.randint(0, 1000, (1,), generator=g)))
        theirs.load_state_dict(ours.state_dict(), strict=True)
        ours.eval()
        theirs.eval()
        with torch.no_grad():
            a, b = ours(*args), theirs(*args)
        rel = ((a - b).abs().max() / b.abs().max()).item()
        assert rel < 1e-6, (type(ours).__name__, rel)
        return rel

    x = torch.randn(2, 64, 8, 8, generator=g)
    emb = torch.randn(2, 128, generator=g)
    worst = 0.0
    for ss in (False, True):
        for up, down in ((False, False), (True, False), (False, True)):
            for out_ch, use_conv in ((64, False), (96, False), (96, True)):
                if (up or down) and out_ch != 64:
                    continue
                ours = adm.ResBlock(64, 128, 0.0, out_ch, use_conv=use_conv, use_scale_shift_norm=ss, up=up, down=down)
                theirs = di.ResBlock(64, 128, 0.0, out_ch, use_conv=use_conv, use_scale_shift_norm=ss, up=up, down=down)
                worst = max(worst, same(ours, theirs, x, emb))
    for new in (False, True):
        for nh, nhc in ((4, -1), (1, 32)):
            ours = adm.AttentionBlock(64, num_heads=nh, num_head_channels=nhc, use_new_attention_order=new)
            theirs = di.AttentionBlock(64, num_heads=nh, num_head_channels=nhc, use_new_attention_order=new)
            worst = max(worst, same(ours, theirs, x))
    for conv in (False, True):
        worst = max(worst, same(adm.Downsample(64, conv), di.Downsample(64, conv), x))
        worst = max(worst, same(adm.Upsample(64, conv), di.Upsample(64, conv), x))
    t = torch.tensor([0, 1, 417, 999])
    for dim in (32, 33, 128):
        assert torch.equal(adm.timestep_embedding(t, dim), di.timestep_embedding(t, dim)), dim
    print(f"blocks (ResBlock x10 variants, attention x4, resampling x4, embedding): max rel diff {worst:.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--large", action="store_true", help="also check the ImageNet-256 configuration")
    a = ap.parse_args()
    torch.set_num_threads(min(8, torch.get_num_threads()))
    check_blocks()
    check(False, batch=2)
    if a.large:
        check(True)


if __name__ == "__main__":
    main()
