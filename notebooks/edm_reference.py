"""A PyTorch reference for EDM's `DhariwalUNet` and its preconditioning wrappers.

EDM (Karras et al. 2022, NVlabs/edm `training/networks.py`) ships no PyPI package, so the
golden fixtures of the Rust engine are computed with this port, written from the facts of
that file (module names, parameter shapes, buffer names and the forward computation) so
that a state dict exported from EDM's own classes loads here strictly, and the reverse.
Layer by layer, what EDM specifies and this port does:

- Linear(in, out, bias): weight (out, in), `x @ W^T + b`.
- Conv2d(in, out, kernel, bias, up, down, resample_filter=[1, 1], fused_resample=False):
  weight (out, in, k, k) when kernel > 0 (kernel 0: no weight, no bias); a buffer
  `resample_filter` = outer(f, f) / sum(f)^2 of shape (1, 1, len, len) when up or down
  (persistent, so it is in the state dict). Not fused: up = depthwise transposed conv with
  4 * filter, stride 2, padding (len - 1) // 2; down = depthwise conv with the filter,
  stride 2, same padding; then the weight with padding k // 2; then the bias. (DhariwalUNet
  never fuses; the fused branch is not ported.)
- GroupNorm(C, num_groups=32, min_channels_per_group=4, eps=1e-5): min(32, C // 4) groups.
- UNetBlock(in, out, emb, up, down, attention, num_heads=None, channels_per_head=64,
  skip_scale=1, eps=1e-5, resample_filter=[1, 1], resample_proj=False,
  adaptive_scale=True): norm0, conv0 (3x3, up/down), affine (emb -> out or 2 out), norm1,
  conv1 (3x3), skip (when out != in or up or down: kernel 1 if resample_proj or out != in
  else 0, with up/down), and with attention (heads = num_heads or out // 64; 0 heads means
  none): norm2, qkv (1x1, out -> 3 out), proj (1x1). Forward: h = conv0(silu(norm0(x)));
  p = affine(emb); adaptive: h = silu(shift + norm1(h) * (scale + 1)) with (scale, shift) =
  chunk(p, 2) else silu(norm1(h + p)); h = conv1(h) + skip(x) (or x); h *= skip_scale;
  attention: q, k, v = qkv(norm2(h)).reshape(N * heads, C / heads, 3, HW).unbind(2),
  w = softmax_k(q^T k / sqrt(C / heads)), a = v w^T, h = (proj(a) + h) * skip_scale.
- PositionalEmbedding(C, max_positions=10000, endpoint=False): f_i = (1 / max_positions) ^
  (i / (C / 2 - endpoint)), [cos(t f), sin(t f)].
- DhariwalUNet: see `DhariwalUNet.__init__` below (module names `map_noise`, `map_layer0`,
  `map_layer1`, `enc.{r}x{r}_conv|_down|_block{i}`, `dec.{r}x{r}_in0|_in1|_up|_block{i}`,
  `out_norm`, `out_conv`); forward: emb = silu(map_layer1(silu(map_layer0(pos(c_noise)))));
  every encoder output is a skip; a decoder block concatenates the last skip when its input
  width differs from the current width.
- EDMPrecond / VPPrecond / VEPrecond: D(x; sigma) = c_skip x + c_out F(c_in x, c_noise) with
  EDM's coefficients (`precond_coefficients`).
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np
import torch
from torch.nn.functional import silu


class Linear(torch.nn.Module):
    def __init__(self, in_features, out_features, bias=True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = torch.nn.Parameter(torch.randn(out_features, in_features) / math.sqrt(in_features))
        self.bias = torch.nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x):
        y = x @ self.weight.to(x.dtype).t()
        return y + self.bias.to(x.dtype) if self.bias is not None else y


class Conv2d(torch.nn.Module):
    def __init__(
        self, in_channels, out_channels, kernel, bias=True, up=False, down=False, resample_filter=(1, 1), fused_resample=False
    ):
        assert not (up and down)
        assert not (fused_resample and up), "the fused up branch is used by no EDM network: not ported"
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down, self.fused_resample = up, down, fused_resample
        fan_in = max(in_channels * kernel * kernel, 1)
        self.weight = (
            torch.nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel) / math.sqrt(fan_in)) if kernel else None
        )
        self.bias = torch.nn.Parameter(torch.zeros(out_channels)) if kernel and bias else None
        f = torch.as_tensor(resample_filter, dtype=torch.float32)
        f = torch.outer(f, f)[None, None] / f.sum() ** 2
        self.register_buffer("resample_filter", f if (up or down) else None)

    def forward(self, x):
        w = self.weight.to(x.dtype) if self.weight is not None else None
        f = self.resample_filter.to(x.dtype) if self.resample_filter is not None else None
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused_resample and self.down and w is not None:
            # The weight first, padded by both radii, then the filter unpadded: the border
            # differs from filter-then-weight (the weight sees zeros, not filtered values).
            x = torch.nn.functional.conv2d(x, w, padding=w_pad + f_pad)
            x = torch.nn.functional.conv2d(x, f.tile([x.shape[1], 1, 1, 1]), groups=x.shape[1], stride=2)
        else:
            if f is not None:
                c = x.shape[1]
                if self.up:
                    x = torch.nn.functional.conv_transpose2d(x, (4 * f).tile([c, 1, 1, 1]), groups=c, stride=2, padding=f_pad)
                else:
                    x = torch.nn.functional.conv2d(x, f.tile([c, 1, 1, 1]), groups=c, stride=2, padding=f_pad)
            if w is not None:
                x = torch.nn.functional.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype).reshape(1, -1, 1, 1)
        return x


class GroupNorm(torch.nn.Module):
    def __init__(self, num_channels, num_groups=32, min_channels_per_group=4, eps=1e-5):
        super().__init__()
        self.num_groups = min(num_groups, num_channels // min_channels_per_group)
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(num_channels))
        self.bias = torch.nn.Parameter(torch.zeros(num_channels))

    def forward(self, x):
        return torch.nn.functional.group_norm(x, self.num_groups, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class UNetBlock(torch.nn.Module):
    def __init__(
        self,
        in_channels,
        out_channels,
        emb_channels,
        up=False,
        down=False,
        attention=False,
        num_heads=None,
        channels_per_head=64,
        skip_scale=1.0,
        eps=1e-5,
        resample_filter=(1, 1),
        resample_proj=False,
        adaptive_scale=True,
    ):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.num_heads = 0 if not attention else (num_heads if num_heads is not None else out_channels // channels_per_head)
        self.skip_scale, self.adaptive_scale = skip_scale, adaptive_scale
        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, up=up, down=down, resample_filter=resample_filter)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            kernel = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, up=up, down=down, resample_filter=resample_filter)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, 3 * out_channels, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x, emb):
        h = self.conv0(silu(self.norm0(x)))
        p = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            scale, shift = p.chunk(2, dim=1)
            h = silu(shift + self.norm1(h) * (scale + 1))
        else:
            h = silu(self.norm1(h + p))
        h = self.conv1(h)
        h = (h + (self.skip(x) if self.skip is not None else x)) * self.skip_scale
        if self.num_heads:
            n, c = h.shape[:2]
            q, k, v = self.qkv(self.norm2(h)).reshape(n * self.num_heads, c // self.num_heads, 3, -1).unbind(2)
            w = torch.softmax(torch.einsum("ncq,nck->nqk", q, k) / math.sqrt(k.shape[1]), dim=2)
            a = torch.einsum("nqk,nck->ncq", w, v)
            h = (self.proj(a.reshape(*h.shape)) + h) * self.skip_scale
        return h


class PositionalEmbedding(torch.nn.Module):
    def __init__(self, num_channels, max_positions=10000, endpoint=False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = num_channels, max_positions, endpoint

    def forward(self, x):
        half = self.num_channels // 2
        freqs = torch.arange(half, dtype=x.dtype, device=x.device) / (half - (1 if self.endpoint else 0))
        freqs = (1.0 / self.max_positions) ** freqs
        a = torch.outer(x, freqs)
        return torch.cat([a.cos(), a.sin()], dim=1)


class DhariwalUNet(torch.nn.Module):
    def __init__(
        self,
        img_resolution,
        in_channels,
        out_channels,
        label_dim=0,
        augment_dim=0,
        model_channels=192,
        channel_mult=(1, 2, 3, 4),
        channel_mult_emb=4,
        num_blocks=3,
        attn_resolutions=(32, 16, 8),
        dropout=0.10,
        label_dropout=0,
    ):
        assert label_dim == 0 and augment_dim == 0, "unconditional only"
        super().__init__()
        emb = model_channels * channel_mult_emb
        kw = dict(emb_channels=emb, channels_per_head=64)
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_layer0 = Linear(model_channels, emb)
        self.map_layer1 = Linear(emb, emb)
        self.enc = torch.nn.ModuleDict()
        cout = in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels * mult
                self.enc[f"{r}x{r}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{r}x{r}_down"] = UNetBlock(cout, cout, down=True, **kw)
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{r}x{r}_block{i}"] = UNetBlock(cin, cout, attention=(r in attn_resolutions), **kw)
        skips = [b.out_channels for b in self.enc.values()]
        self.dec = torch.nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            r = img_resolution >> level
            if level == len(channel_mult) - 1:
                self.dec[f"{r}x{r}_in0"] = UNetBlock(cout, cout, attention=True, **kw)
                self.dec[f"{r}x{r}_in1"] = UNetBlock(cout, cout, **kw)
            else:
                self.dec[f"{r}x{r}_up"] = UNetBlock(cout, cout, up=True, **kw)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                self.dec[f"{r}x{r}_block{i}"] = UNetBlock(cin, cout, attention=(r in attn_resolutions), **kw)
        self.out_norm = GroupNorm(cout)
        self.out_conv = Conv2d(cout, out_channels, 3)

    def forward(self, x, noise_labels, class_labels=None):
        emb = silu(self.map_layer0(self.map_noise(noise_labels)))
        emb = silu(self.map_layer1(emb))
        skips = []
        for b in self.enc.values():
            x = b(x, emb) if isinstance(b, UNetBlock) else b(x)
            skips.append(x)
        for b in self.dec.values():
            if x.shape[1] != b.in_channels:
                x = torch.cat([x, skips.pop()], dim=1)
            x = b(x, emb)
        return self.out_conv(silu(self.out_norm(x)))


class FourierEmbedding(torch.nn.Module):
    """NCSN++'s noise embedding: a fixed random frequency buffer `freqs` (C / 2, drawn
    N(0, scale^2) at construction, stored in the state dict), [cos(2 pi t f), sin(2 pi t f)]."""

    def __init__(self, num_channels, scale=16):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x):
        a = torch.outer(x, (2 * np.pi * self.freqs).to(x.dtype))
        return torch.cat([a.cos(), a.sin()], dim=1)


class SongUNet(torch.nn.Module):
    """DDPM++ / NCSN++ (Song et al. 2021) as EDM re-implements them. Every UNetBlock runs
    with skip_scale sqrt(1/2), GroupNorm eps 1e-6, one attention head, resample_proj and
    additive (not adaptive) embedding; attention in the encoder at every block of a listed
    resolution, in the decoder at the last block of a listed level and always at `in0`."""

    def __init__(
        self,
        img_resolution,
        in_channels,
        out_channels,
        label_dim=0,
        augment_dim=0,
        model_channels=128,
        channel_mult=(1, 2, 2, 2),
        channel_mult_emb=4,
        num_blocks=4,
        attn_resolutions=(16,),
        dropout=0.10,
        label_dropout=0,
        embedding_type="positional",
        channel_mult_noise=1,
        encoder_type="standard",
        decoder_type="standard",
        resample_filter=(1, 1),
    ):
        assert label_dim == 0, "unconditional only"
        assert embedding_type in ("fourier", "positional")
        assert encoder_type in ("standard", "skip", "residual")
        assert decoder_type in ("standard", "skip")
        super().__init__()
        emb = model_channels * channel_mult_emb
        noise = model_channels * channel_mult_noise
        kw = dict(
            emb_channels=emb,
            num_heads=1,
            skip_scale=math.sqrt(0.5),
            eps=1e-6,
            resample_filter=resample_filter,
            resample_proj=True,
            adaptive_scale=False,
        )
        self.map_noise = (
            PositionalEmbedding(noise, endpoint=True) if embedding_type == "positional" else FourierEmbedding(noise)
        )
        # Trained with augmentation labels, unused at inference (no labels given).
        self.map_augment = Linear(augment_dim, noise, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise, emb)
        self.map_layer1 = Linear(emb, emb)
        self.enc = torch.nn.ModuleDict()
        cout = caux = in_channels
        for level, mult in enumerate(channel_mult):
            r = img_resolution >> level
            if level == 0:
                cin, cout = cout, model_channels
                self.enc[f"{r}x{r}_conv"] = Conv2d(cin, cout, 3)
            else:
                self.enc[f"{r}x{r}_down"] = UNetBlock(cout, cout, down=True, **kw)
                if encoder_type == "skip":
                    self.enc[f"{r}x{r}_aux_down"] = Conv2d(caux, caux, 0, down=True, resample_filter=resample_filter)
                    self.enc[f"{r}x{r}_aux_skip"] = Conv2d(caux, cout, 1)
                if encoder_type == "residual":
                    self.enc[f"{r}x{r}_aux_residual"] = Conv2d(
                        caux, cout, 3, down=True, resample_filter=resample_filter, fused_resample=True
                    )
                    caux = cout
            for i in range(num_blocks):
                cin, cout = cout, model_channels * mult
                self.enc[f"{r}x{r}_block{i}"] = UNetBlock(cin, cout, attention=(r in attn_resolutions), **kw)
        skips = [b.out_channels for name, b in self.enc.items() if "aux" not in name]
        self.dec = torch.nn.ModuleDict()
        top = len(channel_mult) - 1
        for level, mult in reversed(list(enumerate(channel_mult))):
            r = img_resolution >> level
            if level == top:
                self.dec[f"{r}x{r}_in0"] = UNetBlock(cout, cout, attention=True, **kw)
                self.dec[f"{r}x{r}_in1"] = UNetBlock(cout, cout, **kw)
            else:
                self.dec[f"{r}x{r}_up"] = UNetBlock(cout, cout, up=True, **kw)
            for i in range(num_blocks + 1):
                cin, cout = cout + skips.pop(), model_channels * mult
                attn = i == num_blocks and r in attn_resolutions
                self.dec[f"{r}x{r}_block{i}"] = UNetBlock(cin, cout, attention=attn, **kw)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < top:
                    self.dec[f"{r}x{r}_aux_up"] = Conv2d(
                        out_channels, out_channels, 0, up=True, resample_filter=resample_filter
                    )
                self.dec[f"{r}x{r}_aux_norm"] = GroupNorm(cout, eps=1e-6)
                self.dec[f"{r}x{r}_aux_conv"] = Conv2d(cout, out_channels, 3)

    def forward(self, x, noise_labels, class_labels=None):
        e = self.map_noise(noise_labels)
        half = e.shape[1] // 2
        e = torch.cat([e[:, half:], e[:, :half]], dim=1)  # sines first
        emb = silu(self.map_layer1(silu(self.map_layer0(e))))
        skips, aux = [], x
        for name, b in self.enc.items():
            if "aux_down" in name:
                aux = b(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + b(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + b(aux)) / math.sqrt(2)
            else:
                x = b(x, emb) if isinstance(b, UNetBlock) else b(x)
                skips.append(x)
        aux = tmp = None
        for name, b in self.dec.items():
            if "aux_up" in name:
                aux = b(aux)
            elif "aux_norm" in name:
                tmp = b(x)
            elif "aux_conv" in name:
                tmp = b(silu(tmp))
                aux = tmp if aux is None else tmp + aux
            else:
                if x.shape[1] != b.in_channels:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = b(x, emb)
        return aux


def precond_coefficients(kind: str, sigma, sigma_data=0.5, beta_d=19.9, beta_min=0.1, M=1000):
    """(c_skip, c_out, c_in, c_noise) of EDMPrecond ('edm'), VPPrecond ('vp'), VEPrecond ('ve')."""
    if kind == "edm":
        s2 = sigma**2 + sigma_data**2
        return sigma_data**2 / s2, sigma * sigma_data / s2.sqrt(), 1 / s2.sqrt(), sigma.log() / 4
    if kind == "vp":
        t = ((beta_min**2 + 2 * beta_d * (1 + sigma**2).log()).sqrt() - beta_min) / beta_d
        return torch.ones_like(sigma), -sigma, 1 / (sigma**2 + 1).sqrt(), (M - 1) * t
    if kind == "ve":
        return torch.ones_like(sigma), sigma, torch.ones_like(sigma), (0.5 * sigma).log()
    raise ValueError(kind)


class Precond(torch.nn.Module):
    """EDM's preconditioned denoiser D(x; sigma) around a network stored as `self.model`
    (so the state dict keys are `model.<network keys>`, as EDM's wrappers have them)."""

    def __init__(self, kind: str, model: torch.nn.Module, **params):
        super().__init__()
        self.kind, self.params, self.model = kind, params, model

    def forward(self, x, sigma):
        sigma = sigma.reshape(-1, 1, 1, 1)
        c_skip, c_out, c_in, c_noise = precond_coefficients(self.kind, sigma, **self.params)
        return c_skip * x + c_out * self.model(c_in * x, c_noise.flatten())


def state_dict_keys(model) -> "OrderedDict[str, tuple]":
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


__all__ = ["DhariwalUNet", "SongUNet", "Precond", "precond_coefficients", "state_dict_keys", "np"]
