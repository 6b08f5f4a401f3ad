#!/usr/bin/env python3
"""Tiny-scale CPU comparison of training objectives and EMA decays for short runs.

    nice -n 19 python notebooks/recipe_compare.py --data ~/.cache/posterior-data/sets/brain-64 \\
        --size 32 --steps 600 --out /tmp/recipe.json

What a CPU can show about a recipe for few GPU minutes: at the same number of steps
(same batches, same noise draws, same initial weights), which objective gives the
better held-out denoiser, and which EMA decay gives the better exported weights when
the run is short.  Objectives:

* `eps`: eps-prediction MSE, t uniform (what the shipped priors used);
* `min-snr`: eps-MSE weighted by min(SNR, 5) / SNR, t uniform (train.py --loss_weight min-snr);
* `v`: v-prediction (Salimans & Ho 2022), v = sqrt(abar) eps - sqrt(1 - abar) x0, MSE on v,
  t uniform; x0 = sqrt(abar) x_t - sqrt(1 - abar) v (the same ADM network; the Rust engine
  would need `output: v` in the card: eps = sqrt(abar) v + sqrt(1 - abar) x_t);
* `edm`: Karras et al. 2022 preconditioning (sigma_data 0.5): the network F sees
  c_in(sigma) x and c_noise, D = c_skip x + c_out F, loss lambda(sigma) |D - x0|^2 with
  sigma = sqrt(1 - abar) / sqrt(abar) drawn log-normal (P_mean -1.2, P_std 1.2) and
  snapped to the nearest of the T discrete steps.  Not exportable to the Rust engine
  (it reads eps networks), so it is here as information: a clear win would justify an
  engine change.

Every run tracks EMAs at several decays at once (warm-up min(rate, (1 + step) / (10 + step))).
Evaluation on held-out images (the dataset's test split, downsampled to --size): at
t = 10, 50, 100, 250, 500, 750 the PSNR (peak-to-peak 2) of the clipped x0 estimate
and of x_t / sqrt(abar); the score is the mean PSNR gain over those t; plus the
sample check (notebooks/sample_check.py statistics) of --samples DDIM samples.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import adm  # noqa: E402
import data as datamod  # noqa: E402
import sample_check  # noqa: E402
import train  # noqa: E402

EVAL_T = (10, 50, 100, 250, 500, 750)
SIGMA_DATA = 0.5


def tiny_model(size: int, seed: int):
    torch.manual_seed(seed)
    return adm.create_model(image_size=size, in_channels=1, num_channels=32, channel_mult="1,2,2",
                            num_res_blocks=1, attention_resolutions=str(size // 4), num_heads=4,
                            use_scale_shift_norm=True, learn_sigma=False)


class Objective:
    """x0 estimate and training loss of one parameterisation on the discrete VP path."""

    def __init__(self, kind: str, abar: np.ndarray):
        self.kind = kind
        self.T = len(abar)
        self.sa = torch.tensor(np.sqrt(abar), dtype=torch.float32)
        self.s1 = torch.tensor(np.sqrt(1 - abar), dtype=torch.float32)
        self.sigma = torch.tensor(np.sqrt((1 - abar) / abar), dtype=torch.float32)
        self.w = torch.tensor(train.loss_weights("min-snr" if kind == "min-snr" else "eps", abar), dtype=torch.float32)

    def x0(self, model, xt, t):
        """x0 estimate at the discrete steps t (LongTensor)."""
        return self.x0_at(model, xt, self.sa[t][:, None, None, None], self.s1[t][:, None, None, None], t)

    def x0_at(self, model, xt, a, s, step):
        """x0 estimate from x_t = a x0 + s eps, the network fed `step`."""
        if self.kind == "edm":
            sig = torch.as_tensor(s / a, dtype=torch.float32)
            x = xt / a  # the VE view: x = x0 + sigma eps
            c_in = 1 / torch.sqrt(sig ** 2 + SIGMA_DATA ** 2)
            c_skip = SIGMA_DATA ** 2 / (sig ** 2 + SIGMA_DATA ** 2)
            c_out = sig * SIGMA_DATA / torch.sqrt(sig ** 2 + SIGMA_DATA ** 2)
            # c_noise: the step index, as the ADM network expects (a monotone map of log sigma)
            return c_skip * x + c_out * model(c_in * x, step)
        if self.kind == "v":
            return a * xt - s * model(xt, step)  # v = a eps - s x0, so x0 = a x_t - s v
        return (xt - s * model(xt, step)) / a

    def draw_t(self, g, n):
        if self.kind == "edm":
            ln = -1.2 + 1.2 * torch.randn(n, generator=g)
            return torch.searchsorted(self.sigma.log(), ln).clamp(0, self.T - 1)
        return torch.randint(self.T, (n,), generator=g)

    def loss(self, model, x0, t, eps):
        sa, s1 = self.sa[t][:, None, None, None], self.s1[t][:, None, None, None]
        xt = sa * x0 + s1 * eps
        if self.kind == "edm":
            sig = self.sigma[t]
            lam = (sig ** 2 + SIGMA_DATA ** 2) / (sig * SIGMA_DATA) ** 2
            err = ((self.x0(model, xt, t) - x0) ** 2).flatten(1).mean(1)
            return (lam * err).mean()
        if self.kind == "v":
            return ((model(xt, t) - (sa * eps - s1 * x0)) ** 2).flatten(1).mean(1).mean()
        err = ((model(xt, t) - eps) ** 2).flatten(1).mean(1)
        return (self.w[t] * err).mean()


def evaluate(model, obj, x0, seed=1234):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for t in EVAL_T:
        eps = torch.randn(x0.shape, generator=g)
        tt = torch.full((len(x0),), t)
        sa, s1 = float(obj.sa[t]), float(obj.s1[t])
        xt = sa * x0 + s1 * eps
        with torch.no_grad():
            x0h = obj.x0(model, xt, tt).clamp(-1, 1)

        def psnr(a):
            return (10 * torch.log10(4 / ((a - x0) ** 2).flatten(1).mean(1))).mean().item()

        rows.append({"t": t, "noisy": round(psnr(xt / sa), 3), "tweedie": round(psnr(x0h), 3)})
    return rows


def ddim_x0_samples(model, obj, n, steps, size, seed=0):
    """DDIM (eta 0) on sample_check's grid, for any parameterisation (x0 estimates)."""
    T = obj.T
    log_abar = np.concatenate([[0.0], np.log(obj.sa.double().numpy() ** 2)])
    grid = sample_check.ddim_grid(log_abar, steps)
    g = torch.Generator().manual_seed(seed)
    x = grid[0][2] * torch.randn((n, 1, size, size), generator=g)
    for (t, a, s), (_, a2, s2) in zip(grid[:-1], grid[1:]):
        step = torch.full((n,), min(max(t * T - 1.0, 0.0), T - 1.0))
        with torch.no_grad():
            x0 = obj.x0_at(model, x, a, s, step)
        x = x0 if s2 == 0.0 else a2 * x0 + s2 * (x - a * x0) / s
    return x.numpy()


def run(kind, train_x, test_x, abar, a):
    obj = Objective(kind, abar)
    model = tiny_model(a.size, a.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    emas = {r: {k: v.detach().clone() for k, v in model.state_dict().items()} for r in a.ema}
    g = torch.Generator().manual_seed(a.seed + 1)
    t0 = time.time()
    losses = []
    for step in range(a.steps):
        idx = torch.randint(len(train_x), (a.batch,), generator=g)
        x0 = train_x[idx]
        t = obj.draw_t(g, a.batch)
        eps = torch.randn(x0.shape, generator=g)
        for gr in opt.param_groups:
            gr["lr"] = a.lr * min(1.0, (step + 1) / a.warmup)
        loss = obj.loss(model, x0, t, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if (step + 1) % 50 == 0:
            print(f"  {kind} step {step + 1}: loss {np.mean(losses[-50:]):.4f}, {time.time() - t0:.0f} s", flush=True)
        with torch.no_grad():
            cur = model.state_dict()
            for r, e in emas.items():
                d = min(r, (2 + step) / (11 + step))
                for k in e:
                    e[k].mul_(d).add_(cur[k], alpha=1 - d)
    secs = time.time() - t0
    out = {"objective": kind, "steps": a.steps, "seconds": round(secs, 1), "final_loss": float(np.mean(losses[-50:])),
           "ema": {}}
    model.eval()
    train_ref = sample_check.train_reference(train_x.numpy(), -1.0, 1.0)
    for r, e in [("online", model.state_dict())] + list(emas.items()):
        m = tiny_model(a.size, a.seed)
        m.load_state_dict(e)
        m.eval()
        rows = evaluate(m, obj, test_x)
        gain = float(np.mean([x["tweedie"] - x["noisy"] for x in rows]))
        rec = {"rows": rows, "mean_gain_db": round(gain, 3),
               "mean_psnr_db": round(float(np.mean([x["tweedie"] for x in rows])), 3)}
        if a.samples:
            xs = ddim_x0_samples(m, obj, a.samples, a.sample_steps, a.size)
            rec["outside_mean_range"] = sample_check.compare(sample_check.image_stats(xs, -1, 1),
                                                             train_ref)["samples"]["outside_mean_range"]
        out["ema"][str(r)] = rec
        print(f"{kind:8s} ema {str(r):7s} mean PSNR {rec['mean_psnr_db']:.2f} dB, gain {gain:.2f} dB"
              + (f", samples outside {rec['outside_mean_range']:.2f}" if a.samples else ""), flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--size", type=int, default=32, help="images are area-downsampled to this size")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, nargs="+", default=[0.99, 0.995, 0.999])
    p.add_argument("--objectives", nargs="+", default=["eps", "min-snr", "edm"])
    p.add_argument("--samples", type=int, default=32, help="DDIM samples for the sample check (0: skip)")
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--test-n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    tr, man = datamod.load_dataset(a.data, "train")
    te, _ = datamod.load_dataset(a.data, "test")

    def prep(arr):
        x = torch.from_numpy(datamod.to_model(arr, man))
        return F.interpolate(x, size=(a.size, a.size), mode="area") if x.shape[-1] != a.size else x

    train_x = prep(tr)
    idx = np.linspace(0, len(te) - 1, min(a.test_n, len(te))).round().astype(int)
    test_x = prep(te[idx])
    abar = np.cumprod(1.0 - np.asarray(adm.named_beta_schedule("linear", 1000), dtype=np.float64))
    results = {"data": man.get("name"), "size": a.size, "train_images": len(train_x), "test_images": len(test_x),
               "steps": a.steps, "batch": a.batch, "threads": a.threads, "runs": []}
    for kind in a.objectives:
        results["runs"].append(run(kind, train_x, test_x, abar, a))
        if a.out:
            with open(a.out + ".tmp", "w") as f:
                json.dump(results, f, indent=1)
            os.replace(a.out + ".tmp", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
