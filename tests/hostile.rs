//! Hostile input at the command line (issue 18): one row per input, each with the command
//! and the text its error must contain. Every row must fail with exit code 1 (not 101, a
//! panic, nor a signal such as SIGABRT from a failed allocation), print that text, and
//! write nothing. The rows reproduce the faults the adversarial campaign found; the tests
//! after the table cover the faults that need more than one command (data loss, locks).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use assert_cmd::Command;
use serde_json::Value;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn posterior(dir: &Path) -> Command {
    let mut c = Command::cargo_bin("posterior").expect("the posterior binary is built for tests");
    c.current_dir(dir)
        .env_remove("POSTERIOR_MAX_ELEMENTS")
        .env_remove("POSTERIOR_MAX_STEPS");
    c
}

fn run(dir: &Path, args: &[&str]) -> Output {
    posterior(dir).args(args).output().expect("command runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed.
fn ok(dir: &Path, args: &[&str]) {
    let o = run(dir, args);
    assert!(o.status.success(), "{args:?} failed: {}", stderr(&o));
}

// --- Writers of hostile files ---------------------------------------------------------

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(dir.join(name), bytes).unwrap();
}

/// A `.npy` whose header claims `shape` of `descr` followed by `data`.
fn npy(dir: &Path, name: &str, descr: &str, shape: &str, data: &[u8]) {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while !(10 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(data);
    write(dir, name, &b);
}

fn f32_npy(dir: &Path, name: &str, h: usize, w: usize, value: impl Fn(usize, usize) -> f32) {
    let a = ndarray::Array2::from_shape_fn((h, w), |(i, j)| value(i, j));
    ndarray_npy::write_npy(dir.join(name), &a).unwrap();
}

/// A PNG holding only an IHDR that claims `w x h` 8-bit gray pixels (a decompression bomb
/// is refused on this header alone, before any pixel is inflated).
fn png_header_only(dir: &Path, name: &str, w: u32, h: u32) {
    let chunk = |kind: &[u8], body: &[u8]| {
        let mut c = (body.len() as u32).to_be_bytes().to_vec();
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(body);
        c.extend_from_slice(kind);
        c.extend_from_slice(body);
        c.extend_from_slice(&crc.sum().to_be_bytes());
        c
    };
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 0, 0, 0, 0]);
    let mut b = b"\x89PNG\r\n\x1a\n".to_vec();
    b.extend(chunk(b"IHDR", &ihdr));
    b.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    b.extend(chunk(b"IEND", &[]));
    write(dir, name, &b);
}

/// A small valid NIfTI-1 file, then `edit` applied to its bytes.
fn nifti(dir: &Path, name: &str, edit: impl Fn(&mut Vec<u8>)) {
    let p = dir.join("seed.nii");
    let v = ndarray::Array3::from_shape_fn((8, 8, 4), |(i, j, k)| (i + j + k) as f32);
    nifti::writer::WriterOptions::new(&p)
        .write_nifti(&v)
        .unwrap();
    let mut b = std::fs::read(&p).unwrap();
    edit(&mut b);
    write(dir, name, &b);
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The CT fixture with the value of element (group, elem) replaced by `value` (padded with
/// spaces, or NULs for binary values, to the element's length; explicit VR little endian).
fn dicom_with(dir: &Path, name: &str, edits: &[((u16, u16), &[u8])]) {
    let mut b = std::fs::read(data("ct_slice.dcm")).unwrap();
    for &((g, e), value) in edits {
        let mut tag = g.to_le_bytes().to_vec();
        tag.extend_from_slice(&e.to_le_bytes());
        let at = b
            .windows(4)
            .position(|w| w == tag.as_slice())
            .unwrap_or_else(|| panic!("({g:04X},{e:04X}) not in the fixture"));
        let len = u16::from_le_bytes([b[at + 6], b[at + 7]]) as usize;
        assert!(value.len() <= len, "value longer than the element");
        let pad = if value.iter().all(u8::is_ascii) && value.len() != 2 {
            b' '
        } else {
            0
        };
        let mut v = value.to_vec();
        v.resize(len, pad);
        b[at + 8..at + 8 + len].copy_from_slice(&v);
    }
    write(dir, name, &b);
}

/// Edits a JSON file in place.
fn edit_json(path: &Path, edit: impl Fn(&mut Value)) {
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// A copy of the small ADM fixture as a prior directory, its card edited.
fn prior_dir(dir: &Path, name: &str, edit: impl Fn(&mut Value)) {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let src = data("adm/plain_conv_f16");
    for f in ["model.json", "model.safetensors"] {
        std::fs::copy(src.join(f), d.join(f)).unwrap();
    }
    edit_json(&d.join("model.json"), edit);
}

/// A measurement `name.npy` of `image` (degrade run with `op`), its sidecar then edited.
fn measurement(dir: &Path, name: &str, image: &str, op: &str, edit: impl Fn(&mut Value)) {
    let out = format!("{name}.npy");
    ok(dir, &["degrade", image, "--op", op, "--out", &out]);
    edit_json(&dir.join(format!("{name}.json")), edit);
}

fn suite(dir: &Path, name: &str, size: &str) {
    let text = format!(
        "name = \"s\"\nrange = [0.0, 1.0]\nseeds = [0]\n\n[[data]]\nname = \"img\"\nkind = \"files\"\n\
         path = \"{}\"\nfiles = [\"example.png\"]\nsize = {size}\n\n[[tasks]]\nname = \"blur\"\n\
         op = \"blur:kernel=gaussian,sigma=1\"\n\n[[methods]]\nname = \"cg\"\nmethod = \"cg\"\niters = 3\n",
        data("").display()
    );
    write(dir, name, text.as_bytes());
}

// --- The table ----------------------------------------------------------------------

/// One hostile input: what it is, the command, and the text the error must contain.
struct Row {
    input: &'static str,
    args: Vec<&'static str>,
    expect: &'static str,
}

/// `degrade INPUT --op OP --out y.npy`.
fn degrade(input: &'static str, op: &'static str) -> Vec<&'static str> {
    vec!["degrade", input, "--op", op, "--out", "y.npy"]
}

/// `reconstruct MEASUREMENT ARGS... --out x.npy`.
fn reconstruct(measurement: &'static str, args: &[&'static str]) -> Vec<&'static str> {
    let mut v = vec!["reconstruct", measurement];
    v.extend_from_slice(args);
    v.extend_from_slice(&["--out", "x.npy"]);
    v
}

fn row(input: &'static str, args: &[&'static str], expect: &'static str) -> Row {
    Row {
        input,
        args: args.to_vec(),
        expect,
    }
}

/// Makes every hostile file the table refers to.
fn make_inputs(d: &Path) {
    let example = data("example.png");
    let example = example.to_str().unwrap();
    std::fs::copy(example, d.join("example.png")).unwrap();
    // Sizes claimed by small files.
    npy(d, "huge.npy", "<f4", "(1000000000, 1000000000)", &[]);
    npy(d, "short.npy", "<f4", "(64, 64)", &[0u8; 100]);
    png_header_only(d, "bomb.png", 20000, 20000);
    // Values that overflow f32 arithmetic.
    f32_npy(d, "near_max.npy", 16, 16, |i, j| {
        3e38 * ((i + j) % 2) as f32
    });
    f32_npy(d, "scaled.npy", 16, 16, |i, j| {
        1e30 * (i * 16 + j) as f32 / 256.0
    });
    f32_npy(d, "big1030.npy", 1030, 1030, |_, _| 0.5);
    // All-zero coil maps (complex64, (2, 16, 16)).
    let zeros = ndarray::Array3::<num_complex::Complex32>::zeros((2, 16, 16));
    ndarray_npy::write_npy(d.join("zero_maps.npy"), &zeros).unwrap();
    let img16 = ndarray::Array2::from_shape_fn((16, 16), |(i, j)| ((i * 3 + j) % 5) as f32 / 5.0);
    ndarray_npy::write_npy(d.join("img16.npy"), &img16).unwrap();
    // Images a reader used to take as if whole.
    let img = image::open(data("example.png")).unwrap().to_rgb8();
    let mut jpg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 85)
        .encode_image(&img)
        .unwrap();
    write(d, "truncated.jpg", &jpg[..jpg.len() * 2 / 3]);
    nifti(d, "seed_ok.nii", |_| {});
    let whole = std::fs::read(d.join("seed_ok.nii")).unwrap();
    let mut gz = gzip(&whole);
    let n = gz.len();
    gz[n - 6] ^= 0x10; // the CRC-32 in the trailer
    write(d, "bad_crc.nii.gz", &gz);
    let mut gz = gzip(&whole);
    gz[n - 2] ^= 0x01; // the length in the trailer
    write(d, "bad_len.nii.gz", &gz);
    nifti(d, "bitpix.nii", |b| {
        b[72..74].copy_from_slice(&8i16.to_le_bytes())
    });
    nifti(d, "vox_offset.nii", |b| {
        b[108..112].copy_from_slice(&100f32.to_le_bytes())
    });
    nifti(d, "huge_dims.nii", |b| {
        for k in 1..4 {
            b[40 + 2 * k..42 + 2 * k].copy_from_slice(&30000i16.to_le_bytes());
        }
    });
    dicom_with(d, "bits0.dcm", &[((0x0028, 0x0101), &0u16.to_le_bytes())]);
    dicom_with(d, "bits40.dcm", &[((0x0028, 0x0101), &40u16.to_le_bytes())]);
    dicom_with(d, "intercept_nan.dcm", &[((0x0028, 0x1052), b"nan")]);
    dicom_with(
        d,
        "colour_rescale.dcm",
        &[
            ((0x0028, 0x0002), &3u16.to_le_bytes()),
            ((0x0028, 0x0004), b"RGB"),
            ((0x0028, 0x0010), &85u16.to_le_bytes()),
        ],
    );
    dicom_with(
        d,
        "rows_huge.dcm",
        &[((0x0028, 0x0010), &65535u16.to_le_bytes())],
    );
    // Measurements whose sidecars claim absurd things.
    measurement(d, "shape", example, "blur:kernel=gaussian,sigma=2", |v| {
        v["image_shape"] = serde_json::json!([3, 1000000000, 1000000000]);
    });
    measurement(d, "scale", example, "blur:kernel=gaussian,sigma=2", |v| {
        v["intensity"]["scale"] = serde_json::json!(1e39);
    });
    measurement(d, "coils", example, "blur:kernel=gaussian,sigma=2", |v| {
        v["operator"] = serde_json::json!("mri:coils=100000");
        v["image_shape"] = serde_json::json!([1, 256, 256]);
    });
    measurement(d, "phase_shape", "img16.npy", "phase", |v| {
        v["image_shape"] = serde_json::json!([1, 12, 12]);
    });
    measurement(
        d,
        "blur",
        "img16.npy",
        "blur:kernel=gaussian,sigma=1",
        |_| {},
    );
    // Prior cards.
    prior_dir(d, "card_res", |v| {
        v["resolution"] = serde_json::json!([1000000, 1000000])
    });
    prior_dir(d, "card_steps", |v| {
        v["schedule"]["diffusion_steps"] = serde_json::json!(1000000000u64)
    });
    // Weights that are a device: read whole, they would never end.
    prior_dir(d, "card_dev_zero", |v| {
        v["weights"]["file"] = serde_json::json!("zero.safetensors")
    });
    std::os::unix::fs::symlink("/dev/zero", d.join("card_dev_zero/zero.safetensors")).unwrap();
    // Suites.
    suite(d, "suite_huge.toml", "1000000");
}

fn table() -> Vec<Row> {
    vec![
        // Sizes claimed by small files: refused before allocation, naming the cap.
        row(
            "npy claiming 1e9 x 1e9",
            &degrade("huge.npy", "blur"),
            "POSTERIOR_MAX_ELEMENTS",
        ),
        row(
            "kernel npy claiming 1e9 x 1e9",
            &degrade("img16.npy", "blur:kernel=file,path=huge.npy"),
            "POSTERIOR_MAX_ELEMENTS",
        ),
        row(
            "npy shorter than its header says",
            &degrade("short.npy", "blur"),
            "truncated",
        ),
        row(
            "PNG claiming 20000 x 20000",
            &degrade("bomb.png", "blur"),
            "POSTERIOR_MAX_ELEMENTS",
        ),
        row(
            "NIfTI claiming 30000^3 voxels",
            &degrade("huge_dims.nii", "blur"),
            "POSTERIOR_MAX_ELEMENTS",
        ),
        row(
            "DICOM Rows 65535 with 256 rows of data",
            &degrade("rows_huge.dcm", "blur"),
            "truncated pixel data",
        ),
        row(
            "spec coils=100000",
            &degrade("example.png", "mri:coils=100000"),
            "POSTERIOR_MAX_ELEMENTS",
        ),
        row(
            "spec phase oversampling=16 of a 1030 x 1030 image",
            &degrade("big1030.npy", "phase:oversampling=16"),
            "POSTERIOR_MAX_ELEMENTS",
        ),
        row(
            "sidecar image_shape 3 x 1e9 x 1e9",
            &reconstruct("shape.npy", &[]),
            "POSTERIOR_MAX_ELEMENTS",
        ),
        row(
            "sidecar operator mri:coils=100000",
            &reconstruct("coils.npy", &[]),
            "POSTERIOR_MAX_ELEMENTS",
        ),
        row(
            "card resolution 1e6 x 1e6",
            &reconstruct("blur.npy", &["--sampler", "dps", "--prior", "card_res"]),
            "POSTERIOR_MAX_ELEMENTS",
        ),
        row(
            "card diffusion_steps 1e9",
            &reconstruct("blur.npy", &["--sampler", "dps", "--prior", "card_steps"]),
            "POSTERIOR_MAX_STEPS",
        ),
        row(
            "suite size 1e6",
            &["bench", "suite_huge.toml", "--check"],
            "POSTERIOR_MAX_ELEMENTS",
        ),
        row(
            "--steps 1e9 with --time-limit 1",
            &reconstruct(
                "blur.npy",
                &[
                    "--sampler",
                    "dps",
                    "--steps",
                    "1000000000",
                    "--time-limit",
                    "1",
                ],
            ),
            "POSTERIOR_MAX_STEPS",
        ),
        row(
            "--iters 1e9",
            &reconstruct("blur.npy", &["--method", "cg", "--iters", "1000000000"]),
            "POSTERIOR_MAX_STEPS",
        ),
        // Finite but extreme: refused with a message, never an all-NaN exit 0.
        row(
            "image values near 3e38",
            &degrade("near_max.npy", "blur"),
            "overflow",
        ),
        row(
            "MRI of an image scaled by 1e30",
            &degrade("scaled.npy", "mri:accel=2"),
            "overflow",
        ),
        row(
            "sidecar intensity scale 1e39",
            &reconstruct("scale.npy", &[]),
            "intensity.scale",
        ),
        row(
            "ct sod=1e30",
            &degrade("img16.npy", "ct:geometry=fan,sod=1e30"),
            "beyond 1e15",
        ),
        row(
            "blur sigma=inf",
            &degrade("img16.npy", "blur:sigma=inf"),
            "not a finite number",
        ),
        // Settings validated the same way for every method.
        row(
            "cg --lambda nan",
            &reconstruct("blur.npy", &["--method", "cg", "--lambda", "NaN"]),
            "--lambda NaN",
        ),
        row(
            "cg --lambda inf",
            &reconstruct("blur.npy", &["--method", "cg", "--lambda", "inf"]),
            "--lambda inf",
        ),
        row(
            "cg --lambda -1",
            &reconstruct("blur.npy", &["--method", "cg", "--lambda=-1"]),
            "--lambda -1",
        ),
        row(
            "cg --iters 0",
            &reconstruct("blur.npy", &["--method", "cg", "--iters", "0"]),
            "--iters 0",
        ),
        row(
            "tv --iters 0",
            &reconstruct("blur.npy", &["--method", "tv", "--iters", "0"]),
            "--iters 0",
        ),
        row(
            "adjoint --lambda 1",
            &reconstruct("blur.npy", &["--method", "adjoint", "--lambda", "1"]),
            "--lambda applies to cg and tv",
        ),
        row(
            "smc --particles 1",
            &reconstruct("blur.npy", &["--sampler", "smc", "--particles", "1"]),
            "--particles 1",
        ),
        // Files a reader used to take as if whole, or wrongly.
        row(
            "truncated JPEG",
            &degrade("truncated.jpg", "blur"),
            "truncated JPEG",
        ),
        row(
            ".nii.gz with a bad CRC",
            &degrade("bad_crc.nii.gz", "blur"),
            "CRC or length",
        ),
        row(
            ".nii.gz with a bad length",
            &degrade("bad_len.nii.gz", "blur"),
            "CRC or length",
        ),
        row(
            "NIfTI bitpix disagreeing with datatype",
            &degrade("bitpix.nii", "blur"),
            "bitpix 8",
        ),
        row(
            "NIfTI vox_offset inside the header",
            &degrade("vox_offset.nii", "blur"),
            "vox_offset",
        ),
        row(
            "DICOM BitsStored 0",
            &degrade("bits0.dcm", "blur"),
            "Bits Stored 0",
        ),
        row(
            "DICOM BitsStored 40",
            &degrade("bits40.dcm", "blur"),
            "Bits Stored 40",
        ),
        row(
            "DICOM RescaleIntercept nan",
            &degrade("intercept_nan.dcm", "blur"),
            "Rescale Intercept",
        ),
        row(
            "DICOM colour image with a rescale",
            &degrade("colour_rescale.dcm", "blur"),
            "colour image",
        ),
        row(
            "all-zero coil maps",
            &degrade("img16.npy", "mri:sens=zero_maps.npy"),
            "zero everywhere",
        ),
        row(
            "phase sidecar image_shape disagreeing with the measurement",
            &reconstruct("phase_shape.npy", &["--method", "gd"]),
            "shape",
        ),
        row(
            "card weights file a link to /dev/zero",
            &reconstruct(
                "blur.npy",
                &["--sampler", "dps", "--prior", "card_dev_zero"],
            ),
            "not a regular file",
        ),
        row(
            "suite /dev/zero",
            &["bench", "/dev/zero", "--check"],
            "not a regular file",
        ),
        row(
            "image /dev/zero",
            &degrade("/dev/zero", "blur"),
            "not a regular file",
        ),
        row(
            "fbp on a blur measurement",
            &reconstruct("blur.npy", &["--method", "fbp"]),
            "filtered back-projection for CT",
        ),
    ]
}

#[test]
fn every_hostile_input_fails_cleanly_with_its_message() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_inputs(d);
    let before: Vec<_> = listing(d);
    let mut failures = Vec::new();
    for r in table() {
        let start = Instant::now();
        let o = run(d, &r.args);
        let took = start.elapsed();
        let err = stderr(&o);
        let problem = if o.status.code() != Some(1) {
            Some(format!("exit status {:?} (1 expected)", o.status))
        } else if !err.contains(r.expect) {
            Some(format!("message lacks `{}`", r.expect))
        } else if took > Duration::from_secs(30) {
            Some(format!("took {took:?}"))
        } else {
            None
        };
        if let Some(p) = problem {
            failures.push(format!(
                "{}: {:?}: {p}\n  stderr: {}",
                r.input,
                r.args,
                err.trim()
            ));
        }
    }
    let after = listing(d);
    assert!(
        failures.is_empty(),
        "{} row(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(before, after, "a failing command wrote or removed files");
}

/// Every file under `d` (names only), sorted.
fn listing(d: &Path) -> Vec<String> {
    let mut v: Vec<String> = walk(d)
        .into_iter()
        .map(|p| p.strip_prefix(d).unwrap().display().to_string())
        .collect();
    v.sort();
    v
}

fn walk(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(d).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

#[test]
fn a_float32_grayscale_tiff_is_read_as_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (w, h) = (12u32, 10u32);
    let values: Vec<f32> = (0..w * h).map(|k| k as f32 * 0.25 - 3.0).collect();
    let f = std::fs::File::create(d.join("f.tif")).unwrap();
    tiff::encoder::TiffEncoder::new(f)
        .unwrap()
        .write_image::<tiff::encoder::colortype::Gray32Float>(w, h, &values)
        .unwrap();
    let img = posterior::io::read_image(&d.join("f.tif"), &Default::default()).unwrap();
    assert_eq!(img.data.dim(), (1, h as usize, w as usize));
    assert_eq!(img.intensity.unit, "float");
    assert_eq!(img.data.iter().copied().collect::<Vec<_>>(), values);
    ok(d, &degrade("f.tif", "blur:sigma=1"));
}

// --- Faults that take more than one command -------------------------------------------

#[test]
fn degrade_keeps_an_existing_measurement_when_the_sidecar_cannot_be_written() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = ndarray::Array2::from_shape_fn((16, 16), |(i, j)| (i + j) as f32 / 32.0);
    ndarray_npy::write_npy(d.join("img.npy"), &img).unwrap();
    write(d, "y.npy", b"the user's earlier measurement");
    std::fs::create_dir(d.join("y.json")).unwrap(); // the sidecar cannot be written
    let o = run(d, &degrade("img.npy", "blur"));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(d.join("y.npy")).unwrap(),
        b"the user's earlier measurement"
    );
    assert_eq!(
        listing(d),
        vec!["img.npy", "y.json", "y.npy"],
        "no temporaries left"
    );
}

#[test]
fn a_killed_writers_temporaries_are_removed_by_the_next_run() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = ndarray::Array2::from_shape_fn((16, 16), |(i, j)| (i + j) as f32 / 32.0);
    ndarray_npy::write_npy(d.join("img.npy"), &img).unwrap();
    // What SIGKILL in the middle of a write leaves: a temp of a process that is gone.
    write(d, ".y.npy.tmp-2147483600-0", b"partial");
    write(d, ".y.json.tmp-2147483600-1", b"partial");
    ok(d, &degrade("img.npy", "blur"));
    assert_eq!(listing(d), vec!["img.npy", "y.json", "y.npy"]);
}

#[test]
fn a_second_bench_on_one_out_is_refused_and_check_runs_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    suite(d, "s.toml", "16");
    // --check with --out only checks: nothing is created.
    ok(d, &["bench", "s.toml", "--check", "--out", "out"]);
    assert!(!d.join("out").exists(), "--check ran the suite");
    // Another run holds the lock: refused at once, nothing appended.
    std::fs::create_dir(d.join("out")).unwrap();
    let lock = posterior::bench::results::DirLock::acquire(&d.join("out")).unwrap();
    let o = run(d, &["bench", "s.toml", "--out", "out"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("another `posterior bench`"),
        "{}",
        stderr(&o)
    );
    assert!(!d.join("out/results.jsonl").exists());
    // Released (as the kernel does when the holder dies): the run goes ahead.
    drop(lock);
    ok(d, &["bench", "s.toml", "--out", "out"]);
    let lines = std::fs::read_to_string(d.join("out/results.jsonl")).unwrap();
    assert_eq!(lines.lines().count(), 1);
}

#[test]
fn allow_nonfinite_is_accepted_and_a_finite_result_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let img = ndarray::Array2::from_shape_fn((16, 16), |(i, j)| (i * j) as f32 / 256.0);
    ndarray_npy::write_npy(d.join("img.npy"), &img).unwrap();
    ok(d, &degrade("img.npy", "blur:sigma=1"));
    ok(
        d,
        &reconstruct("y.npy", &["--method", "cg", "--allow-nonfinite"]),
    );
    let x: ndarray::ArrayD<f32> = ndarray_npy::read_npy(d.join("x.npy")).unwrap();
    assert!(x.iter().all(|v| v.is_finite()));
}
