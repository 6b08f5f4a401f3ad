//! Micro-benchmarks of the network layer primitives (`posterior::nn`): a 3x3 convolution
//! 64 -> 64 channels on 64x64 at batch 1 (forward, and the input VJP), a GroupNorm(32) of
//! the same tensor, and one attention head set at 16x16 (256 positions, 128 channels, 4
//! heads). Run with `cargo bench --bench nn`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ndarray::{Array1, Array3, Array4};
use posterior::nn::{Conv2d, GroupNorm, QkvAttentionLegacy};

fn filled4(shape: (usize, usize, usize, usize), scale: f32) -> Array4<f32> {
    let mut i = 0u32;
    Array4::from_shape_simple_fn(shape, || {
        i = i.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        scale * ((i >> 8) as f32 / (1u32 << 24) as f32 - 0.5)
    })
}

fn bench(c: &mut Criterion) {
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

criterion_group!(benches, bench);
criterion_main!(benches);
