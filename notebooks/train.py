#!/usr/bin/env python3
"""Train a small ADM U-Net diffusion prior (eps prediction, VP, DDPM loss) on a
dataset made by notebooks/data.py, then export it as a `posterior` prior directory.

    python notebooks/data.py fmnist --out data/fmnist
    nice -n 19 python notebooks/train.py --preset fmnist-32 --data data/fmnist \\
        --out priors/fmnist-32 --threads 2 --max-minutes 150

Training: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps with guided-diffusion's
named beta schedule (linear 1e-4..0.02, T = 1000 by default), t uniform in
[0, T), loss = mean squared error between the network output and eps
(learn_sigma False).  AdamW with a linear learning-rate warm-up, gradient-norm
clipping, and an exponential moving average (EMA) of the weights with decay
min(ema_rate, (1 + step) / (10 + step)).

Everything random (initial weights, batches, flips, t, eps) is drawn from
generators seeded by --seed, and the checkpoint OUT/ckpt/latest.pt holds the
model, the EMA, the optimiser, the step, the generators' states and the
configuration: a run that is stopped (--max-minutes, --steps, Ctrl-C,
SIGTERM) and started again with the same command continues bit for bit as
if it had not been interrupted (same --threads).  The checkpoint is written
every --ckpt-minutes and at the end, to a temporary name and renamed.

Progress goes to stdout and to OUT/train.jsonl (one JSON object per log line).
When the run reaches --steps (or with --export-now) the EMA weights are
exported through convert_checkpoint.write_prior_dir into OUT/model.safetensors
(f16) + OUT/model.json, with a denoising sanity check on held-out images
(see export_prior.py).

Model flags have guided-diffusion's names (--num_channels, --channel_mult,
--num_res_blocks, --attention_resolutions, ...); --preset sets them for the
shipped priors and any flag given explicitly overrides the preset.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import signal
import sys
import time

# Threads that wait for work sleep instead of spinning: on a shared, busy machine
# spinning OpenMP workers made 2-thread training ~10x slower than 1 thread
# (measured: 0.13 vs 1.2 steps/s); passive waiting gives 1.05 steps/s there.
# Must be set before torch (and its OpenMP runtime) is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import convert_checkpoint as cc  # noqa: E402

# The shipped priors' configurations.  Sizes: fmnist-32 2,405,601 parameters
# (4.8 MB in f16); brain-64 / ct-64 4,779,617 (9.6 MB); ct-128 / brain-128 4,718,913
# (9.5 MB); ct-256 4,966,593 (9.9 MB).
PRESETS = {
    "fmnist-32": dict(
        image_size=32, in_channels=1, num_channels=32, channel_mult="1,2,2,2", num_res_blocks=2,
        attention_resolutions="8", num_heads=4, use_scale_shift_norm=True, resblock_updown=False,
        dropout=0.0, learn_sigma=False, flip=True,
    ),
    "brain-64": dict(
        image_size=64, in_channels=1, num_channels=32, channel_mult="1,2,2,4", num_res_blocks=2,
        attention_resolutions="8", num_heads=4, use_scale_shift_norm=True, resblock_updown=False,
        dropout=0.0, learn_sigma=False, flip=False,
    ),
    "ct-128": dict(
        image_size=128, in_channels=1, num_channels=32, channel_mult="1,1,2,2,4", num_res_blocks=2,
        attention_resolutions="16", num_heads=4, use_scale_shift_norm=True, resblock_updown=False,
        dropout=0.0, learn_sigma=False, flip=True,
    ),
    # 128x128 brain (brain-mri-128) and 256x256 CT (ct-ellipses-256): ct-128's widths, one
    # more level of resolution for the brain; attention at 16 px (ds 8 / ds 16).
    "brain-128": dict(
        image_size=128, in_channels=1, num_channels=32, channel_mult="1,1,2,2,4", num_res_blocks=2,
        attention_resolutions="16", num_heads=4, use_scale_shift_norm=True, resblock_updown=False,
        dropout=0.0, learn_sigma=False, flip=False,
    ),
    "ct-256": dict(
        image_size=256, in_channels=1, num_channels=32, channel_mult="1,1,2,2,4", num_res_blocks=2,
        attention_resolutions="16", num_heads=4, use_scale_shift_norm=True, resblock_updown=False,
        dropout=0.0, learn_sigma=False, flip=True,
    ),
    "ct-64": dict(
        image_size=64, in_channels=1, num_channels=32, channel_mult="1,2,2,4", num_res_blocks=2,
        attention_resolutions="8", num_heads=4, use_scale_shift_norm=True, resblock_updown=False,
        dropout=0.0, learn_sigma=False, flip=True,
    ),
}

TRAIN_DEFAULTS = dict(batch_size=32, lr=2e-4, weight_decay=0.0, ema_rate=0.999, lr_warmup=500, grad_clip=1.0,
                      loss_weight="eps", snr_gamma=5.0)
LOSS_WEIGHTS = ("eps", "min-snr")


class TrainError(Exception):
    pass


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="model configuration of a shipped prior")
    p.add_argument("--data", required=True, help="dataset directory written by notebooks/data.py")
    p.add_argument("--out", required=True, help="output directory (ckpt/, train.jsonl, the exported prior)")
    cc.add_flags(p, cc.MODEL_FLAG_DEFAULTS)
    p.add_argument("--in_channels", type=int, default=1)
    p.add_argument("--flip", type=cc.str2bool, default=False, help="random horizontal flips")
    for k, v in TRAIN_DEFAULTS.items():
        p.add_argument(f"--{k}", type=type(v), default=v)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    # Speed options (they change no result beyond rounding, so a run may resume with others).
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast for the forward and backward passes "
                   "(weights, optimiser and EMA stay f32)")
    p.add_argument("--channels-last", action="store_true", help="channels-last memory format (NHWC convolutions)")
    p.add_argument("--compile", default="none", choices=["none", "default", "reduce-overhead", "max-autotune"],
                   help="torch.compile the model (reduce-overhead: CUDA graphs); the first steps compile")
    p.add_argument("--device", default="cpu", help="cpu or cuda (the data, the model and every generator live there)")
    p.add_argument("--init-from", default=None,
                   help="a fresh run starts from these weights (an exported model.safetensors, e.g. a prior "
                        "trained on another machine) instead of a random initialisation")
    p.add_argument("--init-if-compatible", default=None, metavar="DIR",
                   help="like --init-from DIR when DIR's card has this configuration's architecture flags; "
                        "otherwise a fresh start (said on stdout)")
    p.add_argument("--steps", type=int, default=None, help="stop (and export) when this many steps are done in total")
    p.add_argument("--max-minutes", type=float, default=None, help="stop this invocation after this long (resumable)")
    p.add_argument("--ckpt-minutes", type=float, default=10.0, help="checkpoint interval (default 10)")
    p.add_argument("--log-every", type=int, default=50, help="log every N steps (default 50)")
    p.add_argument("--heldout-every", type=int, default=0,
                   help="every N steps log the eps-MSE on 64 fixed held-out and 64 fixed training images "
                        "(the held-out curve: a growing gap means overfitting; default 0 = never)")
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint and start from step 0")
    p.add_argument("--export-now", action="store_true", help="export the EMA weights at the end even if --steps is not reached")
    p.add_argument("--no-export", action="store_true", help="never export")
    p.add_argument("--sanity-n", type=int, default=64, help="held-out images for the export's denoising check")
    p.add_argument("--sample-n", type=int, default=32, help="samples for the export's sample check (0: skip)")
    p.add_argument("--sample-steps", type=int, default=50, help="DDIM steps of the export's sample check")
    p.add_argument("--name", default=None, help="prior name in the card (default: the preset or OUT's basename)")
    return p


def parse_args(argv=None):
    p = build_parser()
    pre, _ = p.parse_known_args(argv)
    if pre.preset:
        p.set_defaults(**PRESETS[pre.preset])
    a = p.parse_args(argv)
    checks = [
        (a.batch_size >= 1, "--batch_size must be >= 1"),
        (a.lr > 0, "--lr must be > 0"),
        (0 <= a.ema_rate < 1, "--ema_rate must be in [0, 1)"),
        (a.threads >= 1, "--threads must be >= 1"),
        (a.steps is None or a.steps >= 0, "--steps must be >= 0"),
        (a.max_minutes is None or a.max_minutes > 0, "--max-minutes must be > 0"),
        (a.ckpt_minutes > 0, "--ckpt-minutes must be > 0"),
        (a.log_every >= 1, "--log-every must be >= 1"),
        (a.heldout_every >= 0, "--heldout-every must be >= 0"),
        (a.lr_warmup >= 0, "--lr_warmup must be >= 0"),
        (a.in_channels >= 1, "--in_channels must be >= 1"),
        (a.loss_weight in LOSS_WEIGHTS, f"--loss_weight must be one of {LOSS_WEIGHTS}"),
        (a.snr_gamma > 0, "--snr_gamma must be > 0"),
        (a.sample_n >= 0 and a.sample_steps >= 1, "--sample-n must be >= 0 and --sample-steps >= 1"),
        (not a.learn_sigma, "--learn_sigma True is not supported by this trainer (eps-MSE only)"),
        (not a.class_cond, "--class_cond True is not supported by this trainer"),
    ]
    for ok, msg in checks:
        if not ok:
            p.error(msg)
    return a


def model_flags(a) -> dict:
    return {k: getattr(a, k) for k in list(cc.MODEL_FLAG_DEFAULTS) + ["in_channels"]}


def train_config(a) -> dict:
    """What must not change between a run and its resumption."""
    cfg = {k: getattr(a, k) for k in TRAIN_DEFAULTS if k not in ("loss_weight", "snr_gamma")}
    if a.loss_weight != "eps":  # (absent from checkpoints written before the option existed)
        cfg.update(loss_weight=a.loss_weight, snr_gamma=a.snr_gamma)
    cfg.update(flags=model_flags(a), flip=a.flip, seed=a.seed)
    if a.device != "cpu":
        cfg["device"] = a.device  # generators differ by device: a CPU run cannot resume a GPU one
    return cfg


def hardware(threads: int, device: str = "cpu") -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import torch

    info = {"device": "cpu", "cpu": cpu, "threads": threads, "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "python": platform.python_version()}
    if device != "cpu":
        info.update(device=device, gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    return info


def compatible(prior_dir: str, flags: dict) -> str | None:
    """None when the prior directory's card has the same architecture flags as `flags`, else why not."""
    card = os.path.join(prior_dir, "model.json")
    if not os.path.isfile(card):
        return f"no model card at {card}; starting fresh"
    with open(card) as f:
        theirs = json.load(f).get("flags", {})
    diff = [f"{k}: {theirs.get(k)!r} vs {flags[k]!r}" for k in cc.MODEL_KEYS
            if k in flags and str(theirs.get(k)) != str(flags[k])]
    return f"different architecture ({'; '.join(diff)}); starting fresh" if diff else None


def speed_options(a) -> dict:
    return {"bf16": a.bf16, "channels_last": a.channels_last, "compile": a.compile, "batch_size": a.batch_size}


def loss_weights(kind: str, abar, gamma: float = 5.0):
    """Per-step weights of the eps-MSE: `eps` 1 everywhere; `min-snr` min(SNR, gamma) / SNR
    (Hang et al. 2023, min-SNR-gamma in its eps-prediction form; SNR = abar / (1 - abar)), which
    down-weights the nearly clean steps whose eps targets are hardest and least useful."""
    import numpy as np

    abar = np.asarray(abar, dtype=np.float64)
    if kind == "eps":
        return np.ones_like(abar)
    if kind == "min-snr":
        snr = abar / (1.0 - abar)
        return np.minimum(snr, gamma) / snr
    raise ValueError(f"unknown loss weighting {kind!r} (expected one of {LOSS_WEIGHTS})")


def save_atomic(obj, path: str):
    import torch

    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


class Trainer:
    def __init__(self, a):
        import numpy as np
        import torch

        import adm
        import data as datamod

        self.a = a
        self.torch = torch
        torch.set_num_threads(a.threads)
        if a.device != "cpu":
            if not torch.cuda.is_available():
                raise TrainError(f"--device {a.device}: PyTorch sees no CUDA device here")
            # TF32 matrix units for convolutions and matmuls: training tolerates their ~1e-3
            # relative rounding, and they are several times faster than f32 on Hopper.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.dev = torch.device(a.device)
        arr, self.manifest = datamod.load_dataset(a.data, "train")
        if arr.ndim != 4 or arr.shape[1] != a.in_channels or arr.shape[2] != a.image_size or arr.shape[3] != a.image_size:
            raise TrainError(
                f"dataset {a.data!r} holds images {tuple(arr.shape[1:])}, but the model expects "
                f"({a.in_channels}, {a.image_size}, {a.image_size}) (--in_channels, --image_size)"
            )
        s = self.manifest["to_model_range"]
        self.scale, self.offset = float(s["scale"]), float(s["offset"])
        self.data = torch.from_numpy(np.array(arr, copy=True)).to(self.dev)
        self.n = self.data.shape[0]
        self.flags = model_flags(a)
        try:
            betas = adm.named_beta_schedule(a.noise_schedule, a.diffusion_steps)
            torch.manual_seed(a.seed)
            self.model = adm.create_model(**{k: self.flags[k] for k in cc.MODEL_KEYS})
        except ValueError as e:
            raise TrainError(str(e)) from None
        self.T = len(betas)
        abar = np.cumprod(1.0 - np.asarray(betas, dtype=np.float64))
        self.model.to(self.dev)
        self.init_info = None
        if a.init_if_compatible and not a.init_from:
            why = compatible(a.init_if_compatible, self.flags)
            print(f"--init-if-compatible {a.init_if_compatible}: {why or 'same architecture, continuing from it'}",
                  flush=True)
            if why is None:
                a.init_from = a.init_if_compatible
        if a.init_from:
            self.init_weights(a.init_from)
        self.sqrt_abar = torch.tensor(np.sqrt(abar), dtype=torch.float32, device=self.dev)
        self.sqrt_1m_abar = torch.tensor(np.sqrt(1.0 - abar), dtype=torch.float32, device=self.dev)
        self.loss_weights = torch.tensor(loss_weights(a.loss_weight, abar, a.snr_gamma), dtype=torch.float32,
                                         device=self.dev)
        if a.channels_last:
            self.model.to(memory_format=torch.channels_last)
        # the compiled module shares the parameters; the state dict is taken from self.model
        self.forward = self.model if a.compile == "none" else torch.compile(self.model, mode=a.compile)
        self.ema = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=a.lr, weight_decay=a.weight_decay)
        self.gen = torch.Generator(device=self.dev).manual_seed(a.seed + 1)
        self.step = 0
        self.seconds = 0.0  # training wall time over all sessions
        self.recent = collections.deque(maxlen=1000)  # recent per-step losses
        self.pending = []  # per-step losses not read back from the device yet
        self.config = train_config(a)
        self.ckpt_dir = os.path.join(a.out, "ckpt")
        self.ckpt_path = os.path.join(self.ckpt_dir, "latest.pt")
        self.n_params = sum(p.numel() for p in self.model.parameters())

    def init_weights(self, path):
        """Loads every parameter from a safetensors file (any float dtype) with shapes checked."""
        from safetensors.torch import load_file

        if os.path.isdir(path):
            path = os.path.join(path, "model.safetensors")
        try:
            st = load_file(path)
        except Exception as e:  # noqa: BLE001
            raise TrainError(f"--init-from {path!r}: cannot read: {e}") from None
        own = self.model.state_dict()
        missing = sorted(set(own) - set(st))
        extra = sorted(set(st) - set(own))
        bad = [f"{k}: file {tuple(st[k].shape)}, model {tuple(own[k].shape)}"
               for k in own if k in st and st[k].shape != own[k].shape]
        if missing or extra or bad:
            raise TrainError(f"--init-from {path!r} does not fit this configuration: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}, shape mismatches {bad[:5]}")
        self.model.load_state_dict({k: v.to(own[k].dtype) for k, v in st.items()})
        # What the starting weights had already been through (their card, when beside them).
        self.init_info = {"path": path}
        card = os.path.join(os.path.dirname(path), "model.json")
        if os.path.isfile(card):
            with open(card) as f:
                tr = json.load(f).get("training") or {}
            prev = tr.get("initialised_from") or {}
            self.init_info.update(
                steps=int(tr.get("steps", 0)) + int(prev.get("steps", 0)),
                samples_seen=int(tr.get("samples_seen", 0)) + int(prev.get("samples_seen", 0)),
                train_seconds=float(tr.get("train_seconds", 0.0)) + float(prev.get("train_seconds", 0.0)),
            )

    # ---- checkpoints
    def state(self):
        return {
            "format": "posterior-train-ckpt-v1",
            "step": self.step,
            "seconds": self.seconds,
            "model": self.model.state_dict(),
            "ema": self.ema,
            "opt": self.opt.state_dict(),
            "gen": self.gen.get_state(),
            "torch_rng": self.torch.get_rng_state(),
            "recent_losses": list(self.recent),
            "config": self.config,
            "data": {"dir": os.path.abspath(self.a.data), "name": self.manifest.get("name")},
            "hardware": hardware(self.a.threads, self.a.device),
            "init_from": self.init_info,
        }

    def save(self):
        self.flush_losses()
        os.makedirs(self.ckpt_dir, exist_ok=True)
        save_atomic(self.state(), self.ckpt_path)

    def load(self, path):
        torch = self.torch
        try:
            st = torch.load(path, map_location=self.dev, weights_only=False)
        except Exception as e:  # noqa: BLE001
            raise TrainError(f"cannot read checkpoint {path!r}: {e}") from None
        if not isinstance(st, dict) or st.get("format") != "posterior-train-ckpt-v1":
            raise TrainError(f"{path!r} is not a checkpoint written by train.py")
        if st["config"] != self.config:
            diff = [
                f"  {k}: checkpoint {st['config'].get(k)!r}, now {self.config.get(k)!r}"
                for k in sorted(set(st["config"]) | set(self.config))
                if st["config"].get(k) != self.config.get(k)
            ]
            raise TrainError(
                "the checkpoint was made with a different configuration (pass the same flags, or --fresh):\n"
                + "\n".join(diff)
            )
        self.model.load_state_dict(st["model"])
        self.ema = st["ema"]
        self.opt.load_state_dict(st["opt"])
        self.gen.set_state(st["gen"].cpu())
        torch.set_rng_state(st["torch_rng"].cpu())
        self.step = int(st["step"])
        self.seconds = float(st["seconds"])
        self.recent = collections.deque(st["recent_losses"], maxlen=1000)
        self.init_info = st.get("init_from")

    # ---- one step
    def lr_at(self, step):
        w = self.a.lr_warmup
        return self.a.lr * min(1.0, (step + 1) / w) if w > 0 else self.a.lr

    def train_step(self):
        torch, a = self.torch, self.a
        g = self.gen
        dev = self.dev
        idx = torch.randint(self.n, (a.batch_size,), generator=g, device=dev)
        x0 = self.data[idx].to(torch.float32) * self.scale + self.offset
        if a.flip:
            f = torch.rand(a.batch_size, generator=g, device=dev) < 0.5
            x0 = torch.where(f[:, None, None, None], x0.flip(-1), x0)
        t = torch.randint(self.T, (a.batch_size,), generator=g, device=dev)
        eps = torch.randn(x0.shape, generator=g, device=dev)
        xt = self.sqrt_abar[t][:, None, None, None] * x0 + self.sqrt_1m_abar[t][:, None, None, None] * eps
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(self.step)
        if a.channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.bf16):
            out = self.forward(xt, t)
        per = ((out.float() - eps) ** 2).flatten(1).mean(1)
        loss = torch.mean(self.loss_weights[t] * per)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if a.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), a.grad_clip)
        self.opt.step()
        self.step += 1
        decay = min(a.ema_rate, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            keys = list(self.ema)
            cur = self.model.state_dict()
            ema = [self.ema[k] for k in keys]
            torch._foreach_mul_(ema, decay)
            torch._foreach_add_(ema, [cur[k].detach() for k in keys], alpha=1 - decay)
        # The loss stays on the device (no synchronisation per step); `flush_losses` reads it.
        self.pending.append(loss.detach())

    def curve_batches(self, n=64, seed=4321):
        """Fixed (x0, t, eps) batches of the test and the training split for the held-out curve."""
        import numpy as np

        import data as datamod

        torch = self.torch
        g = torch.Generator().manual_seed(seed)
        out = {}
        for split in ("test", "train"):
            try:
                arr, _ = datamod.load_dataset(self.a.data, split)
            except datamod.DataError:
                continue
            idx = np.linspace(0, len(arr) - 1, min(n, len(arr))).round().astype(int)
            x0 = torch.from_numpy(datamod.to_model(arr[idx], self.manifest))
            t = torch.linspace(0, self.T - 1, len(x0)).round().long()
            eps = torch.randn(x0.shape, generator=g)
            out[split] = tuple(v.to(self.dev) for v in (x0, t, eps))
        return out

    def curve_point(self, batches) -> dict:
        """eps-MSE (plain, mean over the batch) of the online weights on each fixed batch."""
        torch = self.torch
        rec = {}
        with torch.no_grad():
            for split, (x0, t, eps) in batches.items():
                xt = self.sqrt_abar[t][:, None, None, None] * x0 + self.sqrt_1m_abar[t][:, None, None, None] * eps
                rec[f"{'heldout' if split == 'test' else 'train'}_eps_mse"] = round(
                    torch.mean((self.model(xt, t).float() - eps) ** 2).item(), 6)
        return rec

    def flush_losses(self):
        """Moves the pending per-step losses to `recent`; returns their sum and count."""
        if not self.pending:
            return 0.0, 0
        vals = self.torch.stack(self.pending).tolist()
        first = self.step - len(vals) + 1
        self.pending = []
        for i, v in enumerate(vals):
            if not math.isfinite(v):
                raise TrainError(f"loss became {v} at step {first + i}; lower --lr or check the data")
        self.recent.extend(vals)
        return sum(vals), len(vals)

    def final_loss(self):
        r = list(self.recent)[-500:]
        return sum(r) / len(r) if r else None


def log_line(fh, rec):
    fh.write(json.dumps(rec) + "\n")
    fh.flush()


def run(a) -> int:
    tr = Trainer(a)
    os.makedirs(a.out, exist_ok=True)
    resumed = False
    if os.path.exists(tr.ckpt_path) and not a.fresh:
        tr.load(tr.ckpt_path)
        resumed = True
    print(
        f"{'resumed at step ' + str(tr.step) if resumed else 'fresh start'}: {tr.n_params:,} parameters, "
        f"data {a.data} ({tr.n} images), batch {a.batch_size}, threads {a.threads}, "
        f"target {a.steps if a.steps is not None else 'none'} steps, max {a.max_minutes} min",
        flush=True,
    )
    stop = {"sig": None}

    def on_signal(signum, _frame):
        stop["sig"] = signum

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    log = open(os.path.join(a.out, "train.jsonl"), "a")
    log_line(log, {"event": "resume" if resumed else "start", "step": tr.step, "time": time.time(),
                   "threads": a.threads, "config": tr.config, "parameters": tr.n_params,
                   **({"init_from": a.init_from} if a.init_from and not resumed else {})})
    t_start = time.time()
    t_ckpt = t_start
    t_log, step_log, acc, nacc = t_start, tr.step, 0.0, 0
    reason = None
    curve = tr.curve_batches() if a.heldout_every else None
    try:
        while True:
            if a.steps is not None and tr.step >= a.steps:
                reason = "steps"
                break
            if a.max_minutes is not None and time.time() - t_start >= 60 * a.max_minutes:
                reason = "time"
                break
            if stop["sig"] is not None:
                reason = f"signal {stop['sig']}"
                break
            t0 = time.time()
            tr.train_step()
            if tr.step % a.log_every == 0:
                sm, cnt = tr.flush_losses()  # synchronises with the device
                acc, nacc = acc + sm, nacc + cnt
            tr.seconds += time.time() - t0
            now = time.time()
            if tr.step % a.log_every == 0:
                rate = (tr.step - step_log) / max(now - t_log, 1e-9)
                rec = {"step": tr.step, "loss": acc / nacc, "lr": tr.lr_at(tr.step - 1), "steps_per_s": rate,
                       "train_seconds": round(tr.seconds, 1), "time": now}
                log_line(log, rec)
                print(f"step {tr.step:7d}  loss {acc / nacc:.5f}  {rate:.2f} steps/s  "
                      f"{tr.seconds / 60:.1f} min", flush=True)
                t_log, step_log, acc, nacc = now, tr.step, 0.0, 0
            if curve and tr.step % a.heldout_every == 0:  # (not counted as training time)
                log_line(log, {"event": "heldout", "step": tr.step, **tr.curve_point(curve)})
            if now - t_ckpt >= 60 * a.ckpt_minutes:
                tr.save()
                t_ckpt = time.time()
                log_line(log, {"event": "checkpoint", "step": tr.step, "time": t_ckpt})
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    tr.save()
    log_line(log, {"event": "stop", "reason": reason, "step": tr.step, "time": time.time(),
                   "train_seconds": tr.seconds, "final_loss": tr.final_loss()})
    log.close()
    print(f"stopped ({reason}) at step {tr.step}; checkpoint {tr.ckpt_path}", flush=True)
    if not a.no_export and (reason == "steps" or a.export_now):
        import export_prior

        card = export_prior.export(
            tr.ckpt_path, a.out, data_dir=a.data, name=a.name or a.preset or os.path.basename(os.path.normpath(a.out)),
            sanity_n=a.sanity_n, threads=a.threads, sample_n=a.sample_n, sample_steps=a.sample_steps,
            device=a.device, hardware_info={**hardware(a.threads, a.device), "speed_options": speed_options(a)},
        )
        print(export_prior.summary(card, a.out), flush=True)
    return 0


def main(argv=None):
    a = parse_args(argv)
    try:
        return run(a)
    except TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # data errors from data.py, OS errors
        import data as datamod

        if isinstance(e, (datamod.DataError, OSError)):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
