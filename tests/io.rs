//! File I/O: round trips, the bundled fixtures, malformed inputs, atomic writes.

use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3, ArrayD, Axis, IxDyn};
use num_complex::Complex32;
use posterior::io::{
    read_cfl, read_complex, read_gray, read_image, read_npy, read_volume, write_atomic, write_cfl,
    write_image, write_json, write_npy, Intensity, ReadOptions, SliceAxis,
};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn default() -> ReadOptions {
    ReadOptions::default()
}

/// The error message of a failed read, checked to name the file.
fn err_naming(r: posterior::Result<impl std::fmt::Debug>, path: &Path) -> String {
    let msg = r.expect_err("expected an error").to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "message does not name {}: {msg}",
        path.display()
    );
    msg
}

// ---------------------------------------------------------------- round trips

#[test]
fn png_8bit_round_trip_gray_and_rgb() {
    let dir = tempfile::tempdir().unwrap();
    for c in [1usize, 3] {
        // Exact 8-bit levels survive the round trip exactly.
        let img = Array3::from_shape_fn((c, 7, 10), |(k, i, j)| {
            ((k * 50 + i * 31 + j * 7) % 256) as f32 / 255.0
        });
        let p = dir.path().join(format!("rt{c}.png"));
        write_image(&p, img.view(), (0.0, 1.0)).unwrap();
        let back = read_image(&p, &default()).unwrap();
        assert_eq!(back.data.dim(), (c, 7, 10));
        assert_eq!(back.intensity, Intensity::scaled(255.0, "8-bit"));
        let err = (&back.data - &img)
            .mapv(f32::abs)
            .fold(0.0f32, |a, &b| a.max(b));
        assert!(err < 1e-6, "c = {c}: max error {err}");
    }
    // The display range maps linearly and clips: [-1, 1] -> 0..255.
    let img = Array3::from_shape_vec((1, 1, 4), vec![-2.0, -1.0, 0.0, 1.0]).unwrap();
    let p = dir.path().join("display.png");
    write_image(&p, img.view(), (-1.0, 1.0)).unwrap();
    let back = read_image(&p, &default()).unwrap().data;
    let want = [0.0, 0.0, 128.0 / 255.0, 1.0]; // 0.5 * 255 = 127.5 rounds to 128
    for (g, w) in back.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{g} vs {w}");
    }
}

#[test]
fn tiff_16bit_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    for c in [1usize, 3] {
        let img = Array3::from_shape_fn((c, 9, 6), |(k, i, j)| {
            ((k * 977 + i * 7919 + j * 104729) % 10007) as f32 / 10006.0
        });
        let p = dir.path().join(format!("rt{c}.tif"));
        write_image(&p, img.view(), (0.0, 1.0)).unwrap();
        let back = read_image(&p, &default()).unwrap();
        assert_eq!(back.data.dim(), (c, 9, 6));
        assert_eq!(back.intensity.unit, "16-bit");
        assert_eq!(back.intensity.scale, 65535.0);
        // Quantisation to 16 bits: at most half a level, plus f32 rounding.
        let err = (&back.data - &img)
            .mapv(f32::abs)
            .fold(0.0f32, |a, &b| a.max(b));
        assert!(err <= 0.5 / 65535.0 + 1e-7, "c = {c}: max error {err}");
        assert!(
            err > 0.0,
            "16-bit quantisation cannot be exact for these values"
        );
    }
}

#[test]
fn npy_round_trip_and_types() {
    let dir = tempfile::tempdir().unwrap();
    let img = Array3::from_shape_fn((2, 5, 3), |(k, i, j)| {
        k as f32 - 0.3 * i as f32 + 1e-3 * j as f32
    });
    let p = dir.path().join("img.npy");
    write_image(&p, img.view(), (0.0, 1.0)).unwrap();
    let back = read_image(&p, &default()).unwrap();
    assert_eq!(back.data, img);
    assert_eq!(back.intensity, Intensity::scaled(1.0, "npy"));
    // (H, W) -> C = 1.
    let p2 = dir.path().join("hw.npy");
    write_npy(&p2, img.index_axis(Axis(0), 1).into_dyn()).unwrap();
    let back = read_image(&p2, &default()).unwrap().data;
    assert_eq!(back.dim(), (1, 5, 3));
    assert_eq!(back.index_axis(Axis(0), 0), img.index_axis(Axis(0), 1));
    // f64 files.
    let p3 = dir.path().join("f64.npy");
    let a64 = Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f64 / 3.0);
    ndarray_npy::write_npy(&p3, &a64).unwrap();
    let g = read_gray(&p3).unwrap();
    assert_eq!(g, a64.mapv(|v| v as f32));
    // complex64 -> leading (re, im) pair.
    let p4 = dir.path().join("c64.npy");
    let c = Array2::from_shape_fn((2, 3), |(i, j)| Complex32::new(i as f32, -(j as f32)));
    ndarray_npy::write_npy(&p4, &c).unwrap();
    let r = read_npy(&p4).unwrap();
    assert_eq!(r.shape(), &[2, 2, 3]);
    assert_eq!(r[[0, 1, 2]], 1.0);
    assert_eq!(r[[1, 1, 2]], -2.0);
    assert_eq!(read_complex(&p4).unwrap(), c.into_dyn());
}

#[test]
fn cfl_round_trip_and_bart_order() {
    let dir = tempfile::tempdir().unwrap();
    let shape = [4usize, 3, 1, 2];
    let a = ArrayD::from_shape_fn(IxDyn(&shape), |ix| {
        Complex32::new((ix[0] + 10 * ix[1] + 100 * ix[3]) as f32, -(ix[0] as f32))
    });
    let base = dir.path().join("ksp");
    write_cfl(&base, a.view()).unwrap();
    let hdr = std::fs::read_to_string(dir.path().join("ksp.hdr")).unwrap();
    assert!(hdr.starts_with("# Dimensions\n4 3 1 2 1"), "{hdr}");
    // Column-major: the second complex value in the file is element [1, 0, 0, 0], the
    // fifth is [0, 1, 0, 0].
    let raw = std::fs::read(dir.path().join("ksp.cfl")).unwrap();
    assert_eq!(raw.len(), 24 * 8);
    let re = |n: usize| f32::from_le_bytes(raw[8 * n..8 * n + 4].try_into().unwrap());
    assert_eq!(re(1), 1.0);
    assert_eq!(re(4), 10.0);
    assert_eq!(re(12), 100.0);
    for p in [
        base.clone(),
        dir.path().join("ksp.cfl"),
        dir.path().join("ksp.hdr"),
    ] {
        let b = read_cfl(&p).unwrap();
        assert_eq!(b, a);
    }
    assert_eq!(read_complex(&dir.path().join("ksp.cfl")).unwrap(), a);
    // Trailing singletons beyond the fourth dimension are dropped; the first four kept.
    let v = ArrayD::from_elem(IxDyn(&[5]), Complex32::new(1.0, 2.0));
    write_cfl(&dir.path().join("v.cfl"), v.view()).unwrap();
    assert_eq!(
        read_cfl(&dir.path().join("v.cfl")).unwrap().shape(),
        &[5, 1, 1, 1]
    );
}

#[test]
fn write_json_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("intensity.json");
    let i = Intensity {
        scale: 1000.0,
        offset: -1000.0,
        unit: "HU".into(),
        clip_min: Some(-1000.0),
    };
    write_json(&p, &i).unwrap();
    let back: Intensity = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert_eq!(back, i);
}

// ---------------------------------------------------------------- fixtures

#[test]
fn example_png_is_256_gray() {
    let img = read_image(&data("example.png"), &default()).unwrap();
    assert_eq!(img.data.dim(), (1, 256, 256));
    assert_eq!(img.intensity.unit, "8-bit");
    let (min, max) = img
        .data
        .iter()
        .fold((1.0f32, 0.0f32), |(a, b), &v| (a.min(v), b.max(v)));
    let mean = img.data.mean().unwrap();
    // A natural photo: uses most of the range, not constant.
    assert!(min >= 0.0 && max <= 1.0 && max - min > 0.8, "{min} {max}");
    assert!(mean > 0.2 && mean < 0.8, "{mean}");
}

#[test]
fn coffee_is_64_rgb() {
    let img = read_image(&data("coffee_rgb.png"), &default()).unwrap();
    assert_eq!(img.data.dim(), (3, 64, 64));
    // Colour: the channels differ.
    let d = (&img.data.index_axis(Axis(0), 0) - &img.data.index_axis(Axis(0), 2))
        .mapv(f32::abs)
        .mean()
        .unwrap();
    assert!(d > 0.02, "{d}");
    // read_gray converts to luma.
    assert_eq!(read_gray(&data("coffee_rgb.png")).unwrap().dim(), (64, 64));
}

/// The brain fixture's voxel array as stored, (i, j, k) = (128, 128, 8), read directly
/// with the nifti crate. Its affine is diag-permuted L, S, A: x = -2 i, z = 2 j, y = 3 k.
fn brain_raw() -> ndarray::Array3<f32> {
    use nifti::{NiftiObject, ReaderOptions};
    let obj = ReaderOptions::new()
        .read_file(data("brain_t1.nii.gz"))
        .unwrap();
    let h = obj.header().clone();
    assert_eq!(&h.dim[..4], &[3, 128, 128, 8]);
    assert!(h.sform_code > 0);
    assert_eq!([h.srow_x[0], h.srow_y[2], h.srow_z[1]], [-2.0, 3.0, 2.0]);
    // The crate's own scaling maps scl_slope = NaN to NaN; the data are integers anyway.
    let raw = obj.into_volume().into_raw_data();
    let v: Vec<f32> = raw
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32)
        .collect();
    Array3::from_shape_vec((128, 128, 8).f(), v).unwrap()
}

use ndarray::ShapeBuilder;

#[test]
fn brain_nifti_slices_follow_display_convention() {
    let raw = brain_raw();
    let path = data("brain_t1.nii.gz");
    // Coronal (fixed y = k): superior (high j) at the top, patient's right (low i, since
    // i runs to the left) on the image's left: img[r, c] = raw[c, 127 - r, k].
    let opts = ReadOptions {
        slice: None,
        axis: SliceAxis::Coronal,
    };
    let cor = read_image(&path, &opts).unwrap();
    assert_eq!(cor.data.dim(), (1, 128, 128));
    assert!(cor.source.ends_with("[coronal 4]"), "{}", cor.source);
    let k = 4;
    let max = (0..128)
        .flat_map(|i| (0..128).map(move |j| (i, j)))
        .map(|(i, j)| raw[[i, j, k]])
        .fold(f32::MIN, f32::max);
    assert_eq!(cor.intensity, Intensity::scaled(max, "nifti"));
    for (r, c) in [(0, 0), (10, 100), (64, 64), (127, 3), (90, 40)] {
        assert_eq!(
            cor.data[[0, r, c]] * max,
            raw[[c, 127 - r, k]],
            "at ({r}, {c})"
        );
    }
    // Axial (fixed z = j): anterior (high k) at the top: img[r, c] = raw[c, j, 7 - r].
    let ax = read_image(
        &path,
        &ReadOptions {
            slice: Some(70),
            axis: SliceAxis::Axial,
        },
    )
    .unwrap();
    assert_eq!(ax.data.dim(), (1, 8, 128));
    let s = ax.intensity.scale;
    for (r, c) in [(0, 60), (7, 70), (3, 64)] {
        assert_eq!(ax.data[[0, r, c]] * s, raw[[c, 70, 7 - r]]);
    }
    // Sagittal (fixed x, which runs to the patient's right, i.e. x = 127 - i; slice 60 is
    // i = 67): superior up, anterior left: img[r, c] = raw[67, 127 - r, 7 - c].
    let sag = read_image(
        &path,
        &ReadOptions {
            slice: Some(60),
            axis: SliceAxis::Sagittal,
        },
    )
    .unwrap();
    assert_eq!(sag.data.dim(), (1, 128, 8));
    let s = sag.intensity.scale;
    for (r, c) in [(0, 0), (50, 7), (100, 3)] {
        assert_eq!(sag.data[[0, r, c]] * s, raw[[67, 127 - r, 7 - c]]);
    }
    // The volume is the stack of axial slices, in file values.
    let vol = read_volume(&path).unwrap();
    assert_eq!(vol.dim(), (128, 8, 128));
    assert_eq!(
        vol.index_axis(Axis(0), 70).to_owned() / ax.intensity.scale,
        ax.data.index_axis(Axis(0), 0)
    );
    // A T1 brain: values 0..255, a good part of the slice is tissue.
    let frac = cor.data.iter().filter(|&&v| v > 0.2).count() as f64 / (128.0 * 128.0);
    assert!(frac > 0.2, "{frac}");
}

#[test]
fn ct_dicom_gives_plausible_hu() {
    let path = data("ct_slice.dcm");
    let img = read_image(&path, &default()).unwrap();
    assert_eq!(img.data.dim(), (1, 256, 256));
    assert_eq!(img.intensity.unit, "HU");
    assert_eq!(img.intensity.clip_min, Some(-1000.0));
    let hu = img.data.mapv(|v| img.intensity.to_file(v));
    // Corners are outside the field of view (padding below -1000 HU): clipped to air.
    assert_eq!(hu[[0, 0, 0]], -1000.0);
    assert!(img.data.iter().all(|&v| v >= 0.0));
    // The centre of this head slice is brain: soft tissue, 0..100 HU.
    let mut centre: Vec<f32> = hu
        .slice(ndarray::s![0, 118..138, 118..138])
        .iter()
        .copied()
        .collect();
    centre.sort_by(f32::total_cmp);
    let median = centre[centre.len() / 2];
    assert!((0.0..100.0).contains(&median), "median centre HU {median}");
    // Bone (skull) exists: some pixels above 300 HU.
    assert!(hu.iter().any(|&v| v > 300.0));
    // A DICOM file without the .dcm extension is recognised by its preamble.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("IM0001");
    std::fs::copy(&path, &copy).unwrap();
    assert_eq!(read_image(&copy, &default()).unwrap().data, img.data);
    // A single-frame file has frame 0 only.
    let msg = err_naming(
        read_image(
            &path,
            &ReadOptions {
                slice: Some(1),
                axis: SliceAxis::Axial,
            },
        ),
        &path,
    );
    assert!(msg.contains("valid 0..=0"), "{msg}");
}

// ---------------------------------------------------------------- malformed inputs

#[test]
fn missing_file_and_unknown_extension() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nope.png");
    let msg = err_naming(read_image(&p, &default()), &p);
    assert!(msg.contains("no such file"), "{msg}");
    let p = dir.path().join("picture.bmp");
    std::fs::write(&p, b"BM not really").unwrap();
    let msg = err_naming(read_image(&p, &default()), &p);
    assert!(msg.contains(".bmp") && msg.contains("png, jpg"), "{msg}");
    let msg = err_naming(read_complex(&p), &p);
    assert!(msg.contains("cfl"), "{msg}");
}

#[test]
fn truncated_png() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(data("example.png")).unwrap();
    let p = dir.path().join("trunc.png");
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    let msg = err_naming(read_image(&p, &default()), &p);
    assert!(msg.contains("decode"), "{msg}");
    err_naming(read_gray(&p), &p);
}

#[test]
fn truncated_npy() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.npy");
    write_npy(&p, Array2::<f32>::ones((10, 10)).view().into_dyn()).unwrap();
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    let msg = err_naming(read_image(&p, &default()), &p);
    assert!(msg.contains("truncated"), "{msg}");
    // Cut inside the header.
    std::fs::write(&p, &bytes[..20]).unwrap();
    err_naming(read_npy(&p), &p);
}

#[test]
fn corrupt_nifti() {
    let dir = tempfile::tempdir().unwrap();
    // Garbage .nii.
    let p = dir.path().join("garbage.nii");
    std::fs::write(&p, vec![7u8; 400]).unwrap();
    let msg = err_naming(read_image(&p, &default()), &p);
    assert!(msg.contains("NIfTI"), "{msg}");
    // A .nii.gz that is not gzip.
    let p = dir.path().join("notgz.nii.gz");
    std::fs::write(&p, b"this is not gzip data at all").unwrap();
    err_naming(read_image(&p, &default()), &p);
    err_naming(read_volume(&p), &p);
    // The real fixture cut short.
    let bytes = std::fs::read(data("brain_t1.nii.gz")).unwrap();
    let p = dir.path().join("cut.nii.gz");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    err_naming(read_image(&p, &default()), &p);
}

#[test]
fn non_dicom_dcm() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("scan.dcm");
    std::fs::write(&p, "patient,value\nx,1\n").unwrap();
    let msg = err_naming(read_image(&p, &default()), &p);
    assert!(msg.contains("DICOM"), "{msg}");
}

#[test]
fn cfl_header_disagreeing_with_data() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("k");
    let a = ArrayD::from_elem(IxDyn(&[4, 4]), Complex32::new(1.0, 0.0));
    write_cfl(&base, a.view()).unwrap();
    std::fs::write(dir.path().join("k.hdr"), "# Dimensions\n4 5 1 1 1\n").unwrap();
    let cfl = dir.path().join("k.cfl");
    let msg = err_naming(read_cfl(&cfl), &cfl);
    assert!(
        msg.contains("128 bytes") && msg.contains("160 bytes"),
        "{msg}"
    );
    // Malformed header.
    std::fs::write(dir.path().join("k.hdr"), "# Dimensions\n4 x\n").unwrap();
    let hdr = dir.path().join("k.hdr");
    err_naming(read_cfl(&cfl), &hdr);
    // Missing header.
    std::fs::remove_file(&hdr).unwrap();
    err_naming(read_cfl(&cfl), &hdr);
}

#[test]
fn slice_out_of_range_says_valid_range() {
    let p = data("brain_t1.nii.gz");
    let opts = ReadOptions {
        slice: Some(500),
        axis: SliceAxis::Axial,
    };
    let msg = err_naming(read_image(&p, &opts), &p);
    assert!(
        msg.contains("500") && msg.contains("valid 0..=127"),
        "{msg}"
    );
    let opts = ReadOptions {
        slice: Some(8),
        axis: SliceAxis::Coronal,
    };
    let msg = err_naming(read_image(&p, &opts), &p);
    assert!(msg.contains("valid 0..=7"), "{msg}");
}

#[test]
fn nan_values_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("nan.npy");
    let mut a = Array2::<f32>::zeros((6, 6));
    a[[0, 0]] = f32::NAN;
    a[[2, 3]] = f32::NAN;
    a[[5, 5]] = f32::NAN;
    a[[1, 1]] = f32::INFINITY;
    write_npy(&p, a.view().into_dyn()).unwrap();
    let msg = err_naming(read_image(&p, &default()), &p);
    assert!(msg.contains("3 NaN") && msg.contains("1 infinite"), "{msg}");
    err_naming(read_gray(&p), &p);
}

#[test]
fn wrong_rank_npy() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("4d.npy");
    write_npy(&p, ArrayD::<f32>::zeros(IxDyn(&[1, 2, 3, 4])).view()).unwrap();
    let msg = err_naming(read_image(&p, &default()), &p);
    assert!(msg.contains("[1, 2, 3, 4]"), "{msg}");
}

// ---------------------------------------------------------------- atomic writes

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn atomic_write_failure_leaves_no_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("result.npy");
    // The writer fails after writing part of its output.
    let r = write_atomic(&target, |tmp| {
        std::fs::write(tmp, b"half a file").unwrap();
        Err(posterior::Error::Invalid("simulated failure".into()))
    });
    assert!(r.is_err());
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    // A writer that panics half-way also leaves nothing behind.
    let t2 = target.clone();
    let res = std::panic::catch_unwind(move || {
        let _ = write_atomic(&t2, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            panic!("writer crashed");
        });
    });
    assert!(res.is_err());
    assert!(entries(dir.path()).is_empty(), "{:?}", entries(dir.path()));
    // A failed write over an existing file leaves the old file untouched.
    let png = dir.path().join("keep.png");
    let img = Array3::<f32>::from_elem((1, 4, 4), 0.5);
    write_image(&png, img.view(), (0.0, 1.0)).unwrap();
    let before = std::fs::read(&png).unwrap();
    let two = Array3::<f32>::zeros((2, 4, 4));
    err_naming(write_image(&png, two.view(), (0.0, 1.0)), &png);
    let mut nan = img.clone();
    nan[[0, 1, 1]] = f32::NAN;
    err_naming(write_image(&png, nan.view(), (0.0, 1.0)), &png);
    err_naming(write_image(&png, img.view(), (1.0, 1.0)), &png);
    assert_eq!(std::fs::read(&png).unwrap(), before);
    assert_eq!(entries(dir.path()), vec!["keep.png".to_string()]);
    // Writing into a missing directory fails cleanly.
    let nowhere = dir.path().join("missing/out.png");
    err_naming(write_image(&nowhere, img.view(), (0.0, 1.0)), &nowhere);
}

#[test]
fn multiframe_mr_dicom_frames_and_normalisation() {
    // Values checked with pydicom: frame 5 has max 436, [32, 20] = 3, [10, 50] = 18;
    // frame 0 has max 425, [32, 32] = 110.
    let path = data("mr_frames.dcm");
    let img = read_image(&path, &default()).unwrap();
    assert_eq!(img.data.dim(), (1, 64, 64));
    assert_eq!(img.intensity, Intensity::scaled(436.0, "dicom"));
    assert!(img.source.ends_with("[frame 5]"), "{}", img.source);
    assert_eq!(img.data[[0, 32, 20]] * 436.0, 3.0);
    assert_eq!(img.data[[0, 10, 50]] * 436.0, 18.0);
    let f0 = read_image(
        &path,
        &ReadOptions {
            slice: Some(0),
            axis: SliceAxis::Axial,
        },
    )
    .unwrap();
    assert_eq!(f0.intensity.scale, 425.0);
    assert!((f0.data[[0, 32, 32]] * 425.0 - 110.0).abs() < 1e-4);
    let msg = err_naming(
        read_image(
            &path,
            &ReadOptions {
                slice: Some(10),
                axis: SliceAxis::Axial,
            },
        ),
        &path,
    );
    assert!(msg.contains("valid 0..=9"), "{msg}");
}

#[test]
fn jpeg_reads_as_gray_or_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let gray = image::GrayImage::from_fn(16, 12, |x, y| image::Luma([(x * 10 + y) as u8]));
    let p = dir.path().join("g.jpg");
    gray.save(&p).unwrap();
    let img = read_image(&p, &default()).unwrap();
    assert_eq!(img.data.dim(), (1, 12, 16));
    assert_eq!(img.intensity.unit, "8-bit");
    // Lossy, but a smooth ramp survives to within a few levels.
    assert!((img.data[[0, 5, 7]] - 75.0 / 255.0).abs() < 6.0 / 255.0);
    let rgb = image::RgbImage::from_fn(16, 12, |x, _| image::Rgb([200, (x * 8) as u8, 30]));
    let p = dir.path().join("c.JPEG");
    rgb.save_with_format(&p, image::ImageFormat::Jpeg).unwrap();
    let img = read_image(&p, &default()).unwrap();
    assert_eq!(img.data.dim(), (3, 12, 16));
    assert!(img.data[[0, 6, 8]] > 0.7 && img.data[[2, 6, 8]] < 0.2);
}
