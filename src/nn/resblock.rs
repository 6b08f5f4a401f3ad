//! guided-diffusion's `ResBlock`: two 3x3 convolutions with GroupNorm + SiLU, the timestep
//! embedding added (or applied as scale/shift), optional nearest-up / avg-pool-down
//! resampling inside the block (or, for EDM's SongUNet, resampling by a FIR filter), and a
//! skip connection.

use ndarray::{Array2, Array4, ArrayView2, ArrayView4, Axis, CowArray, Ix4};

use crate::nn::{
    avg_pool2x, avg_pool2x_vjp, fir::Fir, same_shape, silu, silu_vjp, upsample_nearest2x,
    upsample_nearest2x_vjp, Conv2d, GroupNorm, Linear,
};
use crate::{Error, Result};

/// Resampling inside a residual block (`up=True` / `down=True` with
/// `resblock_updown=True`; guided-diffusion uses the convolution-free `Upsample` /
/// `Downsample` there, i.e. nearest 2x and 2x average pooling).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpDown {
    None,
    Up,
    Down,
}

/// `ResBlock(channels, emb_channels, dropout=0, out_channels, use_conv=False,
/// use_scale_shift_norm, dims=2, up, down)` at inference (dropout is the identity).
/// State-dict names: `in_layers.0` (GroupNorm32 of `channels`), `in_layers.2` (conv 3x3
/// `channels -> out`), `emb_layers.1` (Linear `emb -> out` or `2 out` with scale-shift
/// norm), `out_layers.0` (GroupNorm32 of `out`), `out_layers.3` (conv 3x3 `out -> out`),
/// `skip_connection` (conv 1x1 `channels -> out` when `out != channels`, else identity).
///
/// Forward for `x` `(B, C, H, W)` and `emb` `(B, E)`:
/// `h = in_conv(resample(silu(in_norm(x))))`, `e = emb_linear(silu(emb))`;
/// scale-shift: `h = out_conv(silu(out_norm(h) * (1 + e[:out]) + e[out:]))`, otherwise
/// `h = out_conv(silu(out_norm(h + e)))`; `out = skip(resample(x)) + h`.
#[derive(Debug, Clone)]
pub struct ResBlock {
    pub in_norm: GroupNorm,
    pub in_conv: Conv2d,
    pub emb_linear: Linear,
    pub out_norm: GroupNorm,
    pub out_conv: Conv2d,
    pub skip: Option<Conv2d>,
    pub scale_shift: bool,
    pub updown: UpDown,
    /// The resampling filter of `updown` (`None`: nearest-2x up and 2x2 average pooling
    /// down, guided-diffusion's; the GPU twin computes only these).
    pub filter: Option<Fir>,
}

fn dim4(a: ndarray::ArrayD<f32>) -> Result<Array4<f32>> {
    a.into_dimensionality::<Ix4>()
        .map_err(|e| Error::Invalid(format!("resblock: {e}")))
}

fn resample(u: UpDown, fir: Option<&Fir>, x: ArrayView4<f32>) -> Result<Array4<f32>> {
    match (u, fir) {
        (UpDown::None, _) => Ok(x.to_owned()),
        (UpDown::Up, None) => Ok(upsample_nearest2x(x)),
        (UpDown::Down, None) => Ok(avg_pool2x(x)),
        (UpDown::Up, Some(f)) => Ok(f.up2x(x)),
        (UpDown::Down, Some(f)) => f.down2x(x),
    }
}

fn resample_vjp(
    u: UpDown,
    fir: Option<&Fir>,
    in_shape: [usize; 4],
    dy: ArrayView4<f32>,
) -> Result<Array4<f32>> {
    match (u, fir) {
        (UpDown::None, _) => Ok(dy.to_owned()),
        (UpDown::Up, None) => upsample_nearest2x_vjp(dy),
        (UpDown::Down, None) => avg_pool2x_vjp(in_shape, dy),
        (UpDown::Up, Some(f)) => f.up2x_vjp(dy),
        (UpDown::Down, Some(f)) => f.down2x_vjp(in_shape, dy),
    }
}

/// `f(resample(x))` without a copy when there is no resampling.
fn with_resampled<R>(
    u: UpDown,
    fir: Option<&Fir>,
    x: ArrayView4<f32>,
    f: impl FnOnce(ArrayView4<f32>) -> Result<R>,
) -> Result<R> {
    match u {
        UpDown::None => f(x),
        _ => f(resample(u, fir, x)?.view()),
    }
}

/// Activations of one forward pass that the VJP needs (the block's output itself is not
/// computed for the VJP). `h1` is the first convolution's output, kept from the forward
/// pass when the caller saved it (see [`ResBlock::forward_saving`]), else recomputed.
struct Tape<'a> {
    a0: Array4<f32>,
    h1: CowArray<'a, f32, Ix4>,
    m: Option<Array4<f32>>,
    pre: Array4<f32>,
    e: Array2<f32>,
}

impl ResBlock {
    /// Validates that the parts fit: conv shapes (3x3 pad 1 stride 1), norm widths, the
    /// embedding projection width (`out` or `2 out` with scale-shift), and the skip.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        in_norm: GroupNorm,
        in_conv: Conv2d,
        emb_linear: Linear,
        out_norm: GroupNorm,
        out_conv: Conv2d,
        skip: Option<Conv2d>,
        scale_shift: bool,
        updown: UpDown,
    ) -> Result<Self> {
        let c = in_norm.weight.len();
        let o = in_conv.out_channels();
        let conv_ok = |cv: &Conv2d, i: usize, k: usize| {
            let (oo, ii, kh, kw) = cv.weight.dim();
            oo == o && ii == i && kh == k && kw == k && cv.stride == 1 && cv.padding == k / 2
        };
        let emb_out = if scale_shift { 2 * o } else { o };
        let skip_ok = match &skip {
            None => c == o,
            Some(s) => conv_ok(s, c, 1),
        };
        if !conv_ok(&in_conv, c, 3)
            || !conv_ok(&out_conv, o, 3)
            || out_norm.weight.len() != o
            || emb_linear.out_features() != emb_out
            || !skip_ok
        {
            return Err(Error::Invalid(format!(
                "resblock: parts do not fit: in_norm {c} channels, in_conv {:?}, emb_linear {:?} (expected {emb_out} outputs), out_norm {}, out_conv {:?}, skip {:?} (expected 3x3 pad-1 convs {c}->{o}->{o} and a 1x1 skip iff {c} != {o})",
                in_conv.weight.shape(),
                emb_linear.weight.shape(),
                out_norm.weight.len(),
                out_conv.weight.shape(),
                skip.as_ref().map(|s| s.weight.shape().to_vec()),
            )));
        }
        Ok(ResBlock {
            in_norm,
            in_conv,
            emb_linear,
            out_norm,
            out_conv,
            skip,
            scale_shift,
            updown,
            filter: None,
        })
    }

    /// Resamples by the FIR filter `fir` instead of nearest / average pooling (the box
    /// filter `[1, 1]` is exactly those and keeps their faster path).
    pub fn with_filter(mut self, fir: Fir) -> Self {
        self.filter = (!fir.is_box()).then_some(fir);
        self
    }

    /// The embedding projection `e = emb_linear(silu(emb))`, `(B, out)` or `(B, 2 out)`.
    fn embed(&self, b: usize, emb: ArrayView2<f32>) -> Result<Array2<f32>> {
        if emb.nrows() != b {
            return Err(Error::Invalid(format!(
                "resblock: embedding has {} rows, expected the batch size {b}",
                emb.nrows()
            )));
        }
        let se = emb.mapv(crate::nn::act::silu1);
        self.emb_linear.forward(se.view())
    }

    /// `(1 + scale, shift)` of the scale-shift norm, each `B x out` row-major.
    fn modulation(&self, e: &Array2<f32>) -> (Vec<f32>, Vec<f32>) {
        let o = self.in_conv.out_channels();
        let mul = e
            .outer_iter()
            .flat_map(|r| r.slice_move(ndarray::s![..o]).mapv(|v| 1.0 + v))
            .collect();
        let add = e
            .outer_iter()
            .flat_map(|r| r.slice_move(ndarray::s![o..]).to_vec())
            .collect();
        (mul, add)
    }

    /// `h + e[:, c]` broadcast over space (the additive time embedding), in place.
    fn add_emb(h: &mut Array4<f32>, e: &Array2<f32>) {
        for (bi, mut hb) in h.axis_iter_mut(Axis(0)).enumerate() {
            for (ci, mut hc) in hb.axis_iter_mut(Axis(0)).enumerate() {
                let sh = e[[bi, ci]];
                hc.mapv_inplace(|v| v + sh);
            }
        }
    }

    /// The activations the VJP needs, up to (not including) the output convolution;
    /// `h1` when the forward pass kept it.
    fn run<'a>(
        &self,
        x: ArrayView4<f32>,
        emb: ArrayView2<f32>,
        h1: Option<ArrayView4<'a, f32>>,
    ) -> Result<Tape<'a>> {
        let e = self.embed(x.dim().0, emb)?;
        let a0 = dim4(self.in_norm.forward(x.into_dyn())?)?;
        let h1: CowArray<'a, f32, Ix4> = match h1 {
            Some(h1) => h1.into(),
            None => {
                let a1 = dim4(silu(a0.view().into_dyn()))?;
                with_resampled(self.updown, self.filter.as_ref(), a1.view(), |v| {
                    self.in_conv.forward(v)
                })?
                .into()
            }
        };
        let (m, pre) = if self.scale_shift {
            let (mul, add) = self.modulation(&e);
            let pre =
                self.out_norm
                    .forward_fused(h1.view().into_dyn(), Some((&mul, &add)), false)?;
            (None, dim4(pre)?)
        } else {
            let mut m = h1.to_owned();
            Self::add_emb(&mut m, &e);
            let pre = dim4(self.out_norm.forward(m.view().into_dyn())?)?;
            (Some(m), pre)
        };
        Ok(Tape { a0, h1, m, pre, e })
    }

    /// Forward: `x` `(B, C, H, W)`, `emb` `(B, E)` -> `(B, out, H', W')` (`H' = 2H` up,
    /// `H / 2` down). Norm, modulation and SiLU run fused, one pass each; the residual is
    /// added inside the output convolution's product.
    pub fn forward(&self, x: ArrayView4<f32>, emb: ArrayView2<f32>) -> Result<Array4<f32>> {
        Ok(self.forward_saving(x, emb, false)?.0)
    }

    /// [`ResBlock::forward`], also returning the first convolution's output `h1` when
    /// `keep` (a VJP given it skips recomputing that convolution: see [`ResBlock::vjp`]).
    pub fn forward_saving(
        &self,
        x: ArrayView4<f32>,
        emb: ArrayView2<f32>,
        keep: bool,
    ) -> Result<(Array4<f32>, Option<Array4<f32>>)> {
        let e = self.embed(x.dim().0, emb)?;
        let a1 = dim4(self.in_norm.forward_silu(x.into_dyn())?)?;
        let fir = self.filter.as_ref();
        let mut h1 = with_resampled(self.updown, fir, a1.view(), |v| self.in_conv.forward(v))?;
        drop(a1);
        let s = if self.scale_shift {
            let (mul, add) = self.modulation(&e);
            self.out_norm
                .forward_fused(h1.view().into_dyn(), Some((&mul, &add)), true)?
        } else if keep {
            // The VJP needs h1 itself, before the embedding is added.
            let mut m = h1.clone();
            Self::add_emb(&mut m, &e);
            self.out_norm.forward_silu(m.view().into_dyn())?
        } else {
            Self::add_emb(&mut h1, &e);
            self.out_norm.forward_silu(h1.view().into_dyn())?
        };
        let h1 = keep.then_some(h1);
        let mut out = match &self.skip {
            None => resample(self.updown, fir, x)?,
            Some(cv) => with_resampled(self.updown, fir, x, |v| cv.forward(v))?,
        };
        self.out_conv.forward_add(dim4(s)?.view(), &mut out)?;
        Ok((out, h1))
    }

    /// VJP with respect to `x` (the embedding held fixed), recomputing the forward's
    /// norms; `h1` is the first convolution's output from [`ResBlock::forward_saving`]
    /// (`None`: recomputed).
    pub fn vjp(
        &self,
        x: ArrayView4<f32>,
        emb: ArrayView2<f32>,
        h1: Option<ArrayView4<f32>>,
        dy: ArrayView4<f32>,
    ) -> Result<Array4<f32>> {
        if let Some(h) = &h1 {
            let (b, _, hh, ww) = x.dim();
            let want = match self.updown {
                UpDown::None => (hh, ww),
                UpDown::Up => (2 * hh, 2 * ww),
                UpDown::Down => (hh / 2, ww / 2),
            };
            same_shape(
                "resblock",
                "saved activation",
                &[b, self.in_conv.out_channels(), want.0, want.1],
                h.shape(),
            )?;
        }
        let tp = self.run(x, emb, h1)?;
        same_shape("resblock", "output gradient", tp.h1.shape(), dy.shape())?;
        let o = self.in_conv.out_channels();
        let (_, _, ho, wo) = tp.h1.dim();
        let ds = self.out_conv.vjp(ho, wo, dy)?;
        let dpre = dim4(silu_vjp(tp.pre.view().into_dyn(), ds.view().into_dyn())?)?;
        let dh1 = if self.scale_shift {
            let mut dn = dpre;
            for (bi, mut db) in dn.axis_iter_mut(Axis(0)).enumerate() {
                for (ci, mut dc) in db.axis_iter_mut(Axis(0)).enumerate() {
                    let sc = tp.e[[bi, ci]];
                    dc.mapv_inplace(|v| v * (1.0 + sc));
                }
            }
            // With scale-shift the norm's input is h1 (`m` is unused there).
            dim4(
                self.out_norm
                    .vjp(tp.h1.view().into_dyn(), dn.view().into_dyn())?,
            )?
        } else {
            let m = tp.m.as_ref().expect("tape keeps m without scale-shift");
            dim4(
                self.out_norm
                    .vjp(m.view().into_dyn(), dpre.view().into_dyn())?,
            )?
        };
        debug_assert_eq!(dh1.dim().1, o);
        let a1s = tp.a0.shape();
        let (ha, wa) = match self.updown {
            UpDown::None => (a1s[2], a1s[3]),
            UpDown::Up => (2 * a1s[2], 2 * a1s[3]),
            UpDown::Down => (a1s[2] / 2, a1s[3] / 2),
        };
        let da1u = self.in_conv.vjp(ha, wa, dh1.view())?;
        let in_shape = [a1s[0], a1s[1], a1s[2], a1s[3]];
        let fir = self.filter.as_ref();
        let da1 = resample_vjp(self.updown, fir, in_shape, da1u.view())?;
        let da0 = silu_vjp(tp.a0.view().into_dyn(), da1.view().into_dyn())?;
        let mut dx = dim4(self.in_norm.vjp(x.into_dyn(), da0.view())?)?;
        match (&self.skip, self.updown) {
            (None, UpDown::None) => dx += &dy,
            (None, u) => dx += &resample_vjp(u, fir, in_shape, dy)?,
            (Some(cv), u) => dx += &resample_vjp(u, fir, in_shape, cv.vjp(ho, wo, dy)?.view())?,
        }
        Ok(dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::testutil::*;
    use ndarray::Array1;

    fn conv(o: usize, i: usize, k: usize, seed: u64) -> Conv2d {
        let w = Array4::from_shape_vec((o, i, k, k), rand_vec(o * i * k * k, seed)).unwrap();
        let w = w * (1.0 / ((i * k * k) as f32).sqrt());
        Conv2d::new(w, Array1::from(rand_vec(o, seed + 1)), 1, k / 2).unwrap()
    }
    fn gn(c: usize, seed: u64) -> GroupNorm {
        let w: Vec<f32> = rand_vec(c, seed).iter().map(|v| 1.0 + 0.5 * v).collect();
        GroupNorm::new(2, 1e-5, w.into(), rand_vec(c, seed + 1).into()).unwrap()
    }

    #[test]
    fn vjp_matches_directional_differences_all_variants() {
        let (b, e_dim, h, w) = (2, 5, 4, 6);
        let mut k = 0u64;
        for scale_shift in [false, true] {
            let variants = [
                (UpDown::None, false),
                (UpDown::Up, false),
                (UpDown::Down, false),
                (UpDown::Up, true),
                (UpDown::Down, true),
            ];
            for (updown, filtered) in variants {
                for (c, o) in [(4, 4), (4, 6)] {
                    k += 1;
                    let eo = if scale_shift { 2 * o } else { o };
                    let lw =
                        Array2::from_shape_vec((eo, e_dim), rand_vec(eo * e_dim, 100 + k)).unwrap();
                    let lin = Linear::new(lw, Array1::from(rand_vec(eo, 200 + k))).unwrap();
                    let skip = (c != o).then(|| conv(o, c, 1, 300 + k));
                    let blk = ResBlock::new(
                        gn(c, 400 + k),
                        conv(o, c, 3, 500 + k),
                        lin,
                        gn(o, 600 + k),
                        conv(o, o, 3, 700 + k),
                        skip,
                        scale_shift,
                        updown,
                    )
                    .unwrap();
                    // NCSN++'s [1, 3, 3, 1] filter in place of nearest / average pooling.
                    let blk = if filtered {
                        blk.with_filter(Fir::new(&[1.0, 3.0, 3.0, 1.0]).unwrap())
                    } else {
                        blk
                    };
                    let n = b * c * h * w;
                    let x = Array4::from_shape_vec((b, c, h, w), rand_vec(n, 800 + k)).unwrap();
                    let emb =
                        Array2::from_shape_vec((b, e_dim), rand_vec(b * e_dim, 900 + k)).unwrap();
                    let y = blk.forward(x.view(), emb.view()).unwrap();
                    let (hh, ww) = match updown {
                        UpDown::None => (h, w),
                        UpDown::Up => (2 * h, 2 * w),
                        UpDown::Down => (h / 2, w / 2),
                    };
                    assert_eq!(y.dim(), (b, o, hh, ww));
                    let dy =
                        Array4::from_shape_vec(y.raw_dim(), rand_vec(y.len(), 1000 + k)).unwrap();
                    let dx = blk.vjp(x.view(), emb.view(), None, dy.view()).unwrap();
                    // The forward's kept h1 gives the same output and the same VJP (the
                    // same f32 operations in the same order, so bit for bit), and a kept
                    // activation of the wrong shape is an error.
                    let (y_kept, h1) = blk.forward_saving(x.view(), emb.view(), true).unwrap();
                    let h1 = h1.expect("kept when asked");
                    assert_eq!(y_kept, y);
                    let dx_kept = blk
                        .vjp(x.view(), emb.view(), Some(h1.view()), dy.view())
                        .unwrap();
                    assert_eq!(dx_kept, dx);
                    let wrong = h1.slice(ndarray::s![.., .., ..1, ..]);
                    assert!(blk
                        .vjp(x.view(), emb.view(), Some(wrong), dy.view())
                        .is_err());
                    let dot = |a: &Array4<f32>, b: &Array4<f32>| -> f64 {
                        a.iter().zip(b).map(|(p, q)| *p as f64 * *q as f64).sum()
                    };
                    // Each part is verified against f64 references in its own module;
                    // this checks the chaining on the f32 forward by central differences
                    // (step 1e-2: truncation ~1e-4, f32 rounding ~1e-4 relative), so a
                    // 1e-2 relative tolerance, while a mis-chained VJP is off by O(1).
                    for seed in 0..2u64 {
                        let v =
                            Array4::from_shape_vec((b, c, h, w), rand_vec(n, 1100 + 10 * k + seed))
                                .unwrap();
                        let st = 1e-2f32;
                        let yp = blk.forward((&x + &(&v * st)).view(), emb.view()).unwrap();
                        let ym = blk.forward((&x - &(&v * st)).view(), emb.view()).unwrap();
                        let fd = (dot(&dy, &yp) - dot(&dy, &ym)) / (2.0 * st as f64);
                        let an = dot(&dx, &v);
                        assert!(
                            (fd - an).abs() < 1e-2 * an.abs().max(1.0),
                            "scale_shift={scale_shift} {updown:?} fir={filtered} {c}->{o}: {fd} vs {an}"
                        );
                    }
                }
            }
        }
    }
    /// Forward semantics written out with the primitives: the scale is the first half of
    /// the embedding projection and the shift the second (guided-diffusion's
    /// `scale, shift = chunk(emb_out, 2, dim=1)`; `out_norm(h) * (1 + scale) + shift`),
    /// and without scale-shift the projection is added before `out_norm`.
    #[test]
    fn forward_matches_written_out_composition() {
        let (b, c, h, w, e_dim) = (2, 4, 3, 5, 3);
        let x = Array4::from_shape_vec((b, c, h, w), rand_vec(b * c * h * w, 1)).unwrap();
        let emb = Array2::from_shape_vec((b, e_dim), rand_vec(b * e_dim, 2)).unwrap();
        for scale_shift in [false, true] {
            let eo = if scale_shift { 2 * c } else { c };
            let lw = Array2::from_shape_vec((eo, e_dim), rand_vec(eo * e_dim, 3)).unwrap();
            let lin = Linear::new(lw, Array1::from(rand_vec(eo, 4))).unwrap();
            let blk = ResBlock::new(
                gn(c, 5),
                conv(c, c, 3, 6),
                lin.clone(),
                gn(c, 7),
                conv(c, c, 3, 8),
                None,
                scale_shift,
                UpDown::None,
            )
            .unwrap();
            let y = blk.forward(x.view(), emb.view()).unwrap();
            let a = silu(blk.in_norm.forward(x.view().into_dyn()).unwrap().view());
            let h1 = blk.in_conv.forward(dim4(a).unwrap().view()).unwrap();
            let se = emb.mapv(|v| v / (1.0 + (-v).exp()));
            let e = lin.forward(se.view()).unwrap();
            let mut pre = if scale_shift {
                dim4(blk.out_norm.forward(h1.view().into_dyn()).unwrap()).unwrap()
            } else {
                h1.clone()
            };
            for bi in 0..b {
                for ci in 0..c {
                    for yy in 0..h {
                        for xx in 0..w {
                            let v = &mut pre[[bi, ci, yy, xx]];
                            *v = if scale_shift {
                                *v * (1.0 + e[[bi, ci]]) + e[[bi, c + ci]]
                            } else {
                                *v + e[[bi, ci]]
                            };
                        }
                    }
                }
            }
            if !scale_shift {
                pre = dim4(blk.out_norm.forward(pre.view().into_dyn()).unwrap()).unwrap();
            }
            let s = dim4(silu(pre.view().into_dyn())).unwrap();
            let want = blk.out_conv.forward(s.view()).unwrap() + &x;
            let err = (&y - &want).iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // Same f32 operations in the same order: equal up to a few ulp.
            assert!(err < 1e-5, "scale_shift={scale_shift}: max err {err}");
        }
    }
}
