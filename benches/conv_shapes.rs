//! Every convolution of a U-Net, ours against PyTorch's, one shape at a time.
//!
//! `benches/peers/conv_shapes_peer.py` records the distinct convolutions of the FFHQ-256 (or
//! the small) ADM U-Net with their PyTorch times; this bench times `Conv2d::forward` on the
//! same shapes (batch 1, 2 warm-up runs, then the median of at least 5 runs and 0.2 s, at most 50;
//! the same protocol on both sides) and prints
//! both, the ratio and the GFLOP/s per shape, then the totals weighted by how often each
//! shape occurs in the network. It shows which shapes the convolution engine is slow at.
//!
//! ```sh
//! /tmp/torchenv/bin/python benches/peers/conv_shapes_peer.py --out /tmp/shapes.json
//! POSTERIOR_CONV_SHAPES=/tmp/shapes.json cargo bench --bench conv_shapes
//! ```
//!
//! Without `POSTERIOR_CONV_SHAPES` it says so and does nothing.

use std::hint::black_box;
use std::time::Instant;

use ndarray::{Array1, Array4};
use posterior::nn::Conv2d;
use serde::Deserialize;

/// One row of the peer's JSON.
#[derive(Deserialize)]
struct Shape {
    h: usize,
    ci: usize,
    co: usize,
    k: usize,
    s: usize,
    p: usize,
    count: usize,
    gflop: f64,
    torch_ms: f64,
}

fn median_ms(f: &dyn Fn()) -> f64 {
    for _ in 0..2 {
        f();
    }
    // At least 5 runs and 0.2 s, at most 50 runs (the peer's protocol).
    let mut ts: Vec<f64> = Vec::new();
    while ts.len() < 5 || (ts.iter().sum::<f64>() < 200.0 && ts.len() < 50) {
        let t0 = Instant::now();
        f();
        ts.push(1e3 * t0.elapsed().as_secs_f64());
    }
    ts.sort_by(f64::total_cmp);
    ts[ts.len() / 2]
}

fn main() {
    let Ok(path) = std::env::var("POSTERIOR_CONV_SHAPES") else {
        eprintln!("conv_shapes: set POSTERIOR_CONV_SHAPES to the JSON written by benches/peers/conv_shapes_peer.py");
        return;
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("conv_shapes: cannot read {path}: {e}"));
    let shapes: Vec<Shape> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("conv_shapes: {path} is not the peer's JSON: {e}"));
    // What the command-line tool does at start-up (outputs reused, not mapped afresh).
    posterior::nn::keep_freed_memory();
    println!(
        "{:>4} {:>5} {:>5} {:>2} {:>3} | {:>9} {:>9} {:>6} | {:>7}",
        "px", "in", "out", "k", "n", "ours ms", "torch ms", "ratio", "GFLOP/s"
    );
    let (mut ours_total, mut torch_total) = (0.0, 0.0);
    for sh in &shapes {
        let fill = |i: usize| ((i * 2_654_435_761) % 1000) as f32 / 1000.0 - 0.5;
        let mut i = 0;
        let w = Array4::from_shape_simple_fn((sh.co, sh.ci, sh.k, sh.k), || {
            i += 1;
            fill(i) * 0.1
        });
        let conv = Conv2d::new(w, Array1::zeros(sh.co), sh.s, sh.p).expect("valid conv");
        let x = Array4::from_shape_simple_fn((1, sh.ci, sh.h, sh.h), || {
            i += 1;
            fill(i)
        });
        let ms = median_ms(&|| {
            black_box(conv.forward(black_box(x.view())).expect("forward"));
        });
        ours_total += sh.count as f64 * ms;
        torch_total += sh.count as f64 * sh.torch_ms;
        println!(
            "{:>4} {:>5} {:>5} {:>2} {:>3} | {:>9.2} {:>9.2} {:>6.2} | {:>7.1}",
            sh.h,
            sh.ci,
            sh.co,
            sh.k,
            sh.count,
            ms,
            sh.torch_ms,
            ms / sh.torch_ms,
            sh.gflop / ms * 1e3
        );
    }
    println!(
        "all convolutions, weighted by count: ours {ours_total:.1} ms, torch {torch_total:.1} ms, ratio {:.2}",
        ours_total / torch_total
    );
}
