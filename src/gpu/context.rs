//! The CUDA device: driver context, one stream, cuBLAS, and NVRTC-compiled kernel modules.
//!
//! Everything CUDA is loaded at run time (`cudarc`'s `dynamic-loading`): the crate builds and
//! runs on machines with no CUDA at all. Before any CUDA call, [`Gpu::shared`] probes for the
//! driver (`libcuda`), NVRTC (`libnvrtc`) and cuBLAS (`libcublas`) and turns their absence
//! into an error value naming the missing library; cudarc itself would panic.
//!
//! One [`Gpu`] per process (the first device, ordinal 0), shared behind an `Arc`. All work is
//! queued on its single stream, so kernels, copies and GEMMs run in the order they were
//! issued and no cross-stream events are needed; downloads synchronize that stream.
//!
//! Numerics: cuBLAS runs in plain f32 by default (bitwise reproducible run to run, the
//! parity tests' baseline). Set `POSTERIOR_TF32=1` to allow TF32 tensor-core GEMMs (about
//! 10 mantissa bits in the products; faster on Ampere and later, less exact).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublas::{sys as cublas_sys, CudaBlas, Gemm, GemmConfig, StridedBatchedConfig};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DevicePtrMut,
    LaunchConfig,
};
use cudarc::nvrtc::{CompileOptions, Ptx};

use crate::{Error, Result};

/// Where to run: `auto` (the GPU when one is usable, else the CPU with a one-line notice),
/// `cpu`, or `cuda` (the GPU or an error saying why not).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl FromStr for DeviceChoice {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda),
            other => Err(Error::Invalid(format!(
                "unknown device {other:?}: expected one of auto, cpu, cuda"
            ))),
        }
    }
}

impl std::fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DeviceChoice::Auto => "auto",
            DeviceChoice::Cpu => "cpu",
            DeviceChoice::Cuda => "cuda",
        })
    }
}

/// The device a computation runs on, as resolved by [`select`].
#[derive(Clone)]
pub enum Backend {
    Cpu,
    Cuda(Arc<Gpu>),
}

impl Backend {
    /// The GPU, if this backend is one.
    pub fn gpu(&self) -> Option<&Arc<Gpu>> {
        match self {
            Backend::Cpu => None,
            Backend::Cuda(g) => Some(g),
        }
    }

    /// `"cpu"` or `"cuda (<device name>)"`, for logs.
    pub fn describe(&self) -> String {
        match self {
            Backend::Cpu => "cpu".into(),
            Backend::Cuda(g) => format!("cuda ({})", g.name()),
        }
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// Resolves a device choice. `Cuda` fails with the reason when no GPU is usable (no driver,
/// no NVRTC, no cuBLAS, no device); `Auto` falls back to the CPU and says why in one line on
/// stderr.
pub fn select(choice: DeviceChoice) -> Result<Backend> {
    match choice {
        DeviceChoice::Cpu => Ok(Backend::Cpu),
        DeviceChoice::Cuda => Gpu::shared().map(Backend::Cuda),
        DeviceChoice::Auto => match Gpu::shared() {
            Ok(g) => Ok(Backend::Cuda(g)),
            Err(e) => {
                eprintln!("posterior: running on the CPU: {e}");
                Ok(Backend::Cpu)
            }
        },
    }
}

/// The shared GPU for tests, or the reason there is none. Tests print `skipped: <reason>`
/// and return on `Err`.
pub fn gpu_for_test() -> std::result::Result<Arc<Gpu>, String> {
    Gpu::shared().map_err(|e| e.to_string())
}

/// CUDA C source of a kernel module, embedded with `include_str!`. `name` identifies the
/// module in the per-process cache and in compile errors; it must be unique.
#[derive(Debug)]
pub struct KernelSource {
    pub name: &'static str,
    pub code: &'static str,
}

/// Wraps a CUDA-side failure as [`Error::Invalid`] naming what was being done.
pub(crate) fn cuda_err<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| Error::Invalid(format!("CUDA: {what} failed: {e}"))
}

/// Checks that the CUDA libraries the GPU path needs can be loaded, naming the first missing
/// one. Safe to call anywhere (it only tries `dlopen`).
pub fn probe_libraries() -> Result<()> {
    // SAFETY: the probes only dlopen the candidate library names and drop the handles.
    let driver = unsafe { cudarc::driver::sys::is_culib_present() };
    if !driver {
        return Err(Error::Invalid(
            "no CUDA driver: libcuda.so could not be loaded (is an NVIDIA driver installed, \
             and is its directory on LD_LIBRARY_PATH?)"
                .into(),
        ));
    }
    nvrtc_present()?;
    // SAFETY: as above.
    let blas = unsafe { cudarc::cublas::sys::is_culib_present() };
    if !blas {
        return Err(Error::Invalid(
            "no cuBLAS: libcublas.so (CUDA 13) could not be loaded; add its directory to \
             LD_LIBRARY_PATH"
                .into(),
        ));
    }
    Ok(())
}

/// Whether NVRTC (the run-time CUDA compiler) can be loaded; an error saying so otherwise.
pub fn nvrtc_present() -> Result<()> {
    // SAFETY: only dlopens the candidate library names.
    if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::Invalid(
            "no NVRTC: libnvrtc.so (CUDA 13) could not be loaded; add its directory to \
             LD_LIBRARY_PATH"
                .into(),
        ))
    }
}

/// Whether cuFFT can be loaded; an error saying so otherwise (the FFT-based operators need it).
pub fn cufft_present() -> Result<()> {
    // SAFETY: only dlopens the candidate library names.
    if unsafe { cudarc::cufft::sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::Invalid(
            "no cuFFT: libcufft.so (CUDA 13) could not be loaded; add its directory to \
             LD_LIBRARY_PATH"
                .into(),
        ))
    }
}

/// Compiles one kernel module to PTX with NVRTC. `arch` is an NVRTC architecture such as
/// `compute_90` (None: NVRTC's default). Needs only NVRTC, no driver or device, so kernel
/// sources can be checked on machines without a GPU. Compile errors carry NVRTC's log.
pub fn compile_kernel(src: &KernelSource, arch: Option<&str>) -> Result<Ptx> {
    nvrtc_present()?;
    let mut options = vec!["--std=c++17".to_string()];
    if let Some(a) = arch {
        options.push(format!("--gpu-architecture={a}"));
    }
    let opts = CompileOptions {
        options,
        name: Some(format!("{}.cu", src.name)),
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(src.code, opts).map_err(|e| {
        let detail = match &e {
            cudarc::nvrtc::CompileError::CompileError { log, .. } => {
                log.to_string_lossy().into_owned()
            }
            other => format!("{other:?}"),
        };
        Error::Invalid(format!(
            "NVRTC could not compile kernel module {}: {detail}",
            src.name
        ))
    })
}

/// One CUDA device with its stream, cuBLAS handle and compiled kernels.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    name: String,
    arch: String,
    tf32: bool,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    functions: Mutex<HashMap<(&'static str, String), CudaFunction>>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({}, {}, tf32={})", self.name, self.arch, self.tf32)
    }
}

impl Gpu {
    /// The process-wide GPU (device 0), created on first use; later calls return the same
    /// `Arc` or the same error.
    pub fn shared() -> Result<Arc<Gpu>> {
        static SHARED: OnceLock<std::result::Result<Arc<Gpu>, String>> = OnceLock::new();
        SHARED
            .get_or_init(|| Gpu::open(0).map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(Error::Invalid)
    }

    /// Opens device `ordinal`: probes the libraries, creates the context, stream and cuBLAS
    /// handle. Prefer [`Gpu::shared`]; a second `Gpu` recompiles every kernel module.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        probe_libraries()?;
        let count = CudaContext::device_count().map_err(cuda_err("counting devices"))?;
        if count <= 0 || ordinal >= count as usize {
            return Err(Error::Invalid(format!(
                "no CUDA device {ordinal}: the driver reports {count} device(s)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("creating a context"))?;
        let name = ctx.name().map_err(cuda_err("reading the device name"))?;
        let (major, minor) = ctx
            .compute_capability()
            .map_err(cuda_err("reading the compute capability"))?;
        // One stream for everything: work runs in issue order, so cudarc's per-buffer
        // cross-stream events are not needed (they would cost two events per allocation).
        // SAFETY: every buffer of this context is used on `stream` only (module docs).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        if ctx.has_async_alloc() {
            // Keep freed blocks in the stream-ordered pool across synchronizations (the
            // default returns them to the driver at every sync, and each NFE syncs).
            set_pool_attr(&ctx, PoolAttr::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD, u64::MAX)?;
        }
        let blas = CudaBlas::new(stream.clone()).map_err(cuda_err("creating a cuBLAS handle"))?;
        let tf32 = std::env::var("POSTERIOR_TF32").is_ok_and(|v| v == "1" || v == "true");
        let mode = if tf32 {
            cublas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            cublas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH
        };
        // SAFETY: the handle is live (owned by `blas`) and the mode is a valid enum value.
        let status = unsafe { cublas_sys::cublasSetMathMode(*blas.handle(), mode) };
        if status != cublas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(Error::Invalid(format!(
                "CUDA: setting the cuBLAS math mode failed: {status:?}"
            )));
        }
        Ok(Gpu {
            ctx,
            stream,
            blas,
            name,
            arch: format!("compute_{major}{minor}"),
            tf32,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
        })
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn blas(&self) -> &CudaBlas {
        &self.blas
    }

    /// The device name as the driver reports it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The NVRTC architecture kernels are compiled for (`compute_90` on an H100).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// Whether cuBLAS may use TF32 tensor cores (`POSTERIOR_TF32=1`).
    pub fn tf32(&self) -> bool {
        self.tf32
    }

    /// Kernel `name` from module `src`, compiling the module with NVRTC on first use (once per
    /// process) and caching both.
    pub fn function(&self, src: &'static KernelSource, name: &str) -> Result<CudaFunction> {
        let key = (src.name, name.to_string());
        if let Some(f) = lock(&self.functions).get(&key) {
            return Ok(f.clone());
        }
        let module = self.module(src)?;
        let f = module.load_function(name).map_err(|e| {
            Error::Invalid(format!(
                "CUDA: kernel {name} not found in module {}: {e}",
                src.name
            ))
        })?;
        lock(&self.functions).insert(key, f.clone());
        Ok(f)
    }

    fn module(&self, src: &'static KernelSource) -> Result<Arc<CudaModule>> {
        if let Some(m) = lock(&self.modules).get(src.name) {
            return Ok(m.clone());
        }
        // Compiled outside the lock: two threads may both compile on a race; one wins.
        let ptx = compile_kernel(src, Some(&self.arch))?;
        let module = self
            .ctx
            .load_module(ptx)
            .map_err(|e| Error::Invalid(format!("CUDA: loading module {}: {e}", src.name)))?;
        Ok(lock(&self.modules)
            .entry(src.name)
            .or_insert(module)
            .clone())
    }

    /// Copies host data to a new device buffer.
    pub fn upload(&self, host: &[f32]) -> Result<CudaSlice<f32>> {
        if host.is_empty() {
            return self.zeros(0);
        }
        self.stream
            .clone_htod(host)
            .map_err(cuda_err("host-to-device copy"))
    }

    /// Copies a device buffer to the host (synchronizes the stream).
    pub fn download(&self, dev: &CudaSlice<f32>) -> Result<Vec<f32>> {
        if dev.is_empty() {
            return Ok(Vec::new());
        }
        self.stream
            .clone_dtoh(dev)
            .map_err(cuda_err("device-to-host copy"))
    }

    /// A new zero-filled device buffer of `n` f32.
    pub fn zeros(&self, n: usize) -> Result<CudaSlice<f32>> {
        if n == 0 {
            return self.stream.null().map_err(cuda_err("device allocation"));
        }
        self.stream
            .alloc_zeros::<f32>(n)
            .map_err(cuda_err("device allocation"))
    }

    /// A new device buffer of `n` f32 with unspecified contents, for outputs a kernel fully
    /// overwrites before anything reads them.
    pub fn alloc(&self, n: usize) -> Result<CudaSlice<f32>> {
        if n == 0 {
            return self.stream.null().map_err(cuda_err("device allocation"));
        }
        // SAFETY: f32 has no invalid bit patterns; callers overwrite before reading.
        unsafe { self.stream.alloc::<f32>(n) }.map_err(cuda_err("device allocation"))
    }

    /// Waits for all queued work on the stream.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(cuda_err("stream synchronize"))
    }

    /// (free, total) device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.ctx
            .mem_get_info()
            .map_err(cuda_err("reading memory info"))
    }

    /// Bytes of the stream-ordered allocation pool in use now, and the most in use since
    /// the last [`Gpu::reset_peak_memory`] (every buffer of this crate comes from that pool;
    /// cuBLAS's own workspace does not). `(0, 0)` on devices without memory pools.
    pub fn pool_memory(&self) -> Result<(u64, u64)> {
        if !self.ctx.has_async_alloc() {
            return Ok((0, 0));
        }
        Ok((
            get_pool_attr(&self.ctx, PoolAttr::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?,
            get_pool_attr(&self.ctx, PoolAttr::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
        ))
    }

    /// Restarts the pool's high-water mark at the current usage (synchronizes first).
    pub fn reset_peak_memory(&self) -> Result<()> {
        self.synchronize()?;
        if self.ctx.has_async_alloc() {
            set_pool_attr(&self.ctx, PoolAttr::CU_MEMPOOL_ATTR_USED_MEM_HIGH, 0)?;
        }
        Ok(())
    }

    /// Row-major single-precision GEMM: `C (m x n) = alpha op(A) op(B) + beta C`, where
    /// `op(A)` is `m x k` (A stored `m x k`, or `k x m` when `trans_a`), `op(B)` is `k x n`
    /// (B stored `k x n`, or `n x k` when `trans_b`), all densely packed row-major.
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
        &self,
        (m, n, k): (usize, usize, usize),
        alpha: f32,
        a: &A,
        trans_a: bool,
        b: &B,
        trans_b: bool,
        beta: f32,
        c: &mut C,
    ) -> Result<()> {
        self.sgemm_batched(
            (m, n, k),
            1,
            alpha,
            (a, 0, trans_a),
            (b, 0, trans_b),
            beta,
            (c, 0),
        )
    }

    /// `batch` independent row-major GEMMs as in [`Gpu::sgemm`]; matrix `i` of each operand
    /// starts `i * stride` elements after the first (stride 0 reuses one matrix).
    #[allow(clippy::too_many_arguments)]
    pub fn sgemm_batched<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
        &self,
        (m, n, k): (usize, usize, usize),
        batch: usize,
        alpha: f32,
        (a, stride_a, trans_a): (&A, usize, bool),
        (b, stride_b, trans_b): (&B, usize, bool),
        beta: f32,
        (c, stride_c): (&mut C, usize),
    ) -> Result<()> {
        if m == 0 || n == 0 || batch == 0 {
            return Ok(());
        }
        let need = |rows: usize, cols: usize, stride: usize| (batch - 1) * stride + rows * cols;
        if a.len() < need(m, k, stride_a)
            || b.len() < need(k, n, stride_b)
            || c.len() < need(m, n, stride_c)
        {
            return Err(Error::Invalid(format!(
                "sgemm: buffers too small for {batch} x ({m}x{k})({k}x{n}): lengths {}, {}, {}",
                a.len(),
                b.len(),
                c.len()
            )));
        }
        let int = |v: usize| {
            i32::try_from(v)
                .map_err(|_| Error::Invalid(format!("sgemm: dimension {v} exceeds i32")))
        };
        // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS sees each
        // row-major buffer as its transpose, so B goes first and no copy is needed.
        let op = |t: bool| {
            if t {
                cublas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                cublas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let gemm = GemmConfig {
            transa: op(trans_b),
            transb: op(trans_a),
            m: int(n)?,
            n: int(m)?,
            k: int(k)?,
            alpha,
            lda: int(if trans_b { k } else { n })?,
            ldb: int(if trans_a { m } else { k })?,
            beta,
            ldc: int(n)?,
        };
        // SAFETY: every operand was checked above to hold `batch` matrices of the stated
        // sizes at the stated strides, and the leading dimensions are those of dense packing.
        let res = unsafe {
            if batch == 1 {
                self.blas.gemm(gemm, b, a, c)
            } else {
                let cfg = StridedBatchedConfig {
                    gemm,
                    batch_size: int(batch)?,
                    stride_a: stride_b as i64,
                    stride_b: stride_a as i64,
                    stride_c: stride_c as i64,
                };
                self.blas.gemm_strided_batched(cfg, b, a, c)
            }
        };
        res.map_err(cuda_err("cuBLAS sgemm"))
    }
}

use cudarc::driver::sys::CUmemPool_attribute as PoolAttr;

fn default_pool(ctx: &CudaContext) -> Result<cudarc::driver::sys::CUmemoryPool> {
    use cudarc::driver::sys;
    ctx.bind_to_thread()
        .map_err(cuda_err("binding the context"))?;
    let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid out-pointer and the device handle is live.
    let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) };
    if r != sys::CUresult::CUDA_SUCCESS {
        return Err(Error::Invalid(format!(
            "CUDA: reading the default memory pool failed: {r:?}"
        )));
    }
    Ok(pool)
}

fn get_pool_attr(ctx: &CudaContext, attr: PoolAttr) -> Result<u64> {
    let pool = default_pool(ctx)?;
    let mut v: u64 = 0;
    // SAFETY: the usage attributes are cuuint64_t values; `v` is a valid out-pointer.
    let r = unsafe {
        cudarc::driver::sys::cuMemPoolGetAttribute(pool, attr, &mut v as *mut u64 as *mut _)
    };
    if r != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        return Err(Error::Invalid(format!(
            "CUDA: reading pool attribute {attr:?} failed: {r:?}"
        )));
    }
    Ok(v)
}

fn set_pool_attr(ctx: &CudaContext, attr: PoolAttr, value: u64) -> Result<()> {
    let pool = default_pool(ctx)?;
    let mut v = value;
    // SAFETY: the threshold and high-water attributes take a cuuint64_t.
    let r = unsafe {
        cudarc::driver::sys::cuMemPoolSetAttribute(pool, attr, &mut v as *mut u64 as *mut _)
    };
    if r != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
        return Err(Error::Invalid(format!(
            "CUDA: setting pool attribute {attr:?} failed: {r:?}"
        )));
    }
    Ok(())
}

/// A 1-D launch over `n` threads in blocks of 256.
pub fn launch_1d(n: usize) -> LaunchConfig {
    let threads = 256u32;
    let blocks = n.div_ceil(threads as usize).max(1) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Locks a cache mutex; a poisoned lock still holds a consistent map (inserts are single
/// calls), so its contents are used as they are.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_choice_parses_and_rejects() {
        assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
        assert_eq!("CPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
        assert_eq!("cuda".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cuda);
        let e = "tpu".parse::<DeviceChoice>().unwrap_err().to_string();
        assert!(e.contains("tpu") && e.contains("auto, cpu, cuda"), "{e}");
    }

    #[test]
    fn cpu_choice_never_touches_cuda() {
        assert!(matches!(select(DeviceChoice::Cpu).unwrap(), Backend::Cpu));
    }

    #[test]
    fn cuda_choice_is_a_gpu_or_a_reason() {
        // Either a usable GPU, or an error that names what is missing; never a panic.
        match select(DeviceChoice::Cuda) {
            Ok(b) => assert!(b.gpu().is_some()),
            Err(e) => {
                let m = e.to_string();
                assert!(
                    m.contains("CUDA") || m.contains("NVRTC") || m.contains("cuBLAS"),
                    "{m}"
                );
            }
        }
        // Auto never fails.
        assert!(select(DeviceChoice::Auto).is_ok());
    }
}
