//! Metrics against scikit-image 0.26 golden values.
//!
//! The golden numbers below were printed by this Python (numpy 2, scikit-image 0.26.0),
//! on float64 arrays whose values are multiples of 1/64 or 1/8, so they are exact in f32
//! and both sides see the same inputs (skimage computes in float64 for float64 inputs):
//!
//! ```python
//! import numpy as np
//! from skimage.metrics import peak_signal_noise_ratio as psnr, structural_similarity as ssim, normalized_root_mse as nrmse
//! i, j = np.meshgrid(np.arange(24), np.arange(20), indexing="ij")
//! ref_a = ((3 * i + 5 * j) % 64) / 64.0
//! x_a = ((3 * i + 5 * j + (i * j) % 7) % 64) / 64.0
//! c, i3, j3 = np.meshgrid(np.arange(3), np.arange(16), np.arange(18), indexing="ij")
//! ref_b = ((c * 11 + i3 * i3 + 2 * j3) % 32) / 32.0
//! x_b = ref_b + ((i3 + 2 * j3 + c) % 5 - 2) / 64.0
//! i, j = np.meshgrid(np.arange(15), np.arange(15), indexing="ij")
//! ref_c = ((i * j) % 17 - 8) / 8.0
//! x_c = ((i * j + i) % 17 - 8) / 8.0
//! for name, x, r, dr, ch in [("a", x_a, ref_a, 1.0, None), ("b", x_b, ref_b, 1.0, 0), ("c", x_c, ref_c, 2.0, None)]:
//!     s = ssim(x, r, data_range=dr, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=ch)
//!     print(f"{name}: psnr={psnr(r, x, data_range=dr):.10f} ssim={s:.10f} nrmse={nrmse(r, x, normalization='euclidean'):.10f}")
//! ```
//! Output:
//! ```text
//! a: psnr=15.3603815233 ssim=0.7716699429 nrmse=0.3033097172
//! b: psnr=33.1107869717 ssim=0.9970479890 nrmse=0.0392088907
//! c: psnr=7.1135959363 ssim=-0.4544936953 nrmse=1.3524470008
//! ```
//! Tolerance 1e-4 (absolute) as required; the computations are the same formulas in f64,
//! so the actual agreement is ~1e-12.

use ndarray::{Array2, Array3, Array4, ArrayD};
use posterior::metrics::{nrmse, nrmse_volume, psnr, psnr_volume, ssim, ssim_volume};

fn case_a() -> (ArrayD<f32>, ArrayD<f32>) {
    let r = Array2::from_shape_fn((24, 20), |(i, j)| ((3 * i + 5 * j) % 64) as f32 / 64.0);
    let x = Array2::from_shape_fn((24, 20), |(i, j)| {
        ((3 * i + 5 * j + (i * j) % 7) % 64) as f32 / 64.0
    });
    (x.into_dyn(), r.into_dyn())
}

fn case_b() -> (ArrayD<f32>, ArrayD<f32>) {
    let r = Array3::from_shape_fn((3, 16, 18), |(c, i, j)| {
        ((c * 11 + i * i + 2 * j) % 32) as f32 / 32.0
    });
    let x = Array3::from_shape_fn((3, 16, 18), |(c, i, j)| {
        r[[c, i, j]] + (((i + 2 * j + c) % 5) as f32 - 2.0) / 64.0
    });
    (x.into_dyn(), r.into_dyn())
}

fn case_c() -> (ArrayD<f32>, ArrayD<f32>) {
    let r = Array2::from_shape_fn((15, 15), |(i, j)| (((i * j) % 17) as f32 - 8.0) / 8.0);
    let x = Array2::from_shape_fn((15, 15), |(i, j)| (((i * j + i) % 17) as f32 - 8.0) / 8.0);
    (x.into_dyn(), r.into_dyn())
}

fn close(got: f64, want: f64, what: &str) {
    assert!(
        (got - want).abs() < 1e-4,
        "{what}: got {got:.10}, skimage {want:.10}"
    );
}

#[test]
fn golden_values_match_skimage() {
    let cases = [
        (
            "a",
            case_a(),
            1.0,
            15.3603815233,
            0.7716699429,
            0.3033097172,
        ),
        (
            "b",
            case_b(),
            1.0,
            33.1107869717,
            0.9970479890,
            0.0392088907,
        ),
        (
            "c",
            case_c(),
            2.0,
            7.1135959363,
            -0.4544936953,
            1.3524470008,
        ),
    ];
    for (name, (x, r), dr, p, s, n) in cases {
        close(
            psnr(x.view(), r.view(), dr).unwrap(),
            p,
            &format!("{name} psnr"),
        );
        close(
            ssim(x.view(), r.view(), dr).unwrap(),
            s,
            &format!("{name} ssim"),
        );
        close(
            nrmse(x.view(), r.view()).unwrap(),
            n,
            &format!("{name} nrmse"),
        );
    }
}

#[test]
fn volume_versions_score_each_slice() {
    let (xa, ra) = case_a();
    let (xc, rc) = case_c();
    // Two slices of 15x15: case c, then the top-left 15x15 of case a.
    let mut x = Array3::<f32>::zeros((2, 15, 15));
    let mut r = Array3::<f32>::zeros((2, 15, 15));
    x.index_axis_mut(ndarray::Axis(0), 0)
        .assign(&xc.view().into_dimensionality::<ndarray::Ix2>().unwrap());
    r.index_axis_mut(ndarray::Axis(0), 0)
        .assign(&rc.view().into_dimensionality::<ndarray::Ix2>().unwrap());
    let xa2 = xa.into_dimensionality::<ndarray::Ix2>().unwrap();
    let ra2 = ra.into_dimensionality::<ndarray::Ix2>().unwrap();
    x.index_axis_mut(ndarray::Axis(0), 1)
        .assign(&xa2.slice(ndarray::s![..15, ..15]));
    r.index_axis_mut(ndarray::Axis(0), 1)
        .assign(&ra2.slice(ndarray::s![..15, ..15]));
    let (xv, rv) = (x.view().into_dyn(), r.view().into_dyn());
    let s = ssim_volume(xv.clone(), rv.clone(), 2.0).unwrap();
    assert_eq!(s.per_slice.len(), 2);
    close(s.per_slice[0], -0.4544936953, "slice 0 ssim");
    let s1 = ssim(
        x.index_axis(ndarray::Axis(0), 1).into_dyn(),
        r.index_axis(ndarray::Axis(0), 1).into_dyn(),
        2.0,
    )
    .unwrap();
    close(s.per_slice[1], s1, "slice 1 ssim");
    close(s.mean, (s.per_slice[0] + s1) / 2.0, "mean ssim");
    let p = psnr_volume(xv.clone(), rv.clone(), 2.0).unwrap();
    close(p.per_slice[0], 7.1135959363, "slice 0 psnr");
    let n = nrmse_volume(xv, rv).unwrap();
    close(n.per_slice[0], 1.3524470008, "slice 0 nrmse");

    // (D, C, H, W) volumes are accepted too.
    let v4 = Array4::<f32>::from_elem((2, 3, 12, 12), 0.5);
    let m = psnr_volume(v4.view().into_dyn(), v4.view().into_dyn(), 1.0).unwrap();
    assert_eq!(m.per_slice, vec![f64::INFINITY; 2]);
}

#[test]
fn bad_inputs_are_errors() {
    let a = Array2::<f32>::zeros((16, 16)).into_dyn();
    let b = Array2::<f32>::zeros((16, 15)).into_dyn();
    let e = psnr(a.view(), b.view(), 1.0).unwrap_err().to_string();
    assert!(e.contains("[16, 16]") && e.contains("[16, 15]"), "{e}");
    assert!(ssim(a.view(), b.view(), 1.0).is_err());
    assert!(nrmse(a.view(), b.view()).is_err());
    // Zero reference: NRMSE undefined.
    assert!(nrmse(a.view(), a.view())
        .unwrap_err()
        .to_string()
        .contains("all zeros"));
    // Bad data range.
    assert!(psnr(a.view(), a.view(), 0.0).is_err());
    assert!(ssim(a.view(), a.view(), f64::NAN).is_err());
    // Too small for the 11x11 window.
    let s = Array2::<f32>::zeros((10, 30)).into_dyn();
    assert!(ssim(s.view(), s.view(), 1.0)
        .unwrap_err()
        .to_string()
        .contains("11"));
    // NaN input.
    let mut n = a.clone();
    n[[3, 4]] = f32::NAN;
    assert!(psnr(n.view(), a.view(), 1.0)
        .unwrap_err()
        .to_string()
        .contains("NaN"));
    // 1-D input is not an image; 2-D is not a volume.
    let one = ndarray::Array1::<f32>::ones(20).into_dyn();
    assert!(psnr(one.view(), one.view(), 1.0).is_err());
    assert!(psnr_volume(a.view(), a.view(), 1.0).is_err());
}
