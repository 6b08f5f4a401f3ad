#!/usr/bin/env python3
"""Convert a guided-diffusion checkpoint (.pt state dict) into a `posterior` prior directory.

    python notebooks/convert_checkpoint.py ffhq_10m.pt --out priors/ffhq256 \\
        --image_size 256 --num_channels 128 --num_res_blocks 1 --attention_resolutions 16 \\
        --num_heads 4 --num_head_channels 64 --learn_sigma True --use_scale_shift_norm True \\
        --resblock_updown True

The model flags have guided-diffusion's names, spellings and defaults
(script_util.model_and_diffusion_defaults; booleans as True/False, also
yes/no/1/0).  The state dict is loaded strictly into adm.create_model(...), so
a checkpoint that does not match the flags is reported with the offending keys
and shapes.  Writes DIR/model.safetensors and DIR/model.json (see
write_prior_dir for the model card format).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import adm

CARD_FORMAT = "posterior-card/2"

# guided-diffusion's script_util.model_and_diffusion_defaults (the model and
# schedule part), plus in_channels.
MODEL_FLAG_DEFAULTS = dict(
    image_size=64,
    num_channels=128,
    num_res_blocks=2,
    num_heads=4,
    num_heads_upsample=-1,
    num_head_channels=-1,
    attention_resolutions="16,8",
    channel_mult="",
    dropout=0.0,
    class_cond=False,
    use_checkpoint=False,
    use_scale_shift_norm=True,
    resblock_updown=False,
    use_fp16=False,
    use_new_attention_order=False,
    learn_sigma=False,
    diffusion_steps=1000,
    noise_schedule="linear",
)
# Flags accepted for command-line compatibility with guided-diffusion scripts
# but which do not change the network (recorded in the card when given).
PASSTHROUGH_DEFAULTS = dict(
    timestep_respacing="",
    use_kl=False,
    predict_xstart=False,
    rescale_timesteps=False,
    rescale_learned_sigmas=False,
)


def str2bool(v):
    if isinstance(v, bool):
        return v
    s = v.lower()
    if s in ("yes", "true", "t", "y", "1"):
        return True
    if s in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"boolean value expected (True/False), got {v!r}")


def add_flags(parser, defaults):
    for k, v in defaults.items():
        typ = str2bool if isinstance(v, bool) else type(v)
        parser.add_argument(f"--{k}", default=v, type=typ)


MODEL_KEYS = [
    "image_size",
    "num_channels",
    "num_res_blocks",
    "channel_mult",
    "learn_sigma",
    "class_cond",
    "use_checkpoint",
    "attention_resolutions",
    "num_heads",
    "num_head_channels",
    "num_heads_upsample",
    "use_scale_shift_norm",
    "dropout",
    "resblock_updown",
    "use_fp16",
    "use_new_attention_order",
    "in_channels",
]


def model_card(flags: dict, model: "adm.UNetModel", dtype: str, source: str | None, extra: dict | None = None):
    """The JSON model card written beside model.safetensors.

    `architecture` holds the resolved UNetModel arguments (what a loader needs,
    no string parsing): channel_mult as a list of numbers, attention_resolutions
    as downsample rates ds, out_channels, num_heads_upsample resolved.
    `flags` holds the guided-diffusion flags as given.  `schedule` holds the
    diffusion by name (betas are recomputed from noise_schedule and
    diffusion_steps as guided-diffusion's get_named_beta_schedule does; see
    README.md); the network takes the integer step index t in
    [0, diffusion_steps) (rescale_timesteps False).
    """
    image_size = int(flags["image_size"])
    mult = adm.parse_channel_mult(flags["channel_mult"], image_size)
    attn_ds = adm.parse_attention_resolutions(flags["attention_resolutions"], image_size)
    nhu = flags["num_heads_upsample"]
    in_ch = int(flags.get("in_channels", 3))
    adm.named_beta_schedule(flags["noise_schedule"], int(flags["diffusion_steps"]))  # validates
    n_params = sum(p.numel() for p in model.state_dict().values())
    card = {
        "format": CARD_FORMAT,
        "architecture": {
            "type": "guided-diffusion-unet",
            "image_size": image_size,
            "in_channels": in_ch,
            "model_channels": int(flags["num_channels"]),
            "out_channels": in_ch * (2 if flags["learn_sigma"] else 1),
            "num_res_blocks": int(flags["num_res_blocks"]),
            "attention_resolutions": list(attn_ds),
            "channel_mult": [m if isinstance(m, int) else float(m) for m in mult],
            "num_heads": int(flags["num_heads"]),
            "num_head_channels": int(flags["num_head_channels"]),
            "num_heads_upsample": int(flags["num_heads"]) if nhu == -1 else int(nhu),
            "use_scale_shift_norm": bool(flags["use_scale_shift_norm"]),
            "resblock_updown": bool(flags["resblock_updown"]),
            "use_new_attention_order": bool(flags["use_new_attention_order"]),
            "conv_resample": True,
            "num_classes": adm.NUM_CLASSES if flags.get("class_cond") else None,
            "learn_sigma": bool(flags["learn_sigma"]),
            "group_norm_groups": 32,
            "group_norm_eps": 1e-5,
            "num_parameters": int(n_params),
        },
        "flags": {k: flags[k] for k in sorted(flags)},
        "schedule": {
            "kind": "vp-discrete",
            "diffusion_steps": int(flags["diffusion_steps"]),
            "noise_schedule": flags["noise_schedule"],
            "timestep_input": "integer step index t in [0, diffusion_steps), fed as float",
            # eps in channels [0, C); a learned-sigma model's variance interpolation v in
            # channels [C, 2C) (architecture.learn_sigma) is not used by the prior.
            "output": "eps",
        },
        "intensity_range": [-1.0, 1.0],
        "channels": in_ch,
        "resolution": [image_size, image_size],
        "weights": {"file": "model.safetensors", "dtype": dtype},
        "source_checkpoint": source,
    }
    if extra:
        card.update(extra)
    return card


def write_prior_dir(out_dir: str, model, flags: dict, dtype: str, source: str | None, extra=None):
    """Write model.safetensors (every state-dict tensor, contiguous, in `dtype`)
    and model.json into out_dir (created if needed)."""
    import torch
    from safetensors.torch import save_file

    if dtype not in ("f32", "f16"):
        raise ValueError(f"dtype must be f32 or f16, got {dtype!r}")
    tdt = torch.float32 if dtype == "f32" else torch.float16
    os.makedirs(out_dir, exist_ok=True)
    tensors = {k: v.detach().to(tdt).contiguous().clone() for k, v in model.state_dict().items()}
    card = model_card(flags, model, dtype, source, extra)
    save_file(tensors, os.path.join(out_dir, "model.safetensors"), metadata={"format": CARD_FORMAT})
    with open(os.path.join(out_dir, "model.json"), "w") as f:
        json.dump(card, f, indent=1)
        f.write("\n")
    return card


def load_state_dict(path: str):
    import torch

    if not os.path.isfile(path):
        raise SystemExit(f"error: checkpoint {path!r} does not exist or is not a file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling failure plainly
        raise SystemExit(f"error: cannot read {path!r} as a PyTorch checkpoint: {e}") from None
    # Some training scripts wrap the weights.
    for key in ("ema", "model", "state_dict"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SystemExit(f"error: {path!r} does not hold a state dict (name -> tensor)")
    # DataParallel prefixes.
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return obj


def check_and_load(model, sd):
    """Strict load with a readable report: missing, unexpected, wrong-shape keys."""
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    bad = [
        f"  {k}: checkpoint {tuple(sd[k].shape)}, model expects {tuple(want[k].shape)}"
        for k in want
        if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)
    ]
    if missing or unexpected or bad:
        lines = ["error: checkpoint does not match the architecture given by the flags"]
        if missing:
            lines.append(f" {len(missing)} key(s) missing from the checkpoint, e.g.:")
            lines += [f"  {k} {tuple(want[k].shape)}" for k in missing[:10]]
        if unexpected:
            lines.append(f" {len(unexpected)} unexpected key(s) in the checkpoint, e.g.:")
            lines += [f"  {k} {tuple(sd[k].shape)}" for k in unexpected[:10]]
        if bad:
            lines.append(f" {len(bad)} shape mismatch(es):")
            lines += bad[:10]
        raise SystemExit("\n".join(lines))
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="guided-diffusion .pt state dict")
    p.add_argument("--out", required=True, help="output prior directory")
    add_flags(p, MODEL_FLAG_DEFAULTS)
    add_flags(p, PASSTHROUGH_DEFAULTS)
    p.add_argument("--in_channels", type=int, default=3, help="image channels (1 grayscale, 2 complex)")
    p.add_argument("--dtype", choices=["f32", "f16"], default="f32", help="storage dtype of the weights")
    p.add_argument("--training_data", default=None, help="free text recorded in the card, e.g. 'FFHQ 256'")
    a = p.parse_args(argv)
    flags = {k: getattr(a, k) for k in list(MODEL_FLAG_DEFAULTS) + ["in_channels"]}
    if a.in_channels < 1:
        raise SystemExit(f"error: --in_channels must be >= 1, got {a.in_channels}")
    try:
        model = adm.create_model(**{k: flags[k] for k in MODEL_KEYS})
        adm.named_beta_schedule(flags["noise_schedule"], flags["diffusion_steps"])
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    sd = load_state_dict(a.checkpoint)
    check_and_load(model, sd)
    extra = {
        "training_data": a.training_data,
        "diffusion_flags": {k: getattr(a, k) for k in PASSTHROUGH_DEFAULTS},
    }
    card = write_prior_dir(a.out, model, flags, a.dtype, os.path.basename(a.checkpoint), extra)
    print(
        f"wrote {a.out}/model.safetensors ({card['architecture']['num_parameters']} parameters, {a.dtype}) "
        f"and {a.out}/model.json"
    )


if __name__ == "__main__":
    sys.exit(main())
