//! The ADM U-Net on the GPU: FFHQ-256 configuration (`UNetConfig::ffhq256`, 93.6 M
//! parameters) with deterministic hash weights, forward and forward + input VJP at batch 1
//! and 16 (override with `POSTERIOR_BENCH_BATCHES=1,4,16`).
//!
//! Method: inputs already on the device; `WARMUP` untimed calls, then `REPEATS` timed calls,
//! each ended by a stream synchronize (wall clock around call + sync); the median is
//! reported, with min and max. Peak memory is the stream-ordered pool's high-water mark
//! during one call (weights included; cuBLAS's workspace not). cuBLAS runs plain f32 unless
//! `POSTERIOR_TF32=1`. Prints a markdown table (the same columns as
//! `benches/peers/gpu_peer.py`, the PyTorch eager peer).
//!
//! Run: `cargo bench --bench gpu` (prints `skipped: <reason>` without a GPU).

use std::time::Instant;

use ndarray::Array4;
use posterior::gpu::unet::{hash_unit, GpuUNet, HashWeights};
use posterior::gpu::{Gpu, GpuTensor};
use posterior::nn::unet::{UNet, UNetConfig};

const WARMUP: usize = 2;

fn repeats(batch: usize) -> usize {
    if batch <= 2 {
        10
    } else {
        5
    }
}

struct Row {
    batch: usize,
    pass: &'static str,
    median_ms: f64,
    min_ms: f64,
    max_ms: f64,
    peak_mib: f64,
}

fn time_it(
    gpu: &Gpu,
    reps: usize,
    mut f: impl FnMut() -> posterior::Result<()>,
) -> posterior::Result<(f64, f64, f64, f64)> {
    for _ in 0..WARMUP {
        f()?;
    }
    gpu.synchronize()?;
    gpu.reset_peak_memory()?;
    let mut times = Vec::with_capacity(reps);
    let mut peak = 0u64;
    for _ in 0..reps {
        let t0 = Instant::now();
        f()?;
        gpu.synchronize()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        peak = peak.max(gpu.pool_memory()?.1);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let med = times[times.len() / 2];
    Ok((
        med,
        times[0],
        times[times.len() - 1],
        peak as f64 / (1 << 20) as f64,
    ))
}

fn main() -> posterior::Result<()> {
    let gpu = match posterior::gpu::gpu_for_test() {
        Ok(g) => g,
        Err(reason) => {
            println!("skipped: {reason}");
            return Ok(());
        }
    };
    let batches: Vec<usize> = std::env::var("POSTERIOR_BENCH_BATCHES")
        .ok()
        .map(|s| s.split(',').filter_map(|v| v.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16]);
    let cfg = UNetConfig::ffhq256();
    let t0 = Instant::now();
    let unet = UNet::build(cfg.clone(), &mut HashWeights)?;
    let build_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let net = GpuUNet::from_cpu(gpu.clone(), &unet)?;
    gpu.synchronize()?;
    let upload_s = t0.elapsed().as_secs_f64();
    let (weights_bytes, _) = gpu.pool_memory()?;
    println!(
        "# posterior GPU bench: {} ({}), cuBLAS {}, FFHQ-256 ADM, weights {:.0} MiB on device (host build {build_s:.1} s, upload {upload_s:.2} s)",
        gpu.name(),
        gpu.arch(),
        if gpu.tf32() { "TF32" } else { "f32" },
        weights_bytes as f64 / (1 << 20) as f64
    );
    let s = cfg.image_size;
    let mut rows = Vec::new();
    for &n in &batches {
        let x = Array4::from_shape_vec((n, 3, s, s), hash_unit("input.x", n * 3 * s * s))
            .map_err(|e| posterior::Error::Invalid(e.to_string()))?;
        let v = Array4::from_shape_vec((n, 6, s, s), hash_unit("input.v", n * 6 * s * s))
            .map_err(|e| posterior::Error::Invalid(e.to_string()))?;
        let xd = GpuTensor::from_host(&gpu, x.view().into_dyn())?;
        let vd = GpuTensor::from_host(&gpu, v.view().into_dyn())?;
        let t: Vec<f32> = (0..n).map(|i| (500 + 10 * i) as f32).collect();
        if n == 1 {
            // Numerical cross-check with the PyTorch peer (same weights, inputs, timestep).
            let (o, g) = net.forward_vjp(&xd, &t, &vd)?;
            let amax = |a: ndarray::ArrayD<f32>| a.iter().fold(0f32, |m, v| m.max(v.abs()));
            println!(
                "# batch 1 check: max|out| {:.6e}, max|vjp| {:.6e}",
                amax(o.to_host(&gpu)?),
                amax(g.to_host(&gpu)?)
            );
        }
        let reps = repeats(n);
        let (m, lo, hi, peak) = time_it(&gpu, reps, || net.forward(&xd, &t).map(drop))?;
        rows.push(Row {
            batch: n,
            pass: "forward",
            median_ms: m,
            min_ms: lo,
            max_ms: hi,
            peak_mib: peak,
        });
        let (m, lo, hi, peak) = time_it(&gpu, reps, || net.forward_vjp(&xd, &t, &vd).map(drop))?;
        rows.push(Row {
            batch: n,
            pass: "forward+vjp",
            median_ms: m,
            min_ms: lo,
            max_ms: hi,
            peak_mib: peak,
        });
    }
    println!("| impl | batch | pass | median ms | ms / sample | min ms | max ms | peak MiB |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| posterior | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
            r.batch,
            r.pass,
            r.median_ms,
            r.median_ms / r.batch as f64,
            r.min_ms,
            r.max_ms,
            r.peak_mib
        );
    }
    Ok(())
}
