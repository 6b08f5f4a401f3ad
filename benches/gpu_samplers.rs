//! Full posterior reconstructions on the GPU, resident on the device
//! (`posterior::gpu::sampler::{dds, dps}`): FFHQ-256 ADM configuration
//! (`UNetConfig::ffhq256`, hash weights: timing does not depend on the values), one
//! 3x256x256 sample, box inpainting (the 128x128 centre hole of the DPS benchmarks) with
//! `sigma_y = 0.05`.
//!
//! Cases:
//! - `dds_50`: DDS, 50 steps (50 NFE), eta 0.85, 5 CG iterations per step, gamma 1;
//! - `dps_N`: DPS, `N` ancestral steps (N NFE + N VJPs), zeta 0.5; `N = 100` by default
//!   (`POSTERIOR_BENCH_DPS_STEPS` to change it; the paper's 1000 steps cost 10x).
//!
//! Method: one untimed warm-up run of each case (NVRTC compilation, cuFFT/cuBLAS set-up,
//! the allocator's pool), then `POSTERIOR_BENCH_RUNS` timed runs (default 2: on the H100
//! runs differed by under 0.1%); each run is wall time from the first upload to the
//! downloaded result (the loop never synchronizes before). Reported: median and min seconds, seconds per step, and peak device memory:
//! the stream-ordered pool's high-water mark of bytes in use during the run (every tensor
//! of the run; cuBLAS/cuFFT workspaces are outside the pool) and the weights' bytes.
//! `benches/peers/gpu_samplers_peer.py` does the same work in PyTorch eager on the same GPU.
//!
//! `cargo bench --bench gpu_samplers` (prints `skipped: <reason>` without a GPU). It runs
//! the cases in plain f32, then again with TF32 GEMMs in a child process
//! (`POSTERIOR_TF32=1`, read once per process when the GPU opens); with `POSTERIOR_TF32` set
//! it runs that mode only.

use std::sync::Arc;
use std::time::Instant;

use ndarray::{ArrayD, IxDyn};
use posterior::gpu::ops::DeviceMask;
use posterior::gpu::sampler::{self, DeviceProblem, GpuNetwork};
use posterior::gpu::unet::{GpuUNet, HashWeights};
use posterior::gpu::Gpu;
use posterior::nn::{UNet, UNetConfig};
use posterior::prior::{PriorInfo, Schedule};
use posterior::sample::{DdsSettings, DpsSettings, DpsUpdate};
use posterior_operators::inpaint::{box_mask, Mask};
use posterior_operators::LinearOperator;

/// The default memory pool's counters (bytes): (in use now, high-water mark), and a reset
/// of the high-water mark.
struct Pool(cudarc::driver::sys::CUmemoryPool);

impl Pool {
    fn new(gpu: &Gpu) -> Option<Pool> {
        use cudarc::driver::sys;
        let mut pool = std::ptr::null_mut();
        // SAFETY: the context is current on this thread (the Gpu bound it); the out-pointer
        // is a valid local.
        let r = unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, gpu.context().cu_device()) };
        (r == sys::CUresult::CUDA_SUCCESS).then_some(Pool(pool))
    }
    fn attr(&self, a: cudarc::driver::sys::CUmemPool_attribute) -> u64 {
        let mut v: u64 = 0;
        // SAFETY: the attribute is a 64-bit counter; `v` is a valid out-pointer.
        unsafe {
            cudarc::driver::sys::cuMemPoolGetAttribute(self.0, a, &mut v as *mut u64 as *mut _);
        }
        v
    }
    fn used(&self) -> u64 {
        self.attr(cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)
    }
    fn high(&self) -> u64 {
        self.attr(cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)
    }
    fn reset_high(&self) {
        let mut zero: u64 = 0;
        // SAFETY: resetting the high-water mark takes a zero 64-bit value.
        unsafe {
            cudarc::driver::sys::cuMemPoolSetAttribute(
                self.0,
                cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut zero as *mut u64 as *mut _,
            );
        }
    }
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let gpu = match posterior::gpu::gpu_for_test() {
        Ok(g) => g,
        Err(e) => {
            println!("skipped: {e}");
            return;
        }
    };
    let runs = env_usize("POSTERIOR_BENCH_RUNS", 2).max(1);
    let dps_steps = env_usize("POSTERIOR_BENCH_DPS_STEPS", 100).max(1);
    println!(
        "gpu_samplers: {} (tf32 {}), FFHQ-256 hash weights, box inpainting 128 on 3x256x256, {runs} timed runs",
        gpu.name(),
        gpu.tf32()
    );
    if let Err(e) = run(&gpu, runs, dps_steps) {
        println!("error: {e}");
        std::process::exit(1);
    }
    if std::env::var_os("POSTERIOR_TF32").is_none() {
        // The TF32 pass: the same binary with TF32 GEMMs allowed.
        let status = std::env::current_exe().and_then(|exe| {
            std::process::Command::new(exe)
                .env("POSTERIOR_TF32", "1")
                .status()
        });
        match status {
            Ok(s) if s.success() => {}
            other => {
                println!("error: the TF32 pass failed: {other:?}");
                std::process::exit(1);
            }
        }
    }
}

fn run(gpu: &Arc<Gpu>, runs: usize, dps_steps: usize) -> posterior::Result<()> {
    let pool = Pool::new(gpu);
    let before = pool.as_ref().map(|p| p.used()).unwrap_or(0);
    let unet = UNet::build(UNetConfig::ffhq256(), &mut HashWeights)?;
    let net = GpuUNet::from_cpu(gpu.clone(), &unet)?;
    drop(unet);
    gpu.synchronize()?;
    let weights = pool.as_ref().map(|p| p.used()).unwrap_or(0) - before;
    let info = PriorInfo {
        name: "ffhq256-hash".into(),
        range: (-1.0, 1.0),
        sample_shape: vec![3, 256, 256],
    };
    let den = GpuNetwork::new(net, info, Schedule::vp_linear(), 1000)?;
    let op = Mask::new(&[3, 256, 256], box_mask(256, 256, 128)?, "box 128")?;
    // A smooth test image in [-1, 1], masked, plus noise 0.05.
    let x = ArrayD::from_shape_fn(IxDyn(&[3, 256, 256]), |ix| {
        let (c, i, j) = (ix[0] as f32, ix[1] as f32, ix[2] as f32);
        (0.03 * i + 0.5 * c).sin() * (0.02 * j).cos()
    });
    let mut y = ArrayD::zeros(IxDyn(&[3, 256, 256]));
    op.apply(x.view(), y.view_mut());
    let noise = posterior_operators::linear::random_array(&[3, 256, 256], 1, "noise");
    y.zip_mut_with(&noise, |a, n| *a += 0.05 * n);
    op.restrict_to_measured(y.view_mut());
    let dev = DeviceMask::new(gpu, &op)?;
    let problem = DeviceProblem::new(&dev, y.view(), 0.05)?;

    let dds = DdsSettings::default();
    let dps = DpsSettings {
        steps: dps_steps,
        zeta: 0.5,
        update: DpsUpdate::Ancestral,
    };
    type Case<'a> = (String, usize, Box<dyn Fn() -> posterior::Result<()> + 'a>);
    let cases: Vec<Case> = vec![
        (
            format!("dds_{}", dds.steps),
            dds.steps,
            Box::new(|| sampler::dds(&den, &problem, &dds, 1, 0).map(drop)),
        ),
        (
            format!("dps_{dps_steps}"),
            dps_steps,
            Box::new(|| sampler::dps(&den, &problem, &dps, 1, 0).map(drop)),
        ),
    ];
    println!(
        "{:<10} {:>10} {:>10} {:>12} {:>14} {:>12}",
        "case", "median_s", "min_s", "ms_per_step", "peak_pool_MiB", "weights_MiB"
    );
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    for (name, steps, f) in &cases {
        f()?; // warm-up
        let mut times = Vec::new();
        let mut peak = 0u64;
        for _ in 0..runs {
            gpu.synchronize()?;
            if let Some(p) = &pool {
                p.reset_high();
            }
            let t0 = Instant::now();
            f()?;
            times.push(t0.elapsed().as_secs_f64());
            peak = peak.max(pool.as_ref().map(|p| p.high()).unwrap_or(0));
        }
        times.sort_by(f64::total_cmp);
        let med = times[times.len() / 2];
        println!(
            "{name:<10} {med:>10.3} {:>10.3} {:>12.2} {:>14.1} {:>12.1}",
            times[0],
            1e3 * med / *steps as f64,
            mib(peak),
            mib(weights)
        );
    }
    Ok(())
}
