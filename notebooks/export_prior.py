#!/usr/bin/env python3
"""Export a train.py checkpoint (its EMA weights) as a `posterior` prior directory.

    python notebooks/export_prior.py priors/fmnist-32/ckpt/latest.pt --out priors/fmnist-32 \\
        --data data/fmnist [--name fmnist-32] [--dtype f16] [--sanity-n 64] [--no-sanity]

Writes OUT/model.safetensors and OUT/model.json through
convert_checkpoint.write_prior_dir (the same writer as for converted
guided-diffusion checkpoints; files are written in a temporary directory and
renamed into OUT).  The card gains: `name`, `training_data` (the dataset
manifest's description, intensity mapping, sources and split), `training`
(steps, samples seen, optimiser settings, wall time, hardware, final loss =
mean of the last 500 step losses) and `sanity`.

Sanity check (--sanity, on by default): on the first --sanity-n held-out
images (test.npy of the dataset; never used for training), at several t,
x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with a fixed seed, the Tweedie
estimate x0_hat = (x_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) clipped to
[-1, 1] is compared with x0: PSNR with peak-to-peak 2 (the [-1, 1] range;
the same number as PSNR on [0, 1] images), averaged over images, next to the
PSNR of the rescaled noisy input x_t / sqrt(abar_t) for reference, and the
eps MSE.  It runs with the weights as stored (f16-rounded for f16).

Sample check (--sample-n, 32 by default; 0 skips it): DDIM samples against the
training set's statistics (notebooks/sample_check.py), stored as `sanity.samples`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import convert_checkpoint as cc  # noqa: E402

SANITY_T = (10, 50, 100, 250, 500, 750)


class ExportError(Exception):
    pass


def load_checkpoint(path):
    import torch

    if not os.path.isfile(path):
        raise ExportError(f"checkpoint {path!r} does not exist")
    try:
        st = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"cannot read checkpoint {path!r}: {e}") from None
    if not isinstance(st, dict) or st.get("format") != "posterior-train-ckpt-v1":
        raise ExportError(f"{path!r} is not a checkpoint written by train.py")
    return st


def build_ema_model(st, dtype="f16"):
    import torch

    import adm

    flags = st["config"]["flags"]
    model = adm.create_model(**{k: flags[k] for k in cc.MODEL_KEYS})
    tdt = torch.float16 if dtype == "f16" else torch.float32
    # the weights as they will be stored
    model.load_state_dict({k: v.to(tdt).to(torch.float32) for k, v in st["ema"].items()})
    model.eval()
    return model, flags


def denoise_sanity(model, flags, x0, ts=SANITY_T, seed=1234, batch=32):
    """Mean PSNR (peak-to-peak 2) of the clipped Tweedie x0 estimate and of the
    rescaled noisy input, and the eps MSE, at each t."""
    import numpy as np
    import torch

    import adm

    betas = adm.named_beta_schedule(flags["noise_schedule"], int(flags["diffusion_steps"]))
    abar = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
    g = torch.Generator().manual_seed(seed)
    x0 = torch.as_tensor(x0, dtype=torch.float32)
    rows = []

    def psnr(a, b):
        mse = ((a - b) ** 2).flatten(1).mean(1).double()
        return (10 * torch.log10(4.0 / mse.clamp_min(1e-20))).mean().item()

    for t in ts:
        if t >= len(abar):
            continue
        sa, s1 = float(np.sqrt(abar[t])), float(np.sqrt(1 - abar[t]))
        eps = torch.randn(x0.shape, generator=g)
        xt = sa * x0 + s1 * eps
        with torch.no_grad():
            eh = torch.cat([model(xt[i : i + batch], torch.full((len(xt[i : i + batch]),), t))
                            for i in range(0, len(xt), batch)])
        x0h = ((xt - s1 * eh) / sa).clamp(-1, 1)
        rows.append({
            "t": int(t),
            "noise_sigma_x0_units": s1 / sa,
            "psnr_tweedie_db": round(psnr(x0h, x0), 3),
            "psnr_noisy_db": round(psnr(xt / sa, x0), 3),
            "eps_mse": round(((eh - eps) ** 2).mean().item(), 6),
        })
    return rows


# What each dataset's prior models, for the card's `domain` (shown by `posterior priors`).
DOMAINS = {
    "fmnist-32": "Fashion-MNIST garments (grayscale objects)",
    "brain-64": "brain MRI, T1 magnitude slices",
    "ct-ellipses-64": "CT attenuation, random-ellipse phantoms",
    "ct-ellipses-128": "CT attenuation, random-ellipse phantoms",
    "brain-128": "brain MRI, T1 magnitude slices",
    "ct-ellipses-256": "CT attenuation, random-ellipse phantoms",
}


def objective(cfg: dict) -> str:
    """The card's description of the training loss (train.py's --loss_weight)."""
    if cfg.get("loss_weight", "eps") == "min-snr":
        return (f"eps prediction, MSE weighted by min(SNR, {cfg['snr_gamma']:g}) / SNR (min-SNR-gamma), "
                "t uniform in [0, T)")
    return "eps prediction, MSE, t uniform in [0, T)"


def export(ckpt_path, out_dir, data_dir=None, name=None, dtype="f16", sanity_n=64, threads=1,
           hardware_info=None, sanity=True, sample_n=32, sample_steps=50, device="cpu"):
    import torch

    import data as datamod

    torch.set_num_threads(threads)
    st = load_checkpoint(ckpt_path)
    model, flags = build_ema_model(st, dtype)
    cfg = st["config"]
    man = None
    if data_dir is None:
        data_dir = st.get("data", {}).get("dir")
    if data_dir is not None and os.path.isfile(os.path.join(data_dir, "manifest.json")):
        test, man = datamod.load_dataset(data_dir, "test")
    elif sanity:
        raise ExportError(f"dataset directory {data_dir!r} not found (pass --data, or --no-sanity)")
    recent = st.get("recent_losses", [])[-500:]
    extra = {
        "name": name,
        "domain": None if man is None else DOMAINS.get(man.get("name")),
        "training_data": None
        if man is None
        else {k: man.get(k) for k in ("name", "description", "intensity", "to_model_range", "preprocessing",
                                      "generator", "sources", "split", "counts", "recipe")},
        "training": {
            "script": "notebooks/train.py",
            "objective": objective(cfg),
            "steps": int(st["step"]),
            "batch_size": cfg["batch_size"],
            "samples_seen": int(st["step"]) * cfg["batch_size"],
            "optimizer": {"kind": "AdamW", "lr": cfg["lr"], "weight_decay": cfg["weight_decay"],
                          "lr_warmup_steps": cfg["lr_warmup"], "grad_clip": cfg["grad_clip"]},
            "ema": {"rate": cfg["ema_rate"], "warmup": "min(rate, (1 + step) / (10 + step))",
                    "exported": "EMA weights"},
            "random_flips": cfg["flip"],
            "seed": cfg["seed"],
            "train_seconds": round(float(st["seconds"]), 1),
            "train_minutes": round(float(st["seconds"]) / 60, 2),
            "hardware": hardware_info or st.get("hardware"),
            "final_loss": (sum(recent) / len(recent)) if recent else None,
            "final_loss_rule": "mean eps-MSE of the last 500 training steps (online weights)",
            # a run started from earlier weights (train.py --init-from): what those had been through
            "initialised_from": st.get("init_from"),
        },
        "diffusion_flags": {k: v for k, v in cc.PASSTHROUGH_DEFAULTS.items()},
        "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if sanity:
        n = min(sanity_n, len(test))
        # evenly spread over the held-out set
        idx = [round(i * (len(test) - 1) / max(n - 1, 1)) for i in range(n)]
        x0 = datamod.to_model(test[idx], man)
        extra["sanity"] = {
            "what": "denoising PSNR on held-out images: Tweedie x0 estimate (clipped) vs clean, and the "
            "rescaled noisy input x_t / sqrt(abar_t) for reference; PSNR with peak-to-peak 2 on [-1, 1]",
            "images": n,
            "split": "test",
            "seed": 1234,
            "weights": dtype,
            "rows": denoise_sanity(model, flags, x0),
        }
        if sample_n > 0:
            import sample_check

            train, _ = datamod.load_dataset(data_dir, "train")
            card = {"schedule": {"noise_schedule": flags["noise_schedule"],
                                 "diffusion_steps": int(flags["diffusion_steps"])},
                    "channels": int(flags["in_channels"]), "resolution": [int(flags["image_size"])] * 2,
                    "intensity_range": [-1.0, 1.0], "weights": {"dtype": dtype}}
            rec = sample_check.check(model, card, sample_check.ModelRange(train, man), sample_n, sample_steps,
                                     device=device)
            rec["train"]["dataset"] = man.get("name")
            extra["sanity"]["samples"] = rec
            model.to("cpu")
    # write into a temporary directory, then move the files into place
    os.makedirs(out_dir, exist_ok=True)
    tmp = os.path.join(out_dir, ".export.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    card = cc.write_prior_dir(tmp, model, flags, dtype, os.path.relpath(ckpt_path, out_dir), extra)
    for f in ("model.safetensors", "model.json"):
        os.chmod(os.path.join(tmp, f), 0o644)
        os.replace(os.path.join(tmp, f), os.path.join(out_dir, f))
    shutil.rmtree(tmp, ignore_errors=True)
    return card


def summary(card, out_dir):
    tr = card["training"]
    lines = [f"exported {out_dir}/model.safetensors ({card['architecture']['num_parameters']:,} parameters, "
             f"{card['weights']['dtype']}, {os.path.getsize(os.path.join(out_dir, 'model.safetensors')) / 1e6:.2f} MB) "
             f"and model.json: {tr['steps']} steps, final loss {tr['final_loss']}"]
    for r in card.get("sanity", {}).get("rows", []):
        lines.append(f"  t={r['t']:4d}  noisy {r['psnr_noisy_db']:6.2f} dB -> Tweedie {r['psnr_tweedie_db']:6.2f} dB"
                     f"  (eps MSE {r['eps_mse']:.4f})")
    if "samples" in card.get("sanity", {}):
        import sample_check

        lines.append("  " + sample_check.summary(card.get("name") or out_dir, card["sanity"]["samples"]))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="train.py checkpoint (OUT/ckpt/latest.pt)")
    p.add_argument("--out", required=True, help="prior directory to write")
    p.add_argument("--data", default=None, help="dataset directory (default: the one recorded in the checkpoint)")
    p.add_argument("--name", default=None)
    p.add_argument("--dtype", choices=["f16", "f32"], default="f16")
    p.add_argument("--sanity-n", type=int, default=64)
    p.add_argument("--no-sanity", action="store_true")
    p.add_argument("--sample-n", type=int, default=32, help="samples for the sample check (0: skip it)")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of the sample check")
    p.add_argument("--device", default="cpu", help="where the sample check runs (cpu or cuda)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.sanity_n < 1 or a.threads < 1 or a.sample_n < 0 or a.sample_steps < 1:
        p.error("--sanity-n, --threads and --sample-steps must be >= 1, --sample-n >= 0")
    import data as datamod

    try:
        card = export(a.checkpoint, a.out, data_dir=a.data, name=a.name or os.path.basename(os.path.normpath(a.out)),
                      dtype=a.dtype, sanity_n=a.sanity_n, threads=a.threads, sanity=not a.no_sanity,
                      sample_n=a.sample_n, sample_steps=a.sample_steps, device=a.device)
    except (ExportError, datamod.DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary(card, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
