//! Device operators, sampler maths and the device-resident DDS/DPS loops against their CPU
//! twins. Every test runs where a GPU is usable and prints `skipped: <reason>` (and passes)
//! where none is.
//!
//! Tolerances are relative to the largest entry of the CPU result, `max |gpu - cpu| /
//! max |cpu|`, and stated per test with the reason. They were set from the first H100 run
//! (commit f8d606c, the figures quoted below) with about ten times the observed error as
//! margin: parities of 1e-7 to 2.3e-7, adjoint tests below 1.3e-8, sampler chains below
//! 2e-7 (exact prior) and 1.2e-6 (network).

use std::sync::Arc;

use ndarray::{Array2, ArrayD, ArrayViewD, Axis, IxDyn};
use posterior::gpu::ops::{
    DeviceBlur, DeviceCt, DeviceDownsample, DeviceMask, DeviceMri, DeviceOperator,
    DeviceOperatorExt,
};
use posterior::gpu::sampler::{self, DeviceAdam, DeviceProblem, HostDenoiser};
use posterior::gpu::{gpu_for_test, Gpu, GpuTensor};
use posterior::prior::{Denoiser, Gmm, PriorInfo, Pullback, Schedule};
use posterior::sample::{Dds, DdsSettings, Dps, DpsSettings, DpsUpdate, Executor, Problem};
use posterior_operators::blur::{motion, Blur};
use posterior_operators::ct::geometry::{FanDetector, Geometry, GeometryParams};
use posterior_operators::ct::CtProjector;
use posterior_operators::inpaint::{random_pixels, Mask};
use posterior_operators::linear::random_array;
use posterior_operators::mri::{MultiCoilMri, SingleCoilMri};
use posterior_operators::sr::{Downsample, Method};
use posterior_operators::{LinearOperator, Operator};

/// The GPU, or `None` after printing why the test is skipped.
fn gpu() -> Option<Arc<Gpu>> {
    match gpu_for_test() {
        Ok(g) => Some(g),
        Err(e) => {
            println!("skipped: {e}");
            None
        }
    }
}

/// `max |a - b| / max |b|`.
fn rel(a: ArrayViewD<f32>, b: ArrayViewD<f32>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    let d = a
        .iter()
        .zip(b.iter())
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs() as f64));
    let s = b.iter().fold(0.0f64, |m, y| m.max(y.abs() as f64));
    d / s.max(f64::MIN_POSITIVE)
}

fn dot(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f64 {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| *x as f64 * *y as f64)
        .sum()
}

fn norm(a: &ArrayD<f32>) -> f64 {
    dot(a, a).sqrt()
}

/// A batch of `n` seeded random samples of `shape`.
fn batch(n: usize, shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut s = vec![n];
    s.extend_from_slice(shape);
    random_array(&s, seed, "gpu-ops")
}

/// The CPU operator applied to every sample of a batch (`adjoint` for the adjoint).
fn cpu_batch(op: &dyn LinearOperator, x: &ArrayD<f32>, adjoint: bool) -> ArrayD<f32> {
    let (from, to) = if adjoint {
        (op.range_shape(), op.domain_shape())
    } else {
        (op.domain_shape(), op.range_shape())
    };
    assert_eq!(&x.shape()[1..], from);
    let mut s = vec![x.shape()[0]];
    s.extend_from_slice(to);
    let mut out = ArrayD::zeros(IxDyn(&s));
    for (xi, oi) in x.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
        if adjoint {
            op.adjoint(xi, oi);
        } else {
            op.apply(xi, oi);
        }
    }
    out
}

/// Checks one device operator against its CPU twin on a batch of 2: forward and adjoint
/// parity to `tol` (relative), and the device adjoint test
/// `|<Ax, y> - <x, A^T y>| <= adj_tol |Ax| |y|` on device results alone; also the device
/// normal operator against apply-then-adjoint on the device (same tolerance as parity).
fn check_operator(
    g: &Gpu,
    cpu: &dyn LinearOperator,
    dev: &dyn DeviceOperator,
    tol: f64,
    adj_tol: f64,
) {
    let name = cpu.name();
    assert_eq!(dev.domain_shape(), cpu.domain_shape(), "{name}");
    assert_eq!(dev.range_shape(), cpu.range_shape(), "{name}");
    let x = batch(2, cpu.domain_shape(), 1);
    let y = batch(2, cpu.range_shape(), 2);
    let xd = GpuTensor::from_host(g, x.view()).unwrap();
    let yd = GpuTensor::from_host(g, y.view()).unwrap();
    let ax = dev.apply_to(&xd).unwrap().to_host(g).unwrap();
    let aty = dev.adjoint_to(&yd).unwrap().to_host(g).unwrap();
    let ata = dev.normal_to(&xd).unwrap().to_host(g).unwrap();
    let ax_cpu = cpu_batch(cpu, &x, false);
    let aty_cpu = cpu_batch(cpu, &y, true);
    let (ef, ea) = (
        rel(ax.view(), ax_cpu.view()),
        rel(aty.view(), aty_cpu.view()),
    );
    let atax = dev
        .adjoint_to(&GpuTensor::from_host(g, ax.view()).unwrap())
        .unwrap()
        .to_host(g)
        .unwrap();
    let en = rel(ata.view(), atax.view());
    let mismatch = (dot(&ax, &y) - dot(&x, &aty)).abs() / (norm(&ax) * norm(&y));
    println!(
        "{name}: forward {ef:.2e}, adjoint {ea:.2e}, normal {en:.2e}, adjoint test {mismatch:.2e}"
    );
    assert!(ef <= tol, "{name}: forward parity {ef:.3e} > {tol:.1e}");
    assert!(ea <= tol, "{name}: adjoint parity {ea:.3e} > {tol:.1e}");
    assert!(
        en <= tol,
        "{name}: normal vs apply-adjoint {en:.3e} > {tol:.1e}"
    );
    assert!(
        mismatch <= adj_tol,
        "{name}: adjoint test {mismatch:.3e} > {adj_tol:.1e}"
    );
}

/// A random 0/1 mask with about a third of the entries sampled and the centre row/column.
fn kmask(h: usize, w: usize, seed: u64) -> Array2<f32> {
    let m = random_pixels(h, w, 0.65, seed).unwrap();
    Array2::from_shape_fn((h, w), |(i, j)| {
        if m[[i, j]] || i == h / 2 || j == w / 2 {
            1.0
        } else {
            0.0
        }
    })
}

#[test]
fn inpainting_mask_matches_the_cpu_exactly() {
    let Some(g) = gpu() else { return };
    for (c, h, w) in [(1, 8, 8), (3, 17, 13)] {
        let cpu = Mask::new(&[c, h, w], random_pixels(h, w, 0.7, 3).unwrap(), "random").unwrap();
        let dev = DeviceMask::new(&g, &cpu).unwrap();
        // One product by 0 or 1 per entry: bitwise equal.
        check_operator(&g, &cpu, &dev, 0.0, 1e-7);
    }
}

#[test]
fn downsampling_matches_the_cpu() {
    let Some(g) = gpu() else { return };
    for (method, c, h, w, f) in [
        (Method::AvgPool, 3, 16, 12, 4),
        (Method::Bicubic, 1, 24, 16, 4),
        (Method::Bicubic, 3, 18, 27, 3),
    ] {
        let cpu = Downsample::new(&[c, h, w], f, method).unwrap();
        let dev = DeviceDownsample::new(&g, &cpu).unwrap();
        // Sums of at most ~17 x 17 weighted taps of O(1) values in the same order (the
        // device may fuse a multiply-add): a few ulps; H100: <= 1.3e-7, held to 2e-6. The
        // adjoint uses the same weights transposed: f32 rounding of the dots (H100:
        // <= 9.3e-9), held to 1e-7.
        check_operator(&g, &cpu, &dev, 2e-6, 1e-7);
    }
}

#[test]
fn mri_single_and_multi_coil_match_the_cpu_for_even_and_odd_sizes() {
    let Some(g) = gpu() else { return };
    for (h, w) in [(16, 16), (15, 12), (9, 7)] {
        let cpu = SingleCoilMri::new(kmask(h, w, 4)).unwrap();
        let dev = DeviceMri::single_coil(&g, &cpu).unwrap();
        // cuFFT and RustFFT round differently: O(log(HW)) ulps of the largest coefficient
        // of an orthonormal transform of unit-variance data (H100: <= 2.3e-7), held to
        // 2e-6. The transform is unitary, so the adjoint test holds to f32 rounding (H100:
        // <= 1.3e-8), held to 1e-7.
        check_operator(&g, &cpu, &dev, 2e-6, 1e-7);
        let cpu = MultiCoilMri::synthetic(4, kmask(h, w, 5)).unwrap();
        let dev = DeviceMri::multi_coil(&g, &cpu).unwrap();
        check_operator(&g, &cpu, &dev, 2e-6, 1e-7);
    }
}

#[test]
fn blur_matches_the_cpu() {
    let Some(g) = gpu() else { return };
    for (c, h, w, size) in [(3, 16, 16, 7), (1, 15, 20, 9)] {
        // A motion kernel is not symmetric: a wrong centre or a missing conjugate shows.
        let cpu = Blur::new(&[c, h, w], motion(size, 0.5, 2).unwrap(), "motion").unwrap();
        let dev = DeviceBlur::new(&g, &cpu).unwrap();
        // Two FFTs each way with different rounding (as MRI; H100: <= 2.5e-7): 2e-6; the
        // adjoint test (H100: <= 4.7e-9): 1e-7.
        check_operator(&g, &cpu, &dev, 2e-6, 1e-7);
    }
}

#[test]
fn ct_projection_matches_the_cpu_and_its_adjoint_is_matched() {
    let Some(g) = gpu() else { return };
    for (name, p, h, w) in [
        ("parallel", GeometryParams::parallel().views(30), 32, 32),
        (
            "parallel",
            GeometryParams::parallel().views(18).arc(90.0),
            21,
            28,
        ),
        (
            "fan-arc",
            GeometryParams::fan(FanDetector::Arc).views(24),
            32,
            24,
        ),
        (
            "fan-flat",
            GeometryParams::fan(FanDetector::Flat).views(24),
            25,
            25,
        ),
    ] {
        let cpu = CtProjector::new(Geometry::new(h, w, &p).unwrap()).unwrap();
        let dev = DeviceCt::new(&g, &cpu).unwrap();
        println!("{name}");
        // The same samples and weights as the CPU (bitwise-equal sample positions: the
        // kernel rounds `a0 + m slope` without fusing, as Rust does); sums of ~2 max(H, W)
        // products in the same order, but the back-projection adds with atomics in any
        // order (H100: <= 2.4e-7): 2e-6. The adjoint is matched: f32 rounding (H100:
        // <= 4.7e-9), 1e-7.
        check_operator(&g, &cpu, &dev, 2e-6, 1e-7);
    }
}

#[test]
fn vector_maths_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let (n, d) = (3, 1000);
    let x = batch(n, &[d], 5);
    let y = batch(n, &[d], 6);
    let xd = g.upload(x.as_slice().unwrap()).unwrap();
    let yd = g.upload(y.as_slice().unwrap()).unwrap();
    let mut out = g.zeros(n * d).unwrap();
    sampler::axpby(&g, &mut out, 0.7, &xd, -1.3, &yd).unwrap();
    let got = g.download(&out).unwrap();
    let want: Vec<f32> = x
        .iter()
        .zip(y.iter())
        .map(|(a, b)| 0.7 * a + -1.3 * b)
        .collect();
    // At most one fused multiply-add of difference: 1 ulp of O(1) values.
    let e = got
        .iter()
        .zip(&want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(e < 1e-6, "axpby {e}");
    sampler::scale(&g, &mut out, -2.5, &xd).unwrap();
    let got = g.download(&out).unwrap();
    assert!(
        got.iter().zip(x.iter()).all(|(a, b)| *a == -2.5 * b),
        "scale"
    );
    let dots = sampler::dot_per_sample(&g, &xd, &yd, n, d).unwrap();
    let norms = sampler::norm_per_sample(&g, &xd, n, d).unwrap();
    for (i, (xi, yi)) in x.outer_iter().zip(y.outer_iter()).enumerate() {
        let want = posterior_operators::linear::dot(xi.view(), yi.view());
        let wn = posterior_operators::linear::norm(xi.view());
        // Both accumulate exact f32 products in f64, in different orders: 1e-12 relative.
        assert!(
            (dots[i] - want).abs() <= 1e-12 * wn * wn,
            "dot {i}: {} vs {want}",
            dots[i]
        );
        assert!((norms[i] - wn).abs() <= 1e-12 * wn, "norm {i}");
    }
}

#[test]
fn adam_matches_the_cpu_update() {
    let Some(g) = gpu() else { return };
    let d = 500;
    let (lr, b1, b2) = (0.1, 0.9, 0.99);
    let mut x: Vec<f32> = random_array(&[d], 7, "x").iter().copied().collect();
    let mut xd = g.upload(&x).unwrap();
    let mut adam = DeviceAdam::new(&g, d, lr, (b1, b2)).unwrap();
    let (mut m, mut v) = (vec![0.0f32; d], vec![0.0f32; d]);
    for k in 1..=4 {
        let grad: Vec<f32> = random_array(&[d], 10 + k as u64, "g")
            .iter()
            .copied()
            .collect();
        adam.step(&g, &mut xd, &g.upload(&grad).unwrap()).unwrap();
        // The CPU's update (RED-diff's Adam), written out.
        let c1 = (1.0 - b1.powi(k)) as f32;
        let c2 = (1.0 - b2.powi(k)) as f32;
        for i in 0..d {
            m[i] = b1 as f32 * m[i] + (1.0 - b1 as f32) * grad[i];
            v[i] = b2 as f32 * v[i] + (1.0 - b2 as f32) * grad[i] * grad[i];
            x[i] -= lr as f32 * (m[i] / c1) / ((v[i] / c2).sqrt() + 1e-8);
        }
    }
    let got = g.download(&xd).unwrap();
    // Four steps of O(lr) updates; fused multiply-adds and the device sqrt differ by ulps.
    let e = got
        .iter()
        .zip(&x)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(e < 1e-5, "adam {e}");
}

#[test]
fn smc_resampling_matches_the_cpu_given_the_same_uniform() {
    let Some(g) = gpu() else { return };
    let logw: Vec<f64> = (0..16)
        .map(|i| -((i as f64 - 5.0).powi(2)) / 7.0 + 300.0)
        .collect();
    let ld = g.stream().clone_htod(&logw).unwrap();
    for (m, u) in [(16, 0.37), (8, 0.0), (32, 0.999)] {
        let (idx, w) = sampler::resample_systematic(&g, &ld, m, u).unwrap();
        let idx: Vec<i32> = g.stream().clone_dtoh(&idx).unwrap();
        let w = sampler::download_f64(&g, &w).unwrap();
        let wc = posterior::sample::smc::normalise_log_weights(&logw).unwrap();
        let ic = posterior::sample::smc::systematic(&wc, m, u);
        // The same f64 operations in the same order: identical weights and indices.
        assert_eq!(w, wc);
        assert_eq!(idx.iter().map(|&i| i as usize).collect::<Vec<_>>(), ic);
        // Gathering rows follows the indices.
        let x: Vec<f32> = (0..16 * 3).map(|v| v as f32).collect();
        let rows = sampler::gather_rows(
            &g,
            &g.upload(&x).unwrap(),
            &g.stream().clone_htod(&idx).unwrap(),
            3,
        )
        .unwrap();
        let rows = g.download(&rows).unwrap();
        for (j, &i) in idx.iter().enumerate() {
            assert_eq!(
                &rows[3 * j..3 * j + 3],
                &x[3 * i as usize..3 * i as usize + 3]
            );
        }
    }
    let bad = g.stream().clone_htod(&[f64::NEG_INFINITY; 4]).unwrap();
    let e = sampler::resample_systematic(&g, &bad, 4, 0.5)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("non-finite"), "{e}");
}

/// A vector Gaussian mixture seen as an image prior `(C, H, W)`, so that image operators
/// act on its samples (the samplers only see the sample shape).
struct AsImage {
    inner: Gmm,
    info: PriorInfo,
}

impl AsImage {
    fn new(shape: &[usize], seed: u64) -> AsImage {
        let d = shape.iter().product();
        let inner = Gmm::random(3, d, seed, false).unwrap();
        let mut info = inner.info().clone();
        info.sample_shape = shape.to_vec();
        AsImage { inner, info }
    }
    fn flat(&self, x: ArrayViewD<f32>) -> ArrayD<f32> {
        let n = x.shape()[0];
        x.to_owned()
            .into_shape_with_order(IxDyn(&[n, self.info.dim()]))
            .unwrap()
    }
    fn image(&self, x: ArrayD<f32>) -> ArrayD<f32> {
        let s = self.info.batch_shape(x.shape()[0]);
        x.into_shape_with_order(IxDyn(&s)).unwrap()
    }
}

impl Denoiser for AsImage {
    fn schedule(&self) -> &Schedule {
        self.inner.schedule()
    }
    fn info(&self) -> &PriorInfo {
        &self.info
    }
    fn x0(&self, x: ArrayViewD<f32>, t: &[f32]) -> posterior::Result<ArrayD<f32>> {
        Ok(self.image(self.inner.x0(self.flat(x).view(), t)?))
    }
    fn x0_vjp(
        &self,
        x: ArrayViewD<f32>,
        t: &[f32],
        v: ArrayViewD<f32>,
    ) -> posterior::Result<(ArrayD<f32>, ArrayD<f32>)> {
        let (a, b) = self
            .inner
            .x0_vjp(self.flat(x).view(), t, self.flat(v).view())?;
        Ok((self.image(a), self.image(b)))
    }
    fn x0_pullback<'a>(
        &'a self,
        x: ArrayViewD<f32>,
        t: &[f32],
    ) -> posterior::Result<(ArrayD<f32>, Pullback<'a>)> {
        let (x0, pb) = self.inner.x0_pullback(self.flat(x).view(), t)?;
        let pull = move |v: ArrayViewD<f32>| Ok(self.image(pb(self.flat(v).view())?));
        Ok((self.image(x0), Box::new(pull)))
    }
}

/// A measurement of a prior draw through `op`, with noise `sigma`.
fn measurement(op: &dyn LinearOperator, seed: u64, sigma: f32) -> ArrayD<f32> {
    let x = random_array(op.domain_shape(), seed, "truth").mapv(|v| 0.5 * v);
    let mut y = ArrayD::zeros(IxDyn(op.range_shape()));
    op.apply(x.view(), y.view_mut());
    let n = random_array(op.range_shape(), seed, "noise");
    y.zip_mut_with(&n, |a, b| *a += sigma * b);
    op.restrict_to_measured(y.view_mut());
    y
}

/// Runs the CPU and the device DDS with the same prior, operator, seed and settings and
/// returns (relative difference of the final samples, CPU and device CG iterations).
fn dds_pair(
    g: &Arc<Gpu>,
    cpu_op: Box<dyn LinearOperator>,
    dev_op: &dyn DeviceOperator,
    sigma: f32,
    settings: DdsSettings,
) -> (f64, usize, usize) {
    let prior = AsImage::new(cpu_op.domain_shape(), 11);
    let y = measurement(cpu_op.as_ref(), 3, sigma);
    let problem = Problem::new(Operator::Linear(cpu_op), y.clone(), sigma as f64).unwrap();
    let mut cpu = Dds::new(Arc::new(problem), settings).unwrap();
    let want = Executor::new(9).run(&mut cpu, &prior, 2).unwrap();
    let den = HostDenoiser::new(g, &prior);
    let dp = DeviceProblem::new(dev_op, y.view(), sigma as f64).unwrap();
    let got = sampler::dds(&den, &dp, &settings, 2, 9).unwrap();
    assert_eq!(got.outcome.nfe, want.nfe);
    assert_eq!(got.outcome.samples.shape(), want.samples.shape());
    (
        rel(got.outcome.samples.view(), want.samples.view()),
        cpu.cg_iterations(),
        got.cg_iterations,
    )
}

#[test]
fn device_dds_follows_the_cpu_sampler() {
    let Some(g) = gpu() else { return };
    // Same prior (the CPU mixture, called through the host adapter), same noise stream,
    // same CG: the runs differ only by f32 rounding in the operator, the CG updates and
    // the reductions' order. CG can amplify it by the system's condition number (<= 1 +
    // gamma ||A||^2 = 2 with noise; the noise-free system stops on its Rayleigh test) and
    // the mixture's Tweedie map by its Lipschitz constant per step. H100: <= 1.2e-7 after 3
    // and after 12 steps; held to 1e-6 (3 steps) and 2e-6 (12 steps).
    let mask = || Mask::new(&[1, 8, 8], random_pixels(8, 8, 0.5, 2).unwrap(), "r").unwrap();
    let mri = || SingleCoilMri::new(kmask(8, 8, 6)).unwrap();
    for (steps, tol) in [(3, 1e-6), (12, 2e-6)] {
        let s = DdsSettings {
            steps,
            ..DdsSettings::default()
        };
        let dev = DeviceMask::new(&g, &mask()).unwrap();
        let (e, ic, id) = dds_pair(&g, Box::new(mask()), &dev, 0.05, s);
        println!("dds mask (noisy) {steps} steps: {e:.2e}, CG iterations cpu {ic} device {id}");
        assert!(e <= tol, "mask: {e:.3e} > {tol:.1e}");
        assert_eq!(ic, id, "mask: CG iterations");
        let dev = DeviceMri::single_coil(&g, &mri()).unwrap();
        let (e, ic, id) = dds_pair(&g, Box::new(mri()), &dev, 0.0, s);
        println!("dds mri (noise-free) {steps} steps: {e:.2e}, CG iterations cpu {ic} device {id}");
        assert!(e <= tol, "mri: {e:.3e} > {tol:.0e}");
        // The Rayleigh and residual stops compare f64 scalars of slightly different f32
        // iterates: a stop may move by one iteration.
        assert!(ic.abs_diff(id) <= 2, "mri: CG iterations {ic} vs {id}");
    }
}

#[test]
fn device_dps_follows_the_cpu_sampler() {
    let Some(g) = gpu() else { return };
    // As for DDS: the same prior, noise and guidance; rounding differences only, which the
    // guidance's normalisation by ||y - A x0|| does not amplify (it is a unit vector
    // pulled back). H100: <= 1.1e-7 (3 steps), <= 1.7e-7 (15 steps); held to 1e-6 and 2e-6,
    // for the ancestral and DDIM updates.
    let sr = || Downsample::new(&[1, 8, 8], 2, Method::Bicubic).unwrap();
    for update in [DpsUpdate::Ancestral, DpsUpdate::Ddim { eta: 0.5 }] {
        for (steps, tol) in [(3, 1e-6), (15, 2e-6)] {
            let s = DpsSettings {
                steps,
                zeta: 0.3,
                update,
            };
            let op = sr();
            let prior = AsImage::new(op.domain_shape(), 12);
            let y = measurement(&op, 4, 0.05);
            let problem = Problem::new(Operator::Linear(Box::new(op)), y.clone(), 0.05).unwrap();
            let mut cpu = Dps::new(Arc::new(problem), s).unwrap();
            let want = Executor::new(5).run(&mut cpu, &prior, 2).unwrap();
            let dev = DeviceDownsample::new(&g, &sr()).unwrap();
            let dp = DeviceProblem::new(&dev, y.view(), 0.05).unwrap();
            let got = sampler::dps(&HostDenoiser::new(&g, &prior), &dp, &s, 2, 5).unwrap();
            assert_eq!((got.nfe, got.vjps), (want.nfe, want.vjps));
            let e = rel(got.samples.view(), want.samples.view());
            println!("dps {update:?} {steps} steps: {e:.2e}");
            assert!(e <= tol, "{update:?} {steps}: {e:.3e} > {tol:.0e}");
        }
    }
}

#[test]
fn device_problems_reject_bad_input() {
    let Some(g) = gpu() else { return };
    let op = Mask::new(&[1, 4, 4], random_pixels(4, 4, 0.5, 1).unwrap(), "r").unwrap();
    let dev = DeviceMask::new(&g, &op).unwrap();
    let wrong = ArrayD::zeros(IxDyn(&[1, 4, 5]));
    let e = DeviceProblem::new(&dev, wrong.view(), 0.1)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("[1, 4, 5]") && e.contains("[1, 4, 4]"), "{e}");
    let y = ArrayD::zeros(IxDyn(&[1, 4, 4]));
    assert!(DeviceProblem::new(&dev, y.view(), -1.0).is_err());
    let x = GpuTensor::zeros(&g, &[2, 1, 4, 5]).unwrap();
    let e = dev.apply_to(&x).err().unwrap().to_string();
    assert!(e.contains("expected (N, [1, 4, 4])"), "{e}");
}

/// The small ADM fixture (16x16x3, learned sigma, scale-shift norm, resblock up/down):
/// under the source tree, or relative to the working directory (device runs).
fn small_prior() -> posterior::prior::NetworkPrior {
    let rel_dir = std::path::Path::new("tests/data/adm/sigma_ss_updown");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel_dir);
    let dir = if dir.exists() {
        dir
    } else {
        rel_dir.to_path_buf()
    };
    posterior::prior::NetworkPrior::open(dir.to_str().unwrap()).unwrap()
}

#[test]
fn gpu_network_denoiser_matches_the_cpu_prior() {
    let Some(g) = gpu() else { return };
    let prior = small_prior();
    let den = sampler::GpuNetwork::from_prior(&g, &prior).unwrap();
    let shape = prior.info().batch_shape(2);
    let x = random_array(&shape, 21, "x");
    let v = random_array(&shape, 22, "v");
    let xd = GpuTensor::from_host(&g, x.view()).unwrap();
    let vd = GpuTensor::from_host(&g, v.view()).unwrap();
    use posterior::gpu::sampler::DeviceDenoiser;
    for t in [0.05, 0.5, 0.95] {
        let tt = [t as f32; 2];
        let want = prior.x0(x.view(), &tt).unwrap();
        let got = den.x0(&xd, t).unwrap().to_host(&g).unwrap();
        let (want0, pb) = prior.x0_pullback(x.view(), &tt).unwrap();
        let want_g = pb(v.view()).unwrap();
        let (got0, dpb) = den.x0_pullback(&xd, t).unwrap();
        let got_g = dpb(&vd).unwrap().to_host(&g).unwrap();
        let (e0, e1, eg) = (
            rel(got.view(), want.view()),
            rel(got0.to_host(&g).unwrap().view(), want0.view()),
            rel(got_g.view(), want_g.view()),
        );
        println!("gpu network t={t}: x0 {e0:.2e}, pullback x0 {e1:.2e}, vjp {eg:.2e}");
        // The network's f32 forward on the device vs the CPU differs by rounding (GEMM and
        // reduction orders); Tweedie divides by a(t) and multiplies by s(t), amplifying the
        // eps error by s / a (about 3 at t = 0.5, 150 at t = 0.95) relative to eps, while
        // x0 itself grows by the same factor. H100: x0 <= 4.8e-7, held to 5e-6; the VJP
        // chains ~40 layers backwards, H100 <= 1.3e-6, held to 1e-5.
        assert!(e0 <= 5e-6 && e1 <= 5e-6, "t={t}: x0 {e0:.3e} / {e1:.3e}");
        assert!(eg <= 1e-5, "t={t}: vjp {eg:.3e}");
    }
}

#[test]
fn device_loops_with_the_gpu_network_follow_the_cpu() {
    let Some(g) = gpu() else { return };
    let prior = small_prior();
    let den = sampler::GpuNetwork::from_prior(&g, &prior).unwrap();
    let shape = prior.info().sample_shape.clone();
    let mask = || Mask::new(&shape, random_pixels(16, 16, 0.6, 8).unwrap(), "r").unwrap();
    let blur = || Blur::new(&shape, motion(5, 0.5, 3).unwrap(), "motion").unwrap();
    // Network rounding (see the test above) enters every step and is carried by the chain
    // (the early, very noisy steps amplify eps errors by s / a ~ 150 in x0, damped by
    // a' ~ 0.01 in the next iterate). H100: <= 6.1e-7 after 3 steps, <= 1.2e-6 after 10;
    // held to 5e-6 and 1e-5. A wrong coefficient or a skipped term moves the samples by
    // O(1).
    for (steps, tol) in [(3, 5e-6), (10, 1e-5)] {
        let s = DdsSettings {
            steps,
            ..DdsSettings::default()
        };
        let y = measurement(&mask(), 5, 0.05);
        let p = Problem::new(Operator::Linear(Box::new(mask())), y.clone(), 0.05).unwrap();
        let mut cpu = Dds::new(Arc::new(p), s).unwrap();
        let want = Executor::new(3).run(&mut cpu, &prior, 1).unwrap();
        let dev = DeviceMask::new(&g, &mask()).unwrap();
        let dp = DeviceProblem::new(&dev, y.view(), 0.05).unwrap();
        let got = sampler::dds(&den, &dp, &s, 1, 3).unwrap();
        let e = rel(got.outcome.samples.view(), want.samples.view());
        println!("network dds {steps} steps: {e:.2e}");
        assert!(e <= tol, "dds {steps}: {e:.3e} > {tol:.0e}");

        let s = DpsSettings {
            steps,
            zeta: 0.3,
            update: DpsUpdate::Ancestral,
        };
        let y = measurement(&blur(), 6, 0.05);
        let p = Problem::new(Operator::Linear(Box::new(blur())), y.clone(), 0.05).unwrap();
        let mut cpu = Dps::new(Arc::new(p), s).unwrap();
        let want = Executor::new(4).run(&mut cpu, &prior, 1).unwrap();
        let dev = DeviceBlur::new(&g, &blur()).unwrap();
        let dp = DeviceProblem::new(&dev, y.view(), 0.05).unwrap();
        let got = sampler::dps(&den, &dp, &s, 1, 4).unwrap();
        let e = rel(got.samples.view(), want.samples.view());
        println!("network dps {steps} steps: {e:.2e}");
        assert!(e <= tol, "dps {steps}: {e:.3e} > {tol:.0e}");
    }
}

#[test]
fn smc_log_weights_match_the_cpu() {
    let Some(g) = gpu() else { return };
    let op = Mask::new(&[3, 8, 8], random_pixels(8, 8, 0.4, 3).unwrap(), "r").unwrap();
    let y = measurement(&op, 7, 0.1);
    let n = 5;
    let x = batch(n, op.domain_shape(), 8);
    let problem = Problem::new(Operator::Linear(Box::new(op.clone())), y.clone(), 0.1).unwrap();
    let (_, sq) = problem.data_grad_batch(x.view()).unwrap();
    let start: Vec<f64> = (0..n).map(|i| -0.3 * i as f64).collect();
    let var = 0.1f64.powi(2) + 0.02;
    let want: Vec<f64> = start
        .iter()
        .zip(&sq)
        .map(|(w, q)| w + -q / (2.0 * var))
        .collect();
    let dev = DeviceMask::new(&g, &op).unwrap();
    let dp = DeviceProblem::new(&dev, y.view(), 0.1).unwrap();
    let mut logw = g.stream().clone_htod(&start).unwrap();
    let xd = g.upload(x.as_slice().unwrap()).unwrap();
    sampler::add_gaussian_log_weights(&dp, &xd, n, var, &mut logw).unwrap();
    let got = sampler::download_f64(&g, &logw).unwrap();
    for (a, b) in got.iter().zip(&want) {
        // The residuals are bitwise equal (a 0/1 mask, one f32 subtraction); the squared
        // norms are f64 sums in another order: 1e-12 relative.
        assert!((a - b).abs() <= 1e-12 * b.abs().max(1.0), "{a} vs {b}");
    }
    assert!(sampler::add_gaussian_log_weights(&dp, &xd, n, 0.0, &mut logw).is_err());
}

#[test]
fn reconstruct_runs_resident_for_masks_and_falls_back_otherwise() {
    let Some(g) = gpu() else { return };
    use posterior::gpu::Backend;
    use posterior::sample::posterior::{dds_settings, dps_settings, Overrides};
    let mut prior = small_prior();
    let shape = prior.info().sample_shape.clone();
    let o = Overrides {
        steps: Some(4),
        ..Overrides::default()
    };
    let mask = Mask::new(&shape, random_pixels(16, 16, 0.5, 9).unwrap(), "r").unwrap();
    // In the prior's units the operator is scaled (as `problem_in_prior_units` does): the
    // probe must still find the diagonal.
    let op = posterior_operators::Scaled::new(Box::new(mask), 0.5).unwrap();
    let y = measurement(&op, 2, 0.05);
    let problem = Arc::new(Problem::new(Operator::Linear(Box::new(op)), y, 0.05).unwrap());
    // CPU reference first (the prior without a device copy).
    let mut cpu = Dds::new(problem.clone(), dds_settings(&o).unwrap()).unwrap();
    let want = Executor::new(6).run(&mut cpu, &prior, 1).unwrap();
    let (dds, dps) = (
        dds_settings(&o).unwrap(),
        dps_settings("inpaint", &o).unwrap(),
    );
    // Without a device copy of the network: not resident.
    assert!(
        sampler::resident_posterior(&prior, &problem, "dds", &dds, &dps, 1, 6)
            .unwrap()
            .is_none()
    );
    prior.use_backend(&Backend::Cuda(g.clone())).unwrap();
    let got = sampler::resident_posterior(&prior, &problem, "dds", &dds, &dps, 1, 6)
        .unwrap()
        .expect("a mask on a GPU prior runs resident");
    let e = rel(got.samples.view(), want.samples.view());
    println!("resident dds (4 steps) vs cpu: {e:.2e}");
    // As the network chains above (H100: ~5e-7 after 3 steps): 5e-6.
    assert!(e <= 5e-6, "resident vs cpu {e:.3e}");
    // Other samplers and operators without a device twin fall back (None).
    assert!(
        sampler::resident_posterior(&prior, &problem, "reddiff", &dds, &dps, 1, 6)
            .unwrap()
            .is_none()
    );
    let blur = Blur::new(&shape, motion(5, 0.5, 3).unwrap(), "m").unwrap();
    let yb = measurement(&blur, 3, 0.05);
    let pb = Problem::new(Operator::Linear(Box::new(blur)), yb, 0.05).unwrap();
    assert!(
        sampler::resident_posterior(&prior, &pb, "dps", &dds, &dps, 1, 6)
            .unwrap()
            .is_none()
    );
}

#[test]
fn device_norm_estimate_and_dps_gain_follow_the_cpu() {
    let Some(g) = gpu() else { return };
    use posterior_operators::LinearOperatorExt;
    // CT line integrals have norm ~ the image side (far above 1: DPS divides its guidance
    // by it); MRI is an isometry on its sampled part (norm 1).
    let ct = || {
        CtProjector::new(Geometry::new(12, 12, &GeometryParams::parallel().views(10)).unwrap())
            .unwrap()
    };
    let dev = DeviceCt::new(&g, &ct()).unwrap();
    let (want, got) = (
        ct().norm_estimate(30, 0),
        sampler::norm_estimate(&dev, 30, 0).unwrap(),
    );
    println!("ct norm: cpu {want:.6} device {got:.6}");
    // The same iteration in f64 scalars over f32 vectors: 30 products of rounding ~1e-7.
    assert!(
        want > 2.0 && (got - want).abs() <= 1e-5 * want,
        "{got} vs {want}"
    );
    let mri = SingleCoilMri::new(kmask(8, 8, 3)).unwrap();
    let dm = DeviceMri::single_coil(&g, &mri).unwrap();
    let (want, got) = (
        mri.norm_estimate(30, 0),
        sampler::norm_estimate(&dm, 30, 0).unwrap(),
    );
    assert!((got - want).abs() <= 1e-5 * want, "mri {got} vs {want}");

    // DPS on the CT problem: the device run applies the same gain as the CPU run.
    let s = DpsSettings {
        steps: 6,
        zeta: 1.0,
        update: DpsUpdate::Ancestral,
    };
    let prior = AsImage::new(&[1, 12, 12], 13);
    let y = measurement(&ct(), 5, 0.05);
    let problem = Problem::new(Operator::Linear(Box::new(ct())), y.clone(), 0.05).unwrap();
    let mut cpu = Dps::new(Arc::new(problem), s).unwrap();
    let want = Executor::new(8).run(&mut cpu, &prior, 2).unwrap();
    let dp = DeviceProblem::new(&dev, y.view(), 0.05).unwrap();
    let got = sampler::dps(&HostDenoiser::new(&g, &prior), &dp, &s, 2, 8).unwrap();
    let e = rel(got.samples.view(), want.samples.view());
    println!("dps ct (gain 1/||A||) 6 steps: {e:.2e}");
    // As the other exact-prior chains (H100: ~2e-7), with the gain's own rounding: 2e-6.
    // Without the gain the device steps would be ~||A|| times larger: O(1) apart.
    assert!(e <= 2e-6, "dps ct: {e:.3e}");
}
