use super::*;
use crate::linear::{
    adjoint_test, normal_mismatch, random_array, solve_regularized_residual, LinearOperatorExt,
};
use ndarray::Dimension;
use num_complex::Complex64;
use std::f64::consts::PI;

const SHAPES: [(usize, usize); 4] = [(8, 8), (7, 9), (16, 12), (5, 4)];

fn random_mask(h: usize, w: usize, seed: u64) -> Array2<f32> {
    masks::gaussian2d(h, w, 2.5, 0.0, seed).unwrap()
}

/// Random, unnormalised complex maps: the operators must not rely on normalisation.
fn random_sens(coils: usize, h: usize, w: usize, seed: u64) -> Array3<Complex32> {
    let re = random_array(&[coils, h, w], seed, "test-sens-re");
    let im = random_array(&[coils, h, w], seed, "test-sens-im");
    Array3::from_shape_fn((coils, h, w), |(c, i, j)| {
        Complex32::new(re[[c, i, j]], im[[c, i, j]])
    })
}

#[test]
fn adjoint_single_and_multi_coil() {
    for (k, &(h, w)) in SHAPES.iter().enumerate() {
        let mask = random_mask(h, w, k as u64);
        let single = SingleCoilMri::new(mask.clone()).unwrap();
        adjoint_test(&single, 11)
            .verdict(&format!("single {h}x{w}"), 1e-5)
            .unwrap();
        let multi = MultiCoilMri::new(random_sens(3, h, w, k as u64), mask.clone()).unwrap();
        adjoint_test(&multi, 12)
            .verdict(&format!("multi {h}x{w}"), 1e-5)
            .unwrap();
        let synth = MultiCoilMri::synthetic(4, mask).unwrap();
        adjoint_test(&synth, 13)
            .verdict(&format!("synthetic {h}x{w}"), 1e-5)
            .unwrap();
    }
}

/// The centred orthonormal DFT written out as a dense sum, in f64:
/// `X[k,l] = sum x[m,n] exp(-2 pi i ((k-ch)(m-ch)/h + (l-cw)(n-cw)/w)) / sqrt(h w)`.
fn dense_centred_dft(x: &[Complex64], h: usize, w: usize) -> Vec<Complex64> {
    let (ch, cw) = ((h / 2) as f64, (w / 2) as f64);
    let mut out = vec![Complex64::default(); h * w];
    for k in 0..h {
        for l in 0..w {
            let mut acc = Complex64::default();
            for m in 0..h {
                for n in 0..w {
                    let ph = -2.0
                        * PI
                        * ((k as f64 - ch) * (m as f64 - ch) / h as f64
                            + (l as f64 - cw) * (n as f64 - cw) / w as f64);
                    acc += x[m * w + n] * Complex64::from_polar(1.0, ph);
                }
            }
            out[k * w + l] = acc / ((h * w) as f64).sqrt();
        }
    }
    out
}

fn as_c64(x: &ArrayD<f32>) -> Vec<Complex64> {
    let (h, w) = (x.shape()[1], x.shape()[2]);
    (0..h * w)
        .map(|p| Complex64::new(x[[0, p / w, p % w]] as f64, x[[1, p / w, p % w]] as f64))
        .collect()
}

// Tolerance: inputs are O(1) standard normals and the outputs O(1) (unitary transform);
// an f32 FFT of <= 80 points is accurate to ~1e-6 relative, so 1e-4 times the largest
// reference magnitude leaves room for rounding while any index, sign, shift or scale error
// (all O(1)) fails.
#[test]
fn apply_matches_dense_dft_reference() {
    for (k, &(h, w)) in [(4, 6), (5, 7), (6, 5), (3, 3), (1, 4)].iter().enumerate() {
        let mask = masks::random1d(h, w, 1.5, 0.0, k as u64).unwrap();
        let x = random_array(&[2, h, w], k as u64, "test-x");
        let xc = as_c64(&x);

        let y = SingleCoilMri::new(mask.clone())
            .unwrap()
            .apply_to(x.view())
            .unwrap();
        let r = dense_centred_dft(&xc, h, w);
        let scale = r.iter().map(|v| v.norm()).fold(0.0, f64::max);
        for p in 0..h * w {
            let m = mask[[p / w, p % w]] as f64;
            let (i, j) = (p / w, p % w);
            let got = Complex64::new(y[[0, i, j]] as f64, y[[1, i, j]] as f64);
            assert!(
                (got - r[p] * m).norm() < 1e-4 * scale,
                "single {h}x{w} at ({i},{j}): {got} vs {}",
                r[p] * m
            );
        }

        let coils = 3;
        let sens = random_sens(coils, h, w, 5 + k as u64);
        let y = MultiCoilMri::new(sens.clone(), mask.clone())
            .unwrap()
            .apply_to(x.view())
            .unwrap();
        for c in 0..coils {
            let sx: Vec<Complex64> = (0..h * w)
                .map(|p| {
                    let s = sens[[c, p / w, p % w]];
                    xc[p] * Complex64::new(s.re as f64, s.im as f64)
                })
                .collect();
            let r = dense_centred_dft(&sx, h, w);
            let scale = r.iter().map(|v| v.norm()).fold(0.0, f64::max);
            for p in 0..h * w {
                let m = mask[[p / w, p % w]] as f64;
                let (i, j) = (p / w, p % w);
                let got = Complex64::new(y[[c, 0, i, j]] as f64, y[[c, 1, i, j]] as f64);
                assert!(
                    (got - r[p] * m).norm() < 1e-4 * scale,
                    "multi {h}x{w} coil {c} at ({i},{j}): {got} vs {}",
                    r[p] * m
                );
            }
        }
    }
}

fn max_abs_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    a.iter()
        .zip(b.iter())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

// Normal and solve tolerances: O(1) data, a few f32 FFTs; 1e-4 absolute is ~100x rounding.
#[test]
fn closed_form_normal_matches_apply_then_adjoint() {
    for (k, &(h, w)) in SHAPES.iter().enumerate() {
        let mask = random_mask(h, w, 20 + k as u64);
        let single = SingleCoilMri::new(mask.clone()).unwrap();
        let multi = MultiCoilMri::new(random_sens(4, h, w, 2), mask).unwrap();
        for op in [&single as &dyn LinearOperator, &multi] {
            let d = normal_mismatch(op, 30 + k as u64);
            assert!(d < 1e-4, "{} {h}x{w}: normal differs by {d}", op.name());
        }
    }
}

#[test]
fn solve_regularized_inverts_normal_plus_gamma() {
    for (k, &(h, w)) in SHAPES.iter().enumerate() {
        let op = SingleCoilMri::new(random_mask(h, w, 40 + k as u64)).unwrap();
        let rhs = random_array(&[2, h, w], 50 + k as u64, "test-rhs");
        for gamma in [0.1f32, 1.0, 3.0] {
            // (A^T A + gamma) z through the generic apply/adjoint path must give rhs back.
            // |z| is up to |rhs| / gamma, and the rounding of the products scales with it,
            // hence the 1e-4 / gamma bound for gamma < 1 (relative to max |rhs| ~ 3).
            let d = solve_regularized_residual(&op, gamma, 50 + k as u64).unwrap();
            assert!(
                d < 1e-4 / gamma.min(1.0) as f64,
                "{h}x{w} gamma {gamma}: residual {d}"
            );
        }
        // An undersampled mask with gamma = 0 has no inverse.
        assert!(op.solve_regularized(0.0, rhs.view()).is_none());
    }
}

#[test]
fn full_mask_with_normalised_maps_is_an_isometry() {
    let (h, w) = (9, 10);
    let full = Array2::ones((h, w));
    let x = random_array(&[2, h, w], 1, "test-x");
    for op in [
        Box::new(SingleCoilMri::new(full.clone()).unwrap()) as Box<dyn LinearOperator>,
        Box::new(MultiCoilMri::synthetic(6, full).unwrap()),
    ] {
        let n = op.normal_to(x.view()).unwrap();
        assert!(max_abs_diff(&n, &x) < 1e-5, "{}", op.name());
    }
}

#[test]
fn unsampled_entries_are_zero_and_restrict_zeroes_exactly_those() {
    let (h, w) = (7, 9);
    let mask = random_mask(h, w, 3);
    let x = random_array(&[2, h, w], 2, "test-x");
    let single = SingleCoilMri::new(mask.clone()).unwrap();
    let multi = MultiCoilMri::synthetic(3, mask.clone()).unwrap();
    for op in [&single as &dyn LinearOperator, &multi] {
        let y = op.apply_to(x.view()).unwrap();
        let mut ones = ArrayD::<f32>::ones(IxDyn(op.range_shape()));
        op.restrict_to_measured(ones.view_mut());
        for (idx, &v) in ones.indexed_iter() {
            let nd = idx.ndim();
            let m = mask[[idx[nd - 2], idx[nd - 1]]];
            assert_eq!(v, m, "{}: restrict at {idx:?}", op.name());
            if m == 0.0 {
                assert_eq!(
                    y[&idx],
                    0.0,
                    "{}: unsampled entry {idx:?} nonzero",
                    op.name()
                );
            } else {
                assert!(y[&idx] != 0.0);
            }
        }
    }
}

#[test]
fn constructors_reject_bad_masks_and_maps() {
    let mut mask = Array2::<f32>::ones((6, 8));
    mask[[1, 1]] = 0.5;
    let e = SingleCoilMri::new(mask).unwrap_err().to_string();
    assert!(e.contains("mask") && e.contains("0 and 1"), "{e}");
    assert!(SingleCoilMri::new(Array2::zeros((0, 3))).is_err());
    let e = MultiCoilMri::new(random_sens(2, 8, 6, 0), Array2::ones((6, 8)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("(2, 8, 6)") && e.contains("6 x 8"), "{e}");
    let op = MultiCoilMri::synthetic(2, Array2::ones((6, 8))).unwrap();
    assert!(op
        .apply_to(ArrayD::zeros(IxDyn(&[1, 6, 8])).view())
        .is_err());
}
