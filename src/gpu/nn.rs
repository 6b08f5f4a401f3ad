//! Network layers on the device: the twins of [`crate::nn`]'s layers, with the same
//! parameters (uploaded from the CPU layer), the same conventions (f32, NCHW row-major,
//! PyTorch's parameter layouts) and the same forward / input-VJP semantics.
//!
//! Kernels come from `kernels/nn.cu` (NVRTC, compiled once per process); GEMMs are cuBLAS
//! SGEMMs. Convolutions are im2col + batched GEMM (images in chunks so the column buffer
//! stays under [`COL_FLOATS`]); their input VJP is a transposed GEMM followed by a gathering
//! col2im (deterministic, no atomics). GroupNorm statistics are f64 sums per (sample, group)
//! over chunks, as the CPU's f64 statistics. Like the CPU layers, every VJP takes the
//! forward input again and recomputes what it needs.
//!
//! Shape errors are [`Error::Invalid`] naming the layer, the expected and the found shape.

use std::sync::Arc;

use cudarc::driver::{CudaFunction, CudaSlice, CudaView, LaunchConfig, PushKernelArg};

use super::context::cuda_err;
use super::{Gpu, GpuTensor, KernelSource};
use crate::nn::{AttentionBlock, Conv2d, GroupNorm, Linear, ResBlock, UpDown};
use crate::{Error, Result};

/// The network kernels' CUDA source.
pub static NN_KERNELS: KernelSource = KernelSource {
    name: "nn",
    code: include_str!("kernels/nn.cu"),
};

/// Most floats an im2col buffer may hold (1 GiB); images are unfolded in chunks below it.
pub const COL_FLOATS: usize = 1 << 28;
/// Threads per block of the elementwise and reduction kernels.
const THREADS: u32 = 256;
/// Elements each GroupNorm reduction block sums (many blocks per group keep the GPU busy at
/// batch 1).
const GN_CHUNK: usize = 16384;

/// A row launch (`ROW_LOOP` / `COL_LOOP` kernels): grid y over `rows` (looping past 65535),
/// grid x and the block over the `cols` of a row (blocks as narrow as one warp for short
/// rows).
fn grid_rows(rows: usize, cols: usize) -> LaunchConfig {
    let threads = (cols.div_ceil(32) * 32).clamp(32, THREADS as usize);
    LaunchConfig {
        grid_dim: (
            cols.div_ceil(threads).clamp(1, 1 << 16) as u32,
            rows.clamp(1, 65535) as u32,
            1,
        ),
        block_dim: (threads as u32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A grid-stride launch over `n` elements (at most 65536 blocks; the kernels loop).
fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(THREADS as usize).clamp(1, 1 << 16) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn i64_(v: usize) -> i64 {
    // Device buffers are far below 2^63 elements.
    v as i64
}

fn i32_(what: &str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::Invalid(format!("{what}: size {v} exceeds i32")))
}

/// A null device pointer argument (an optional input the kernel skips).
const NULL: u64 = 0;

macro_rules! kernels {
    ($($name:ident),* $(,)?) => {
        /// The loaded network kernels.
        struct Kernels { $($name: CudaFunction,)* }
        impl Kernels {
            fn load(gpu: &Gpu) -> Result<Kernels> {
                Ok(Kernels { $($name: gpu.function(&NN_KERNELS, stringify!($name))?,)* })
            }
        }
    };
}

kernels!(
    silu_fwd,
    silu_bwd,
    axpby,
    fill_bias_nchw,
    add_channel,
    mul_channel_plus1,
    channel_copy,
    gn_partial,
    gn_finalize,
    gn_apply,
    gn_bwd_partial,
    gn_bwd_finalize,
    gn_bwd_apply,
    softmax_rows,
    softmax_bwd_rows,
    im2col,
    col2im,
    up2x,
    up2x_bwd,
    pool2x,
    pool2x_bwd,
    timestep_embed,
    fill_bias_rows,
);

/// Launches kernel `$f` of `$nn` with `$cfg` and the given arguments (references).
macro_rules! launch {
    ($nn:expr, $f:ident, $cfg:expr; $($arg:expr),* $(,)?) => {{
        let cfg: LaunchConfig = $cfg;
        let mut b = $nn.gpu.stream().launch_builder(&$nn.k.$f);
        $( b.arg($arg); )*
        // SAFETY: each call site passes the argument list of the kernel's C signature, with
        // buffers sized (by the shape checks before it) for every index the kernel touches.
        unsafe { b.launch(cfg) }
            .map(|_| ())
            .map_err(cuda_err(concat!("kernel ", stringify!($f))))
    }};
}

/// The device with the network kernels loaded; every layer call takes one.
pub struct Nn {
    gpu: Arc<Gpu>,
    k: Kernels,
}

impl std::fmt::Debug for Nn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Nn({:?})", self.gpu)
    }
}

fn check_rank(layer: &str, x: &GpuTensor, rank: usize) -> Result<()> {
    if x.shape.len() != rank {
        return Err(crate::nn::shape_err(
            layer,
            format!("a rank-{rank} tensor"),
            &x.shape,
        ));
    }
    Ok(())
}

impl Nn {
    /// Loads (compiling on first use in the process) the network kernels.
    pub fn new(gpu: Arc<Gpu>) -> Result<Nn> {
        let k = Kernels::load(&gpu)?;
        Ok(Nn { gpu, k })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// `silu(x)` elementwise.
    pub fn silu(&self, x: &GpuTensor) -> Result<GpuTensor> {
        let mut y = GpuTensor::uninit(&self.gpu, &x.shape)?;
        let n = i64_(x.len());
        launch!(self, silu_fwd, grid(x.len()); &mut y.data, &x.data, &n)?;
        Ok(y)
    }

    /// `dy * silu'(x)`.
    pub fn silu_vjp(&self, x: &GpuTensor, dy: &GpuTensor) -> Result<GpuTensor> {
        crate::nn::same_shape("silu", "output gradient", &x.shape, &dy.shape)?;
        let mut dx = GpuTensor::uninit(&self.gpu, &x.shape)?;
        let n = i64_(x.len());
        launch!(self, silu_bwd, grid(x.len()); &mut dx.data, &x.data, &dy.data, &n)?;
        Ok(dx)
    }

    /// `y = a x + b y` in place.
    pub fn axpby(&self, a: f32, x: &GpuTensor, b: f32, y: &mut GpuTensor) -> Result<()> {
        crate::nn::same_shape("axpby", "x", &y.shape, &x.shape)?;
        let n = i64_(x.len());
        launch!(self, axpby, grid(x.len()); &mut y.data, &x.data, &a, &b, &n)
    }

    /// `y += x`.
    pub fn add_assign(&self, y: &mut GpuTensor, x: &GpuTensor) -> Result<()> {
        self.axpby(1.0, x, 1.0, y)
    }

    /// `y[n, c, ..] += e[n, c]` (`e` is `(N, >= C)`, its first `C` columns used).
    pub fn add_channel(&self, y: &mut GpuTensor, e: &GpuTensor) -> Result<()> {
        let (c, hw, stride) = self.channel_args("add_channel", y, e)?;
        let rows = y.len() / (hw.max(1) as usize);
        let rows_ = i64_(rows);
        launch!(self, add_channel, grid_rows(rows, hw as usize); &mut y.data, &e.data, &stride, &c, &hw, &rows_)
    }

    /// `y[n, c, ..] *= 1 + e[n, c]` (`e` is `(N, >= C)`, its first `C` columns used).
    pub fn mul_channel_plus1(&self, y: &mut GpuTensor, e: &GpuTensor) -> Result<()> {
        let (c, hw, stride) = self.channel_args("mul_channel_plus1", y, e)?;
        let rows = y.len() / (hw.max(1) as usize);
        let rows_ = i64_(rows);
        launch!(self, mul_channel_plus1, grid_rows(rows, hw as usize); &mut y.data, &e.data, &stride, &c, &hw, &rows_)
    }

    /// `(C, H W, e's row stride)` of a channel broadcast.
    fn channel_args(&self, what: &str, y: &GpuTensor, e: &GpuTensor) -> Result<(i64, i32, i64)> {
        if y.shape.len() < 2
            || e.shape.len() != 2
            || e.shape[0] != y.shape[0]
            || e.shape[1] < y.shape[1]
        {
            return Err(Error::Invalid(format!(
                "{what}: expected y (N, C, ...) and e (N, >= C), found {:?} and {:?}",
                y.shape, e.shape
            )));
        }
        let hw: usize = y.shape[2..].iter().product();
        Ok((i64_(y.shape[1]), i32_(what, hw)?, i64_(e.shape[1])))
    }

    /// Concatenates `(N, Ca, ...)` and `(N, Cb, ...)` along channels (`torch.cat(dim=1)`).
    pub fn concat_channels(&self, a: &GpuTensor, b: &GpuTensor) -> Result<GpuTensor> {
        if a.shape.len() < 2
            || a.shape.len() != b.shape.len()
            || a.shape[0] != b.shape[0]
            || a.shape[2..] != b.shape[2..]
        {
            return Err(Error::Invalid(format!(
                "concat: shapes {:?} and {:?} differ outside the channel axis",
                a.shape, b.shape
            )));
        }
        let (ca, cb) = (a.shape[1], b.shape[1]);
        let mut shape = a.shape.clone();
        shape[1] = ca + cb;
        let mut y = GpuTensor::uninit(&self.gpu, &shape)?;
        self.copy_channels(&mut y, 0, a, 0, ca)?;
        self.copy_channels(&mut y, ca, b, 0, cb)?;
        Ok(y)
    }

    /// Splits `(N, C, ...)` into channels `[0, at)` and `[at, C)`.
    pub fn split_channels(&self, x: &GpuTensor, at: usize) -> Result<(GpuTensor, GpuTensor)> {
        if x.shape.len() < 2 || at > x.shape[1] {
            return Err(Error::Invalid(format!(
                "split: cannot split {:?} at channel {at}",
                x.shape
            )));
        }
        let c = x.shape[1];
        let mut sa = x.shape.clone();
        sa[1] = at;
        let mut sb = x.shape.clone();
        sb[1] = c - at;
        let mut a = GpuTensor::uninit(&self.gpu, &sa)?;
        let mut b = GpuTensor::uninit(&self.gpu, &sb)?;
        self.copy_channels(&mut a, 0, x, 0, at)?;
        self.copy_channels(&mut b, 0, x, at, c - at)?;
        Ok((a, b))
    }

    /// `dst[:, dst_off + k] = src[:, src_off + k]` for `k < c` (shapes checked by callers).
    fn copy_channels(
        &self,
        dst: &mut GpuTensor,
        dst_off: usize,
        src: &GpuTensor,
        src_off: usize,
        c: usize,
    ) -> Result<()> {
        let n = dst.shape[0];
        let hw: usize = dst.shape[2..].iter().product();
        if n * c * hw == 0 {
            return Ok(());
        }
        let (dc, sc) = (i64_(dst.shape[1]), i64_(src.shape[1]));
        let (doff, soff, cc, hw_, rows) = (
            i64_(dst_off),
            i64_(src_off),
            i64_(c),
            i32_("channel copy", hw)?,
            i64_(n * c),
        );
        launch!(self, channel_copy, grid_rows(n * c, hw);
            &mut dst.data, &dc, &doff, &src.data, &sc, &soff, &cc, &hw_, &rows)
    }

    /// Nearest 2x upsampling of `(N, C, H, W)`.
    pub fn upsample2x(&self, x: &GpuTensor) -> Result<GpuTensor> {
        check_rank("upsample_nearest2x", x, 4)?;
        let [n, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
        let mut y = GpuTensor::uninit(&self.gpu, &[n, c, 2 * h, 2 * w])?;
        let (h_, w_, nc) = (i32_("upsample", h)?, i32_("upsample", w)?, i64_(n * c));
        launch!(self, up2x, grid_rows(n * c * 2 * h, 2 * w); &mut y.data, &x.data, &h_, &w_, &nc)?;
        Ok(y)
    }

    /// Adjoint of [`Nn::upsample2x`]: `(N, C, 2H, 2W) -> (N, C, H, W)`.
    pub fn upsample2x_vjp(&self, dy: &GpuTensor) -> Result<GpuTensor> {
        check_rank("upsample_nearest2x_vjp", dy, 4)?;
        let [n, c, h2, w2] = [dy.shape[0], dy.shape[1], dy.shape[2], dy.shape[3]];
        if h2 % 2 != 0 || w2 % 2 != 0 {
            return Err(crate::nn::shape_err(
                "upsample_nearest2x_vjp",
                "(N, C, 2H, 2W)",
                &dy.shape,
            ));
        }
        let (h, w) = (h2 / 2, w2 / 2);
        let mut dx = GpuTensor::uninit(&self.gpu, &[n, c, h, w])?;
        let (h_, w_, nc) = (i32_("upsample", h)?, i32_("upsample", w)?, i64_(n * c));
        launch!(self, up2x_bwd, grid_rows(n * c * h, w); &mut dx.data, &dy.data, &h_, &w_, &nc)?;
        Ok(dx)
    }

    /// 2x2 average pooling of `(N, C, H, W)` (floor).
    pub fn avg_pool2x(&self, x: &GpuTensor) -> Result<GpuTensor> {
        check_rank("avg_pool2x", x, 4)?;
        let [n, c, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
        let mut y = GpuTensor::uninit(&self.gpu, &[n, c, h / 2, w / 2])?;
        let (h_, w_, nc) = (i32_("avg_pool", h)?, i32_("avg_pool", w)?, i64_(n * c));
        launch!(self, pool2x, grid_rows(n * c * (h / 2), w / 2); &mut y.data, &x.data, &h_, &w_, &nc)?;
        Ok(y)
    }

    /// Adjoint of [`Nn::avg_pool2x`] for an input of shape `in_shape`.
    pub fn avg_pool2x_vjp(&self, in_shape: [usize; 4], dy: &GpuTensor) -> Result<GpuTensor> {
        let [n, c, h, w] = in_shape;
        crate::nn::same_shape(
            "avg_pool2x",
            "output gradient",
            &[n, c, h / 2, w / 2],
            &dy.shape,
        )?;
        let mut dx = GpuTensor::uninit(&self.gpu, &in_shape)?;
        let (h_, w_, nc) = (i32_("avg_pool", h)?, i32_("avg_pool", w)?, i64_(n * c));
        launch!(self, pool2x_bwd, grid_rows(n * c * h, w); &mut dx.data, &dy.data, &h_, &w_, &nc)?;
        Ok(dx)
    }

    /// guided-diffusion's sinusoidal embedding `(N,) -> (N, dim)` with `max_period`; the
    /// frequencies are computed on the host exactly as [`crate::nn::timestep_embedding`].
    pub fn timestep_embedding(&self, t: &[f32], dim: usize, max_period: f32) -> Result<GpuTensor> {
        let freqs = crate::nn::embed::timestep_frequencies(dim, max_period, 0.0);
        let fd = self.gpu.upload(&freqs)?;
        self.timestep_embedding_with_freqs(t, &fd, dim)
    }

    /// [`Nn::timestep_embedding`] with the frequencies already on the device.
    pub(crate) fn timestep_embedding_with_freqs(
        &self,
        t: &[f32],
        freqs: &CudaSlice<f32>,
        dim: usize,
    ) -> Result<GpuTensor> {
        let mut out = GpuTensor::uninit(&self.gpu, &[t.len(), dim])?;
        if t.is_empty() || dim == 0 {
            return Ok(out);
        }
        let td = self.gpu.upload(t)?;
        let (n, half, d) = (
            i32_("embedding", t.len())?,
            i32_("embedding", dim / 2)?,
            i32_("embedding", dim)?,
        );
        launch!(self, timestep_embed, grid(out.len()); &mut out.data, &td, freqs, &n, &half, &d)?;
        Ok(out)
    }

    /// Softmax attention weights in place: every row of `t` entries of `p` becomes
    /// `softmax(scale * row)`.
    fn softmax_rows(
        &self,
        p: &mut CudaSlice<f32>,
        rows: usize,
        t: usize,
        scale: f32,
    ) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: (i32_("softmax rows", rows)? as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let t_ = i64_(t);
        launch!(self, softmax_rows, cfg; p, &t_, &scale)
    }

    /// `dp = scale * p * (dp - rowsum(p * dp))` in place, rows of `t`.
    fn softmax_rows_vjp(
        &self,
        dp: &mut CudaSlice<f32>,
        p: &CudaSlice<f32>,
        rows: usize,
        t: usize,
        scale: f32,
    ) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: (i32_("softmax rows", rows)? as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let t_ = i64_(t);
        launch!(self, softmax_bwd_rows, cfg; dp, p, &t_, &scale)
    }
}

/// [`Linear`] on the device: `y = x W^T + b`, `x` `(N, in)`.
pub struct GpuLinear {
    w: CudaSlice<f32>,
    b: CudaSlice<f32>,
    out: usize,
    inp: usize,
}

impl GpuLinear {
    pub fn from_cpu(gpu: &Gpu, l: &Linear) -> Result<Self> {
        Ok(GpuLinear {
            w: upload_std(gpu, l.weight.view().into_dyn())?,
            b: upload_std(gpu, l.bias.view().into_dyn())?,
            out: l.out_features(),
            inp: l.in_features(),
        })
    }

    pub fn forward(&self, nn: &Nn, x: &GpuTensor) -> Result<GpuTensor> {
        if x.shape.len() != 2 || x.shape[1] != self.inp {
            return Err(crate::nn::shape_err(
                "linear",
                format!("(N, {})", self.inp),
                &x.shape,
            ));
        }
        let n = x.shape[0];
        let mut y = GpuTensor::uninit(&nn.gpu, &[n, self.out])?;
        let (cols, total) = (i64_(self.out), i64_(y.len()));
        launch!(nn, fill_bias_rows, grid(y.len()); &mut y.data, &self.b, &cols, &total)?;
        nn.gpu.sgemm(
            (n, self.out, self.inp),
            1.0,
            &x.data,
            false,
            &self.w,
            true,
            1.0,
            &mut y.data,
        )?;
        Ok(y)
    }
}

/// Uploads an ndarray in row-major order.
fn upload_std(gpu: &Gpu, a: ndarray::ArrayViewD<f32>) -> Result<CudaSlice<f32>> {
    let a = a.as_standard_layout();
    match a.as_slice() {
        Some(s) => gpu.upload(s),
        None => gpu.upload(&a.iter().copied().collect::<Vec<_>>()),
    }
}

/// [`Conv2d`] on the device (zero padding, cross-correlation as PyTorch).
pub struct GpuConv2d {
    w: CudaSlice<f32>,
    b: CudaSlice<f32>,
    co: usize,
    ci: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
}

/// One chunk of images for an im2col pass.
fn image_chunks(n: usize, per_image: usize) -> usize {
    (COL_FLOATS / per_image.max(1)).clamp(1, n.max(1))
}

impl GpuConv2d {
    pub fn from_cpu(gpu: &Gpu, c: &Conv2d) -> Result<Self> {
        let (co, ci, kh, kw) = c.weight.dim();
        Ok(GpuConv2d {
            w: upload_std(gpu, c.weight.view().into_dyn())?,
            b: upload_std(gpu, c.bias.view().into_dyn())?,
            co,
            ci,
            kh,
            kw,
            stride: c.stride,
            pad: c.padding,
        })
    }

    pub fn out_channels(&self) -> usize {
        self.co
    }

    /// Output spatial size, an error when the padded input is smaller than the kernel.
    pub fn out_size(&self, h: usize, w: usize) -> Result<(usize, usize)> {
        let (hp, wp) = (h + 2 * self.pad, w + 2 * self.pad);
        if hp < self.kh || wp < self.kw {
            return Err(Error::Invalid(format!(
                "conv2d: input {h}x{w} with padding {} is smaller than the {}x{} kernel",
                self.pad, self.kh, self.kw
            )));
        }
        Ok((
            (hp - self.kh) / self.stride + 1,
            (wp - self.kw) / self.stride + 1,
        ))
    }

    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    fn kdim(&self) -> usize {
        self.ci * self.kh * self.kw
    }

    /// The im2col / col2im geometry arguments, in the kernels' order after the two buffers.
    fn geom_args(&self, h: usize, w: usize, ho: usize, wo: usize) -> Result<[i32; 9]> {
        let f = |v| i32_("conv2d", v);
        Ok([
            f(self.ci)?,
            f(h)?,
            f(w)?,
            f(self.kh)?,
            f(self.kw)?,
            f(self.stride)?,
            f(self.pad)?,
            f(ho)?,
            f(wo)?,
        ])
    }

    /// `(N, in, H, W) -> (N, out, Ho, Wo)`.
    pub fn forward(&self, nn: &Nn, x: &GpuTensor) -> Result<GpuTensor> {
        if x.shape.len() != 4 || x.shape[1] != self.ci {
            return Err(crate::nn::shape_err(
                "conv2d",
                format!("(N, {}, H, W)", self.ci),
                &x.shape,
            ));
        }
        let [n, _, h, w] = [x.shape[0], x.shape[1], x.shape[2], x.shape[3]];
        let (ho, wo) = self.out_size(h, w)?;
        let (hwo, k) = (ho * wo, self.kdim());
        let mut y = GpuTensor::uninit(&nn.gpu, &[n, self.co, ho, wo])?;
        if y.is_empty() {
            return Ok(y);
        }
        let (c_, hw_, rows) = (i64_(self.co), i32_("conv2d", hwo)?, i64_(n * self.co));
        launch!(nn, fill_bias_nchw, grid_rows(n * self.co, hwo); &mut y.data, &self.b, &c_, &hw_, &rows)?;
        if self.pointwise() {
            return nn
                .gpu
                .sgemm_batched(
                    (self.co, hwo, k),
                    n,
                    1.0,
                    (&self.w, 0, false),
                    (&x.data, k * hwo, false),
                    1.0,
                    (&mut y.data, self.co * hwo),
                )
                .map(|_| y);
        }
        let chunk = image_chunks(n, k * hwo);
        let mut col = nn.gpu.alloc(chunk * k * hwo)?;
        let g = self.geom_args(h, w, ho, wo)?;
        let in_img = self.ci * h * w;
        for start in (0..n).step_by(chunk) {
            let m = chunk.min(n - start);
            let xs = x.data.slice(start * in_img..(start + m) * in_img);
            let m_ = i64_(m);
            launch!(nn, im2col, grid_rows(m * k, hwo);
                &xs, &mut col, &g[0], &g[1], &g[2], &g[3], &g[4], &g[5], &g[6], &g[7], &g[8], &m_)?;
            let mut ys = y
                .data
                .slice_mut(start * self.co * hwo..(start + m) * self.co * hwo);
            nn.gpu.sgemm_batched(
                (self.co, hwo, k),
                m,
                1.0,
                (&self.w, 0, false),
                (&col, k * hwo, false),
                1.0,
                (&mut ys, self.co * hwo),
            )?;
        }
        Ok(y)
    }

    /// Input VJP: `dy` `(N, out, Ho, Wo)` for an input of spatial size `(h, w)`; returns
    /// `(N, in, h, w)`: `dcol = W^T dy` per image, then col2im.
    pub fn vjp(&self, nn: &Nn, h: usize, w: usize, dy: &GpuTensor) -> Result<GpuTensor> {
        let (ho, wo) = self.out_size(h, w)?;
        let n = dy.shape.first().copied().unwrap_or(0);
        crate::nn::same_shape(
            "conv2d",
            "output gradient",
            &[n, self.co, ho, wo],
            &dy.shape,
        )?;
        let (hwo, k) = (ho * wo, self.kdim());
        if self.pointwise() {
            let mut dx = GpuTensor::uninit(&nn.gpu, &[n, self.ci, h, w])?;
            nn.gpu.sgemm_batched(
                (self.ci, hwo, self.co),
                n,
                1.0,
                (&self.w, 0, true),
                (&dy.data, self.co * hwo, false),
                0.0,
                (&mut dx.data, self.ci * hwo),
            )?;
            return Ok(dx);
        }
        let mut dx = GpuTensor::uninit(&nn.gpu, &[n, self.ci, h, w])?;
        if dx.is_empty() {
            return Ok(dx);
        }
        let chunk = image_chunks(n, k * hwo);
        let mut col = nn.gpu.alloc(chunk * k * hwo)?;
        let g = self.geom_args(h, w, ho, wo)?;
        let in_img = self.ci * h * w;
        for start in (0..n).step_by(chunk) {
            let m = chunk.min(n - start);
            let dys = dy
                .data
                .slice(start * self.co * hwo..(start + m) * self.co * hwo);
            nn.gpu.sgemm_batched(
                (k, hwo, self.co),
                m,
                1.0,
                (&self.w, 0, true),
                (&dys, self.co * hwo, false),
                0.0,
                (&mut col, k * hwo),
            )?;
            let mut dxs = dx.data.slice_mut(start * in_img..(start + m) * in_img);
            let m_ = i64_(m);
            launch!(nn, col2im, grid_rows(m * self.ci, h * w);
                &col, &mut dxs, &g[0], &g[1], &g[2], &g[3], &g[4], &g[5], &g[6], &g[7], &g[8], &m_)?;
        }
        Ok(dx)
    }
}

/// [`GroupNorm`] on the device.
pub struct GpuGroupNorm {
    w: CudaSlice<f32>,
    b: CudaSlice<f32>,
    c: usize,
    groups: usize,
    eps: f32,
}

/// Per-(sample, group) statistics: `[mean, rstd]` pairs in f64.
struct GnStats {
    stats: CudaSlice<f64>,
    hw: usize,
}

impl GpuGroupNorm {
    pub fn from_cpu(gpu: &Gpu, g: &GroupNorm) -> Result<Self> {
        Ok(GpuGroupNorm {
            w: upload_std(gpu, g.weight.view().into_dyn())?,
            b: upload_std(gpu, g.bias.view().into_dyn())?,
            c: g.weight.len(),
            groups: g.groups,
            eps: g.eps,
        })
    }

    fn check(&self, x: &GpuTensor) -> Result<(usize, usize)> {
        if x.shape.len() < 2 || x.shape[1] != self.c {
            return Err(crate::nn::shape_err(
                "group_norm",
                format!("(N, {}, ...)", self.c),
                &x.shape,
            ));
        }
        Ok((x.shape[0], x.shape[2..].iter().product()))
    }

    /// Reduction launch shape for blocks of `blk` entries: (chunks, chunk length).
    fn chunks(blk: usize) -> (usize, usize) {
        let chunks = blk.div_ceil(GN_CHUNK).max(1);
        (chunks, blk.div_ceil(chunks).max(1))
    }

    fn stats(&self, nn: &Nn, x: &GpuTensor) -> Result<GnStats> {
        let (n, hw) = self.check(x)?;
        let ng = n * self.groups;
        let blk = self.c / self.groups * hw;
        let (chunks, chunk_len) = Self::chunks(blk);
        let mut part = nn
            .gpu
            .stream()
            .alloc_zeros::<f64>(2 * ng * chunks)
            .map_err(cuda_err("device allocation"))?;
        let mut stats = nn
            .gpu
            .stream()
            .alloc_zeros::<f64>(2 * ng.max(1))
            .map_err(cuda_err("device allocation"))?;
        if ng == 0 {
            return Ok(GnStats { stats, hw });
        }
        let cfg = LaunchConfig {
            grid_dim: (
                i32_("group_norm", chunks)? as u32,
                i32_("group_norm", ng)? as u32,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (blk_, cl) = (i64_(blk), i64_(chunk_len));
        launch!(nn, gn_partial, cfg; &x.data, &blk_, &cl, &mut part)?;
        let (chunks_, ng_) = (i32_("group_norm", chunks)?, i32_("group_norm", ng)?);
        launch!(nn, gn_finalize, grid(ng); &part, &chunks_, &blk_, &self.eps, &mut stats, &ng_)?;
        Ok(GnStats { stats, hw })
    }

    /// Forward with an optional scale-shift modulation and SiLU, fused as the CPU's
    /// [`GroupNorm::forward_fused`]: `y = norm(x) * (1 + scale[n, c]) + shift[n, c]`, where
    /// `modulation = (e, offset)` reads `scale` from columns `[offset, offset + C)` and
    /// `shift` from `[offset + C, offset + 2C)` of the `(N, >= offset + 2C)` tensor `e`.
    pub fn forward_fused(
        &self,
        nn: &Nn,
        x: &GpuTensor,
        modulation: Option<&GpuTensor>,
        silu: bool,
    ) -> Result<GpuTensor> {
        let st = self.stats(nn, x)?;
        let n = x.shape[0];
        let mut y = GpuTensor::uninit(&nn.gpu, &x.shape)?;
        if y.is_empty() {
            return Ok(y);
        }
        let (c_, g_, hw_, rows) = (
            i64_(self.c),
            i64_(self.groups),
            i32_("group_norm", st.hw)?,
            i64_(n * self.c),
        );
        let cfg = grid_rows(n * self.c, st.hw);
        let silu_ = silu as i32;
        match modulation {
            None => {
                let zero = 0i64;
                launch!(nn, gn_apply, cfg;
                    &mut y.data, &x.data, &st.stats, &self.w, &self.b, &NULL, &NULL, &zero, &silu_, &c_, &g_, &hw_, &rows)?;
            }
            Some(e) => {
                if e.shape.len() != 2 || e.shape[0] != n || e.shape[1] < 2 * self.c {
                    return Err(Error::Invalid(format!(
                        "group_norm: modulation needs shape ({n}, >= {}), found {:?}",
                        2 * self.c,
                        e.shape
                    )));
                }
                let stride = i64_(e.shape[1]);
                let scale = e.data.slice(..);
                let shift = e.data.slice(self.c..);
                launch!(nn, gn_apply, cfg;
                    &mut y.data, &x.data, &st.stats, &self.w, &self.b, &scale, &shift, &stride, &silu_, &c_, &g_, &hw_, &rows)?;
            }
        }
        Ok(y)
    }

    pub fn forward(&self, nn: &Nn, x: &GpuTensor) -> Result<GpuTensor> {
        self.forward_fused(nn, x, None, false)
    }

    /// Input VJP (statistics recomputed from `x`).
    pub fn vjp(&self, nn: &Nn, x: &GpuTensor, dy: &GpuTensor) -> Result<GpuTensor> {
        crate::nn::same_shape("group_norm", "output gradient", &x.shape, &dy.shape)?;
        let st = self.stats(nn, x)?;
        let n = x.shape[0];
        let ng = n * self.groups;
        let cg = self.c / self.groups;
        let blk = cg * st.hw;
        let mut dx = GpuTensor::uninit(&nn.gpu, &x.shape)?;
        if dx.is_empty() {
            return Ok(dx);
        }
        let (chunks, chunk_len) = Self::chunks(blk);
        let mut part = nn
            .gpu
            .stream()
            .alloc_zeros::<f64>(2 * ng * chunks)
            .map_err(cuda_err("device allocation"))?;
        let mut coef = nn.gpu.zeros(2 * ng)?;
        let cfg = LaunchConfig {
            grid_dim: (
                i32_("group_norm", chunks)? as u32,
                i32_("group_norm", ng)? as u32,
                1,
            ),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (g_, cg_, hw_, cl) = (i64_(self.groups), i64_(cg), i64_(st.hw), i64_(chunk_len));
        launch!(nn, gn_bwd_partial, cfg; &x.data, &dy.data, &st.stats, &self.w, &g_, &cg_, &hw_, &cl, &mut part)?;
        let (chunks_, ng_, blk_) = (
            i32_("group_norm", chunks)?,
            i32_("group_norm", ng)?,
            i64_(blk),
        );
        launch!(nn, gn_bwd_finalize, grid(ng); &part, &chunks_, &blk_, &st.stats, &mut coef, &ng_)?;
        let (c_, hw32, rows) = (i64_(self.c), i32_("group_norm", st.hw)?, i64_(n * self.c));
        launch!(nn, gn_bwd_apply, grid_rows(n * self.c, st.hw);
            &mut dx.data, &x.data, &dy.data, &st.stats, &coef, &self.w, &c_, &g_, &hw32, &rows)?;
        Ok(dx)
    }
}

/// 2x resampling inside a residual block.
fn resample(nn: &Nn, u: UpDown, x: &GpuTensor) -> Result<Option<GpuTensor>> {
    match u {
        UpDown::None => Ok(None),
        UpDown::Up => nn.upsample2x(x).map(Some),
        UpDown::Down => nn.avg_pool2x(x).map(Some),
    }
}

/// The adjoint of [`resample`]; `None` is the identity.
fn resample_vjp(
    nn: &Nn,
    u: UpDown,
    in_shape: [usize; 4],
    dy: &GpuTensor,
) -> Result<Option<GpuTensor>> {
    match u {
        UpDown::None => Ok(None),
        UpDown::Up => nn.upsample2x_vjp(dy).map(Some),
        UpDown::Down => nn.avg_pool2x_vjp(in_shape, dy).map(Some),
    }
}

fn shape4(x: &GpuTensor) -> [usize; 4] {
    [x.shape[0], x.shape[1], x.shape[2], x.shape[3]]
}

/// [`ResBlock`] on the device. `emb` is the time embedding `(B, E)` before the block's SiLU.
pub struct GpuResBlock {
    in_norm: GpuGroupNorm,
    in_conv: GpuConv2d,
    emb_linear: GpuLinear,
    out_norm: GpuGroupNorm,
    out_conv: GpuConv2d,
    skip: Option<GpuConv2d>,
    scale_shift: bool,
    updown: UpDown,
}

impl GpuResBlock {
    pub fn from_cpu(gpu: &Gpu, r: &ResBlock) -> Result<Self> {
        Ok(GpuResBlock {
            in_norm: GpuGroupNorm::from_cpu(gpu, &r.in_norm)?,
            in_conv: GpuConv2d::from_cpu(gpu, &r.in_conv)?,
            emb_linear: GpuLinear::from_cpu(gpu, &r.emb_linear)?,
            out_norm: GpuGroupNorm::from_cpu(gpu, &r.out_norm)?,
            out_conv: GpuConv2d::from_cpu(gpu, &r.out_conv)?,
            skip: r
                .skip
                .as_ref()
                .map(|s| GpuConv2d::from_cpu(gpu, s))
                .transpose()?,
            scale_shift: r.scale_shift,
            updown: r.updown,
        })
    }

    /// `e = emb_linear(silu(emb))`; `silu_emb` is `silu(emb)`, shared by all blocks.
    fn embed(&self, nn: &Nn, x: &GpuTensor, silu_emb: &GpuTensor) -> Result<GpuTensor> {
        if silu_emb.shape.first() != x.shape.first() {
            return Err(Error::Invalid(format!(
                "resblock: embedding {:?} does not match the batch of input {:?}",
                silu_emb.shape, x.shape
            )));
        }
        self.emb_linear.forward(nn, silu_emb)
    }

    /// `h1 = in_conv(resample(silu(in_norm(x))))`.
    fn first_half(&self, nn: &Nn, a1: &GpuTensor) -> Result<GpuTensor> {
        match resample(nn, self.updown, a1)? {
            None => self.in_conv.forward(nn, a1),
            Some(r) => self.in_conv.forward(nn, &r),
        }
    }

    /// Forward: `x` `(B, C, H, W)` -> `(B, out, H', W')`.
    pub fn forward(&self, nn: &Nn, x: &GpuTensor, silu_emb: &GpuTensor) -> Result<GpuTensor> {
        self.forward_saving(nn, x, silu_emb).map(|(out, _)| out)
    }

    /// Forward that also returns the one inner activation the VJP would otherwise recompute
    /// with a convolution: the output norm's input (`in_conv`'s output `h1`, plus the
    /// embedding when it is additive). Pass it to [`GpuResBlock::vjp_saved`].
    pub fn forward_saving(
        &self,
        nn: &Nn,
        x: &GpuTensor,
        silu_emb: &GpuTensor,
    ) -> Result<(GpuTensor, GpuTensor)> {
        check_rank("resblock", x, 4)?;
        let e = self.embed(nn, x, silu_emb)?;
        let a1 = self.in_norm.forward_fused(nn, x, None, true)?;
        let mut h1 = self.first_half(nn, &a1)?;
        drop(a1);
        let s = if self.scale_shift {
            self.out_norm.forward_fused(nn, &h1, Some(&e), true)?
        } else {
            nn.add_channel(&mut h1, &e)?;
            self.out_norm.forward_fused(nn, &h1, None, true)?
        };
        let mut out = self.out_conv.forward(nn, &s)?;
        drop(s);
        let rx = resample(nn, self.updown, x)?;
        let rx = rx.as_ref().unwrap_or(x);
        match &self.skip {
            None => nn.add_assign(&mut out, rx)?,
            Some(cv) => nn.add_assign(&mut out, &cv.forward(nn, rx)?)?,
        }
        Ok((out, h1))
    }

    /// Input VJP (embedding held fixed), recomputing the forward activations.
    pub fn vjp(
        &self,
        nn: &Nn,
        x: &GpuTensor,
        silu_emb: &GpuTensor,
        dy: &GpuTensor,
    ) -> Result<GpuTensor> {
        self.vjp_saved(nn, x, silu_emb, dy, None)
    }

    /// Input VJP given, optionally, the activation [`GpuResBlock::forward_saving`] returned
    /// for this `x` (then `in_conv` is not recomputed; the result is the same).
    pub fn vjp_saved(
        &self,
        nn: &Nn,
        x: &GpuTensor,
        silu_emb: &GpuTensor,
        dy: &GpuTensor,
        saved: Option<&GpuTensor>,
    ) -> Result<GpuTensor> {
        check_rank("resblock", x, 4)?;
        let e = self.embed(nn, x, silu_emb)?;
        let a0 = self.in_norm.forward(nn, x)?;
        let a1_shape = shape4(&a0);
        // hm: the output norm's input, h1 (scale-shift) or h1 + e (additive embedding).
        let recomputed;
        let hm = match saved {
            Some(h) => h,
            None => {
                let a1 = nn.silu(&a0)?;
                let mut h1 = self.first_half(nn, &a1)?;
                drop(a1);
                if !self.scale_shift {
                    nn.add_channel(&mut h1, &e)?;
                }
                recomputed = h1;
                &recomputed
            }
        };
        crate::nn::same_shape("resblock", "output gradient", &hm.shape, &dy.shape)?;
        let pre = if self.scale_shift {
            self.out_norm.forward_fused(nn, hm, Some(&e), false)?
        } else {
            self.out_norm.forward(nn, hm)?
        };
        let [_, _, ho, wo] = shape4(hm);
        let ds = self.out_conv.vjp(nn, ho, wo, dy)?;
        let mut dpre = nn.silu_vjp(&pre, &ds)?;
        drop((ds, pre));
        if self.scale_shift {
            nn.mul_channel_plus1(&mut dpre, &e)?;
        }
        let dh1 = self.out_norm.vjp(nn, hm, &dpre)?;
        drop(dpre);
        let (ha, wa) = match self.updown {
            UpDown::None => (a1_shape[2], a1_shape[3]),
            UpDown::Up => (2 * a1_shape[2], 2 * a1_shape[3]),
            UpDown::Down => (a1_shape[2] / 2, a1_shape[3] / 2),
        };
        let da1u = self.in_conv.vjp(nn, ha, wa, &dh1)?;
        drop(dh1);
        let da1 = resample_vjp(nn, self.updown, a1_shape, &da1u)?;
        let da0 = nn.silu_vjp(&a0, da1.as_ref().unwrap_or(&da1u))?;
        drop((a0, da1, da1u));
        let mut dx = self.in_norm.vjp(nn, x, &da0)?;
        drop(da0);
        let dskip = match &self.skip {
            None => None,
            Some(cv) => Some(cv.vjp(nn, ho, wo, dy)?),
        };
        let g = dskip.as_ref().unwrap_or(dy);
        let gr = resample_vjp(nn, self.updown, a1_shape, g)?;
        nn.add_assign(&mut dx, gr.as_ref().unwrap_or(g))?;
        Ok(dx)
    }
}

/// [`AttentionBlock`] (legacy head order) on the device.
pub struct GpuAttention {
    norm: GpuGroupNorm,
    qkv: GpuConv2d,
    proj_out: GpuConv2d,
    heads: usize,
}

impl GpuAttention {
    pub fn from_cpu(gpu: &Gpu, a: &AttentionBlock) -> Result<Self> {
        Ok(GpuAttention {
            norm: GpuGroupNorm::from_cpu(gpu, &a.norm)?,
            qkv: GpuConv2d::from_cpu(gpu, &a.qkv)?,
            proj_out: GpuConv2d::from_cpu(gpu, &a.proj_out)?,
            heads: a.attention.n_heads,
        })
    }

    /// `(B, C, T)` of an input `(B, C, H, W)`, `T = H W`. (The norm and the 1x1
    /// convolutions see only `H W`, so the layers run on the unflattened tensors.)
    fn flat(x: &GpuTensor) -> Result<(usize, usize, usize)> {
        check_rank("attention block", x, 4)?;
        Ok((x.shape[0], x.shape[1], x.shape[2] * x.shape[3]))
    }

    /// Softmax weights `P` `(B H, T, T)` of `qkv` `(B, 3 H C, T)`.
    fn weights(
        &self,
        nn: &Nn,
        qkv: &CudaSlice<f32>,
        bh: usize,
        c: usize,
        t: usize,
    ) -> Result<CudaSlice<f32>> {
        let mut p = nn.gpu.alloc(bh * t * t)?;
        let q = qkv.slice(..);
        let k = qkv.slice(c * t..);
        nn.gpu.sgemm_batched(
            (t, t, c),
            bh,
            1.0,
            (&q, 3 * c * t, true),
            (&k, 3 * c * t, false),
            0.0,
            (&mut p, t * t),
        )?;
        nn.softmax_rows(&mut p, bh * t, t, 1.0 / (c as f32).sqrt())?;
        Ok(p)
    }

    /// `QKVAttentionLegacy` forward: `(B, 3HC, T) -> (B, HC, T)`.
    pub fn attention(&self, nn: &Nn, qkv: &GpuTensor) -> Result<GpuTensor> {
        let (b, c, t) = self.head_dims(qkv)?;
        let bh = b * self.heads;
        let mut a = GpuTensor::uninit(&nn.gpu, &[b, self.heads * c, t])?;
        if a.is_empty() {
            return Ok(a);
        }
        let p = self.weights(nn, &qkv.data, bh, c, t)?;
        let v = qkv.data.slice(2 * c * t..);
        nn.gpu.sgemm_batched(
            (c, t, t),
            bh,
            1.0,
            (&v, 3 * c * t, false),
            (&p, t * t, true),
            0.0,
            (&mut a.data, c * t),
        )?;
        Ok(a)
    }

    /// VJP of [`GpuAttention::attention`] with respect to `qkv`.
    pub fn attention_vjp(&self, nn: &Nn, qkv: &GpuTensor, da: &GpuTensor) -> Result<GpuTensor> {
        let (b, c, t) = self.head_dims(qkv)?;
        crate::nn::same_shape(
            "attention",
            "output gradient",
            &[b, self.heads * c, t],
            &da.shape,
        )?;
        let bh = b * self.heads;
        let mut dqkv = GpuTensor::uninit(&nn.gpu, &qkv.shape)?;
        if dqkv.is_empty() {
            return Ok(dqkv);
        }
        let p = self.weights(nn, &qkv.data, bh, c, t)?;
        let (q, k, v): (CudaView<f32>, CudaView<f32>, CudaView<f32>) = (
            qkv.data.slice(..),
            qkv.data.slice(c * t..),
            qkv.data.slice(2 * c * t..),
        );
        let s3 = 3 * c * t;
        {
            let mut dv = dqkv.data.slice_mut(2 * c * t..);
            nn.gpu.sgemm_batched(
                (c, t, t),
                bh,
                1.0,
                (&da.data, c * t, false),
                (&p, t * t, false),
                0.0,
                (&mut dv, s3),
            )?;
        }
        let mut dp = nn.gpu.alloc(bh * t * t)?;
        nn.gpu.sgemm_batched(
            (t, t, c),
            bh,
            1.0,
            (&da.data, c * t, true),
            (&v, s3, false),
            0.0,
            (&mut dp, t * t),
        )?;
        nn.softmax_rows_vjp(&mut dp, &p, bh * t, t, 1.0 / (c as f32).sqrt())?;
        drop(p);
        {
            let mut dq = dqkv.data.slice_mut(..);
            nn.gpu.sgemm_batched(
                (c, t, t),
                bh,
                1.0,
                (&k, s3, false),
                (&dp, t * t, true),
                0.0,
                (&mut dq, s3),
            )?;
        }
        {
            let mut dk = dqkv.data.slice_mut(c * t..);
            nn.gpu.sgemm_batched(
                (c, t, t),
                bh,
                1.0,
                (&q, s3, false),
                (&dp, t * t, false),
                0.0,
                (&mut dk, s3),
            )?;
        }
        Ok(dqkv)
    }

    fn head_dims(&self, qkv: &GpuTensor) -> Result<(usize, usize, usize)> {
        let ok =
            qkv.shape.len() == 3 && qkv.shape[1] > 0 && qkv.shape[1].is_multiple_of(3 * self.heads);
        if !ok {
            return Err(crate::nn::shape_err(
                "attention",
                format!("(B, {} * 3 * C, T) with C >= 1", self.heads),
                &qkv.shape,
            ));
        }
        Ok((qkv.shape[0], qkv.shape[1] / (3 * self.heads), qkv.shape[2]))
    }

    /// `qkv` `(B, 3C, T)` from the flattened normalized input.
    fn qkv_of(&self, nn: &Nn, x: &GpuTensor) -> Result<GpuTensor> {
        let (b, _, t) = Self::flat(x)?;
        let xn = self.norm.forward(nn, x)?;
        let qkv = self.qkv.forward(nn, &xn)?;
        let w = qkv.shape[1];
        qkv.reshape(&[b, w, t])
    }

    /// `x + proj_out(attention(qkv(norm(x))))`, shape preserved.
    pub fn forward(&self, nn: &Nn, x: &GpuTensor) -> Result<GpuTensor> {
        let (b, c, t) = Self::flat(x)?;
        let qkv = self.qkv_of(nn, x)?;
        let a = self.attention(nn, &qkv)?;
        drop(qkv);
        let ac = a.shape[1];
        let a = a.reshape(&[b, ac, x.shape[2], x.shape[3]])?;
        let mut out = self.proj_out.forward(nn, &a)?;
        debug_assert_eq!((out.shape[1], t), (c, x.shape[2] * x.shape[3]));
        nn.add_assign(&mut out, x)?;
        Ok(out)
    }

    /// Input VJP (recomputes the forward).
    pub fn vjp(&self, nn: &Nn, x: &GpuTensor, dy: &GpuTensor) -> Result<GpuTensor> {
        crate::nn::same_shape("attention block", "output gradient", &x.shape, &dy.shape)?;
        let (b, _, t) = Self::flat(x)?;
        let (h, w) = (x.shape[2], x.shape[3]);
        let qkv = self.qkv_of(nn, x)?;
        let da = self.proj_out.vjp(nn, h, w, dy)?;
        let dac = da.shape[1];
        let da = da.reshape(&[b, dac, t])?;
        let dqkv = self.attention_vjp(nn, &qkv, &da)?;
        drop((qkv, da));
        let wq = dqkv.shape[1];
        let dqkv = dqkv.reshape(&[b, wq, h, w])?;
        let dxn = self.qkv.vjp(nn, h, w, &dqkv)?;
        let mut dx = self.norm.vjp(nn, x, &dxn)?;
        nn.add_assign(&mut dx, dy)?;
        Ok(dx)
    }
}
