"""A PyTorch implementation of the ADM U-Net ("UNetModel") of openai/guided-diffusion.

Written for `posterior` as the reference the Rust network engine is tested
against (golden fixtures) and as the model that `convert_checkpoint.py` loads a
guided-diffusion checkpoint into.  The module tree is laid out so that the
parameter names are exactly guided-diffusion's state-dict keys:

    time_embed.{0,2}.{weight,bias}                 Linear(mc, 4mc), SiLU, Linear(4mc, 4mc)
    input_blocks.0.0.{weight,bias}                 Conv 3x3 in_channels -> ch
    input_blocks.K.0.in_layers.0.{weight,bias}     GroupNorm(32)
    input_blocks.K.0.in_layers.2.{weight,bias}     Conv 3x3
    input_blocks.K.0.emb_layers.1.{weight,bias}    Linear(4mc, out or 2*out)
    input_blocks.K.0.out_layers.0.{weight,bias}    GroupNorm(32)
    input_blocks.K.0.out_layers.3.{weight,bias}    Conv 3x3
    input_blocks.K.0.skip_connection.{weight,bias} Conv 1x1 (only when channels change)
    input_blocks.K.1.norm / .qkv / .proj_out       attention (qkv, proj_out are Conv1d 1x1)
    input_blocks.K.0.op.{weight,bias}              strided conv downsample (resblock_updown False)
    middle_block.{0,1,2}
    output_blocks.K.{0,1,2} (.conv for a conv Upsample)
    out.0 (GroupNorm), out.2 (Conv 3x3)

Only the 2-D, unconditional-or-class-conditional `UNetModel` is implemented
(no SuperResModel / EncoderUNetModel, no gradient checkpointing, which does not
change the computation).  Numerics follow guided-diffusion: GroupNorm with 32
groups and eps 1e-5 computed in f32, SiLU, nearest x2 upsampling, 2x2 average
pooling or stride-2 3x3 conv downsampling, sinusoidal timestep embedding
[cos, sin] with max period 10000, attention with q and k each scaled by
ch^-1/4 and softmax in f32.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

NUM_CLASSES = 1000


# --------------------------------------------------------------------------
# small layers


class GroupNorm32(nn.GroupNorm):
    """GroupNorm(32, C), evaluated in f32 and cast back to the input dtype."""

    def __init__(self, channels: int):
        super().__init__(32, channels, eps=1e-5)

    def forward(self, x):
        # guided-diffusion normalises f16 activations in f32; f32 and f64 stay as they are.
        if x.dtype in (torch.float16, torch.bfloat16):
            return super().forward(x.float()).type(x.dtype)
        return super().forward(x)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10000.0):
    """Sinusoidal embedding, [cos(t f_i), sin(t f_i)], f_i = max_period^(-i/half).

    `timesteps` is a 1-D tensor (one entry per batch element, may be fractional).
    Odd `dim` gets a trailing zero column.
    """
    half = dim // 2
    i = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(i * (-math.log(max_period) / half))
    args = timesteps.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2 == 1:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], 1)], dim=1)
    return emb


class TimestepBlock(nn.Module):
    """Marker: a module whose forward takes (x, emb)."""


class EmbSequential(nn.Sequential):
    """Sequential that hands the timestep embedding to TimestepBlock children."""

    def forward(self, x, emb):  # type: ignore[override]
        for m in self:
            x = m(x, emb) if isinstance(m, TimestepBlock) else m(x)
        return x


class Upsample(nn.Module):
    """Nearest-neighbour x2, then (optionally) a 3x3 conv named `conv`."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        self.channels = channels
        self.use_conv = use_conv
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels or channels, 3, padding=1)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.use_conv else x


class Downsample(nn.Module):
    """Stride-2 3x3 conv (padding 1) named `op`, or a 2x2 average pool."""

    def __init__(self, channels: int, use_conv: bool, out_channels: int | None = None):
        super().__init__()
        out_channels = out_channels or channels
        if use_conv:
            self.op = nn.Conv2d(channels, out_channels, 3, stride=2, padding=1)
        else:
            if out_channels != channels:
                raise ValueError("average-pool downsampling cannot change channels")
            self.op = nn.AvgPool2d(kernel_size=2, stride=2)

    def forward(self, x):
        return self.op(x)


class ResBlock(TimestepBlock):
    """guided-diffusion's ResBlock (optionally an up- or down-sampling one).

    h = in_layers(x) (norm, SiLU, [resample h and x], conv3x3);
    scale-shift: h = norm(h) * (1 + scale) + shift, then SiLU, dropout, conv3x3;
    otherwise:   h = out_layers(h + emb_out);
    return skip_connection(x) + h.
    """

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int | None = None,
        use_conv: bool = False,
        use_scale_shift_norm: bool = False,
        up: bool = False,
        down: bool = False,
    ):
        super().__init__()
        self.out_channels = out_channels or channels
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            GroupNorm32(channels),
            nn.SiLU(),
            nn.Conv2d(channels, self.out_channels, 3, padding=1),
        )
        self.updown = up or down
        if up:
            self.h_upd = Upsample(channels, False)
            self.x_upd = Upsample(channels, False)
        elif down:
            self.h_upd = Downsample(channels, False)
            self.x_upd = Downsample(channels, False)
        else:
            self.h_upd = self.x_upd = nn.Identity()
        self.emb_layers = nn.Sequential(
            nn.SiLU(),
            nn.Linear(
                emb_channels,
                2 * self.out_channels if use_scale_shift_norm else self.out_channels,
            ),
        )
        self.out_layers = nn.Sequential(
            GroupNorm32(self.out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(self.out_channels, self.out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        if self.out_channels == channels:
            self.skip_connection = nn.Identity()
        elif use_conv:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 3, padding=1)
        else:
            self.skip_connection = nn.Conv2d(channels, self.out_channels, 1)

    def forward(self, x, emb):
        if self.updown:
            h = self.in_layers[1](self.in_layers[0](x))
            h = self.h_upd(h)
            x = self.x_upd(x)
            h = self.in_layers[2](h)
        else:
            h = self.in_layers(x)
        e = self.emb_layers(emb).type(h.dtype)[:, :, None, None]
        if self.use_scale_shift_norm:
            scale, shift = torch.chunk(e, 2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
            for m in list(self.out_layers)[1:]:
                h = m(h)
        else:
            h = self.out_layers(h + e)
        return self.skip_connection(x) + h


def _attention(q, k, v):
    """q, k, v: (B', ch, T).  Returns (B', ch, T)."""
    ch = q.shape[1]
    s = ch**-0.25
    w = torch.einsum("bct,bcs->bts", q * s, k * s)
    # guided-diffusion takes the softmax in f32 for f16 activations; f32 and
    # f64 stay in their own precision.
    if w.dtype in (torch.float16, torch.bfloat16):
        w = torch.softmax(w.float(), dim=-1).type(w.dtype)
    else:
        w = torch.softmax(w, dim=-1)
    return torch.einsum("bts,bcs->bct", w, v)


class AttentionBlock(nn.Module):
    """Self-attention over all spatial positions, with residual.

    Legacy order (use_new_attention_order False): the 3C qkv channels are split
    into heads first, each head holding [q; k; v] of `ch` channels.  New order:
    split into q, k, v first, then each into heads.
    """

    def __init__(
        self,
        channels: int,
        num_heads: int = 1,
        num_head_channels: int = -1,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        if num_head_channels == -1:
            self.num_heads = num_heads
        else:
            if channels % num_head_channels != 0:
                raise ValueError(
                    f"attention channels {channels} not divisible by num_head_channels {num_head_channels}"
                )
            self.num_heads = channels // num_head_channels
        if channels % self.num_heads != 0:
            raise ValueError(f"attention channels {channels} not divisible by {self.num_heads} heads")
        self.new_order = use_new_attention_order
        self.norm = GroupNorm32(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x):
        b, c, hh, ww = x.shape
        t = hh * ww
        x = x.reshape(b, c, t)
        qkv = self.qkv(self.norm(x))
        nh = self.num_heads
        ch = c // nh
        if self.new_order:
            q, k, v = qkv.chunk(3, dim=1)
            q = q.reshape(b * nh, ch, t)
            k = k.reshape(b * nh, ch, t)
            v = v.reshape(b * nh, ch, t)
        else:
            q, k, v = qkv.reshape(b * nh, 3 * ch, t).split(ch, dim=1)
        a = _attention(q, k, v).reshape(b, c, t)
        return (x + self.proj_out(a)).reshape(b, c, hh, ww)


# --------------------------------------------------------------------------
# the U-Net


class UNetModel(nn.Module):
    """guided-diffusion's UNetModel, 2-D.  Arguments as there (dims fixed to 2).

    `attention_resolutions` holds downsample rates ds (1, 2, 4, ...) at which an
    attention block follows each residual block.
    """

    def __init__(
        self,
        image_size: int,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Iterable[int],
        dropout: float = 0.0,
        channel_mult: Sequence[float] = (1, 2, 4, 8),
        conv_resample: bool = True,
        num_classes: int | None = None,
        use_fp16: bool = False,
        num_heads: int = 1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
    ):
        super().__init__()
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        attention_resolutions = tuple(attention_resolutions)
        self.image_size = image_size
        self.in_channels = in_channels
        self.model_channels = model_channels
        self.out_channels = out_channels
        self.num_classes = num_classes
        # use_fp16 is accepted for flag compatibility; this implementation computes
        # in the dtype of its parameters (guided-diffusion's checkpoints hold f32
        # master weights even for fp16-trained models).
        self.use_fp16 = use_fp16
        emb_dim = 4 * model_channels

        def res(ch_in, ch_out=None, up=False, down=False):
            return ResBlock(
                ch_in,
                emb_dim,
                dropout,
                out_channels=ch_out,
                use_scale_shift_norm=use_scale_shift_norm,
                up=up,
                down=down,
            )

        def attn(ch, heads):
            return AttentionBlock(
                ch,
                num_heads=heads,
                num_head_channels=num_head_channels,
                use_new_attention_order=use_new_attention_order,
            )

        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        if num_classes is not None:
            self.label_emb = nn.Embedding(num_classes, emb_dim)

        ch = first_ch = int(channel_mult[0] * model_channels)
        self.input_blocks = nn.ModuleList([EmbSequential(nn.Conv2d(in_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        last = len(channel_mult) - 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * model_channels))]
                ch = int(mult * model_channels)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads))
                self.input_blocks.append(EmbSequential(*layers))
                skip_chans.append(ch)
            if level != last:
                down = res(ch, ch, down=True) if resblock_updown else Downsample(ch, conv_resample, ch)
                self.input_blocks.append(EmbSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = EmbSequential(res(ch), attn(ch, num_heads), res(ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                skip = skip_chans.pop()
                layers = [res(ch + skip, int(model_channels * mult))]
                ch = int(model_channels * mult)
                if ds in attention_resolutions:
                    layers.append(attn(ch, num_heads_upsample))
                if level and i == num_res_blocks:
                    layers.append(res(ch, ch, up=True) if resblock_updown else Upsample(ch, conv_resample, ch))
                    ds //= 2
                self.output_blocks.append(EmbSequential(*layers))

        self.out = nn.Sequential(
            GroupNorm32(ch),
            nn.SiLU(),
            nn.Conv2d(first_ch, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    def forward(self, x, timesteps, y=None):
        """x: (N, in_channels, H, W); timesteps: (N,) (integer steps, or floats)."""
        if (y is not None) != (self.num_classes is not None):
            raise ValueError("pass y exactly when the model is class-conditional")
        # The sinusoidal embedding is computed in f32 exactly as guided-diffusion
        # does, then cast to the dtype of the time-embedding MLP.
        temb = timestep_embedding(timesteps, self.model_channels)
        emb = self.time_embed(temb.to(self.time_embed[0].weight.dtype))
        if self.num_classes is not None:
            emb = emb + self.label_emb(y)
        h = x.to(self.time_embed[0].weight.dtype)
        skips = []
        for blk in self.input_blocks:
            h = blk(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for blk in self.output_blocks:
            h = blk(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)


# --------------------------------------------------------------------------
# script_util-compatible construction


def default_channel_mult(image_size: int) -> tuple:
    table = {
        512: (0.5, 1, 1, 2, 2, 4, 4),
        256: (1, 1, 2, 2, 4, 4),
        128: (1, 1, 2, 3, 4),
        64: (1, 2, 3, 4),
    }
    if image_size not in table:
        raise ValueError(
            f'unsupported image size {image_size} for channel_mult="" '
            f"(auto only for {sorted(table)}); pass --channel_mult explicitly"
        )
    return table[image_size]


def parse_channel_mult(channel_mult, image_size: int) -> tuple:
    """ "" -> per-size default, "1,2,2" -> (1, 2, 2); a tuple/list passes through."""
    if isinstance(channel_mult, (tuple, list)):
        return tuple(channel_mult)
    if channel_mult == "":
        return default_channel_mult(image_size)
    try:
        return tuple(int(m) for m in channel_mult.split(","))
    except ValueError:
        raise ValueError(f"channel_mult must be comma-separated integers, got {channel_mult!r}") from None


def parse_attention_resolutions(attention_resolutions, image_size: int) -> tuple:
    """ "16,8" -> (image_size // 16, image_size // 8), as guided-diffusion's create_model."""
    if isinstance(attention_resolutions, (tuple, list)):
        parts = [str(r) for r in attention_resolutions]
    else:
        parts = attention_resolutions.split(",")
    out = []
    for r in parts:
        try:
            out.append(image_size // int(r))
        except (ValueError, ZeroDivisionError):
            raise ValueError(
                f"attention_resolutions must be comma-separated positive integers, got {attention_resolutions!r}"
            ) from None
    return tuple(out)


def create_model(
    image_size,
    num_channels,
    num_res_blocks,
    channel_mult="",
    learn_sigma=False,
    class_cond=False,
    use_checkpoint=False,
    attention_resolutions="16",
    num_heads=1,
    num_head_channels=-1,
    num_heads_upsample=-1,
    use_scale_shift_norm=False,
    dropout=0,
    resblock_updown=False,
    use_fp16=False,
    use_new_attention_order=False,
    in_channels=3,
):
    """Same arguments and defaults as guided-diffusion's script_util.create_model,
    plus `in_channels` (default 3; out channels are in_channels, doubled when
    learn_sigma).  `use_checkpoint` is accepted and ignored (it only trades
    memory for recomputation)."""
    del use_checkpoint
    mult = parse_channel_mult(channel_mult, image_size)
    attn_ds = parse_attention_resolutions(attention_resolutions, image_size)
    return UNetModel(
        image_size=image_size,
        in_channels=in_channels,
        model_channels=num_channels,
        out_channels=in_channels * (2 if learn_sigma else 1),
        num_res_blocks=num_res_blocks,
        attention_resolutions=attn_ds,
        dropout=dropout,
        channel_mult=mult,
        num_classes=NUM_CLASSES if class_cond else None,
        use_fp16=use_fp16,
        num_heads=num_heads,
        num_head_channels=num_head_channels,
        num_heads_upsample=num_heads_upsample,
        use_scale_shift_norm=use_scale_shift_norm,
        resblock_updown=resblock_updown,
        use_new_attention_order=use_new_attention_order,
    )


# The FFHQ-256 configuration used by DPS and successors (ffhq_10m.pt).
FFHQ256_FLAGS = dict(
    image_size=256,
    num_channels=128,
    num_res_blocks=1,
    channel_mult="",
    attention_resolutions="16",
    num_heads=4,
    num_head_channels=64,
    num_heads_upsample=-1,
    learn_sigma=True,
    use_scale_shift_norm=True,
    resblock_updown=True,
    use_fp16=False,
    use_new_attention_order=False,
    dropout=0.0,
    class_cond=False,
)


# --------------------------------------------------------------------------
# diffusion schedule (guided-diffusion's get_named_beta_schedule)


def named_beta_schedule(noise_schedule: str, diffusion_steps: int):
    """Betas as a list of floats (f64).  linear: linspace(1e-4 s, 0.02 s, T),
    s = 1000 / T; cosine: Nichol & Dhariwal's alpha_bar, betas clipped at 0.999."""
    if diffusion_steps < 1:
        raise ValueError(f"diffusion_steps must be >= 1, got {diffusion_steps}")
    T = diffusion_steps
    if noise_schedule == "linear":
        import numpy as np

        s = 1000 / T
        return np.linspace(s * 0.0001, s * 0.02, T, dtype=np.float64).tolist()
    if noise_schedule == "cosine":

        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return [min(1 - abar((i + 1) / T) / abar(i / T), 0.999) for i in range(T)]
    raise ValueError(f"unknown noise_schedule {noise_schedule!r} (expected linear or cosine)")
