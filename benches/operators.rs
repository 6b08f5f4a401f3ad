//! Forward and adjoint (or VJP) timings of every operator family, at the sizes the
//! benchmark suites use. Run with `cargo bench --bench operators`; the numpy / scikit-image
//! peer of the same work is `benches/peers/operators_peer.py` (see benches/README.md).
//!
//! Operators are built through their spec strings, as the CLI builds them, with seed 0.
//! Each case times `forward` (A x) and `adjoint` (A^T y; the VJP at x for nonlinear
//! models) separately, allocation of the output included.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::ArrayD;
use posterior::spec::{build, BuildContext, Physics};
use posterior_operators::linear::random_array;

/// (label, spec, image shape)
const CASES: &[(&str, &str, [usize; 3])] = &[
    (
        "blur gaussian 3x256x256",
        "blur:kernel=gaussian,sigma=3",
        [3, 256, 256],
    ),
    ("inpaint box 3x256x256", "inpaint:mask=box", [3, 256, 256]),
    ("sr bicubic x4 3x256x256", "sr:factor=4", [3, 256, 256]),
    ("mri 8-coil 320x320", "mri:coils=8,accel=4", [1, 320, 320]),
    (
        "ct parallel 512x512 180 views",
        "ct:views=180",
        [1, 512, 512],
    ),
    (
        "ct fan 512x512 180 views",
        "ct:geometry=fan,views=180",
        [1, 512, 512],
    ),
    ("phase x2 256x256", "phase:oversampling=2", [1, 256, 256]),
];

fn physics(spec: &str, shape: &[usize]) -> Physics {
    let ctx = BuildContext::new(shape, 0, std::env::temp_dir());
    build(spec, &ctx).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

fn operators(c: &mut Criterion) {
    let mut g = c.benchmark_group("operators");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for &(label, spec, shape) in CASES {
        let p = physics(spec, &shape);
        let op = &p.operator;
        // A positive image (phase retrieval's VJP is smooth there).
        let x: ArrayD<f32> = random_array(op.domain_shape(), 1, "bench-x").mapv(|v| v.abs() + 0.1);
        let y = random_array(op.range_shape(), 2, "bench-y");
        g.bench_function(format!("{label} / forward"), |b| {
            b.iter(|| black_box(op.forward(x.view()).expect("forward")))
        });
        g.bench_function(format!("{label} / adjoint"), |b| {
            b.iter(|| black_box(op.vjp(x.view(), y.view()).expect("adjoint")))
        });
    }
    g.finish();
}

criterion_group!(benches, operators);
criterion_main!(benches);
