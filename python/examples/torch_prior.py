"""A PyTorch model as the prior of posterior's samplers.

Trains a small U-Net (eps-prediction, DDPM's linear VP schedule) on seven of the eight
bundled Fashion-MNIST garments (tests/data/heldout; far too few for a useful prior: this
shows the wiring, not a prior worth using) on the CPU, wraps it as a
``posterior.CallablePrior`` (with a VJP through ``torch.autograd``), and reconstructs the
eighth garment with a box missing by DDS and DPS. Run by hand where torch is installed (CI does
not install torch):

    python python/examples/torch_prior.py [--steps 400] [--device cpu|cuda]

The same wrapping serves any denoiser: ``f(x_t, t)`` gets a float32 numpy batch
``(N, C, H, W)`` on the path ``x_t = a(t) x0 + s(t) eps`` and the time ``t`` in [0, 1],
and returns Tweedie's estimate ``x0_hat`` in the prior's range.
"""

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import posterior

ROOT = Path(__file__).resolve().parents[2]
T = 1000
BETAS = np.linspace(1e-4, 0.02, T)
# log abar_k for k = 0..T (abar_0 = 1): posterior's "linear" schedule puts training step n
# at t = (n + 1) / T and interpolates log abar linearly in between.
LOG_ABAR = np.concatenate([[0.0], np.cumsum(np.log1p(-BETAS))])


def coeffs(t):
    """(a(t), s(t)) of posterior's "linear" VP schedule with T = 1000."""
    u = min(max(t, 0.0), 1.0) * T
    k = min(int(np.floor(u)), T - 1)
    log_abar = LOG_ABAR[k] + (u - k) * (LOG_ABAR[k + 1] - LOG_ABAR[k])
    return float(np.exp(0.5 * log_abar)), float(np.sqrt(max(-np.expm1(log_abar), 0.0)))


class Block(nn.Module):
    def __init__(self, cin, cout, temb):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.emb = nn.Linear(temb, cout)
        self.norm1 = nn.GroupNorm(8, cout)
        self.norm2 = nn.GroupNorm(8, cout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, e):
        h = F.silu(self.norm1(self.conv1(x)))
        h = h + self.emb(e)[:, :, None, None]
        h = F.silu(self.norm2(self.conv2(h)))
        return h + self.skip(x)


class UNet(nn.Module):
    """Two resolutions, 32 and 64 channels: enough to learn garment shapes."""

    def __init__(self, ch=32, temb=64):
        super().__init__()
        self.temb = temb
        self.t1 = nn.Linear(temb, temb)
        self.inp = nn.Conv2d(1, ch, 3, padding=1)
        self.d1 = Block(ch, ch, temb)
        self.d2 = Block(ch, 2 * ch, temb)
        self.mid = Block(2 * ch, 2 * ch, temb)
        self.u2 = Block(4 * ch, ch, temb)
        self.u1 = Block(2 * ch, ch, temb)
        self.out = nn.Conv2d(ch, 1, 3, padding=1)

    def embed(self, n):
        half = self.temb // 2
        f = torch.exp(-np.log(10000.0) * torch.arange(half, device=n.device) / half)
        a = n[:, None].float() * f[None]
        return F.silu(self.t1(torch.cat([a.sin(), a.cos()], 1)))

    def forward(self, x, n):
        e = self.embed(n)
        h1 = self.d1(self.inp(x), e)
        h2 = self.d2(F.avg_pool2d(h1, 2), e)
        m = self.mid(h2, e)
        u2 = self.u2(torch.cat([m, h2], 1), e)
        u1 = self.u1(torch.cat([F.interpolate(u2, scale_factor=2.0), h1], 1), e)
        return self.out(u1)


HELD_OUT = 1  # the garment reconstructed below: never trained on


def train(steps, device):
    garments = np.delete(np.load(ROOT / "tests/data/heldout/fmnist-32.npy"), HELD_OUT, axis=0)
    data = torch.from_numpy(garments).to(device)
    abar = torch.from_numpy(np.exp(LOG_ABAR[1:])).float().to(device)
    net = UNet().to(device)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    g = torch.Generator(device="cpu").manual_seed(0)
    start = time.time()
    for i in range(steps):
        idx = torch.randint(0, len(data), (32,), generator=g)
        x0 = data[idx]
        x0 = torch.where(torch.rand(32, 1, 1, 1, generator=g).to(device) < 0.5, x0, x0.flip(-1))
        n = torch.randint(0, T, (32,), generator=g).to(device)
        eps = torch.randn(x0.shape, generator=g).to(device)
        ab = abar[n][:, None, None, None]
        loss = F.mse_loss(net(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, n), eps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (i + 1) % 100 == 0:
            print(f"step {i + 1}: loss {loss.item():.4f} ({time.time() - start:.0f} s)", flush=True)
    return net.eval()


def as_prior(net, device):
    """The network as a posterior prior: x0_hat = (x_t - s eps) / a, and its VJP."""

    def x0_hat(x, t):
        a, s = coeffs(t)
        n = torch.full((x.shape[0],), min(max(t * T - 1, 0.0), T - 1), device=device)
        return (x - s * net(x, n)) / a

    def f(x_t, t):
        with torch.no_grad():
            return x0_hat(torch.from_numpy(x_t).to(device), t).cpu().numpy()

    def vjp(x_t, t, v):
        x = torch.from_numpy(x_t).to(device).requires_grad_(True)
        x0 = x0_hat(x, t)
        (g,) = torch.autograd.grad(x0, x, torch.from_numpy(v).to(device))
        return x0.detach().cpu().numpy(), g.cpu().numpy()

    return posterior.CallablePrior(f, shape=(1, 32, 32), schedule="linear", steps=T,
                                   range=(-1.0, 1.0), vjp=vjp, name="torch-unet")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400, help="training steps")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.manual_seed(0)
    net = train(args.steps, args.device)
    prior = as_prior(net, args.device)

    truth = ((np.load(ROOT / "tests/data/heldout/fmnist-32.npy")[HELD_OUT] + 1) / 2).astype(np.float32)
    A = posterior.operator("inpaint:mask=box,size=12", image_shape=(1, 32, 32))
    y = A.measure(truth, noise=0.01, seed=0)
    psnr = lambda x: 10 * np.log10(1.0 / np.mean((x - truth) ** 2))
    tv = posterior.reconstruct(y, A, method="tv", noise=0.01)
    print(f"TV: {psnr(tv.image):.2f} dB", flush=True)
    for sampler, steps in [("dds", 50), ("dps", 200)]:
        r = posterior.reconstruct(y, A, sampler=sampler, prior=prior, steps=steps, seed=0,
                                  noise=0.01, image_range=(0.0, 1.0))
        print(f"{r.label}: {psnr(r.image):.2f} dB, {r.nfe} NFE, {r.vjps} VJP, {r.seconds:.1f} s", flush=True)


if __name__ == "__main__":
    main()
