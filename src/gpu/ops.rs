//! Forward operators on the device, each the twin of a CPU operator in the operators crate,
//! built from it (so both share one set of parameters: mask, weights, coil maps, rays).
//!
//! Conventions, as on the CPU (see `posterior_operators`): f32; one sample is the CPU
//! operator's domain `(C, H, W)` (a complex image is `(2, H, W)`), one measurement its
//! range; a batch of `N` is `(N, ...shape)` stored contiguously, sample after sample.
//! Adjoints are in the real Euclidean inner product. The kernels are in
//! `kernels/ops.cu`:
//! - [`DeviceMask`] (inpainting, [`posterior_operators::inpaint::Mask`]): one elementwise
//!   kernel; apply = adjoint = normal.
//! - [`DeviceDownsample`] (super-resolution, [`posterior_operators::sr::Downsample`]):
//!   the separable per-axis weights as CSR matrices, one gather pass per axis; the adjoint
//!   runs the same kernel with the transposed matrices (the same weights), so it is exact.
//! - [`DeviceMri`] (single- and multi-coil Cartesian MRI): pack (coil map, `ifftshift`) ->
//!   cuFFT C2C -> unpack (`fftshift`, `1/sqrt(H W)`, mask), the centred orthonormal DFT of
//!   [`posterior_operators::fft::Fft2::forward_centered`] for even and odd sizes.
//! - [`DeviceBlur`] (circular blur): cuFFT with the kernel's spectrum computed on the
//!   device from the CPU operator's normalised kernel.
//! - [`DeviceCt`] (CT, parallel or fan beam): Joseph's ray-driven projector, one thread per
//!   ray; the back-projection scatters the same weights (`atomicAdd`), the matched adjoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use cudarc::cufft::{sys as fft_sys, CudaFft, FftDirection};
use cudarc::driver::{CudaSlice, DevicePtrMut, LaunchConfig, PushKernelArg};
use posterior_operators::blur::Blur;
use posterior_operators::ct::CtProjector;
use posterior_operators::inpaint::Mask;
use posterior_operators::mri::{MultiCoilMri, SingleCoilMri};
use posterior_operators::sr::{AxisWeights, Downsample};
use posterior_operators::LinearOperator;

use super::context::cuda_err;
use super::{Gpu, GpuTensor, KernelSource};
use crate::{Error, Result};

/// The CUDA C source of the operator kernels.
pub static OPS_KERNELS: KernelSource = KernelSource {
    name: "ops",
    code: include_str!("kernels/ops.cu"),
};

/// A grid-stride launch over `n` outputs: 256 threads per block, at most 65,535 blocks
/// (every kernel of `ops.cu` and `sampler.cu` loops over the remainder).
pub(crate) fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(256).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Runs a launch built by `build` and maps a failure to an error naming the kernel.
pub(crate) fn launched(
    name: &str,
    r: std::result::Result<(), cudarc::driver::DriverError>,
) -> Result<()> {
    r.map_err(|e| Error::Invalid(format!("CUDA: kernel {name} failed to launch: {e}")))
}

fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| Error::Invalid(format!("{what} = {v} exceeds the i32 range of the kernels")))
}

/// A linear operator whose data stay on the device. `x` holds `n` samples of
/// [`DeviceOperator::domain_shape`], `y` `n` measurements of [`DeviceOperator::range_shape`],
/// flat and contiguous. The outputs are overwritten.
pub trait DeviceOperator: Send + Sync {
    /// The CPU twin's name.
    fn name(&self) -> String;
    /// One sample's shape.
    fn domain_shape(&self) -> &[usize];
    /// One measurement's shape.
    fn range_shape(&self) -> &[usize];
    /// `y = A x` for `n` samples.
    fn apply(&self, x: &CudaSlice<f32>, y: &mut CudaSlice<f32>, n: usize) -> Result<()>;
    /// `x = A^T y` for `n` measurements.
    fn adjoint(&self, y: &CudaSlice<f32>, x: &mut CudaSlice<f32>, n: usize) -> Result<()>;
    /// `out = A^T A x`; the default goes through a range-shaped scratch buffer.
    fn normal(&self, x: &CudaSlice<f32>, out: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        let mut y = self.gpu().alloc(n * self.range_len())?;
        self.apply(x, &mut y, n)?;
        self.adjoint(&y, out, n)
    }
    /// The device the operator lives on.
    fn gpu(&self) -> &Arc<Gpu>;
    /// Entries of one sample.
    fn domain_len(&self) -> usize {
        self.domain_shape().iter().product()
    }
    /// Entries of one measurement.
    fn range_len(&self) -> usize {
        self.range_shape().iter().product()
    }
}

/// Checked, allocating forms on [`GpuTensor`]s: shapes `(N, ...domain)` / `(N, ...range)`.
pub trait DeviceOperatorExt: DeviceOperator {
    /// `A x` for a batch `x` of shape `(N, ...domain)`.
    fn apply_to(&self, x: &GpuTensor) -> Result<GpuTensor> {
        let n = batch_of(&self.name(), "input", self.domain_shape(), x.shape())?;
        let mut shape = vec![n];
        shape.extend_from_slice(self.range_shape());
        let mut y = GpuTensor::uninit(self.gpu(), &shape)?;
        self.apply(&x.data, &mut y.data, n)?;
        Ok(y)
    }
    /// `A^T y` for a batch `y` of shape `(N, ...range)`.
    fn adjoint_to(&self, y: &GpuTensor) -> Result<GpuTensor> {
        let n = batch_of(&self.name(), "measurement", self.range_shape(), y.shape())?;
        let mut shape = vec![n];
        shape.extend_from_slice(self.domain_shape());
        let mut x = GpuTensor::uninit(self.gpu(), &shape)?;
        self.adjoint(&y.data, &mut x.data, n)?;
        Ok(x)
    }
    /// `A^T A x` for a batch `x` of shape `(N, ...domain)`.
    fn normal_to(&self, x: &GpuTensor) -> Result<GpuTensor> {
        let n = batch_of(&self.name(), "input", self.domain_shape(), x.shape())?;
        let mut out = GpuTensor::uninit(self.gpu(), x.shape())?;
        self.normal(&x.data, &mut out.data, n)?;
        Ok(out)
    }
}

impl<T: DeviceOperator + ?Sized> DeviceOperatorExt for T {}

/// The batch size of `shape = (N, ...one)`, or an error naming both shapes.
fn batch_of(op: &str, what: &str, one: &[usize], shape: &[usize]) -> Result<usize> {
    if shape.len() == one.len() + 1 && &shape[1..] == one {
        Ok(shape[0])
    } else {
        Err(Error::Invalid(format!(
            "{op} on the device: the {what} has shape {shape:?}, expected (N, {one:?})"
        )))
    }
}

// ---------------------------------------------------------------------------------------
// Inpainting

/// Inpainting `y = m ⊙ x` on the device (module docs); more generally any diagonal
/// operator `y = d ⊙ x`, `d` given per pixel (broadcast over channels) or per entry.
pub struct DeviceMask {
    gpu: Arc<Gpu>,
    name: String,
    shape: Vec<usize>,
    /// The diagonal, `H W` entries (broadcast over channels) or one per entry.
    mask: CudaSlice<f32>,
}

impl DeviceMask {
    /// Uploads the mask of a CPU [`Mask`].
    pub fn new(gpu: &Arc<Gpu>, op: &Mask) -> Result<DeviceMask> {
        let m: Vec<f32> = op.mask().iter().copied().collect();
        Self::diagonal(gpu, op.name(), op.domain_shape(), &m)
    }

    /// `y = d ⊙ x` on samples of `shape`, with `d` of `H W` entries (the last two axes,
    /// broadcast over the others) or of one entry per sample entry.
    pub fn diagonal(
        gpu: &Arc<Gpu>,
        name: String,
        shape: &[usize],
        d: &[f32],
    ) -> Result<DeviceMask> {
        let len: usize = shape.iter().product();
        let hw: usize = shape.iter().rev().take(2).product();
        if d.is_empty() || (d.len() != len && d.len() != hw) {
            return Err(Error::Invalid(format!(
                "{name} on the device: a diagonal of {} entries for samples {shape:?}, expected {hw} or {len}",
                d.len()
            )));
        }
        Ok(DeviceMask {
            gpu: gpu.clone(),
            name,
            shape: shape.to_vec(),
            mask: gpu.upload(d)?,
        })
    }

    /// The device twin of a CPU operator that is diagonal (see [`diagonal_of`]); `None`
    /// for any other operator.
    pub fn probe(gpu: &Arc<Gpu>, op: &dyn LinearOperator) -> Result<Option<DeviceMask>> {
        match diagonal_of(op) {
            Some(d) => Self::diagonal(gpu, op.name(), op.domain_shape(), &d).map(Some),
            None => Ok(None),
        }
    }

    fn run(&self, x: &CudaSlice<f32>, y: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        let total = (n * self.domain_len()) as i64;
        let hw = int(self.mask.len(), "mask size")?; // the diagonal's period
        let f = self.gpu.function(&OPS_KERNELS, "mask_apply")?;
        let mut b = self.gpu.stream().launch_builder(&f);
        b.arg(x).arg(&self.mask).arg(y).arg(&total).arg(&hw);
        // SAFETY: x and y hold n samples of the domain (checked by the callers' lengths),
        // the mask H W entries; the kernel reads x, mask and writes y within those bounds.
        launched(
            "mask_apply",
            unsafe { b.launch(grid(total as usize)) }.map(drop),
        )
    }
}

impl DeviceOperator for DeviceMask {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn domain_shape(&self) -> &[usize] {
        &self.shape
    }
    fn range_shape(&self) -> &[usize] {
        &self.shape
    }
    fn apply(&self, x: &CudaSlice<f32>, y: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        check_len(
            &self.name,
            x,
            n * self.domain_len(),
            y,
            n * self.range_len(),
        )?;
        self.run(x, y, n)
    }
    fn adjoint(&self, y: &CudaSlice<f32>, x: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        check_len(
            &self.name,
            y,
            n * self.range_len(),
            x,
            n * self.domain_len(),
        )?;
        self.run(y, x, n)
    }
    /// `A^T A = A` (a projection).
    fn normal(&self, x: &CudaSlice<f32>, out: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        self.apply(x, out, n)
    }
    fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
}

/// The diagonal `d` of a CPU operator that is one (an inpainting mask, also scaled or in
/// other units), found by probing: `d = A 1`, accepted when `A x = d ⊙ x` and
/// `A^T x = d ⊙ x` hold for a seeded random `x` to f32 rounding (1e-6 of the largest entry,
/// which one rounding of a product meets). `None` for any other operator.
pub fn diagonal_of(op: &dyn LinearOperator) -> Option<Vec<f32>> {
    use ndarray::{ArrayD, IxDyn};
    if op.domain_shape() != op.range_shape() || op.domain_shape().is_empty() {
        return None;
    }
    let shape = IxDyn(op.domain_shape());
    let ones = ArrayD::from_elem(shape.clone(), 1.0f32);
    let mut d = ArrayD::zeros(shape.clone());
    op.apply(ones.view(), d.view_mut());
    let x = posterior_operators::linear::random_array(op.domain_shape(), 1, "diagonal-probe");
    let want = &d * &x;
    let scale = want
        .iter()
        .fold(0.0f32, |m, v| m.max(v.abs()))
        .max(f32::MIN_POSITIVE);
    let mut out = ArrayD::zeros(shape);
    for adjoint in [false, true] {
        if adjoint {
            op.adjoint(x.view(), out.view_mut());
        } else {
            op.apply(x.view(), out.view_mut());
        }
        // `all` with `<=` rejects NaN as well as large errors.
        let tol = 1e-6 * scale;
        if !out
            .iter()
            .zip(want.iter())
            .all(|(a, b)| (a - b).abs() <= tol)
        {
            return None;
        }
    }
    Some(d.iter().copied().collect())
}

/// Checks buffer lengths against what a call will touch (a short buffer would be an
/// out-of-bounds access on the device).
fn check_len(
    op: &str,
    src: &CudaSlice<f32>,
    need_src: usize,
    dst: &CudaSlice<f32>,
    need_dst: usize,
) -> Result<()> {
    if src.len() < need_src || dst.len() < need_dst {
        return Err(Error::Invalid(format!(
            "{op} on the device: buffers of {} and {} entries, expected at least {need_src} and {need_dst}",
            src.len(),
            dst.len()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Super-resolution

/// One axis' sparse matrix on the device in CSR form (rows = outputs of this pass).
struct Csr {
    len_in: usize,
    len_out: usize,
    ptr: CudaSlice<i32>,
    idx: CudaSlice<i32>,
    w: CudaSlice<f32>,
}

impl Csr {
    /// The matrix `M` (`out x inp`) of `a`, or its transpose.
    fn from_axis(gpu: &Gpu, a: &AxisWeights, transpose: bool) -> Result<Csr> {
        // Triplets (row, col, weight) of M.
        let mut trip: Vec<(usize, usize, f32)> = Vec::new();
        for o in 0..a.out {
            for (k, &wt) in a.weights[o].iter().enumerate() {
                trip.push((o, a.start[o] + k, wt));
            }
        }
        let (rows, cols) = if transpose {
            (a.inp, a.out)
        } else {
            (a.out, a.inp)
        };
        if transpose {
            trip.iter_mut().for_each(|t| *t = (t.1, t.0, t.2));
            trip.sort_by_key(|t| (t.0, t.1));
        }
        let mut ptr = vec![0i32; rows + 1];
        for t in &trip {
            ptr[t.0 + 1] += 1;
        }
        for r in 0..rows {
            ptr[r + 1] += ptr[r];
        }
        let idx: Vec<i32> = trip.iter().map(|t| t.1 as i32).collect();
        let w: Vec<f32> = trip.iter().map(|t| t.2).collect();
        let up_i = |v: &[i32]| {
            gpu.stream()
                .clone_htod(v)
                .map_err(cuda_err("uploading resampling indices"))
        };
        Ok(Csr {
            len_in: cols,
            len_out: rows,
            ptr: up_i(&ptr)?,
            idx: up_i(&idx)?,
            w: gpu.upload(&w)?,
        })
    }

    /// `dst[o, r, q] = sum_k M[r, k] src[o, k, q]` (module docs of `ops.cu`).
    fn run(
        &self,
        gpu: &Gpu,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<f32>,
        outer: usize,
        inner: usize,
    ) -> Result<()> {
        let f = gpu.function(&OPS_KERNELS, "csr_axis")?;
        let (o, li, lo, inn) = (
            int(outer, "batch x rows")?,
            int(self.len_in, "axis length")?,
            int(self.len_out, "axis length")?,
            int(inner, "row length")?,
        );
        let mut b = gpu.stream().launch_builder(&f);
        b.arg(src).arg(dst).arg(&o).arg(&li).arg(&lo).arg(&inn);
        b.arg(&self.ptr).arg(&self.idx).arg(&self.w);
        // SAFETY: src holds outer * len_in * inner entries and dst outer * len_out * inner
        // (the callers size them so); ptr/idx/w form a valid CSR matrix with indices < len_in.
        launched(
            "csr_axis",
            unsafe { b.launch(grid(outer * self.len_out * inner)) }.map(drop),
        )
    }
}

/// Downsampling on the device (module docs): `y = R x C^T` per channel.
pub struct DeviceDownsample {
    gpu: Arc<Gpu>,
    name: String,
    shape: Vec<usize>,
    out_shape: Vec<usize>,
    rows: Csr,
    rows_t: Csr,
    cols: Csr,
    cols_t: Csr,
}

impl DeviceDownsample {
    /// Uploads the per-axis weights of a CPU [`Downsample`].
    pub fn new(gpu: &Arc<Gpu>, op: &Downsample) -> Result<DeviceDownsample> {
        let (r, c) = op.axis_weights();
        Ok(DeviceDownsample {
            gpu: gpu.clone(),
            name: op.name(),
            shape: op.domain_shape().to_vec(),
            out_shape: op.range_shape().to_vec(),
            rows: Csr::from_axis(gpu, r, false)?,
            rows_t: Csr::from_axis(gpu, r, true)?,
            cols: Csr::from_axis(gpu, c, false)?,
            cols_t: Csr::from_axis(gpu, c, true)?,
        })
    }
}

impl DeviceOperator for DeviceDownsample {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn domain_shape(&self) -> &[usize] {
        &self.shape
    }
    fn range_shape(&self) -> &[usize] {
        &self.out_shape
    }
    fn apply(&self, x: &CudaSlice<f32>, y: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        check_len(
            &self.name,
            x,
            n * self.domain_len(),
            y,
            n * self.range_len(),
        )?;
        let (c, w, ho) = (self.shape[0], self.shape[2], self.out_shape[1]);
        // Rows first (H -> H/f with rows of length W), then columns (W -> W/f).
        let mut t = self.gpu.alloc(n * c * ho * w)?;
        self.rows.run(&self.gpu, x, &mut t, n * c, w)?;
        self.cols.run(&self.gpu, &t, y, n * c * ho, 1)
    }
    fn adjoint(&self, y: &CudaSlice<f32>, x: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        check_len(
            &self.name,
            y,
            n * self.range_len(),
            x,
            n * self.domain_len(),
        )?;
        let (c, w, ho) = (self.shape[0], self.shape[2], self.out_shape[1]);
        let mut t = self.gpu.alloc(n * c * ho * w)?;
        self.cols_t.run(&self.gpu, y, &mut t, n * c * ho, 1)?;
        self.rows_t.run(&self.gpu, &t, x, n * c, w)
    }
    fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
}

// ---------------------------------------------------------------------------------------
// FFT plans

/// Batched 2-D C2C cuFFT plans of one size, one per batch count, made on first use.
struct Plans {
    gpu: Arc<Gpu>,
    h: usize,
    w: usize,
    plans: Mutex<HashMap<usize, Arc<CudaFft>>>,
}

impl Plans {
    fn new(gpu: &Arc<Gpu>, h: usize, w: usize) -> Result<Plans> {
        super::cufft_present()?;
        Ok(Plans {
            gpu: gpu.clone(),
            h,
            w,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// The unnormalised transform (forward: `exp(-2 pi i ..)`) of `batch` complex `h x w`
    /// images stored interleaved in `buf` (`2 h w` f32 each), in place.
    fn exec(&self, buf: &mut CudaSlice<f32>, batch: usize, inverse: bool) -> Result<()> {
        if buf.len() < 2 * batch * self.h * self.w {
            return Err(Error::Invalid("cuFFT: work buffer too small".into()));
        }
        let plan = {
            let mut map = self.plans.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&batch) {
                Some(p) => p.clone(),
                None => {
                    let (h, w) = (int(self.h, "height")?, int(self.w, "width")?);
                    let dist = h * w;
                    let p = CudaFft::plan_many(
                        &[h, w],
                        None,
                        1,
                        dist,
                        None,
                        1,
                        dist,
                        fft_sys::cufftType::CUFFT_C2C,
                        int(batch, "FFT batch")?,
                        self.gpu.stream().clone(),
                    )
                    .map_err(cuda_err("creating a cuFFT plan"))?;
                    let p = Arc::new(p);
                    map.insert(batch, p.clone());
                    p
                }
            }
        };
        let dir = if inverse {
            FftDirection::Inverse
        } else {
            FftDirection::Forward
        };
        let (ptr, _sync) = buf.device_ptr_mut(self.gpu.stream());
        // SAFETY: the plan transforms `batch` contiguous h x w complex images, which `buf`
        // holds (checked above); in-place C2C is supported by cuFFT; the plan runs on the
        // same stream as every other kernel.
        unsafe {
            cudarc::cufft::result::exec_c2c(
                plan.handle(),
                ptr as *mut fft_sys::cufftComplex,
                ptr as *mut fft_sys::cufftComplex,
                dir as std::ffi::c_int,
            )
        }
        .map_err(cuda_err("cuFFT exec"))
    }
}

// ---------------------------------------------------------------------------------------
// MRI

/// Single- or multi-coil Cartesian MRI on the device (module docs). Domain `(2, H, W)`;
/// range `(2, H, W)` for one coil without maps, `(coils, 2, H, W)` with maps.
pub struct DeviceMri {
    gpu: Arc<Gpu>,
    name: String,
    domain: Vec<usize>,
    range: Vec<usize>,
    coils: usize,
    mask: CudaSlice<f32>,
    /// Interleaved complex maps `(coils, H, W)`; `None` for single-coil (all ones).
    sens: Option<CudaSlice<f32>>,
    plans: Plans,
}

impl DeviceMri {
    /// The twin of a CPU [`SingleCoilMri`].
    pub fn single_coil(gpu: &Arc<Gpu>, op: &SingleCoilMri) -> Result<DeviceMri> {
        Self::build(gpu, op.name(), op.mask(), None, op.range_shape())
    }

    /// The twin of a CPU [`MultiCoilMri`].
    pub fn multi_coil(gpu: &Arc<Gpu>, op: &MultiCoilMri) -> Result<DeviceMri> {
        let sens: Vec<f32> = op
            .sensitivities()
            .iter()
            .flat_map(|c| [c.re, c.im])
            .collect();
        Self::build(
            gpu,
            op.name(),
            op.mask(),
            Some((op.coils(), sens)),
            op.range_shape(),
        )
    }

    fn build(
        gpu: &Arc<Gpu>,
        name: String,
        mask: &ndarray::Array2<f32>,
        sens: Option<(usize, Vec<f32>)>,
        range: &[usize],
    ) -> Result<DeviceMri> {
        let (h, w) = mask.dim();
        let m: Vec<f32> = mask.iter().copied().collect();
        let (coils, sens) = match sens {
            Some((c, s)) => (c, Some(gpu.upload(&s)?)),
            None => (1, None),
        };
        Ok(DeviceMri {
            gpu: gpu.clone(),
            name,
            domain: vec![2, h, w],
            range: range.to_vec(),
            coils,
            mask: gpu.upload(&m)?,
            sens,
            plans: Plans::new(gpu, h, w)?,
        })
    }

    fn hw(&self) -> (usize, usize) {
        (self.domain[1], self.domain[2])
    }

    /// Launches one of the four MRI pack/unpack kernels (see `ops.cu`).
    #[allow(clippy::too_many_arguments)]
    fn pass(
        &self,
        kernel: &str,
        src: &CudaSlice<f32>,
        with: Option<&CudaSlice<f32>>,
        dst: &mut CudaSlice<f32>,
        n: usize,
        threads: usize,
        scale: Option<f32>,
    ) -> Result<()> {
        let (h, w) = self.hw();
        let (bn, c, hh, ww) = (
            int(n, "batch")?,
            int(self.coils, "coils")?,
            int(h, "height")?,
            int(w, "width")?,
        );
        let null = 0u64;
        let f = self.gpu.function(&OPS_KERNELS, kernel)?;
        let mut b = self.gpu.stream().launch_builder(&f);
        b.arg(src);
        match with {
            Some(s) => b.arg(s),
            None => b.arg(&null),
        };
        b.arg(dst).arg(&bn).arg(&c).arg(&hh).arg(&ww);
        if let Some(s) = scale.as_ref() {
            b.arg(s);
        }
        // SAFETY: src, the optional maps/mask and dst are sized for n samples of this
        // operator (checked by the callers); a null map pointer is handled by the kernels.
        launched(kernel, unsafe { b.launch(grid(threads)) }.map(drop))
    }
}

impl DeviceOperator for DeviceMri {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn domain_shape(&self) -> &[usize] {
        &self.domain
    }
    fn range_shape(&self) -> &[usize] {
        &self.range
    }
    fn apply(&self, x: &CudaSlice<f32>, y: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        check_len(
            &self.name,
            x,
            n * self.domain_len(),
            y,
            n * self.range_len(),
        )?;
        let (h, w) = self.hw();
        let planes = n * self.coils;
        let mut buf = self.gpu.alloc(2 * planes * h * w)?;
        self.pass(
            "mri_pack_image",
            x,
            self.sens.as_ref(),
            &mut buf,
            n,
            planes * h * w,
            None,
        )?;
        self.plans.exec(&mut buf, planes, false)?;
        let scale = 1.0 / ((h * w) as f32).sqrt();
        self.pass(
            "mri_unpack_kspace",
            &buf,
            Some(&self.mask),
            y,
            n,
            planes * h * w,
            Some(scale),
        )
    }
    fn adjoint(&self, y: &CudaSlice<f32>, x: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        check_len(
            &self.name,
            y,
            n * self.range_len(),
            x,
            n * self.domain_len(),
        )?;
        let (h, w) = self.hw();
        let planes = n * self.coils;
        let mut buf = self.gpu.alloc(2 * planes * h * w)?;
        self.pass(
            "mri_pack_kspace",
            y,
            Some(&self.mask),
            &mut buf,
            n,
            planes * h * w,
            None,
        )?;
        self.plans.exec(&mut buf, planes, true)?;
        let scale = 1.0 / ((h * w) as f32).sqrt();
        self.pass(
            "mri_unpack_image",
            &buf,
            self.sens.as_ref(),
            x,
            n,
            n * h * w,
            Some(scale),
        )
    }
    fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
}

// ---------------------------------------------------------------------------------------
// Blur

/// Circular blur on the device (module docs): `y = F^-1 (K . F x)` per channel.
pub struct DeviceBlur {
    gpu: Arc<Gpu>,
    name: String,
    shape: Vec<usize>,
    /// The kernel's unnormalised DFT, interleaved complex `(H, W)`.
    spectrum: CudaSlice<f32>,
    plans: Plans,
}

impl DeviceBlur {
    /// The twin of a CPU [`Blur`]: embeds its normalised kernel circularly with the centre
    /// `(kh / 2, kw / 2)` at the origin (as the CPU does) and transforms it on the device.
    pub fn new(gpu: &Arc<Gpu>, op: &Blur) -> Result<DeviceBlur> {
        let shape = op.domain_shape().to_vec();
        let (h, w) = (shape[1], shape[2]);
        let k = op.kernel();
        let (kh, kw) = k.dim();
        let mut host = vec![0.0f32; 2 * h * w];
        for ((i, j), &v) in k.indexed_iter() {
            let m = (i + h - kh / 2) % h;
            let n = (j + w - kw / 2) % w;
            host[2 * (m * w + n)] += v;
        }
        let plans = Plans::new(gpu, h, w)?;
        let mut spectrum = gpu.upload(&host)?;
        plans.exec(&mut spectrum, 1, false)?;
        Ok(DeviceBlur {
            gpu: gpu.clone(),
            name: op.name(),
            shape,
            spectrum,
            plans,
        })
    }

    /// `out = F^-1 (S . F x) / (H W)` with `S` the spectrum (`mode` 0), its conjugate (1)
    /// or its power (2), over every channel of `n` samples.
    fn filter(
        &self,
        x: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        n: usize,
        mode: i32,
    ) -> Result<()> {
        check_len(
            &self.name,
            x,
            n * self.domain_len(),
            out,
            n * self.domain_len(),
        )?;
        let (h, w) = (self.shape[1], self.shape[2]);
        let planes = n * self.shape[0];
        let total = (planes * h * w) as i64;
        let hw = int(h * w, "image size")?;
        let mut buf = self.gpu.alloc(2 * planes * h * w)?;
        let stream = self.gpu.stream();
        let f = self.gpu.function(&OPS_KERNELS, "real_to_complex")?;
        let mut b = stream.launch_builder(&f);
        b.arg(x).arg(&mut buf).arg(&total);
        // SAFETY: x holds `total` reals, buf `total` complex values.
        launched(
            "real_to_complex",
            unsafe { b.launch(grid(total as usize)) }.map(drop),
        )?;
        self.plans.exec(&mut buf, planes, false)?;
        if mode == 2 {
            let f = self.gpu.function(&OPS_KERNELS, "spectrum_multiply_power")?;
            let mut b = stream.launch_builder(&f);
            b.arg(&mut buf).arg(&self.spectrum).arg(&total).arg(&hw);
            // SAFETY: buf holds `total` complex values, the spectrum H W.
            launched(
                "spectrum_multiply_power",
                unsafe { b.launch(grid(total as usize)) }.map(drop),
            )?;
        } else {
            let f = self.gpu.function(&OPS_KERNELS, "spectrum_multiply")?;
            let mut b = stream.launch_builder(&f);
            b.arg(&mut buf)
                .arg(&self.spectrum)
                .arg(&total)
                .arg(&hw)
                .arg(&mode);
            // SAFETY: as above.
            launched(
                "spectrum_multiply",
                unsafe { b.launch(grid(total as usize)) }.map(drop),
            )?;
        }
        self.plans.exec(&mut buf, planes, true)?;
        let scale = 1.0 / (h * w) as f32;
        let f = self.gpu.function(&OPS_KERNELS, "complex_real_part")?;
        let mut b = stream.launch_builder(&f);
        b.arg(&buf).arg(out).arg(&total).arg(&scale);
        // SAFETY: buf holds `total` complex values, out `total` reals.
        launched(
            "complex_real_part",
            unsafe { b.launch(grid(total as usize)) }.map(drop),
        )
    }
}

impl DeviceOperator for DeviceBlur {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn domain_shape(&self) -> &[usize] {
        &self.shape
    }
    fn range_shape(&self) -> &[usize] {
        &self.shape
    }
    fn apply(&self, x: &CudaSlice<f32>, y: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        self.filter(x, y, n, 0)
    }
    /// Correlation: the conjugate spectrum.
    fn adjoint(&self, y: &CudaSlice<f32>, x: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        self.filter(y, x, n, 1)
    }
    /// `|K|^2` in Fourier space: one transform pair.
    fn normal(&self, x: &CudaSlice<f32>, out: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        self.filter(x, out, n, 2)
    }
    fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
}

// ---------------------------------------------------------------------------------------
// CT

/// One ray prepared for the device: `(cols, a0, slope, weight)` as in the CPU projector's
/// trace (`posterior_operators::ct::projector`): pixel index coordinates
/// `col = x / pixel + (w - 1) / 2`, `row = (h - 1) / 2 - y / pixel`; the major axis is the
/// columns when `|d col| >= |d row|`; along it the minor coordinate is `a0 + m slope` and
/// every sample weighs `pixel / |d major|`. Computed in f64 and stored as f32, as the CPU
/// does, so both sample the same points with the same weights (the parity test checks it).
fn ray_params(
    ray: &posterior_operators::ct::geometry::Ray,
    h: usize,
    w: usize,
    pixel: f64,
) -> [f32; 4] {
    let c0 = ray.origin[0] / pixel + (w as f64 - 1.0) / 2.0;
    let r0 = (h as f64 - 1.0) / 2.0 - ray.origin[1] / pixel;
    let (dc, dr) = (ray.direction[0], -ray.direction[1]);
    let cols = dc.abs() >= dr.abs();
    let (m0, n0, dm, dn) = if cols {
        (c0, r0, dc, dr)
    } else {
        (r0, c0, dr, dc)
    };
    let slope = dn / dm;
    [
        if cols { 1.0 } else { 0.0 },
        (n0 - m0 * slope) as f32,
        slope as f32,
        (pixel / dm.abs()) as f32,
    ]
}

/// CT projection on the device (module docs): image `(1, H, W)` -> sinogram
/// `(views, detectors)`, parallel or fan beam (any geometry the CPU projector takes).
pub struct DeviceCt {
    gpu: Arc<Gpu>,
    name: String,
    domain: Vec<usize>,
    range: Vec<usize>,
    rays: CudaSlice<f32>,
}

impl DeviceCt {
    /// Prepares every ray of a CPU [`CtProjector`]'s geometry.
    pub fn new(gpu: &Arc<Gpu>, op: &CtProjector) -> Result<DeviceCt> {
        let g = op.geometry();
        let (h, w) = (g.height(), g.width());
        let mut host = Vec::with_capacity(4 * g.views() * g.detectors());
        for v in 0..g.views() {
            for k in 0..g.detectors() {
                host.extend_from_slice(&ray_params(&g.ray(v, k), h, w, g.pixel()));
            }
        }
        Ok(DeviceCt {
            gpu: gpu.clone(),
            name: op.name(),
            domain: op.domain_shape().to_vec(),
            range: op.range_shape().to_vec(),
            rays: gpu.upload(&host)?,
        })
    }

    fn launch(
        &self,
        kernel: &str,
        src: &CudaSlice<f32>,
        dst: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        let rays = self.range_len();
        let (bn, r, h, w) = (
            int(n, "batch")?,
            int(rays, "rays")?,
            int(self.domain[1], "height")?,
            int(self.domain[2], "width")?,
        );
        let f = self.gpu.function(&OPS_KERNELS, kernel)?;
        let mut b = self.gpu.stream().launch_builder(&f);
        b.arg(src)
            .arg(&self.rays)
            .arg(dst)
            .arg(&bn)
            .arg(&r)
            .arg(&h)
            .arg(&w);
        // SAFETY: the callers checked src/dst hold n images / n sinograms; rays holds 4
        // floats per ray; pixel indices are bounds-checked in the kernels.
        launched(kernel, unsafe { b.launch(grid(n * rays)) }.map(drop))
    }
}

impl DeviceOperator for DeviceCt {
    fn name(&self) -> String {
        self.name.clone()
    }
    fn domain_shape(&self) -> &[usize] {
        &self.domain
    }
    fn range_shape(&self) -> &[usize] {
        &self.range
    }
    fn apply(&self, x: &CudaSlice<f32>, y: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        check_len(
            &self.name,
            x,
            n * self.domain_len(),
            y,
            n * self.range_len(),
        )?;
        self.launch("ct_forward", x, y, n)
    }
    fn adjoint(&self, y: &CudaSlice<f32>, x: &mut CudaSlice<f32>, n: usize) -> Result<()> {
        check_len(
            &self.name,
            y,
            n * self.range_len(),
            x,
            n * self.domain_len(),
        )?;
        self.gpu
            .stream()
            .memset_zeros(x)
            .map_err(cuda_err("zeroing the back-projection"))?;
        self.launch("ct_adjoint", y, x, n)
    }
    fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use posterior_operators::ct::geometry::{FanDetector, Geometry, GeometryParams};

    /// The diagonal probe accepts masks (also scaled, as in the prior's units) and rejects
    /// non-diagonal operators of the same shape.
    #[test]
    fn diagonal_probe_accepts_masks_and_rejects_others() {
        use posterior_operators::inpaint::random_pixels;
        use posterior_operators::Scaled;
        let m = random_pixels(6, 5, 0.5, 1).unwrap();
        let mask = Mask::new(&[2, 6, 5], m.clone(), "r").unwrap();
        let d = diagonal_of(&mask).unwrap();
        for (k, v) in d.iter().enumerate() {
            let (i, j) = ((k / 5) % 6, k % 5);
            assert_eq!(*v, if m[[i, j]] { 1.0 } else { 0.0 });
        }
        let scaled = Scaled::new(Box::new(mask), 0.5).unwrap();
        assert!(diagonal_of(&scaled)
            .unwrap()
            .iter()
            .all(|&v| v == 0.0 || v == 0.5));
        let blur = Blur::new(
            &[1, 6, 5],
            posterior_operators::blur::uniform(3).unwrap(),
            "u",
        )
        .unwrap();
        assert!(diagonal_of(&blur).is_none());
        let sr = Downsample::new(&[1, 6, 4], 2, posterior_operators::sr::Method::AvgPool).unwrap();
        assert!(diagonal_of(&sr).is_none());
    }

    /// The rays' parameters reproduce the CPU projector's samples: the forward projection
    /// computed on the host from `ray_params` (the device kernel's arithmetic, in Rust)
    /// equals the CPU operator's to f32 rounding, for parallel and fan beams.
    #[test]
    fn ray_parameters_reproduce_the_cpu_projector() {
        use posterior_operators::linear::{random_array, LinearOperatorExt};
        for p in [
            GeometryParams::parallel(),
            GeometryParams::fan(FanDetector::Flat),
        ] {
            let g = Geometry::new(9, 12, &p.views(7)).unwrap();
            let op = CtProjector::new(g.clone()).unwrap();
            let x = random_array(&[1, 9, 12], 3, "x");
            let y = op.apply_to(x.view()).unwrap();
            let (h, w) = (9usize, 12usize);
            let mut worst = 0.0f32;
            for v in 0..g.views() {
                for k in 0..g.detectors() {
                    let [cols, a0, slope, wt] = ray_params(&g.ray(v, k), h, w, g.pixel());
                    let cols = cols != 0.0;
                    let (nmaj, nmin) = if cols { (w, h) } else { (h, w) };
                    let mut acc = 0.0f32;
                    for m in 0..nmaj {
                        let r = a0 + m as f32 * slope;
                        let rf = r.floor();
                        let (i0, frac) = (rf as i64, r - rf);
                        let at = |i: i64| {
                            if cols {
                                x[[0, i as usize, m]]
                            } else {
                                x[[0, m, i as usize]]
                            }
                        };
                        if i0 >= 0 && i0 < nmin as i64 {
                            acc += wt * (1.0 - frac) * at(i0);
                        }
                        if i0 + 1 >= 0 && i0 + 1 < nmin as i64 {
                            acc += wt * frac * at(i0 + 1);
                        }
                    }
                    worst = worst.max((acc - y[[v, k]]).abs());
                }
            }
            let scale = y.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            // Sums of ~24 products of O(1) values: a few ulps of the largest entry.
            assert!(
                worst <= 1e-5 * scale,
                "{}: worst {worst} of {scale}",
                op.name()
            );
        }
    }
}
