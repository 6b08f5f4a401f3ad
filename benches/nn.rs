//! Benchmarks of the network engine (`posterior::nn`).
//!
//! Layer level: a 3x3 convolution 64 -> 64 channels on 64x64 at batch 1 (forward, and the
//! input VJP), a GroupNorm(32) of the same tensor, and one attention head set at 16x16 (256
//! positions, 128 channels, 4 heads).
//!
//! Whole network (`unet_*`), batch 1, seeded random weights (see [`HashParams`], drawn the
//! same way by `benches/peers/unet_peer.py`, so both sides run identical models):
//! - `unet_small_fwd`, `unet_small_fwd_vjp`: 32x32, 1 channel, model_channels 64,
//!   channel_mult (1, 2, 2), 2 residual blocks per level, attention at ds 2 (16 px, 4
//!   heads), scale-shift norm, strided-conv / nearest+conv resampling;
//! - `unet_ffhq256_fwd`, `unet_ffhq256_fwd_vjp`: `UNetConfig::ffhq256()`, only when the
//!   environment has `POSTERIOR_BENCH_FFHQ=1` (one forward takes seconds on 2 cores).
//!
//! The shipped priors (`shipped/*`, only when the filter names `shipped`): `priors/`'s
//! fmnist-32, brain-mri and ct-ellipses with their own weights, at batch 8
//! (`POSTERIOR_BENCH_BATCH`), step 500; peer `benches/peers/shipped_priors_peer.py`.
//!
//! `startup/NAME` (only when named): where a fresh process's time goes before its first
//! network evaluation of the shipped prior NAME completes.
//!
//! Run with `cargo bench --bench nn` (or a name filter: `cargo bench --bench nn -- unet`).
//! `POSTERIOR_SIMD=avx512|avx2|portable` forces the engine's path.
//! `benches/peers/run_unet_compare.sh` runs the network cases and the PyTorch peers back to
//! back and prints the ratios.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::{Array1, Array3, Array4};
use posterior::nn::{Conv2d, GroupNorm, ParamSource, QkvAttentionLegacy, UNet, UNetConfig};

fn filled4(shape: (usize, usize, usize, usize), scale: f32) -> Array4<f32> {
    let mut i = 0u32;
    Array4::from_shape_simple_fn(shape, || {
        i = i.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        scale * ((i >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
    })
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [-0.5, 0.5): element `j` of a stream seeded by `seed`.
fn unit(seed: u64, j: u64) -> f32 {
    (splitmix64(seed.wrapping_add(j)) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// Seeded random weights keyed by parameter name (so independent of construction order):
/// element `j` of tensor `key` is `u = unit(fnv1a(key), j)`, uniform with variance 1/12;
/// weights with >= 2 axes are `u sqrt(12 / fan_in)` (variance 1 / fan_in, fan_in the
/// product of all axes but the first), 1-D weights (GroupNorm scales) `1 + 0.1 sqrt(12) u`,
/// biases `0.1 sqrt(12) u`.
struct HashParams;

impl ParamSource for HashParams {
    fn take(&mut self, key: &str, shape: &[usize]) -> posterior::Result<Vec<f32>> {
        let n: usize = shape.iter().product();
        let seed = fnv1a(key);
        let s12 = 12f32.sqrt();
        let (scale, offset) = if key.ends_with(".bias") {
            (0.1 * s12, 0.0)
        } else if shape.len() == 1 {
            (0.1 * s12, 1.0)
        } else {
            let fan_in: usize = shape[1..].iter().product();
            ((12.0 / fan_in as f32).sqrt(), 0.0)
        };
        Ok((0..n as u64)
            .map(|j| offset + scale * unit(seed, j))
            .collect())
    }
}

/// Input-like arrays: `unit(seed, j) * sqrt(12)` (unit variance).
fn input(shape: (usize, usize, usize, usize), seed: u64) -> Array4<f32> {
    let mut j = 0u64;
    Array4::from_shape_simple_fn(shape, || {
        j += 1;
        12f32.sqrt() * unit(seed, j - 1)
    })
}

/// The small prior of the benchmarks (see the module docs).
fn small_config() -> UNetConfig {
    UNetConfig {
        image_size: 32,
        in_channels: 1,
        model_channels: 64,
        out_channels: 1,
        num_res_blocks: 2,
        attention_resolutions: vec![2],
        channel_mult: vec![1.0, 2.0, 2.0],
        num_heads: 4,
        num_head_channels: -1,
        num_heads_upsample: 4,
        use_scale_shift_norm: true,
        resblock_updown: false,
        use_new_attention_order: false,
        conv_resample: true,
        num_classes: None,
        learn_sigma: false,
        group_norm_groups: 32,
        group_norm_eps: 1e-5,
        num_parameters: None,
        ..UNetConfig::guided_diffusion_defaults()
    }
}

fn bench_unet(c: &mut Criterion, name: &str, cfg: UNetConfig, secs: u64) {
    let net = UNet::build(cfg, &mut HashParams).expect("valid unet");
    bench_net(c, "unet", name, &net, 1, secs);
}

/// Times `net` at batch `batch`, step 500, as `GROUP/NAME_fwd` and `GROUP/NAME_fwd_vjp`, after
/// printing the output fingerprints the peers print.
fn bench_net(c: &mut Criterion, group: &str, name: &str, net: &UNet, batch: usize, secs: u64) {
    let cfg = net.config();
    let (ci, co, s) = (cfg.in_channels, cfg.out_channels, cfg.image_size);
    let x = input((batch, ci, s, s), 1);
    let v = input((batch, co, s, s), 2);
    let t = vec![500.0f32; batch];
    // A fingerprint to compare with the peer's (same weights, same input).
    let y = net.forward(x.view(), &t).expect("forward");
    let (_, g) = net.forward_vjp(x.view(), &t, v.view()).expect("vjp");
    let mean_abs = |a: &Array4<f32>| a.iter().map(|v| v.abs() as f64).sum::<f64>() / a.len() as f64;
    eprintln!(
        "{group}/{name}: mean|out| {:.6e}, mean|vjp| {:.6e} (simd path {})",
        mean_abs(&y),
        mean_abs(&g),
        posterior::nn::simd_path()
    );
    // POSTERIOR_BENCH_QUICK=N: also a plain median of N timed runs (quick checks by hand).
    if let Some(runs) = std::env::var("POSTERIOR_BENCH_QUICK")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        // Medians of wall and of CPU time (all threads): at RAYON_NUM_THREADS=1 the CPU time
        // is what the run costs even when other processes share the cores.
        let median = |f: &dyn Fn()| {
            let (mut wall, mut cpu): (Vec<f64>, Vec<f64>) = (0..runs.max(1))
                .map(|_| {
                    let (t0, c0) = (std::time::Instant::now(), cpu_seconds());
                    f();
                    (t0.elapsed().as_secs_f64(), cpu_seconds() - c0)
                })
                .unzip();
            wall.sort_by(f64::total_cmp);
            cpu.sort_by(f64::total_cmp);
            (1e3 * wall[wall.len() / 2], 1e3 * cpu[cpu.len() / 2])
        };
        let f = median(&|| {
            black_box(net.forward(x.view(), &t).expect("forward"));
        });
        let fv = median(&|| {
            black_box(net.forward_vjp(x.view(), &t, v.view()).expect("vjp"));
        });
        eprintln!(
            "quick {group}/{name}: fwd {:.2} ms, fwd_vjp {:.2} ms (median of {runs}); cpu fwd {:.2} ms, fwd_vjp {:.2} ms",
            f.0, fv.0, f.1, fv.1
        );
    }
    let mut g = c.benchmark_group(group);
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(secs));
    g.bench_function(format!("{name}_fwd"), |b| {
        b.iter(|| black_box(net.forward(black_box(x.view()), &t).expect("forward")))
    });
    g.bench_function(format!("{name}_fwd_vjp"), |b| {
        b.iter(|| {
            black_box(
                net.forward_vjp(black_box(x.view()), &t, v.view())
                    .expect("vjp"),
            )
        })
    });
    g.finish();
}

fn unets(c: &mut Criterion) {
    // What the command-line tool does at start-up (activations reused, not mapped afresh).
    posterior::nn::keep_freed_memory();
    bench_unet(c, "unet_small", small_config(), 3);
    if std::env::var("POSTERIOR_BENCH_FFHQ").as_deref() == Ok("1") {
        bench_unet(c, "unet_ffhq256", UNetConfig::ffhq256(), 20);
    }
}

/// The shipped priors (`priors/`) at batch 8 (`POSTERIOR_BENCH_BATCH` to change it), their
/// own weights; only when the name filter asks for `shipped` (loading them costs time).
fn shipped(c: &mut Criterion) {
    if !std::env::args().any(|a| a.contains("shipped")) {
        return;
    }
    posterior::nn::keep_freed_memory();
    let batch = std::env::var("POSTERIOR_BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    for name in ["fmnist-32", "brain-mri", "ct-ellipses"] {
        match posterior::prior::NetworkPrior::open(name) {
            Ok(prior) => bench_net(
                c,
                "shipped",
                name,
                prior.unet().expect("an ADM U-Net"),
                batch,
                5,
            ),
            Err(e) => eprintln!("shipped/{name}: skipped ({e})"),
        }
    }
}

/// CPU seconds this process has used so far (user + system, all threads).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let s = |t: libc::timeval| t.tv_sec as f64 + 1e-6 * t.tv_usec as f64;
    s(ru.ru_utime) + s(ru.ru_stime)
}

/// `cargo bench --bench nn -- startup/NAME`: where a fresh process's time goes before the
/// first network evaluation of the shipped prior NAME (at batch 1, as `posterior denoise`
/// runs it) completes: opening the prior (reading the file, widening f16, building the
/// layers), the first pass (which also packs every layer's weights and maps the
/// activations), and a second pass for comparison; wall and CPU milliseconds. Runs first,
/// in a process that has done nothing else; run one prior per process.
fn startup(_: &mut Criterion) {
    let Some(name) = std::env::args().find_map(|a| a.strip_prefix("startup/").map(String::from))
    else {
        return;
    };
    posterior::nn::keep_freed_memory();
    let mut last = (std::time::Instant::now(), cpu_seconds());
    let mut lap = |what: &str| {
        let now = (std::time::Instant::now(), cpu_seconds());
        eprintln!(
            "startup/{name}: {what:<28} wall {:7.1} ms, cpu {:7.1} ms",
            1e3 * (now.0 - last.0).as_secs_f64(),
            1e3 * (now.1 - last.1)
        );
        last = now;
    };
    let prior = posterior::prior::NetworkPrior::open(&name).expect("a shipped prior");
    lap("open (read, widen, build)");
    let unet = prior.unet().expect("the shipped priors are ADM U-Nets");
    let cfg = unet.config();
    let x = input((1, cfg.in_channels, cfg.image_size, cfg.image_size), 1);
    black_box(unet.forward(x.view(), &[500.0]).expect("forward"));
    lap("first pass (packs weights)");
    black_box(unet.forward(x.view(), &[500.0]).expect("forward"));
    lap("second pass");
}

fn layers(c: &mut Criterion) {
    posterior::nn::keep_freed_memory();
    let mut g = c.benchmark_group("nn");
    g.measurement_time(Duration::from_secs(3)).sample_size(20);

    let conv =
        Conv2d::new(filled4((64, 64, 3, 3), 0.1), Array1::zeros(64), 1, 1).expect("valid conv");
    let x = filled4((1, 64, 64, 64), 2.0);
    let y = conv.forward(x.view()).expect("forward");
    g.bench_function("conv3x3 64->64 64x64 forward", |b| {
        b.iter(|| black_box(conv.forward(black_box(x.view())).expect("forward")))
    });
    g.bench_function("conv3x3 64->64 64x64 vjp", |b| {
        b.iter(|| black_box(conv.vjp(64, 64, black_box(y.view())).expect("vjp")))
    });

    let gn = GroupNorm::gn32(Array1::ones(64), Array1::zeros(64)).expect("valid norm");
    let xd = x.clone().into_dyn();
    g.bench_function("groupnorm32 64x64x64 forward", |b| {
        b.iter(|| black_box(gn.forward(black_box(xd.view())).expect("forward")))
    });

    let att = QkvAttentionLegacy::new(4).expect("heads");
    let qkv: Array3<f32> = filled4((1, 384, 256, 1), 2.0)
        .into_shape_with_order((1, 384, 256))
        .expect("reshape");
    let a = att.forward(qkv.view()).expect("forward");
    g.bench_function("attention 4 heads 128ch 16x16 forward", |b| {
        b.iter(|| black_box(att.forward(black_box(qkv.view())).expect("forward")))
    });
    g.bench_function("attention 4 heads 128ch 16x16 vjp", |b| {
        b.iter(|| black_box(att.vjp(qkv.view(), black_box(a.view())).expect("vjp")))
    });
    g.finish();
}

/// The GEMM shapes of the convolutions (`m` out channels, `n` pixels, `k` in channels x 9),
/// only with `POSTERIOR_BENCH_GEMM=1`: throughput of the `sgemm` wrapper.
fn gemms(c: &mut Criterion) {
    posterior::nn::keep_freed_memory();
    if std::env::var("POSTERIOR_BENCH_GEMM").as_deref() != Ok("1") {
        return;
    }
    let mut g = c.benchmark_group("gemm");
    g.sample_size(20).measurement_time(Duration::from_secs(2));
    for &(m, n, k) in &[
        (64, 1024, 576),
        (128, 256, 1152),
        (128, 64, 1152),
        (128, 65536, 1152),
        (256, 1024, 2304),
    ] {
        let a = vec![0.5f32; m * k];
        let b = vec![0.25f32; k * n];
        let mut out = vec![0.0f32; m * n];
        let gflop = 2.0 * (m * n * k) as f64 / 1e9;
        g.bench_function(format!("sgemm {m}x{n}x{k} ({gflop:.3} GFLOP)"), |bch| {
            bch.iter(|| {
                posterior::nn::gemm::sgemm(m, n, k, &a, false, &b, false, &mut out, false);
                black_box(&out);
            })
        });
    }
    let conv =
        Conv2d::new(filled4((128, 128, 3, 3), 0.05), Array1::zeros(128), 1, 1).expect("valid conv");
    let x = filled4((1, 128, 256, 256), 2.0);
    g.bench_function("conv3x3 128->128 256x256 forward (19.3 GFLOP)", |b| {
        b.iter(|| black_box(conv.forward(black_box(x.view())).expect("forward")))
    });
    g.finish();
}

criterion_group!(benches, startup, layers, unets, shipped, gemms);
criterion_main!(benches);
