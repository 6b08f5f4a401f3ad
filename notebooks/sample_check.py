#!/usr/bin/env python3
"""Sample check of a prior: do its unconditional samples look like its training set?

    python notebooks/sample_check.py PRIOR_DIR --data DATASET_DIR [--n 32 --steps 50 --seed 0]
                                     [--write-card] [--json OUT.json]

A prior can denoise held-out images well at every noise level (the card's
`sanity.rows`) and still generate garbage: the shipped `brain-mri` drew 19 of
32 DDIM samples as washed-out white fields.  This check catches such modes by
comparing simple image statistics of N samples with those of the training set:

* per-image mean intensity: its quantiles, and the fraction of samples whose
  mean lies outside the training set's range [min, max] of per-image means
  (`outside_mean_range`; the check passes when it is below 5%);
* per-image spread (standard deviation over pixels): its quantiles;
* saturated pixels: the fraction within 2% of the intensity range's upper end
  (`saturated_high`) and lower end (`saturated_low`).

Sampler: deterministic DDIM (eta 0) with `--steps` network evaluations on the
grid the Rust `Ddim` sampler uses (knots uniform in t from 1 down to 1/T, the
discrete log-abar interpolated linearly in t, start x = s(1) z, the last step
returns the estimate), with every Tweedie estimate clipped to the intensity
range (guided-diffusion's clip_denoised, the Rust `Clipped` denoiser, what
`posterior sample --clip` does; `--no-clip` for the stricter unclipped
variant), so the statistics recorded here are what `tests/priors.rs` measures
with the Rust engine (with other random numbers).  Samples are clipped to the
intensity range before the statistics.  The weights are used as stored (f16
ones widened).

`--write-card` stores the result as `sanity.samples` in PRIOR_DIR/model.json
(written to a temporary file and renamed); nothing else in the card changes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import convert_checkpoint as cc  # noqa: E402

# Outside-range fraction above which the check fails (tests/priors.rs uses the same).
MAX_OUTSIDE = 0.05
# A pixel is saturated within this fraction of the range of either end.
SATURATION_BAND = 0.02
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


class CheckError(Exception):
    pass


def load_prior(prior_dir: str):
    """(model in eval mode with f32 weights as stored, card)."""
    import torch
    from safetensors.torch import load_file

    import adm

    card_path = os.path.join(prior_dir, "model.json")
    try:
        with open(card_path) as f:
            card = json.load(f)
        sd = load_file(os.path.join(prior_dir, card["weights"]["file"]))
    except (OSError, KeyError, json.JSONDecodeError) as e:
        raise CheckError(f"{prior_dir!r} is not a readable prior directory: {e}") from None
    flags = card["flags"]
    model = adm.create_model(**{k: flags[k] for k in cc.MODEL_KEYS if k in flags})
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    model.eval()
    return model, card


def log_abar_knots(card) -> "np.ndarray":
    """log abar at t = k / T, k = 0..T (0 at k = 0), as the Rust `Schedule` holds it."""
    import numpy as np

    import adm

    sch = card["schedule"]
    betas = adm.named_beta_schedule(sch["noise_schedule"], int(sch["diffusion_steps"]))
    return np.concatenate([[0.0], np.cumsum(np.log1p(-np.asarray(betas, dtype=np.float64)))])


def ddim_grid(log_abar, steps: int):
    """[(t, a, s)] for `steps` noisy knots uniform in t from 1 to 1/T, then the clean knot."""
    import numpy as np

    T = len(log_abar) - 1
    hi, lo = 1.0, 1.0 / T
    ts = [hi] if steps == 1 else [hi + (lo - hi) * i / (steps - 1) for i in range(steps)]
    out = []
    for t in ts:
        u = min(max(t, 0.0), 1.0) * T
        k = min(int(np.floor(u)), T - 1)
        la = log_abar[k] + (u - k) * (log_abar[k + 1] - log_abar[k])
        out.append((t, float(np.exp(0.5 * la)), float(np.sqrt(max(-np.expm1(la), 0.0)))))
    out.append((0.0, 1.0, 0.0))
    return out


def ddim_samples(model, card, n: int, steps: int, seed: int = 0, batch: int = 32, device: str = "cpu",
                 clip: bool = False):
    """`n` DDIM samples (eta 0), (n, C, H, W) float32 on the CPU; with `clip` every Tweedie
    estimate is clipped to the intensity range (guided-diffusion's clip_denoised, the CLI's
    `posterior sample --clip`), otherwise none is."""
    lo, hi = (float(v) for v in card.get("intensity_range", (-1.0, 1.0)))
    import torch

    T = int(card["schedule"]["diffusion_steps"])
    grid = ddim_grid(log_abar_knots(card), steps)
    c = int(card["channels"])
    h, w = card["resolution"]
    g = torch.Generator().manual_seed(seed)
    z = torch.randn((n, c, h, w), generator=g)
    outs = []
    model = model.to(device)
    for b in range(0, n, batch):
        x = (grid[0][2] * z[b:b + batch]).to(device)
        for (t, a, s), (_, a2, s2) in zip(grid[:-1], grid[1:]):
            # the network takes the step index n = t T - 1 in [0, T - 1]
            step = torch.full((len(x),), min(max(t * T - 1.0, 0.0), T - 1.0), device=device)
            with torch.no_grad():
                eps = model(x, step)[:, :c].float()
            x0 = (x - s * eps) / a
            if clip:
                x0 = x0.clamp(lo, hi)
            if s2 == 0.0:
                x = x0
            else:
                x = a2 * x0 + s2 * (x - a * x0) / s
        outs.append(x.cpu())
    return torch.cat(outs).numpy()


def image_stats(x, lo: float, hi: float) -> dict:
    """Per-image means and spreads (after clipping to [lo, hi]) and saturated-pixel fractions
    of a batch (N, C, H, W)."""
    import numpy as np

    x = np.clip(np.asarray(x, dtype=np.float32), lo, hi).reshape(len(x), -1)
    band = SATURATION_BAND * (hi - lo)
    means = x.mean(axis=1, dtype=np.float64)
    stds = x.std(axis=1, dtype=np.float64)
    return {
        "images": int(len(x)),
        "means": means,
        "mean_quantiles": {str(q): round(float(np.quantile(means, q)), 4) for q in QUANTILES},
        "std_quantiles": {str(q): round(float(np.quantile(stds, q)), 4) for q in QUANTILES},
        "saturated_high": round(float((x >= hi - band).mean()), 5),
        "saturated_low": round(float((x <= lo + band).mean()), 5),
    }


def train_reference(train_model_range, lo: float, hi: float, chunk: int = 4096) -> dict:
    """The training set's statistics, in chunks (60,000 images need not be widened at once)."""
    import numpy as np

    arr = train_model_range
    means, stds, hi_n, lo_n, total = [], [], 0, 0, 0
    band = SATURATION_BAND * (hi - lo)
    for i in range(0, len(arr), chunk):
        x = np.clip(np.asarray(arr[i:i + chunk], dtype=np.float32), lo, hi).reshape(min(chunk, len(arr) - i), -1)
        means.append(x.mean(axis=1, dtype=np.float64))
        stds.append(x.std(axis=1, dtype=np.float64))
        hi_n += int((x >= hi - band).sum())
        lo_n += int((x <= lo + band).sum())
        total += x.size
    means, stds = np.concatenate(means), np.concatenate(stds)
    return {
        "images": int(len(means)),
        "mean_range": [round(float(means.min()), 4), round(float(means.max()), 4)],
        "mean_quantiles": {str(q): round(float(np.quantile(means, q)), 4) for q in QUANTILES},
        "std_quantiles": {str(q): round(float(np.quantile(stds, q)), 4) for q in QUANTILES},
        "saturated_high": round(hi_n / total, 5),
        "saturated_low": round(lo_n / total, 5),
    }


def compare(samples_stats: dict, train: dict) -> dict:
    import numpy as np

    m = samples_stats["means"]
    lo, hi = train["mean_range"]
    outside = int(np.sum((m < lo) | (m > hi)))
    frac = outside / len(m)
    s = {k: v for k, v in samples_stats.items() if k != "means"}
    s.update(outside_mean_range=round(frac, 4), outside_count=outside,
             above_mean_range=int(np.sum(m > hi)), below_mean_range=int(np.sum(m < lo)))
    return {"samples": s, "passes": bool(frac < MAX_OUTSIDE)}


def check(model, card, train_model_range, n=32, steps=50, seed=0, device="cpu", train=None, clip=True) -> dict:
    """The card's `sanity.samples` record (`train`: the training set's statistics, when already
    computed by `train_reference`)."""
    lo, hi = (float(v) for v in card["intensity_range"])
    train = train or train_reference(train_model_range, lo, hi)
    x = ddim_samples(model, card, n, steps, seed, device=device, clip=clip)
    res = compare(image_stats(x, lo, hi), train)
    return {
        "what": "unconditional samples vs the training set: per-image mean intensity (quantiles; fraction "
        "of samples outside the training set's [min, max] of per-image means), per-image std, and "
        f"pixels within {SATURATION_BAND:.0%} of either end of the intensity range; samples clipped to "
        "the range first. Passes when under 5% of samples are outside the training mean range.",
        "sampler_note": "DDIM with every Tweedie estimate clipped to the range" if clip else
        "DDIM with unclipped Tweedie estimates",
        "sampler": {"name": "ddim", "eta": 0.0, "steps": steps, "grid": "uniform in t from 1 to 1/T "
                    "(the Rust Ddim's knots)", "samples": n, "seed": seed, "weights": card["weights"].get("dtype"),
                    "clip_x0": clip},
        "threshold": MAX_OUTSIDE,
        "train": train,
        **res,
    }


def write_card_samples(prior_dir: str, record: dict):
    path = os.path.join(prior_dir, "model.json")
    with open(path) as f:
        card = json.load(f)
    card.setdefault("sanity", {})["samples"] = record
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(card, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def summary(name: str, rec: dict) -> str:
    s, t = rec["samples"], rec["train"]
    return (f"{name}: {s['outside_count']}/{s['images']} samples outside the training mean range "
            f"[{t['mean_range'][0]:.3f}, {t['mean_range'][1]:.3f}] ({s['above_mean_range']} above, "
            f"{s['below_mean_range']} below) -> {'passes' if rec['passes'] else 'FAILS'}; "
            f"mean quantiles samples {list(s['mean_quantiles'].values())} vs train "
            f"{list(t['mean_quantiles'].values())}; saturated high {s['saturated_high']:.4f} "
            f"(train {t['saturated_high']:.4f}), low {s['saturated_low']:.4f} (train {t['saturated_low']:.4f})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prior", help="prior directory (model.json + model.safetensors)")
    p.add_argument("--data", required=True, help="the prior's training dataset (notebooks/data.py output)")
    p.add_argument("--n", type=int, default=32, help="samples (default 32)")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-clip", dest="clip", action="store_false",
                   help="do not clip the Tweedie estimates (a stricter variant, for information)")
    p.add_argument("--write-card", action="store_true", help="store the result as sanity.samples in model.json")
    p.add_argument("--json", default=None, help="also write the record to this file")
    a = p.parse_args(argv)
    if a.n < 1 or a.steps < 1 or a.threads < 1:
        p.error("--n, --steps and --threads must be >= 1")
    import torch

    import data as datamod

    torch.set_num_threads(a.threads)
    try:
        model, card = load_prior(a.prior)
        arr, man = datamod.load_dataset(a.data, "train")
        if list(arr.shape[1:]) != [card["channels"], *card["resolution"]]:
            raise CheckError(f"dataset {a.data!r} holds images {tuple(arr.shape[1:])}, the prior makes "
                             f"{(card['channels'], *card['resolution'])}")
        rec = check(model, card, ModelRange(arr, man), a.n, a.steps, a.seed, a.device, clip=a.clip)
    except (CheckError, datamod.DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    rec["train"]["dataset"] = man.get("name")
    print(summary(card.get("name") or a.prior, rec))
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(rec, f, indent=1)
        os.replace(a.json + ".tmp", a.json)
    if a.write_card:
        write_card_samples(a.prior, rec)
    return 0


class ModelRange:
    """A stored dataset array seen in the model's range (its manifest's `to_model_range`), chunk
    by chunk (`len` and slicing only)."""

    def __init__(self, arr, manifest):
        s = manifest["to_model_range"]
        self.arr, self.scale, self.offset = arr, float(s["scale"]), float(s["offset"])

    def __len__(self):
        return len(self.arr)

    def __getitem__(self, sl):
        import numpy as np

        return np.asarray(self.arr[sl], dtype=np.float32) * np.float32(self.scale) + np.float32(self.offset)


if __name__ == "__main__":
    sys.exit(main())
