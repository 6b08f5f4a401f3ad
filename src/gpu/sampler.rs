//! Sampler maths and device-resident posterior samplers.
//!
//! - Vector maths on batches `(N, D)` (flat, sample after sample): [`axpby`], [`scale`],
//!   per-sample dot products and norms accumulated in f64 ([`dot_per_sample`]), [`DeviceAdam`]
//!   (RED-diff's Adam), SMC weight normalisation and systematic resampling
//!   ([`resample_systematic`], [`gather_rows`]). Kernels in `kernels/sampler.cu`.
//! - [`DeviceDenoiser`]: a denoiser whose inputs and outputs stay on the device.
//!   [`HostDenoiser`] adapts any CPU [`Denoiser`] (a copy each way per call: for tests and as a
//!   fallback); [`GpuNetwork`] is the ADM U-Net on the device, fully resident.
//! - [`dds`] and [`dps`]: the loops of [`crate::sample::Dds`] and [`crate::sample::Dps`] with
//!   the iterate, the network, the operator ([`DeviceOperator`]) and every piece of sampler
//!   state (DDS's conjugate gradients included, whose scalars and stopping tests run on the
//!   device) kept on the device for all steps. Nothing is downloaded until the result.
//!
//! Randomness: the Gaussian draws come from the same generator, in the same order and the
//! same shapes, as the CPU samplers' [`crate::sample::Context`] (`seeded(seed, "sample")`),
//! drawn on the host and uploaded each step (a one-way copy the device never waits on;
//! it overlaps the network's work). So a device run and a CPU run with the same seed
//! differ only by f32 rounding, which the parity tests bound.

use std::sync::Arc;
use std::time::Instant;

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use posterior_operators::rng::{seeded, Rng};
use rand_distr::{Distribution, StandardNormal};

use super::context::cuda_err;
use super::ops::{grid, launched, DeviceMask, DeviceOperator};
use super::unet::GpuUNet;
use super::{Gpu, GpuTensor, KernelSource};
use crate::prior::{Denoiser, Knot, NetworkPrior, PriorInfo, Schedule};
use crate::sample::{
    AncestralKernel, DdimStep, DdsSettings, DpsSettings, DpsUpdate, Outcome, Problem,
};
use crate::{Error, Result};

/// The CUDA C source of the sampler kernels.
pub static SAMPLER_KERNELS: KernelSource = KernelSource {
    name: "sampler",
    code: include_str!("kernels/sampler.cu"),
};

/// Blocks per sample of the first reduction pass (each of 256 threads).
const REDUCE_BLOCKS: usize = 64;

fn kernel(gpu: &Gpu, name: &str) -> Result<cudarc::driver::CudaFunction> {
    gpu.function(&SAMPLER_KERNELS, name)
}

/// One thread per sample.
fn per_sample(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (n.div_ceil(64).max(1) as u32, 1, 1),
        block_dim: (64, 1, 1),
        shared_mem_bytes: 0,
    }
}

fn check(what: &str, have: usize, need: usize) -> Result<()> {
    if have < need {
        return Err(Error::Invalid(format!(
            "{what}: a device buffer holds {have} entries, expected at least {need}"
        )));
    }
    Ok(())
}

/// `out = a x + b y` over `x.len()` entries.
pub fn axpby(
    gpu: &Gpu,
    out: &mut CudaSlice<f32>,
    a: f32,
    x: &CudaSlice<f32>,
    b: f32,
    y: &CudaSlice<f32>,
) -> Result<()> {
    let n = x.len();
    check("axpby", y.len().min(out.len()), n)?;
    let f = kernel(gpu, "axpby")?;
    let n64 = n as i64;
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(out).arg(x).arg(y).arg(&a).arg(&b).arg(&n64);
    // SAFETY: out, x and y hold at least n entries (checked).
    launched("axpby", unsafe { l.launch(grid(n)) }.map(drop))
}

/// `out = a x` over `x.len()` entries.
pub fn scale(gpu: &Gpu, out: &mut CudaSlice<f32>, a: f32, x: &CudaSlice<f32>) -> Result<()> {
    let n = x.len();
    check("scale", out.len(), n)?;
    let f = kernel(gpu, "scale")?;
    let n64 = n as i64;
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(out).arg(x).arg(&a).arg(&n64);
    // SAFETY: out and x hold at least n entries (checked).
    launched("scale", unsafe { l.launch(grid(n)) }.map(drop))
}

/// A device-side copy of `src` into `dst` (same length).
fn copy(gpu: &Gpu, src: &CudaSlice<f32>, dst: &mut CudaSlice<f32>) -> Result<()> {
    gpu.stream()
        .memcpy_dtod(src, dst)
        .map_err(cuda_err("device-to-device copy"))
}

/// Scratch for per-sample reductions: partial sums and results, in f64.
pub struct Reducer {
    partial: CudaSlice<f64>,
    n: usize,
}

impl Reducer {
    /// Scratch for batches of `n` samples.
    pub fn new(gpu: &Gpu, n: usize) -> Result<Reducer> {
        Ok(Reducer {
            partial: gpu
                .stream()
                .alloc_zeros::<f64>(n.max(1) * REDUCE_BLOCKS)
                .map_err(cuda_err("device allocation"))?,
            n,
        })
    }

    /// `out[b] = <x_b, y_b>` for the `n` samples of length `d`, accumulated in f64 (a fixed
    /// order: the same result every run).
    pub fn dot(
        &mut self,
        gpu: &Gpu,
        x: &CudaSlice<f32>,
        y: &CudaSlice<f32>,
        d: usize,
        out: &mut CudaSlice<f64>,
    ) -> Result<()> {
        let n = self.n;
        check("dot", x.len().min(y.len()), n * d)?;
        check("dot (result)", out.len(), n)?;
        let d64 = d as i64;
        let f = kernel(gpu, "dot_partial")?;
        let cfg = LaunchConfig {
            grid_dim: (REDUCE_BLOCKS as u32, n as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(x).arg(y).arg(&mut self.partial).arg(&d64);
        // SAFETY: x, y hold n * d entries (checked); partial holds n * REDUCE_BLOCKS.
        launched("dot_partial", unsafe { l.launch(cfg) }.map(drop))?;
        let f = kernel(gpu, "sum_partials")?;
        let (bn, blocks) = (n as i32, REDUCE_BLOCKS as i32);
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(&self.partial).arg(out).arg(&bn).arg(&blocks);
        // SAFETY: partial holds n * REDUCE_BLOCKS entries, out n (checked).
        launched("sum_partials", unsafe { l.launch(per_sample(n)) }.map(drop))
    }
}

/// `<x_b, y_b>` per sample (f64), downloaded: for tests and diagnostics (the samplers keep
/// their reductions on the device).
pub fn dot_per_sample(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    y: &CudaSlice<f32>,
    n: usize,
    d: usize,
) -> Result<Vec<f64>> {
    let mut r = Reducer::new(gpu, n)?;
    let mut out = f64_zeros(gpu, n)?;
    r.dot(gpu, x, y, d, &mut out)?;
    download_f64(gpu, &out)
}

/// `||x_b||` per sample (f64), downloaded.
pub fn norm_per_sample(gpu: &Gpu, x: &CudaSlice<f32>, n: usize, d: usize) -> Result<Vec<f64>> {
    Ok(dot_per_sample(gpu, x, x, n, d)?
        .into_iter()
        .map(f64::sqrt)
        .collect())
}

fn f64_zeros(gpu: &Gpu, n: usize) -> Result<CudaSlice<f64>> {
    gpu.stream()
        .alloc_zeros::<f64>(n.max(1))
        .map_err(cuda_err("device allocation"))
}

/// Downloads an f64 device array (synchronizes).
pub fn download_f64(gpu: &Gpu, x: &CudaSlice<f64>) -> Result<Vec<f64>> {
    gpu.stream()
        .clone_dtoh(x)
        .map_err(cuda_err("device-to-host copy"))
}

/// Adam (bias-corrected, no weight decay) on a device array, the optimiser of the CPU's
/// RED-diff: `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
/// `x -= lr (m / (1 - b1^k)) / (sqrt(v / (1 - b2^k)) + 1e-8)` at step `k = 1, 2, ...`.
pub struct DeviceAdam {
    lr: f64,
    b1: f64,
    b2: f64,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    k: i32,
}

impl DeviceAdam {
    /// The CPU's epsilon.
    pub const EPS: f32 = 1e-8;

    /// State for `len` parameters.
    pub fn new(gpu: &Gpu, len: usize, lr: f64, (b1, b2): (f64, f64)) -> Result<DeviceAdam> {
        Ok(DeviceAdam {
            lr,
            b1,
            b2,
            m: gpu.zeros(len)?,
            v: gpu.zeros(len)?,
            k: 0,
        })
    }

    /// One step on `x` with gradient `g`.
    pub fn step(&mut self, gpu: &Gpu, x: &mut CudaSlice<f32>, g: &CudaSlice<f32>) -> Result<()> {
        let n = self.m.len();
        check("adam", x.len().min(g.len()), n)?;
        self.k += 1;
        let c1 = (1.0 - self.b1.powi(self.k)) as f32;
        let c2 = (1.0 - self.b2.powi(self.k)) as f32;
        let (lr, b1, b2, eps, n64) = (
            self.lr as f32,
            self.b1 as f32,
            self.b2 as f32,
            Self::EPS,
            n as i64,
        );
        let f = kernel(gpu, "adam_step")?;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(x).arg(&mut self.m).arg(&mut self.v).arg(g);
        l.arg(&lr)
            .arg(&b1)
            .arg(&b2)
            .arg(&c1)
            .arg(&c2)
            .arg(&eps)
            .arg(&n64);
        // SAFETY: x, g, m, v hold n entries (checked).
        launched("adam_step", unsafe { l.launch(grid(n)) }.map(drop))
    }
}

/// SMC resampling on the device: normalises the `n` log-weights (log-sum-exp, f64) and
/// draws `m` ancestor indices by systematic resampling at `(u + j) / m`, exactly as the CPU's
/// [`crate::sample::smc::normalise_log_weights`] and [`crate::sample::smc::systematic`].
/// Returns the indices and the normalised weights (on the device), or the CPU's error when
/// no log-weight is finite (the one value downloaded: a status flag).
pub fn resample_systematic(
    gpu: &Gpu,
    logw: &CudaSlice<f64>,
    m: usize,
    u: f64,
) -> Result<(CudaSlice<i32>, CudaSlice<f64>)> {
    let n = logw.len();
    let mut w = f64_zeros(gpu, n)?;
    let mut idx = gpu
        .stream()
        .alloc_zeros::<i32>(m.max(1))
        .map_err(cuda_err("device allocation"))?;
    let mut status = gpu
        .stream()
        .alloc_zeros::<i32>(1)
        .map_err(cuda_err("device allocation"))?;
    let f = kernel(gpu, "smc_resample")?;
    let (ni, mi) = (n as i32, m as i32);
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(logw)
        .arg(&ni)
        .arg(&mut w)
        .arg(&mut idx)
        .arg(&mi)
        .arg(&u)
        .arg(&mut status);
    // SAFETY: logw and w hold n entries, idx m, status 1.
    launched("smc_resample", unsafe { l.launch(per_sample(1)) }.map(drop))?;
    let st = gpu
        .stream()
        .clone_dtoh(&status)
        .map_err(cuda_err("device-to-host copy"))?;
    if st.first() == Some(&1) {
        return Err(Error::Invalid(
            "smc: every particle has zero or non-finite weight; the measurement may be \
             inconsistent with the prior or sigma_y too small"
                .into(),
        ));
    }
    Ok((idx, w))
}

/// An estimate of the operator norm `||A||_2` by `iters` power iterations on `A^T A` on the
/// device, the twin of the CPU's `LinearOperatorExt::norm_estimate` (the same seeded start,
/// normalisation in f64, Rayleigh quotient in f64); one download at the end.
pub fn norm_estimate(op: &dyn DeviceOperator, iters: usize, seed: u64) -> Result<f64> {
    let gpu = op.gpu().clone();
    let d = op.domain_len();
    let start = posterior_operators::linear::random_array(op.domain_shape(), seed, "norm-estimate");
    let mut x = gpu.upload(&start.iter().copied().collect::<Vec<f32>>())?;
    let mut ax = gpu.zeros(d)?;
    let mut reducer = Reducer::new(&gpu, 1)?;
    let mut sq = f64_zeros(&gpu, 1)?;
    let mut lambda = f64_zeros(&gpu, 1)?;
    let f = kernel(&gpu, "normalise_by")?;
    let (d64, n64) = (d as i64, d as i64);
    for _ in 0..iters.max(1) {
        reducer.dot(&gpu, &x, &x, d, &mut sq)?;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(&mut x).arg(&sq).arg(&d64).arg(&n64);
        // SAFETY: x holds one sample of d entries, sq one scalar.
        launched("normalise_by", unsafe { l.launch(grid(d)) }.map(drop))?;
        op.normal(&x, &mut ax, 1)?;
        reducer.dot(&gpu, &x, &ax, d, &mut lambda)?;
        std::mem::swap(&mut x, &mut ax);
    }
    let l = download_f64(&gpu, &lambda)?;
    Ok(l.first().copied().unwrap_or(0.0).max(0.0).sqrt())
}

/// SMC's Gaussian log-weight increments on the device: for the `n` particles `x` (each of
/// the operator's domain) adds `-||y - A x_b||^2 / (2 var)` to `logw[b]` (f64), as the CPU
/// samplers do (`crate::sample::smc`: the likelihood, `var = sigma_y^2`, and the TDS twist,
/// `var = sigma_y^2 + r^2`). The weights stay on the device.
pub fn add_gaussian_log_weights(
    problem: &DeviceProblem,
    x: &CudaSlice<f32>,
    n: usize,
    var: f64,
    logw: &mut CudaSlice<f64>,
) -> Result<()> {
    if !(var.is_finite() && var > 0.0) {
        return Err(Error::Invalid(format!(
            "smc: the weight variance must be finite and > 0, got {var}"
        )));
    }
    check("smc log-weights", logw.len(), n)?;
    let op = problem.op;
    let gpu = op.gpu().clone();
    let m = op.range_len();
    let mut r = gpu.alloc(n * m)?;
    op.apply(x, &mut r, n)?;
    residual(&gpu, &mut r, &problem.y, n)?;
    let mut sq = f64_zeros(&gpu, n)?;
    Reducer::new(&gpu, n)?.dot(&gpu, &r, &r, m, &mut sq)?;
    let f = kernel(&gpu, "add_gaussian_log_weights")?;
    let bn = n as i32;
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(logw).arg(&sq).arg(&var).arg(&bn);
    // SAFETY: logw (checked) and sq hold n entries.
    launched(
        "add_gaussian_log_weights",
        unsafe { l.launch(per_sample(n)) }.map(drop),
    )
}

/// `r_b -= y` for the `n` measurements in `r` (the residual `A x - y`).
fn residual(gpu: &Gpu, r: &mut CudaSlice<f32>, y: &CudaSlice<f32>, n: usize) -> Result<()> {
    let m = y.len();
    check("residual", r.len(), n * m)?;
    let (m64, nm64) = (m as i64, (n * m) as i64);
    let f = kernel(gpu, "sub_measurement")?;
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(r).arg(y).arg(&m64).arg(&nm64);
    // SAFETY: r holds n measurements (checked), y one.
    launched(
        "sub_measurement",
        unsafe { l.launch(grid(n * m)) }.map(drop),
    )
}

/// `out[j] = x[idx[j]]` for rows of length `d` (resampled particles into a new buffer).
pub fn gather_rows(
    gpu: &Gpu,
    x: &CudaSlice<f32>,
    idx: &CudaSlice<i32>,
    d: usize,
) -> Result<CudaSlice<f32>> {
    let n = idx.len() * d;
    let mut out = gpu.alloc(n)?;
    let f = kernel(gpu, "gather_rows")?;
    let (d64, n64) = (d as i64, n as i64);
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(x).arg(idx).arg(&mut out).arg(&d64).arg(&n64);
    // SAFETY: out holds idx.len() rows of d; the indices come from resampling and are < the
    // particle count whose rows x holds.
    launched("gather_rows", unsafe { l.launch(grid(n)) }.map(drop))?;
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Denoisers on the device

/// `v -> v^T d x0_hat / d x` at the point a [`DeviceDenoiser::x0_pullback`] was taken.
pub type DevicePullback<'a> = Box<dyn FnOnce(&GpuTensor) -> Result<GpuTensor> + 'a>;

/// A denoiser whose inputs and outputs live on the device: the device side of
/// [`Denoiser`], on batches `(N, ...sample_shape)` at one shared time `t`.
pub trait DeviceDenoiser {
    /// The prior's metadata (sample shape, range).
    fn info(&self) -> &PriorInfo;
    /// The path the denoiser was trained on.
    fn schedule(&self) -> &Schedule;
    /// The device.
    fn gpu(&self) -> &Arc<Gpu>;
    /// Tweedie's `x0_hat(x, t)`.
    fn x0(&self, x: &GpuTensor, t: f64) -> Result<GpuTensor>;
    /// `x0_hat(x, t)` and its pullback (one forward pass kept for the VJP).
    fn x0_pullback<'a>(&'a self, x: &GpuTensor, t: f64) -> Result<(GpuTensor, DevicePullback<'a>)>;
}

/// Any CPU [`Denoiser`] seen from the device: each call downloads its input, runs on the
/// CPU and uploads the result. Not resident (two copies per call): it lets the device loops
/// run with the exact CPU denoiser (the parity tests use the Gaussian mixture), and serves
/// priors that have no device version.
pub struct HostDenoiser<'d> {
    inner: &'d dyn Denoiser,
    gpu: Arc<Gpu>,
}

impl<'d> HostDenoiser<'d> {
    pub fn new(gpu: &Arc<Gpu>, inner: &'d dyn Denoiser) -> Self {
        HostDenoiser {
            inner,
            gpu: gpu.clone(),
        }
    }
}

impl DeviceDenoiser for HostDenoiser<'_> {
    fn info(&self) -> &PriorInfo {
        self.inner.info()
    }
    fn schedule(&self) -> &Schedule {
        self.inner.schedule()
    }
    fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
    fn x0(&self, x: &GpuTensor, t: f64) -> Result<GpuTensor> {
        let xh = x.to_host(&self.gpu)?;
        let n = x.shape().first().copied().unwrap_or(0);
        let x0 = self.inner.x0(xh.view(), &vec![t as f32; n])?;
        GpuTensor::from_host(&self.gpu, x0.view())
    }
    fn x0_pullback<'a>(&'a self, x: &GpuTensor, t: f64) -> Result<(GpuTensor, DevicePullback<'a>)> {
        let xh = x.to_host(&self.gpu)?;
        let n = x.shape().first().copied().unwrap_or(0);
        let (x0, pb) = self.inner.x0_pullback(xh.view(), &vec![t as f32; n])?;
        let gpu = self.gpu.clone();
        let pullback = move |v: &GpuTensor| -> Result<GpuTensor> {
            let vh = v.to_host(&gpu)?;
            let g = pb(vh.view())?;
            GpuTensor::from_host(&gpu, g.view())
        };
        Ok((
            GpuTensor::from_host(&self.gpu, x0.view())?,
            Box::new(pullback),
        ))
    }
}

/// The device U-Net a [`GpuNetwork`] runs: its own, or a prior's device copy.
enum NetRef<'n> {
    Owned(Box<GpuUNet>),
    Borrowed(&'n GpuUNet),
}

/// The ADM U-Net on the device as a denoiser, fully resident: the device twin of
/// [`NetworkPrior`]'s Tweedie estimate (`x0 = (x - s(t) eps) / a(t)`, eps the first `C`
/// output channels, the network fed guided-diffusion's step `t T - 1` clamped to
/// `[0, T - 1]`) and of its pullback (`v^T dx0/dx = v / a + J_eps^T (-(s / a) v)`, through
/// the network's tape).
pub struct GpuNetwork<'n> {
    net: NetRef<'n>,
    info: PriorInfo,
    schedule: Schedule,
    /// `T`, the diffusion steps the network was trained with.
    diffusion_steps: usize,
}

impl<'n> GpuNetwork<'n> {
    /// A CPU [`NetworkPrior`]'s network on `gpu`: its device copy when the prior already
    /// runs on the GPU ([`NetworkPrior::use_backend`]), else a fresh upload.
    pub fn from_prior(gpu: &Arc<Gpu>, prior: &'n NetworkPrior) -> Result<GpuNetwork<'n>> {
        prior.check_gpu()?;
        let net = match prior.gpu_unet() {
            Some(n) => NetRef::Borrowed(n),
            None => NetRef::Owned(Box::new(GpuUNet::from_cpu(gpu.clone(), prior.unet()?)?)),
        };
        Self::with(
            net,
            prior.info().clone(),
            prior.schedule().clone(),
            prior.card().schedule.diffusion_steps,
        )
    }

    /// A device network with its prior's metadata and path (`diffusion_steps = T`). The
    /// sample shape must be `(C, H, W)` with `C` at most the network's output channels.
    pub fn new(
        net: GpuUNet,
        info: PriorInfo,
        schedule: Schedule,
        diffusion_steps: usize,
    ) -> Result<GpuNetwork<'static>> {
        GpuNetwork::with(
            NetRef::Owned(Box::new(net)),
            info,
            schedule,
            diffusion_steps,
        )
    }

    fn with(
        net: NetRef<'n>,
        info: PriorInfo,
        schedule: Schedule,
        diffusion_steps: usize,
    ) -> Result<GpuNetwork<'n>> {
        let g = GpuNetwork {
            net,
            info,
            schedule,
            diffusion_steps,
        };
        let out = g.net().config().out_channels;
        match g.info.channels() {
            Some(c) if c <= out && diffusion_steps > 0 => Ok(g),
            _ => Err(Error::Invalid(format!(
                "gpu network: the prior's samples {:?} need an image shape (C, H, W) with C <= {out} output channels and T >= 1 (got T = {diffusion_steps})",
                g.info.sample_shape
            ))),
        }
    }

    /// The device U-Net.
    pub fn net(&self) -> &GpuUNet {
        match &self.net {
            NetRef::Owned(n) => n,
            NetRef::Borrowed(n) => n,
        }
    }

    /// The network input for time `t` and Tweedie's coefficients, as the CPU prior computes
    /// them (from `t` rounded to f32, the precision the CPU samplers pass times in).
    fn prepare(&self, x: &GpuTensor, t: f64) -> Result<(Vec<f32>, f32, f32)> {
        let want = self
            .info
            .batch_shape(x.shape().first().copied().unwrap_or(0));
        if x.shape() != want.as_slice() || want[0] == 0 {
            return Err(Error::Invalid(format!(
                "{}: a batch has shape {:?}, expected (N >= 1, {:?})",
                self.info.name,
                x.shape(),
                self.info.sample_shape
            )));
        }
        let tf = t as f32;
        let big_t = self.diffusion_steps as f32;
        let step = (tf * big_t - 1.0).clamp(0.0, big_t - 1.0);
        let (a, s) = self.schedule.coeffs(tf as f64);
        Ok((vec![step; want[0]], a as f32, s as f32))
    }

    /// `x0 = (x - s eps) / a` from the network output.
    fn tweedie(&self, x: &GpuTensor, out: &GpuTensor, a: f32, s: f32) -> Result<GpuTensor> {
        let gpu = self.net().gpu();
        let (n, c) = (x.shape()[0], self.info.sample_shape[0]);
        let hw = (self.info.dim() / c) as i64;
        let oc = out.shape().get(1).copied().unwrap_or(0);
        let mut x0 = GpuTensor::uninit(gpu, x.shape())?;
        let total = x.len();
        let f = kernel(gpu, "tweedie")?;
        let (bn, ci, oci) = (n as i32, c as i32, oc as i32);
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(&x.data)
            .arg(&out.data)
            .arg(&mut x0.data)
            .arg(&bn)
            .arg(&ci)
            .arg(&oci)
            .arg(&hw)
            .arg(&a)
            .arg(&s);
        // SAFETY: x and x0 hold (N, C, HW), the network output (N, out_channels, HW) with
        // out_channels >= C (checked in `new`).
        launched("tweedie", unsafe { l.launch(grid(total)) }.map(drop))?;
        Ok(x0)
    }
}

impl DeviceDenoiser for GpuNetwork<'_> {
    fn info(&self) -> &PriorInfo {
        &self.info
    }
    fn schedule(&self) -> &Schedule {
        &self.schedule
    }
    fn gpu(&self) -> &Arc<Gpu> {
        self.net().gpu()
    }
    fn x0(&self, x: &GpuTensor, t: f64) -> Result<GpuTensor> {
        let (steps, a, s) = self.prepare(x, t)?;
        let out = self.net().forward(x, &steps)?;
        self.tweedie(x, &out, a, s)
    }
    fn x0_pullback<'a>(&'a self, x: &GpuTensor, t: f64) -> Result<(GpuTensor, DevicePullback<'a>)> {
        let (steps, a, s) = self.prepare(x, t)?;
        let (out, tape) = self.net().forward_tape(x, &steps)?;
        let x0 = self.tweedie(x, &out, a, s)?;
        let out_shape = out.shape().to_vec();
        drop(out);
        let want = x.shape().to_vec();
        let (c, oc) = (self.info.sample_shape[0], out_shape[1]);
        let pullback = move |v: &GpuTensor| -> Result<GpuTensor> {
            if v.shape() != want.as_slice() {
                return Err(Error::Invalid(format!(
                    "gpu network: the VJP vector has shape {:?}, expected {want:?}",
                    v.shape()
                )));
            }
            let gpu = self.net().gpu();
            let n = want[0];
            let hw = (v.len() / (n * c)) as i64;
            let mut cot = GpuTensor::uninit(gpu, &out_shape)?;
            let cot_len = cot.len();
            let f = kernel(gpu, "tweedie_cotangent")?;
            let (bn, ci, oci, soa) = (n as i32, c as i32, oc as i32, s / a);
            let mut l = gpu.stream().launch_builder(&f);
            l.arg(&v.data)
                .arg(&mut cot.data)
                .arg(&bn)
                .arg(&ci)
                .arg(&oci)
                .arg(&hw)
                .arg(&soa);
            // SAFETY: v holds (N, C, HW), cot (N, out_channels, HW).
            launched(
                "tweedie_cotangent",
                unsafe { l.launch(grid(cot_len)) }.map(drop),
            )?;
            let mut g = tape.backward(&cot)?;
            drop(cot);
            let f = kernel(gpu, "add_divided")?;
            let n64 = g.len() as i64;
            let mut l = gpu.stream().launch_builder(&f);
            l.arg(&mut g.data).arg(&v.data).arg(&a).arg(&n64);
            // SAFETY: g and v both hold the batch (N, C, H, W).
            launched(
                "add_divided",
                unsafe { l.launch(grid(n64 as usize)) }.map(drop),
            )?;
            Ok(g)
        };
        Ok((x0, Box::new(pullback)))
    }
}

// ---------------------------------------------------------------------------------------
// Device-resident samplers

/// A measurement and its operator on the device, in the prior's units (as
/// [`crate::sample::Problem`]): `y = A x + n`, `n` Gaussian with `sigma_y` per entry.
pub struct DeviceProblem<'a> {
    op: &'a dyn DeviceOperator,
    y: CudaSlice<f32>,
    sigma_y: f64,
}

impl<'a> DeviceProblem<'a> {
    /// Uploads the measurement; checks its shape against the operator's range and
    /// `sigma_y >= 0`.
    pub fn new(
        op: &'a dyn DeviceOperator,
        y: ndarray::ArrayViewD<f32>,
        sigma_y: f64,
    ) -> Result<Self> {
        if y.shape() != op.range_shape() {
            return Err(Error::Invalid(format!(
                "the measurement has shape {:?}, but {} produces {:?}",
                y.shape(),
                op.name(),
                op.range_shape()
            )));
        }
        if !(sigma_y.is_finite() && sigma_y >= 0.0) {
            return Err(Error::Invalid(format!(
                "the noise level sigma_y must be finite and >= 0, got {sigma_y}"
            )));
        }
        let host: Vec<f32> = y.iter().copied().collect();
        Ok(DeviceProblem {
            op,
            y: op.gpu().upload(&host)?,
            sigma_y,
        })
    }

    fn check_prior(&self, info: &PriorInfo) -> Result<()> {
        if self.op.domain_shape() == info.sample_shape.as_slice() {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "the operator {} acts on {:?}, but the prior {} produces samples of shape {:?}",
                self.op.name(),
                self.op.domain_shape(),
                info.name,
                info.sample_shape
            )))
        }
    }
}

/// The standard normal draws of [`crate::sample::Context::normal`]: the same generator
/// (`seeded(seed, "sample")`), the same order.
struct HostNoise(Rng);

impl HostNoise {
    fn new(seed: u64) -> Self {
        HostNoise(seeded(seed, "sample"))
    }
    fn draw(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len)
            .map(|_| {
                let v: f32 = StandardNormal.sample(&mut self.0);
                v * scale
            })
            .collect()
    }
}

/// What the loops share: the device, the batch and its shape, the knots, the noise.
struct Run<'a> {
    gpu: Arc<Gpu>,
    den: &'a dyn DeviceDenoiser,
    n: usize,
    d: usize,
    shape: Vec<usize>,
    knots: Vec<Knot>,
    noise: HostNoise,
    nfe: usize,
    vjps: usize,
    started: Instant,
}

impl<'a> Run<'a> {
    fn new(
        den: &'a dyn DeviceDenoiser,
        problem: &DeviceProblem,
        steps: usize,
        n: usize,
        seed: u64,
    ) -> Result<Run<'a>> {
        if n == 0 {
            return Err(Error::Invalid(
                "the number of samples must be at least 1".into(),
            ));
        }
        problem.check_prior(den.info())?;
        let shape = den.info().batch_shape(n);
        let d = den.info().dim();
        Ok(Run {
            gpu: den.gpu().clone(),
            den,
            n,
            d,
            shape,
            knots: den.schedule().knots(steps),
            noise: HostNoise::new(seed),
            nfe: 0,
            vjps: 0,
            started: Instant::now(),
        })
    }

    /// `x_1 = s(t_0) z`, as the CPU samplers' start.
    fn start(&mut self) -> Result<GpuTensor> {
        let s0 = self.knots[0].s as f32;
        let z = self.noise.draw(self.n * self.d, s0);
        GpuTensor::from_slice(&self.gpu, &self.shape, &z)
    }

    /// Fresh standard normal noise of the batch's shape, on the device.
    fn normal(&mut self) -> Result<CudaSlice<f32>> {
        let z = self.noise.draw(self.n * self.d, 1.0);
        self.gpu.upload(&z)
    }

    fn finish(self, x: GpuTensor, steps: usize) -> Result<Outcome> {
        let samples = x.to_host(&self.gpu)?;
        if let Some(bad) = samples.iter().find(|v| !v.is_finite()) {
            return Err(Error::Invalid(format!(
                "the device sampler produced a non-finite value ({bad}); the step count or path may be unsuitable"
            )));
        }
        Ok(Outcome {
            samples,
            nfe: self.nfe,
            vjps: self.vjps,
            steps,
            elapsed: self.started.elapsed(),
            stopped_early: false,
        })
    }

    /// The DDIM-form update (see `ddim_update` in `sampler.cu`) into a new tensor.
    #[allow(clippy::too_many_arguments)]
    fn ddim_update(
        &self,
        x: &GpuTensor,
        x0: &GpuTensor,
        x0c: &GpuTensor,
        z: Option<&CudaSlice<f32>>,
        g: Option<(&GpuTensor, f32)>,
        cur: Knot,
        step: DdimStep,
    ) -> Result<GpuTensor> {
        let mut out = GpuTensor::uninit(&self.gpu, &self.shape)?;
        let total = self.n * self.d;
        let null = 0u64;
        let (a, s) = (cur.a as f32, cur.s as f32);
        let zeta = g.map(|g| g.1).unwrap_or(0.0);
        let n64 = total as i64;
        let f = kernel(&self.gpu, "ddim_update")?;
        let mut l = self.gpu.stream().launch_builder(&f);
        l.arg(&mut out.data)
            .arg(&x.data)
            .arg(&x0.data)
            .arg(&x0c.data);
        match z {
            Some(z) => l.arg(z),
            None => l.arg(&null),
        };
        match g {
            Some((g, _)) => l.arg(&g.data),
            None => l.arg(&null),
        };
        l.arg(&a)
            .arg(&s)
            .arg(&step.a_next)
            .arg(&step.keep)
            .arg(&step.sigma)
            .arg(&zeta)
            .arg(&n64);
        // SAFETY: every tensor holds the batch (n * d entries); null pointers are tested in
        // the kernel.
        launched("ddim_update", unsafe { l.launch(grid(total)) }.map(drop))?;
        Ok(out)
    }
}

/// The knots a step goes between (the loops below never step past the end).
fn pair(knots: &[Knot], step: usize) -> (Knot, Knot) {
    (knots[step], knots[step + 1])
}

/// Conjugate gradients for DDS on the device: one system per sample,
/// `(c I + g A^T A) x = c x0_hat + g A^T y`, from `x0_hat`, mirroring
/// [`crate::solve::krylov::conjugate_gradient`] (iteration limit, relative residual, and the
/// Rayleigh-quotient stop) with every scalar and test on the device.
struct DeviceCg<'a> {
    gpu: Arc<Gpu>,
    op: &'a dyn DeviceOperator,
    n: usize,
    d: usize,
    c: f32,
    g: f32,
    aty: CudaSlice<f32>,
    reducer: Reducer,
    /// Scalars per sample (six f64, see `sampler.cu`) and iteration counts.
    state: CudaSlice<f64>,
    iters: CudaSlice<i32>,
    /// Reduction results.
    s1: CudaSlice<f64>,
    s2: CudaSlice<f64>,
    b: CudaSlice<f32>,
    r: CudaSlice<f32>,
    p: CudaSlice<f32>,
    mp: CudaSlice<f32>,
    total_iters: Vec<CudaSlice<i32>>,
}

impl<'a> DeviceCg<'a> {
    fn new(problem: &DeviceProblem<'a>, gamma: f64, n: usize) -> Result<DeviceCg<'a>> {
        let op = problem.op;
        let gpu = op.gpu().clone();
        let d = op.domain_len();
        let mut aty = gpu.alloc(d)?;
        op.adjoint(&problem.y, &mut aty, 1)?;
        let (c, g) = if problem.sigma_y > 0.0 {
            (1.0, crate::sample::dds::data_weight(gamma, problem.sigma_y))
        } else {
            (0.0, 1.0)
        };
        let st = gpu.stream();
        let dev = |e| cuda_err("device allocation")(e);
        Ok(DeviceCg {
            op,
            n,
            d,
            c,
            g,
            aty,
            reducer: Reducer::new(&gpu, n)?,
            state: st.alloc_zeros::<f64>(6 * n).map_err(dev)?,
            iters: st.alloc_zeros::<i32>(n).map_err(dev)?,
            s1: f64_zeros(&gpu, n)?,
            s2: f64_zeros(&gpu, n)?,
            b: gpu.alloc(n * d)?,
            r: gpu.alloc(n * d)?,
            p: gpu.alloc(n * d)?,
            mp: gpu.alloc(n * d)?,
            total_iters: Vec::new(),
            gpu,
        })
    }

    /// `out = (c I + g A^T A) v`.
    fn system(&self, v: &CudaSlice<f32>, out: &mut CudaSlice<f32>) -> Result<()> {
        self.op.normal(v, out, self.n)?;
        let f = kernel(&self.gpu, "hess_finish")?;
        let n64 = (self.n * self.d) as i64;
        let mut l = self.gpu.stream().launch_builder(&f);
        l.arg(out).arg(v).arg(&self.c).arg(&self.g).arg(&n64);
        // SAFETY: out and v hold the batch.
        launched(
            "hess_finish",
            unsafe { l.launch(grid(self.n * self.d)) }.map(drop),
        )
    }

    /// Launches one of the per-sample scalar kernels.
    fn scalars(&mut self, name: &str, tol: f64) -> Result<()> {
        let f = kernel(&self.gpu, name)?;
        let bn = self.n as i32;
        let mut l = self.gpu.stream().launch_builder(&f);
        match name {
            "cg_init" => l
                .arg(&self.s1)
                .arg(&self.s2)
                .arg(&mut self.state)
                .arg(&mut self.iters)
                .arg(&tol)
                .arg(&bn),
            "cg_alpha" => l.arg(&self.s1).arg(&self.s2).arg(&mut self.state).arg(&bn),
            _ => l
                .arg(&self.s1)
                .arg(&mut self.state)
                .arg(&mut self.iters)
                .arg(&tol)
                .arg(&bn),
        };
        // SAFETY: the scalar arrays hold n (six times n for the state) entries.
        launched(name, unsafe { l.launch(per_sample(self.n)) }.map(drop))
    }

    /// Solves from `x0` (the batch of Tweedie estimates); returns the corrected batch.
    fn solve(&mut self, x0: &GpuTensor, max_iters: usize, tol: f64) -> Result<GpuTensor> {
        let gpu = self.gpu.clone();
        let total = self.n * self.d;
        let mut x = x0.try_clone(&gpu)?;
        if max_iters == 0 {
            return Ok(x);
        }
        let (d64, n64) = (self.d as i64, total as i64);
        // b = g A^T y + c x0.
        let f = kernel(&gpu, "dds_rhs")?;
        let mut l = gpu.stream().launch_builder(&f);
        l.arg(&mut self.b)
            .arg(&x0.data)
            .arg(&self.aty)
            .arg(&self.c)
            .arg(&self.g)
            .arg(&d64)
            .arg(&n64);
        // SAFETY: b and x0 hold the batch, aty one sample.
        launched("dds_rhs", unsafe { l.launch(grid(total)) }.map(drop))?;
        // r = b - M x; p = r.
        let mut mx = std::mem::replace(&mut self.mp, gpu.alloc(0)?);
        self.system(&x.data, &mut mx)?;
        axpby(&gpu, &mut self.r, 1.0, &self.b, -1.0, &mx)?;
        self.mp = mx;
        copy(&gpu, &self.r, &mut self.p)?;
        self.reducer
            .dot(&gpu, &self.r, &self.r, self.d, &mut self.s1)?;
        self.reducer
            .dot(&gpu, &self.b, &self.b, self.d, &mut self.s2)?;
        self.scalars("cg_init", tol)?;
        for _ in 0..max_iters {
            let mut mp = std::mem::replace(&mut self.mp, gpu.alloc(0)?);
            self.system(&self.p, &mut mp)?;
            self.mp = mp;
            self.reducer
                .dot(&gpu, &self.p, &self.mp, self.d, &mut self.s1)?;
            self.reducer
                .dot(&gpu, &self.p, &self.p, self.d, &mut self.s2)?;
            self.scalars("cg_alpha", tol)?;
            let f = kernel(&gpu, "cg_step")?;
            let mut l = gpu.stream().launch_builder(&f);
            l.arg(&mut x.data)
                .arg(&mut self.r)
                .arg(&self.p)
                .arg(&self.mp)
                .arg(&self.state)
                .arg(&d64)
                .arg(&n64);
            // SAFETY: x, r, p, mp hold the batch; state 6 n scalars.
            launched("cg_step", unsafe { l.launch(grid(total)) }.map(drop))?;
            self.reducer
                .dot(&gpu, &self.r, &self.r, self.d, &mut self.s1)?;
            self.scalars("cg_beta", tol)?;
            let f = kernel(&gpu, "cg_direction")?;
            let mut l = gpu.stream().launch_builder(&f);
            l.arg(&mut self.p)
                .arg(&self.r)
                .arg(&self.state)
                .arg(&d64)
                .arg(&n64);
            // SAFETY: p, r hold the batch; state 6 n scalars.
            launched("cg_direction", unsafe { l.launch(grid(total)) }.map(drop))?;
        }
        // Keep this solve's iteration counts (copied on the device; read at the end).
        let mut counts = gpu
            .stream()
            .alloc_zeros::<i32>(self.n)
            .map_err(cuda_err("device allocation"))?;
        gpu.stream()
            .memcpy_dtod(&self.iters, &mut counts)
            .map_err(cuda_err("device-to-device copy"))?;
        self.total_iters.push(counts);
        Ok(x)
    }

    /// CG iterations over all solves and samples (downloads the counts).
    fn iterations(&self) -> Result<usize> {
        let mut total = 0usize;
        for c in &self.total_iters {
            let v = self
                .gpu
                .stream()
                .clone_dtoh(c)
                .map_err(cuda_err("device-to-host copy"))?;
            total += v.iter().map(|&i| i.max(0) as usize).sum::<usize>();
        }
        Ok(total)
    }
}

/// What a device run produced: the CPU samplers' [`Outcome`], and for DDS the CG
/// iterations run (over all samples and steps, as [`crate::sample::Dds::cg_iterations`]).
pub struct DeviceOutcome {
    pub outcome: Outcome,
    pub cg_iterations: usize,
}

/// DDS with everything on the device (module docs); the same steps, updates and CG as
/// [`crate::sample::Dds`] with `settings`, for `n` samples drawn with `seed`.
pub fn dds(
    den: &dyn DeviceDenoiser,
    problem: &DeviceProblem,
    settings: &DdsSettings,
    n: usize,
    seed: u64,
) -> Result<DeviceOutcome> {
    settings.check()?;
    let mut run = Run::new(den, problem, settings.steps, n, seed)?;
    let mut cg = DeviceCg::new(problem, settings.gamma, n)?;
    let mut x = run.start()?;
    let steps = run.knots.len() - 1;
    for step in 0..steps {
        let (cur, nxt) = pair(&run.knots, step);
        let x0 = run.den.x0(&x, cur.t)?;
        run.nfe += 1;
        let x0c = cg.solve(&x0, settings.cg_iters, settings.cg_tol)?;
        x = if nxt.is_clean() {
            x0c
        } else {
            let eta = settings.eta;
            let upd = DdimStep {
                a_next: nxt.a as f32,
                keep: (nxt.s * (1.0 - eta * eta).max(0.0).sqrt()) as f32,
                sigma: (eta * nxt.s) as f32,
            };
            let z = if upd.sigma > 0.0 {
                Some(run.normal()?)
            } else {
                None
            };
            run.ddim_update(&x, &x0, &x0c, z.as_ref(), None, cur, upd)?
        };
    }
    let cg_iterations = cg.iterations()?;
    Ok(DeviceOutcome {
        outcome: run.finish(x, steps)?,
        cg_iterations,
    })
}

/// The DPS guidance on the device: `x0_hat` and `grad_x ||y - A x0_hat(x)||` per sample
/// (as [`crate::sample::dps::guidance`]).
fn dps_guidance(
    run: &mut Run,
    problem: &DeviceProblem,
    reducer: &mut Reducer,
    x: &GpuTensor,
    t: f64,
) -> Result<(GpuTensor, GpuTensor)> {
    let gpu = run.gpu.clone();
    let op = problem.op;
    let (n, d, m) = (run.n, run.d, op.range_len());
    let (x0, pullback) = run.den.x0_pullback(x, t)?;
    run.nfe += 1;
    run.vjps += 1;
    // r = A x0 - y.
    let mut r = gpu.alloc(n * m)?;
    op.apply(&x0.data, &mut r, n)?;
    residual(&gpu, &mut r, &problem.y, n)?;
    // 1 / ||r|| per sample (0 for an exact fit).
    let mut sq = f64_zeros(&gpu, n)?;
    reducer.dot(&gpu, &r, &r, m, &mut sq)?;
    let mut norms = f64_zeros(&gpu, n)?;
    let mut inv = gpu.zeros(n)?;
    let f = kernel(&gpu, "inverse_norms")?;
    let bn = n as i32;
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(&sq).arg(&mut norms).arg(&mut inv).arg(&bn);
    // SAFETY: sq, norms and inv hold n entries.
    launched(
        "inverse_norms",
        unsafe { l.launch(per_sample(n)) }.map(drop),
    )?;
    // v = A^T r / ||r||, then the pullback through the denoiser.
    let mut v = GpuTensor::uninit(&gpu, &run.shape)?;
    op.adjoint(&r, &mut v.data, n)?;
    let (d64, nd64) = (d as i64, (n * d) as i64);
    let f = kernel(&gpu, "scale_per_sample")?;
    let mut l = gpu.stream().launch_builder(&f);
    l.arg(&mut v.data).arg(&inv).arg(&d64).arg(&nd64);
    // SAFETY: v holds the batch, inv n scalars.
    launched(
        "scale_per_sample",
        unsafe { l.launch(grid(n * d)) }.map(drop),
    )?;
    let grad = pullback(&v)?;
    Ok((x0, grad))
}

/// DPS with everything on the device (module docs); the same steps and updates as
/// [`crate::sample::Dps`] with `settings`, for `n` samples drawn with `seed`.
pub fn dps(
    den: &dyn DeviceDenoiser,
    problem: &DeviceProblem,
    settings: &DpsSettings,
    n: usize,
    seed: u64,
) -> Result<Outcome> {
    settings.check()?;
    let mut run = Run::new(den, problem, settings.steps, n, seed)?;
    let mut reducer = Reducer::new(&run.gpu, n)?;
    // The guidance gain 1 / max(1, ||A||) of `crate::sample::dps::guidance_gain`.
    let gain = 1.0 / norm_estimate(problem.op, 30, 0)?.max(1.0);
    let zeta = (settings.zeta * gain) as f32;
    let total = n * run.d;
    let mut x = run.start()?;
    let steps = run.knots.len() - 1;
    for step in 0..steps {
        let (cur, nxt) = pair(&run.knots, step);
        let (x0, grad) = dps_guidance(&mut run, problem, &mut reducer, &x, cur.t)?;
        x = if nxt.is_clean() {
            let mut out = GpuTensor::uninit(&run.gpu, &run.shape)?;
            let f = kernel(&run.gpu, "dps_final")?;
            let n64 = total as i64;
            let mut l = run.gpu.stream().launch_builder(&f);
            l.arg(&mut out.data)
                .arg(&x0.data)
                .arg(&grad.data)
                .arg(&zeta)
                .arg(&n64);
            // SAFETY: all hold the batch.
            launched("dps_final", unsafe { l.launch(grid(total)) }.map(drop))?;
            out
        } else {
            match settings.update {
                DpsUpdate::Ancestral => {
                    let k = AncestralKernel::between(cur, nxt);
                    let z = run.normal()?;
                    let mut out = GpuTensor::uninit(&run.gpu, &run.shape)?;
                    let f = kernel(&run.gpu, "dps_ancestral")?;
                    let n64 = total as i64;
                    let mut l = run.gpu.stream().launch_builder(&f);
                    l.arg(&mut out.data)
                        .arg(&x.data)
                        .arg(&x0.data)
                        .arg(&z)
                        .arg(&grad.data);
                    l.arg(&k.c_x0).arg(&k.c_x).arg(&k.sd).arg(&zeta).arg(&n64);
                    // SAFETY: all hold the batch.
                    launched("dps_ancestral", unsafe { l.launch(grid(total)) }.map(drop))?;
                    out
                }
                DpsUpdate::Ddim { eta } => {
                    let upd = DdimStep::between(cur, nxt, eta);
                    let z = if upd.sigma > 0.0 {
                        Some(run.normal()?)
                    } else {
                        None
                    };
                    run.ddim_update(&x, &x0, &x0, z.as_ref(), Some((&grad, zeta)), cur, upd)?
                }
            }
        };
    }
    run.finish(x, steps)
}

/// `reconstruct --sampler dps|dds` resident on the device, when it applies: the prior runs
/// on the GPU ([`NetworkPrior::use_backend`] with CUDA), the sampler is `dps` or `dds`, and
/// the problem's operator (in the prior's units) has a device twin. Operators come to the
/// device through [`DeviceMask::probe`] (diagonal operators: inpainting masks, in any
/// units); every other operator returns `None`, and the caller runs the CPU loop with the
/// device denoiser. The same seed gives the same noise as the CPU loop.
pub fn resident_posterior(
    prior: &NetworkPrior,
    problem: &Problem,
    sampler: &str,
    dds_settings: &DdsSettings,
    dps_settings: &DpsSettings,
    n: usize,
    seed: u64,
) -> Result<Option<Outcome>> {
    let Some(gpu) = prior.gpu_unet().map(|u| u.gpu().clone()) else {
        return Ok(None);
    };
    if !matches!(sampler, "dps" | "dds") {
        return Ok(None);
    }
    let Some(op) = problem.linear() else {
        return Ok(None);
    };
    let Some(dev) = DeviceMask::probe(&gpu, op)? else {
        return Ok(None);
    };
    let den = GpuNetwork::from_prior(&gpu, prior)?;
    let dp = DeviceProblem::new(&dev, problem.y().view(), problem.sigma_y())?;
    Ok(Some(if sampler == "dds" {
        dds(&den, &dp, dds_settings, n, seed)?.outcome
    } else {
        dps(&den, &dp, dps_settings, n, seed)?
    }))
}
