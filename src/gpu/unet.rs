//! guided-diffusion's ADM U-Net on the device: [`GpuUNet`] is uploaded from a CPU
//! [`UNet`] (same weights, same layer order) and computes the same forward and input VJP.
//!
//! The VJP follows the CPU's scheme: the forward records every layer's input on a tape of
//! device tensors ([`GpuUNetTape`]); the backward pops them in reverse, each layer
//! recomputing its cheap internal activations (norms, SiLUs) from its input, and frees each
//! entry as it is consumed. Residual blocks also record the output norm's input (their first
//! convolution's output), so the backward recomputes no convolution: one more activation per
//! block on the tape for about a fifth less work per forward + VJP.
//! Skip connections are shared (reference-counted) between the tape and the skip stack, so
//! nothing is copied for them.
//!
//! Inputs and outputs are `(N, C, H, W)` device tensors; timesteps are host floats, one per
//! sample (guided-diffusion's step index), as on the CPU.

use std::sync::Arc;

use cudarc::driver::CudaSlice;
use ndarray::{Array4, ArrayView4, Ix4};

use super::nn::{GpuAttention, GpuConv2d, GpuGroupNorm, GpuLinear, GpuResBlock, Nn};
use super::{Gpu, GpuTensor};
use crate::nn::unet::{Layer, UNet, UNetConfig};
use crate::{Error, Result};

enum GLayer {
    Conv(GpuConv2d),
    Res(Box<GpuResBlock>),
    Attn(Box<GpuAttention>),
    Pool,
    Up(Option<GpuConv2d>),
}

impl GLayer {
    fn from_cpu(gpu: &Gpu, l: &Layer) -> Result<GLayer> {
        Ok(match l {
            Layer::Conv(c) => GLayer::Conv(GpuConv2d::from_cpu(gpu, c)?),
            Layer::Res(r) => GLayer::Res(Box::new(GpuResBlock::from_cpu(gpu, r)?)),
            Layer::Attn(a) => GLayer::Attn(Box::new(GpuAttention::from_cpu(gpu, a)?)),
            Layer::Pool => GLayer::Pool,
            Layer::Up(c) => GLayer::Up(
                c.as_ref()
                    .map(|c| GpuConv2d::from_cpu(gpu, c))
                    .transpose()?,
            ),
        })
    }

    /// Forward; with `save`, residual blocks also return the activation their VJP reuses.
    fn forward(
        &self,
        nn: &Nn,
        x: &GpuTensor,
        semb: &GpuTensor,
        save: bool,
    ) -> Result<(GpuTensor, Option<GpuTensor>)> {
        let out = match self {
            GLayer::Res(r) if save => {
                return r.forward_saving(nn, x, semb).map(|(o, s)| (o, Some(s)))
            }
            GLayer::Conv(c) => c.forward(nn, x),
            GLayer::Res(r) => r.forward(nn, x, semb),
            GLayer::Attn(a) => a.forward(nn, x),
            GLayer::Pool => nn.avg_pool2x(x),
            GLayer::Up(c) => {
                let u = nn.upsample2x(x)?;
                match c {
                    Some(c) => c.forward(nn, &u),
                    None => Ok(u),
                }
            }
        };
        out.map(|o| (o, None))
    }

    fn vjp(
        &self,
        nn: &Nn,
        entry: &TapeEntry,
        semb: &GpuTensor,
        dy: &GpuTensor,
    ) -> Result<GpuTensor> {
        let x = &entry.input;
        let s = &x.shape;
        match self {
            GLayer::Conv(c) => c.vjp(nn, s[2], s[3], dy),
            GLayer::Res(r) => r.vjp_saved(nn, x, semb, dy, entry.saved.as_ref()),
            GLayer::Attn(a) => a.vjp(nn, x, dy),
            GLayer::Pool => nn.avg_pool2x_vjp([s[0], s[1], s[2], s[3]], dy),
            GLayer::Up(c) => match c {
                Some(c) => nn.upsample2x_vjp(&c.vjp(nn, 2 * s[2], 2 * s[3], dy)?),
                None => nn.upsample2x_vjp(dy),
            },
        }
    }
}

/// The ADM U-Net resident on the GPU.
pub struct GpuUNet {
    nn: Nn,
    config: UNetConfig,
    freqs: CudaSlice<f32>,
    time_in: GpuLinear,
    time_out: GpuLinear,
    input_blocks: Vec<Vec<GLayer>>,
    middle: Vec<GLayer>,
    output_blocks: Vec<Vec<GLayer>>,
    skip_channels: Vec<usize>,
    out_norm: GpuGroupNorm,
    out_conv: GpuConv2d,
}

/// One layer's record: its input and, for residual blocks, the inner activation its VJP
/// reuses instead of recomputing a convolution.
struct TapeEntry {
    input: Arc<GpuTensor>,
    saved: Option<GpuTensor>,
}

type Tape = Vec<TapeEntry>;

impl std::fmt::Debug for GpuUNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GpuUNet({:?}, model_channels {})",
            self.nn.gpu(),
            self.config.model_channels
        )
    }
}

impl GpuUNet {
    /// Uploads every parameter of `net` to `gpu` (about 375 MB for FFHQ-256).
    pub fn from_cpu(gpu: Arc<Gpu>, net: &UNet) -> Result<GpuUNet> {
        let nn = Nn::new(gpu)?;
        let g = nn.gpu().clone();
        let up_block = |b: &[Layer]| -> Result<Vec<GLayer>> {
            b.iter().map(|l| GLayer::from_cpu(&g, l)).collect()
        };
        let (ti, to) = net.time_layers();
        let (inp, mid, out, skips) = net.blocks();
        let (on, oc) = net.out_layers();
        let cfg = net.config();
        let freqs = g.upload(&cfg.time_frequencies())?;
        Ok(GpuUNet {
            freqs,
            time_in: GpuLinear::from_cpu(&g, ti)?,
            time_out: GpuLinear::from_cpu(&g, to)?,
            input_blocks: inp.iter().map(|b| up_block(b)).collect::<Result<_>>()?,
            middle: up_block(mid)?,
            output_blocks: out.iter().map(|b| up_block(b)).collect::<Result<_>>()?,
            skip_channels: skips.to_vec(),
            out_norm: GpuGroupNorm::from_cpu(&g, on)?,
            out_conv: GpuConv2d::from_cpu(&g, oc)?,
            config: cfg.clone(),
            nn,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        self.nn.gpu()
    }

    /// `silu(time_embed(timestep_embedding(t)))`, `(N, 4 model_channels)`: the SiLU every
    /// residual block applies to the embedding first, computed once.
    fn silu_emb(&self, t: &[f32]) -> Result<GpuTensor> {
        let mc = self.config().model_channels;
        let temb = self.nn.timestep_embedding_with_freqs(t, &self.freqs, mc)?;
        let h = self.nn.silu(&self.time_in.forward(&self.nn, &temb)?)?;
        let emb = self.time_out.forward(&self.nn, &h)?;
        self.nn.silu(&emb)
    }

    fn run(
        &self,
        x: &GpuTensor,
        t: &[f32],
        mut tape: Option<&mut Tape>,
    ) -> Result<(GpuTensor, GpuTensor)> {
        self.config.check_input_shape(&x.shape, t)?;
        let nn = &self.nn;
        let semb = self.silu_emb(t)?;
        let apply = |layers: &[GLayer],
                     mut h: Arc<GpuTensor>,
                     tape: &mut Option<&mut Tape>|
         -> Result<Arc<GpuTensor>> {
            for layer in layers {
                let (next, saved) = layer.forward(nn, &h, &semb, tape.is_some())?;
                if let Some(tp) = tape.as_deref_mut() {
                    tp.push(TapeEntry { input: h, saved });
                }
                h = Arc::new(next);
            }
            Ok(h)
        };
        let mut h = Arc::new(x.try_clone(nn.gpu())?);
        let mut skips: Vec<Arc<GpuTensor>> = Vec::with_capacity(self.input_blocks.len());
        for block in &self.input_blocks {
            h = apply(block, h, &mut tape)?;
            skips.push(h.clone());
        }
        h = apply(&self.middle, h, &mut tape)?;
        for block in &self.output_blocks {
            let skip = skips
                .pop()
                .ok_or_else(|| Error::Invalid("gpu unet: skip bookkeeping".into()))?;
            let cat = Arc::new(nn.concat_channels(&h, &skip)?);
            drop((h, skip));
            h = apply(block, cat, &mut tape)?;
        }
        let a = self.out_norm.forward_fused(nn, &h, None, true)?;
        if let Some(tp) = tape {
            tp.push(TapeEntry {
                input: h,
                saved: None,
            });
        }
        Ok((self.out_conv.forward(nn, &a)?, semb))
    }

    /// Forward on device data: `x` `(N, in_channels, H, W)`, one timestep per sample.
    pub fn forward(&self, x: &GpuTensor, t: &[f32]) -> Result<GpuTensor> {
        self.run(x, t, None).map(|(y, _)| y)
    }

    /// Forward keeping the tape for one input VJP.
    pub fn forward_tape(&self, x: &GpuTensor, t: &[f32]) -> Result<(GpuTensor, GpuUNetTape<'_>)> {
        let mut inputs = Vec::new();
        let (out, semb) = self.run(x, t, Some(&mut inputs))?;
        let out_shape = out.shape.clone();
        Ok((
            out,
            GpuUNetTape {
                net: self,
                semb,
                inputs,
                out_shape,
            },
        ))
    }

    /// Forward and the input VJP `(d out / d x)^T v`.
    pub fn forward_vjp(
        &self,
        x: &GpuTensor,
        t: &[f32],
        v: &GpuTensor,
    ) -> Result<(GpuTensor, GpuTensor)> {
        let (out, tape) = self.forward_tape(x, t)?;
        let g = tape.backward(v)?;
        Ok((out, g))
    }

    /// Host convenience: uploads `x`, runs [`GpuUNet::forward`], downloads the output.
    pub fn forward_host(&self, x: ArrayView4<f32>, t: &[f32]) -> Result<Array4<f32>> {
        let xd = GpuTensor::from_host(self.gpu(), x.into_dyn())?;
        to4(self.forward(&xd, t)?.to_host(self.gpu())?)
    }

    /// Host convenience: forward and VJP with host arrays.
    pub fn forward_vjp_host(
        &self,
        x: ArrayView4<f32>,
        t: &[f32],
        v: ArrayView4<f32>,
    ) -> Result<(Array4<f32>, Array4<f32>)> {
        let g = self.gpu();
        let xd = GpuTensor::from_host(g, x.into_dyn())?;
        let vd = GpuTensor::from_host(g, v.into_dyn())?;
        let (o, d) = self.forward_vjp(&xd, t, &vd)?;
        Ok((to4(o.to_host(g)?)?, to4(d.to_host(g)?)?))
    }
}

fn to4(a: ndarray::ArrayD<f32>) -> Result<Array4<f32>> {
    a.into_dimensionality::<Ix4>()
        .map_err(|e| Error::Invalid(format!("gpu unet: {e}")))
}

/// The recorded layer inputs of one forward pass; consumed by [`GpuUNetTape::backward`].
pub struct GpuUNetTape<'a> {
    net: &'a GpuUNet,
    semb: GpuTensor,
    inputs: Tape,
    out_shape: Vec<usize>,
}

impl GpuUNetTape<'_> {
    pub fn gpu(&self) -> &Arc<Gpu> {
        self.net.gpu()
    }

    /// The input VJP for the cotangent `v` (the output's shape); frees the tape as it goes.
    pub fn backward(mut self, v: &GpuTensor) -> Result<GpuTensor> {
        crate::nn::same_shape("unet", "cotangent", &self.out_shape, &v.shape)?;
        let net = self.net;
        let nn = &net.nn;
        let semb = &self.semb;
        let tape = &mut self.inputs;
        let mut pop = || {
            tape.pop()
                .ok_or_else(|| Error::Invalid("gpu unet: tape underflow".into()))
        };
        let h = pop()?.input;
        let (hh, ww) = (h.shape[2], h.shape[3]);
        let a = net.out_norm.forward(nn, &h)?;
        let g = net.out_conv.vjp(nn, hh, ww, v)?;
        let g = nn.silu_vjp(&a, &g)?;
        drop(a);
        let mut g = net.out_norm.vjp(nn, &h, &g)?;
        drop(h);
        let back = |layers: &[GLayer],
                    mut g: GpuTensor,
                    pop: &mut dyn FnMut() -> Result<TapeEntry>|
         -> Result<GpuTensor> {
            for layer in layers.iter().rev() {
                let entry = pop()?;
                g = layer.vjp(nn, &entry, semb, &g)?;
            }
            Ok(g)
        };
        let n_in = net.input_blocks.len();
        let mut skip_grads: Vec<Option<GpuTensor>> = (0..n_in).map(|_| None).collect();
        for (j, block) in net.output_blocks.iter().enumerate().rev() {
            g = back(block, g, &mut pop)?;
            let i = n_in - 1 - j;
            let split = g.shape[1] - net.skip_channels[i];
            let (gh, gs) = nn.split_channels(&g, split)?;
            skip_grads[i] = Some(gs);
            g = gh;
        }
        g = back(&net.middle, g, &mut pop)?;
        for (i, block) in net.input_blocks.iter().enumerate().rev() {
            if let Some(sg) = skip_grads[i].take() {
                nn.add_assign(&mut g, &sg)?;
            }
            g = back(block, g, &mut pop)?;
        }
        Ok(g)
    }
}

pub use crate::nn::hash::{hash_unit, HashWeights};
