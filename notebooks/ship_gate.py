#!/usr/bin/env python3
"""Decide whether a newly trained prior replaces the shipped one.

    python notebooks/ship_gate.py NEW_DIR [--old priors/NAME] --data DATASET_DIR \\
        [--sanity-n 64 --sample-n 32 --sample-steps 50 --device cuda] [--json gate.json]

Both priors are measured here with the same settings, so the comparison is like
with like whatever their cards say:

* held-out denoising: export_prior.denoise_sanity on --sanity-n test images spread
  over the dataset's test split (t = 10 .. 750, seed 1234); the score is the mean
  PSNR of the clipped Tweedie estimate over those t;
* the sample check: notebooks/sample_check.py (--sample-n DDIM samples, seed 0),
  the number of samples outside the training set's range of per-image means.

Verdict (exit status 0 = ship, 3 = keep the old one, 1 = error):
with an old prior, ship when the denoising score is higher AND the sample check
improves (fewer samples outside, or as few and passing);
with none (a new preset), ship when the sample check passes and the denoising gain
at t = 250 is at least 8 dB (what tests/priors.rs requires).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import sample_check  # noqa: E402

MIN_GAIN_T250_DB = 8.0


def measure(prior_dir, train, test_x, man, a, train_ref) -> dict:
    import export_prior

    model, card = sample_check.load_prior(prior_dir)
    rows = export_prior.denoise_sanity(model, card["flags"], test_x)
    rec = sample_check.check(model, card, sample_check.ModelRange(train, man), a.sample_n, a.sample_steps,
                             device=a.device, train=train_ref)
    model.to("cpu")
    score = sum(r["psnr_tweedie_db"] for r in rows) / len(rows)
    gain250 = next((r["psnr_tweedie_db"] - r["psnr_noisy_db"] for r in rows if r["t"] == 250), None)
    return {"dir": prior_dir, "mean_tweedie_psnr_db": round(score, 3), "gain_t250_db": gain250,
            "rows": rows, "outside": rec["samples"]["outside_count"], "samples": rec["samples"]["images"],
            "passes": rec["passes"], "training": card.get("training", {}).get("steps")}


def verdict(new: dict, old: dict | None) -> tuple[bool, str]:
    if old is None:
        ok = new["passes"] and (new["gain_t250_db"] or 0) >= MIN_GAIN_T250_DB
        return ok, (f"new prior: sample check {'passes' if new['passes'] else 'fails'} "
                    f"({new['outside']}/{new['samples']} outside), gain at t=250 {new['gain_t250_db']:.2f} dB")
    better_denoise = new["mean_tweedie_psnr_db"] > old["mean_tweedie_psnr_db"]
    better_samples = new["outside"] < old["outside"] or (new["outside"] == old["outside"] and new["passes"])
    why = (f"denoising {old['mean_tweedie_psnr_db']:.3f} -> {new['mean_tweedie_psnr_db']:.3f} dB "
           f"({'better' if better_denoise else 'not better'}); samples outside {old['outside']} -> {new['outside']} "
           f"of {new['samples']} ({'better' if better_samples else 'not better'})")
    return better_denoise and better_samples, why


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("new", help="the newly trained prior directory")
    p.add_argument("--old", default=None, help="the shipped prior directory (absent: a new preset)")
    p.add_argument("--data", required=True, help="the dataset (train split: sample check; test: denoising)")
    p.add_argument("--sanity-n", type=int, default=64)
    p.add_argument("--sample-n", type=int, default=32)
    p.add_argument("--sample-steps", type=int, default=50)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="write the measurements and the verdict here")
    a = p.parse_args(argv)
    import torch

    import data as datamod

    torch.set_num_threads(a.threads)
    try:
        train, man = datamod.load_dataset(a.data, "train")
        test, _ = datamod.load_dataset(a.data, "test")
        n = min(a.sanity_n, len(test))
        idx = [round(i * (len(test) - 1) / max(n - 1, 1)) for i in range(n)]
        test_x = datamod.to_model(test[idx], man)
        ref = sample_check.train_reference(sample_check.ModelRange(train, man), -1.0, 1.0)
        new = measure(a.new, train, test_x, man, a, ref)
        old = measure(a.old, train, test_x, man, a, ref) if a.old and os.path.isdir(a.old) else None
    except (sample_check.CheckError, datamod.DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    ship, why = verdict(new, old)
    print(f"{'SHIP' if ship else 'KEEP the old prior'}: {why}")
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump({"ship": ship, "why": why, "new": new, "old": old,
                       "settings": {"sanity_n": n, "sample_n": a.sample_n, "sample_steps": a.sample_steps}}, f,
                      indent=1)
        os.replace(a.json + ".tmp", a.json)
    return 0 if ship else 3


if __name__ == "__main__":
    sys.exit(main())
