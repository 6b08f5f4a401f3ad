//! Mutation tests of every reader (issue 18): proptest strategies of bit flips, byte
//! overwrites of header fields, truncations, appended bytes and field edits of text
//! formats, applied to valid files of each format. Every case runs the reader in-process
//! under `catch_unwind` and asserts no panic, and either an error or a sane result.
//!
//! An allocation abort or a hang fails the test binary by itself (the process dies or the
//! test times out), so a green run also means none happened.
//!
//! The element cap is 2^22 here unless `POSTERIOR_MAX_ELEMENTS` is set (see `set_cap`).
//! Cases per reader: 256 by default (a few seconds per reader in the debug test profile on
//! 2 busy cores, well inside the 20 s budget); `POSTERIOR_FUZZ_CASES=N` runs N (e.g. 2000
//! for a campaign). `POSTERIOR_FUZZ_SEED=S` varies the mutations from run to run (the
//! default is fixed so CI is reproducible).

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{Array2, Array3, ArrayD, IxDyn};
use num_complex::Complex32;
use posterior::io::{self, ReadOptions};
use posterior::measurement::{self, Sidecar, Source};
use posterior::spec::BuildContext;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

// ---------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------

/// Numbers a hostile user would put in a header or a text field.
const HOSTILE_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "2",
    "3",
    "-0",
    "0.5",
    "1e39",
    "-1e39",
    "3e38",
    "1e30",
    "1e308",
    "1e-45",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "65535",
    "65536",
    "100000",
    "1000000000",
    "4294967297",
    "9223372036854775807",
    "18446744073709551616",
    "\"x\"",
    "null",
    "[]",
    "{}",
    "true",
];

/// Words a hostile user would put in place of a string.
const HOSTILE_WORDS: &[&str] = &[
    "",
    "unknown",
    "nan",
    "-1",
    "../../../etc/passwd",
    "/dev/zero",
    "F128",
    "I8",
    "cosine",
    "beer-lambert",
    "mri:coils=100000",
    "ct:sod=1e30",
    "phase:oversampling=16",
    "blur:kernel=gaussian,sigma=1e39",
];

/// One edit of a file's bytes. Positions are fractions of the length they apply to, so
/// one strategy serves files of every size.
#[derive(Clone, Debug)]
enum Mutation {
    /// Flip one bit anywhere.
    FlipBit { at: f64, bit: u8 },
    /// Overwrite a 1/2/4/8-byte word in the header region with an extreme value.
    SetWord { at: f64, width: u8, value: u64 },
    /// Cut the file.
    Truncate { keep: f64 },
    /// Append junk.
    Append { bytes: Vec<u8> },
    /// Replace the k-th number of a text (JSON, TOML, header text) by a hostile one.
    EditNumber { which: usize, value: usize },
    /// Replace the k-th quoted string of a text by a hostile word.
    EditWord { which: usize, value: usize },
}

fn extreme_word() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        Just(0x7fff_ffff_ffff_ffff),
        Just(0x8000_0000),
        Just(0xffff),
        Just(0x7fff),
        Just(0x8000),
        Just(1),
        Just(2),
        Just(1_000_000_000),
        Just(0x7f80_0000), // f32 +inf
        Just(0x7fc0_0000), // f32 NaN
        Just(0x7f7f_ffff), // f32 max
        any::<u64>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (0.0..1.0f64, 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        4 => (0.0..1.0f64, prop_oneof![Just(1u8), Just(2), Just(4), Just(8)], extreme_word())
            .prop_map(|(at, width, value)| Mutation::SetWord { at, width, value }),
        1 => (0.0..1.0f64).prop_map(|keep| Mutation::Truncate { keep }),
        1 => proptest::collection::vec(any::<u8>(), 1..64).prop_map(|bytes| Mutation::Append { bytes }),
        4 => (0usize..64, 0..HOSTILE_NUMBERS.len())
            .prop_map(|(which, value)| Mutation::EditNumber { which, value }),
        2 => (0usize..32, 0..HOSTILE_WORDS.len())
            .prop_map(|(which, value)| Mutation::EditWord { which, value }),
    ]
}

/// For text formats (JSON, TOML, BART headers): mostly field edits, which keep the text
/// parseable so the checks behind the parser are reached; a few flips and cuts.
fn text_mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        6 => (0usize..64, 0..HOSTILE_NUMBERS.len())
            .prop_map(|(which, value)| Mutation::EditNumber { which, value }),
        3 => (0usize..32, 0..HOSTILE_WORDS.len())
            .prop_map(|(which, value)| Mutation::EditWord { which, value }),
        1 => (0.0..1.0f64, 0u8..7).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        1 => (0.0..1.0f64).prop_map(|keep| Mutation::Truncate { keep }),
    ]
}

/// What a format is mutated as.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Binary,
    Text,
}

fn mutations(kind: Kind) -> BoxedStrategy<Vec<Mutation>> {
    match kind {
        Kind::Binary => proptest::collection::vec(mutation(), 1..4).boxed(),
        Kind::Text => proptest::collection::vec(text_mutation(), 1..3).boxed(),
    }
}

/// Byte spans of the numbers in a text (`-1.5e3`, `42`).
fn number_spans(text: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let c = text[i];
        let starts =
            c.is_ascii_digit() || (c == b'-' && text.get(i + 1).is_some_and(u8::is_ascii_digit));
        let after_word = i > 0 && (text[i - 1].is_ascii_alphanumeric() || text[i - 1] == b'_');
        if starts && !after_word {
            let b = i;
            i += 1;
            while i < text.len()
                && (text[i].is_ascii_digit() || matches!(text[i], b'.' | b'e' | b'E' | b'+' | b'-'))
            {
                i += 1;
            }
            spans.push((b, i));
        } else {
            i += 1;
        }
    }
    spans
}

/// Byte spans of the insides of double-quoted strings.
fn string_spans(text: &[u8]) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut open: Option<usize> = None;
    for (i, &c) in text.iter().enumerate() {
        if c == b'"' && (i == 0 || text[i - 1] != b'\\') {
            match open.take() {
                Some(b) => spans.push((b, i)),
                None => open = Some(i + 1),
            }
        }
    }
    spans
}

fn splice(bytes: &mut Vec<u8>, (b, e): (usize, usize), with: &[u8]) {
    bytes.splice(b..e, with.iter().copied());
}

/// Applies mutations; `hot` is the length of the header region (where `SetWord` lands).
fn apply(seed: &[u8], hot: usize, ms: &[Mutation]) -> Vec<u8> {
    let mut b = seed.to_vec();
    for m in ms {
        let len = b.len();
        match m {
            Mutation::FlipBit { at, bit } if len > 0 => {
                let i = ((at * len as f64) as usize).min(len - 1);
                b[i] ^= 1 << bit;
            }
            Mutation::SetWord { at, width, value } => {
                let region = hot.min(len);
                let w = *width as usize;
                if region >= w {
                    let i = ((at * (region - w + 1) as f64) as usize).min(region - w);
                    b[i..i + w].copy_from_slice(&value.to_le_bytes()[..w]);
                }
            }
            Mutation::Truncate { keep } => b.truncate((keep * len as f64) as usize),
            Mutation::Append { bytes } => b.extend_from_slice(bytes),
            Mutation::EditNumber { which, value } => {
                let spans = number_spans(&b[..hot.min(len)]);
                if !spans.is_empty() {
                    let s = spans[which % spans.len()];
                    splice(&mut b, s, HOSTILE_NUMBERS[*value].as_bytes());
                }
            }
            Mutation::EditWord { which, value } => {
                let spans = string_spans(&b[..hot.min(len)]);
                if !spans.is_empty() {
                    let s = spans[which % spans.len()];
                    splice(&mut b, s, HOSTILE_WORDS[*value].as_bytes());
                }
            }
            _ => {}
        }
    }
    b
}

// ---------------------------------------------------------------------------------------
// The runner
// ---------------------------------------------------------------------------------------

fn cases() -> u32 {
    std::env::var("POSTERIOR_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

/// Outcome counts of one reader's campaign, printed at the end (`--nocapture`).
#[derive(Default, Debug)]
struct Tally {
    ok: usize,
    err: usize,
    /// The slowest case, seconds.
    slowest: f64,
}

/// Runs `check` on mutated copies of `seed`; `check` returns `Ok(true)` for a sane read,
/// `Ok(false)` for a refused input, and `Err(why)` for an insane result. A panic fails.
/// The element cap the campaign runs under: `POSTERIOR_MAX_ELEMENTS` if set (a campaign at
/// the default cap sets it to 268435456), else 2^22, so a mutation that claims a size just
/// under the cap costs milliseconds, not the tens of seconds a 2^28-element image takes to
/// resample. Set once, before any reader runs (std's environment access is locked).
fn set_cap() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        if std::env::var_os("POSTERIOR_MAX_ELEMENTS").is_none() {
            std::env::set_var("POSTERIOR_MAX_ELEMENTS", (1u64 << 22).to_string());
        }
    });
}

fn fuzz(
    name: &str,
    kind: Kind,
    seed: &[u8],
    hot: usize,
    check: impl Fn(&[u8]) -> Result<bool, String>,
) {
    quiet_panics();
    set_cap();
    let fixed = std::env::var("POSTERIOR_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0x5eed);
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&fixed.to_le_bytes());
    key[8..8 + name.len().min(24)].copy_from_slice(&name.as_bytes()[..name.len().min(24)]);
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: cases(),
            failure_persistence: None,
            max_shrink_iters: 64,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &key),
    );
    let tally = std::cell::RefCell::new(Tally::default());
    let start = std::time::Instant::now();
    let result = runner.run(&mutations(kind), |ms| {
        let bytes = apply(seed, hot, &ms);
        if std::env::var("POSTERIOR_FUZZ_VERBOSE").as_deref() == Ok("2") {
            println!("  case: {ms:?}");
        }
        let t0 = std::time::Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| check(&bytes)));
        {
            let took = t0.elapsed().as_secs_f64();
            let mut t = tally.borrow_mut();
            t.slowest = t.slowest.max(took);
            if took > 1.0 && std::env::var_os("POSTERIOR_FUZZ_VERBOSE").is_some() {
                println!("  slow case ({took:.1} s): {ms:?}");
            }
        }
        match outcome {
            Err(p) => {
                let why = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(TestCaseError::fail(format!("{name}: PANIC: {why}")))
            }
            Ok(Err(why)) => Err(TestCaseError::fail(format!("{name}: insane result: {why}"))),
            Ok(Ok(sane)) => {
                let mut t = tally.borrow_mut();
                if sane {
                    t.ok += 1
                } else {
                    t.err += 1
                }
                Ok(())
            }
        }
    });
    let t = tally.borrow();
    println!(
        "fuzz {name}: {} cases, {} read, {} refused, 0 panics, {:.1} s (slowest case {:.2} s)",
        t.ok + t.err,
        t.ok,
        t.err,
        start.elapsed().as_secs_f64(),
        t.slowest
    );
    if let Err(e) = result {
        eprintln!("fuzz {name}: FAILED: {e}");
        panic!("{e}");
    }
}

/// Panics inside `catch_unwind` are the failures we look for; their hook output would
/// only bury the report, so print just the test's own failure.
fn quiet_panics() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if std::env::var_os("POSTERIOR_FUZZ_VERBOSE").is_some() {
                prev(info);
            }
        }));
    });
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// A scratch file per thread and case: written, read, removed.
fn with_file<T>(name: &str, bytes: &[u8], f: impl FnOnce(&Path) -> T) -> T {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).expect("write");
    f(&p)
}

/// A refused input: fine. `POSTERIOR_FUZZ_VERBOSE=1` prints why.
fn refused(e: impl std::fmt::Display) -> Result<bool, String> {
    if std::env::var_os("POSTERIOR_FUZZ_VERBOSE").is_some() {
        println!("  refused: {e}");
    }
    Ok(false)
}

fn cap() -> usize {
    posterior::limits::max_elements() as usize
}

fn sane_image(img: &io::LoadedImage) -> Result<bool, String> {
    let (c, h, w) = img.data.dim();
    if c == 0 || h == 0 || w == 0 || c * h * w > cap() {
        return Err(format!("image of shape {:?}", img.data.dim()));
    }
    if img.data.iter().any(|v| !v.is_finite()) {
        return Err("non-finite pixels".into());
    }
    if !(img.intensity.scale.is_finite() && img.intensity.offset.is_finite()) {
        return Err(format!("intensity {:?}", img.intensity));
    }
    Ok(true)
}

fn sane_array<T>(a: &ArrayD<T>) -> Result<bool, String> {
    if a.len() > cap() {
        return Err(format!("array of shape {:?}", a.shape()));
    }
    Ok(true)
}

// ---------------------------------------------------------------------------------------
// One test per reader
// ---------------------------------------------------------------------------------------

#[test]
fn fuzz_npy() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.npy");
    let a = ArrayD::from_shape_fn(IxDyn(&[3, 8, 8]), |d| (d[0] + d[1] * d[2]) as f32 / 64.0);
    io::write_npy(&p, a.view()).unwrap();
    let f32_seed = std::fs::read(&p).unwrap();
    fuzz("npy f32", Kind::Binary, &f32_seed, 128, |b| {
        with_file("x.npy", b, |p| match io::read_npy(p) {
            Ok(a) => sane_array(&a),
            Err(e) => refused(e),
        })
    });
    let c = ArrayD::from_shape_fn(IxDyn(&[4, 5]), |d| Complex32::new(d[0] as f32, d[1] as f32));
    ndarray_npy::write_npy(&p, &c).unwrap();
    let complex_seed = std::fs::read(&p).unwrap();
    fuzz("npy complex", Kind::Binary, &complex_seed, 128, |b| {
        with_file("x.npy", b, |p| match io::read_npy_complex(p) {
            Ok(a) => sane_array(&a),
            Err(e) => refused(e),
        })
    });
    // As an image, through read_image (shape and value checks).
    fuzz("npy image", Kind::Binary, &f32_seed, 128, |b| {
        with_file("x.npy", b, |p| {
            match io::read_image(p, &ReadOptions::default()) {
                Ok(img) => sane_image(&img),
                Err(e) => refused(e),
            }
        })
    });
}

#[test]
fn fuzz_cfl() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("k");
    let a = ArrayD::from_shape_fn(IxDyn(&[6, 5, 1, 2]), |d| {
        Complex32::new(d[0] as f32, (d[1] + d[3]) as f32)
    });
    io::write_cfl(&base, a.view()).unwrap();
    let hdr = std::fs::read(dir.path().join("k.hdr")).unwrap();
    let cfl = std::fs::read(dir.path().join("k.cfl")).unwrap();
    // Mutate the header text; the data keeps its length (so header edits are what decide).
    fuzz("cfl header", Kind::Text, &hdr, hdr.len(), |b| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.hdr"), b).unwrap();
        std::fs::write(dir.path().join("m.cfl"), &cfl).unwrap();
        match io::read_cfl(&dir.path().join("m.cfl")) {
            Ok(a) => sane_array(&a),
            Err(e) => refused(e),
        }
    });
    fuzz("cfl data", Kind::Binary, &cfl, cfl.len(), |b| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.hdr"), &hdr).unwrap();
        std::fs::write(dir.path().join("m.cfl"), b).unwrap();
        match io::read_cfl(&dir.path().join("m.hdr")) {
            Ok(a) => sane_array(&a),
            Err(e) => refused(e),
        }
    });
}

/// A small valid NIfTI-1 file (uncompressed), written by the `nifti` crate.
fn nifti_seed() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("v.nii");
    let v = ndarray::Array3::from_shape_fn((6, 5, 4), |(i, j, k)| (i * 20 + j * 4 + k) as f32);
    nifti::writer::WriterOptions::new(&p)
        .write_nifti(&v)
        .unwrap();
    std::fs::read(&p).unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn read_nifti(b: &[u8], name: &str) -> Result<bool, String> {
    with_file(name, b, |p| {
        let slice = io::read_image(p, &ReadOptions::default());
        let vol = io::read_volume(p);
        match (slice, vol) {
            (Ok(img), Ok(v)) => {
                if v.iter().any(|x| !x.is_finite()) || v.len() > cap() {
                    return Err(format!("volume {:?}", v.dim()));
                }
                sane_image(&img)
            }
            // A slice can be sane where the whole volume is not (an infinite voxel elsewhere).
            (Ok(img), Err(_)) => sane_image(&img),
            (Err(e), _) => refused(e),
        }
    })
}

#[test]
fn fuzz_nifti() {
    let seed = nifti_seed();
    // Header edits on the uncompressed file.
    fuzz("nifti .nii", Kind::Binary, &seed, 352, |b| {
        read_nifti(b, "x.nii")
    });
    // The same edits, then compressed: the .nii.gz path with a valid gzip.
    fuzz(
        "nifti .nii.gz (edited, then gzipped)",
        Kind::Binary,
        &seed,
        352,
        |b| read_nifti(&gzip(b), "x.nii.gz"),
    );
    // Corruption of the compressed bytes: CRC, length and deflate errors.
    let gz = std::fs::read(data("brain_t1.nii.gz")).unwrap();
    fuzz(
        "nifti .nii.gz (gzip bytes)",
        Kind::Binary,
        &gz,
        gz.len(),
        |b| read_nifti(b, "x.nii.gz"),
    );
}

#[test]
fn a_nii_gz_with_a_bad_crc_or_length_is_refused() {
    let gz = gzip(&nifti_seed());
    let n = gz.len();
    for (what, at) in [("CRC", n - 8), ("length", n - 4)] {
        let mut bad = gz.clone();
        bad[at] ^= 0x01;
        let e = with_file("x.nii.gz", &bad, io::read_volume)
            .expect_err(what)
            .to_string();
        assert!(e.contains("CRC or length"), "{what}: {e}");
    }
    // The intact file reads.
    with_file("x.nii.gz", &gz, io::read_volume).unwrap();
}

#[test]
fn nifti_vox_offset_is_honoured_and_bitpix_checked() {
    let seed = nifti_seed();
    let good = with_file("x.nii", &seed, io::read_volume).unwrap();
    // Move the voxels 16 bytes further (vox_offset 352 -> 368, 16 bytes of padding):
    // the same volume must come back.
    let mut moved = seed[..352].to_vec();
    moved[108..112].copy_from_slice(&368f32.to_le_bytes());
    moved.extend_from_slice(&[0u8; 16]);
    moved.extend_from_slice(&seed[352..]);
    let v = with_file("x.nii", &moved, io::read_volume).unwrap();
    assert_eq!(v, good);
    // bitpix 16 with datatype float32: refused, naming both.
    let mut bad = seed.clone();
    bad[72..74].copy_from_slice(&16i16.to_le_bytes());
    let e = with_file("x.nii", &bad, io::read_volume)
        .unwrap_err()
        .to_string();
    assert!(e.contains("bitpix 16") && e.contains("Float32"), "{e}");
}

fn pixel_data_offset(b: &[u8]) -> usize {
    b.windows(4)
        .position(|w| w == [0xE0, 0x7F, 0x10, 0x00])
        .unwrap_or(b.len())
}

#[test]
fn fuzz_dicom() {
    for name in ["ct_slice.dcm", "mr_frames.dcm"] {
        let seed = std::fs::read(data(name)).unwrap();
        let hot = pixel_data_offset(&seed) + 12;
        fuzz(&format!("dicom {name}"), Kind::Binary, &seed, hot, |b| {
            with_file("x.dcm", b, |p| {
                match io::read_image(p, &ReadOptions::default()) {
                    Ok(img) => sane_image(&img),
                    Err(e) => refused(e),
                }
            })
        });
    }
}

#[test]
fn fuzz_raster() {
    for name in ["example.png", "coffee_rgb.png"] {
        let seed = std::fs::read(data(name)).unwrap();
        fuzz(&format!("raster {name}"), Kind::Binary, &seed, 64, |b| {
            with_file("x.png", b, |p| {
                match io::read_image(p, &ReadOptions::default()) {
                    Ok(img) => sane_image(&img),
                    Err(e) => refused(e),
                }
            })
        });
    }
    // A JPEG (made from the example) and a 16-bit TIFF (written by the toolkit).
    let img = image::open(data("example.png")).unwrap().to_rgb8();
    let mut jpg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 80)
        .encode_image(&img)
        .unwrap();
    fuzz("raster jpeg", Kind::Binary, &jpg, 600, |b| {
        with_file("x.jpg", b, |p| {
            match io::read_image(p, &ReadOptions::default()) {
                Ok(img) => sane_image(&img),
                Err(e) => refused(e),
            }
        })
    });
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t.tif");
    let a = Array3::from_shape_fn((1, 16, 12), |(_, i, j)| (i * 12 + j) as f32 / 192.0);
    io::write_image(&t, a.view(), (0.0, 1.0)).unwrap();
    let tif = std::fs::read(&t).unwrap();
    fuzz("raster tiff", Kind::Binary, &tif, tif.len(), |b| {
        with_file("x.tif", b, |p| {
            match io::read_image(p, &ReadOptions::default()) {
                Ok(img) => sane_image(&img),
                Err(e) => refused(e),
            }
        })
    });
}

#[test]
fn a_truncated_jpeg_is_refused_and_the_whole_one_reads() {
    let img = image::open(data("example.png")).unwrap().to_rgb8();
    let mut jpg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpg, 80)
        .encode_image(&img)
        .unwrap();
    with_file("x.jpg", &jpg, |p| {
        io::read_image(p, &ReadOptions::default())
    })
    .unwrap();
    for keep in [jpg.len() / 2, jpg.len() * 9 / 10, jpg.len() - 2] {
        let e = with_file("x.jpg", &jpg[..keep], |p| {
            io::read_image(p, &ReadOptions::default())
        })
        .expect_err("a truncated JPEG must be refused")
        .to_string();
        assert!(e.contains("truncated"), "{e}");
    }
}

#[test]
fn fuzz_safetensors() {
    let seed = std::fs::read(data("adm/plain_conv_f16/model.safetensors")).unwrap();
    let n = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let header = &seed[8..8 + n];
    let body = &seed[8 + n..];
    let check = |bytes: Vec<u8>| -> Result<bool, String> {
        match posterior::nn::safetensors::SafeTensors::parse(Path::new("x.safetensors"), bytes) {
            Ok(st) => {
                for k in st.keys().map(str::to_string).collect::<Vec<_>>() {
                    // Reading every tensor must succeed or fail cleanly.
                    let _ = st.f32_values(&k);
                }
                Ok(true)
            }
            Err(e) => refused(e),
        }
    };
    // Field edits of the JSON header, with its length fixed up (so the edits are parsed).
    fuzz(
        "safetensors header",
        Kind::Text,
        header,
        header.len(),
        |h| {
            let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(h);
            bytes.extend_from_slice(body);
            check(bytes)
        },
    );
    // Raw mutations of the file (length word, truncations).
    fuzz("safetensors file", Kind::Binary, &seed, 8 + n, |b| {
        check(b.to_vec())
    });
}

/// Reads a PyTorch checkpoint and every tensor in it.
fn read_pt(b: &[u8]) -> Result<bool, String> {
    use posterior::checkpoint::TensorSource;
    with_file(
        "x.pt",
        b,
        |p| match posterior::checkpoint::StateDict::read_pt(p, None) {
            Ok(sd) => {
                for name in sd.tensor_names() {
                    let n = sd
                        .tensor_shape(&name)
                        .map_or(0, |s| s.iter().product::<usize>());
                    if n > cap() {
                        return Err(format!("tensor `{name}` of {n} elements"));
                    }
                    if let Ok(v) = sd.tensor_f32(&name) {
                        if v.len() != n {
                            return Err(format!("tensor `{name}`: {} values for {n}", v.len()));
                        }
                    }
                }
                Ok(true)
            }
            Err(e) => refused(e),
        },
    )
}

#[test]
fn fuzz_pytorch_checkpoint() {
    for name in ["ckpt/views/views.pt", "ckpt/views/views_deflated.pt"] {
        let seed = std::fs::read(data(name)).unwrap();
        assert!(read_pt(&seed).unwrap(), "{name} reads");
        // Hot region: the whole (small) archive, pickle and central directory included.
        fuzz(
            &format!("pt {name}"),
            Kind::Binary,
            &seed,
            seed.len(),
            read_pt,
        );
    }
}

/// Opens a prior directory: a sane card (its image within the cap) or a refusal.
fn open_prior(dir: &Path) -> Result<bool, String> {
    match posterior::prior::NetworkPrior::open(&dir.to_string_lossy()) {
        Ok(p) => {
            let c = p.card();
            posterior::limits::check_elements(
                "card",
                &[c.channels, c.resolution[0], c.resolution[1]],
            )
            .map_err(|e| e.to_string())?;
            Ok(true)
        }
        Err(e) => refused(e),
    }
}

/// A diffusers directory with `config.json` (`which` = 0) or `scheduler_config.json`
/// (`which` = 1) replaced, opened as a prior.
fn open_diffusers(which: usize, text: &[u8]) -> Result<bool, String> {
    let src = data("ckpt/diffusers");
    let dir = tempfile::tempdir().unwrap();
    for f in [
        "config.json",
        "scheduler_config.json",
        "diffusion_pytorch_model.safetensors",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let name = ["config.json", "scheduler_config.json"][which];
    std::fs::write(dir.path().join(name), text).unwrap();
    open_prior(dir.path())
}

#[test]
fn fuzz_diffusers_configs() {
    for (which, name) in ["config.json", "scheduler_config.json"].iter().enumerate() {
        let seed = std::fs::read(data("ckpt/diffusers").join(name)).unwrap();
        assert!(open_diffusers(which, &seed).unwrap(), "the fixture opens");
        fuzz(
            &format!("diffusers {name}"),
            Kind::Text,
            &seed,
            seed.len(),
            |b| open_diffusers(which, b),
        );
    }
}

/// A prior directory with the card's text replaced (the weights are those of the fixture).
fn open_card(card: &[u8]) -> Result<bool, String> {
    let src = data("adm/plain_conv_f16");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("model.json"), card).unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    open_prior(dir.path())
}

#[test]
fn fuzz_model_card() {
    let seed = std::fs::read(data("adm/plain_conv_f16/model.json")).unwrap();
    assert!(open_card(&seed).unwrap(), "the fixture's card opens");
    fuzz("model card", Kind::Text, &seed, seed.len(), open_card);
}

/// A measurement and its sidecar for an operator spec, as `degrade` writes them.
fn sidecar_seed(dir: &Path, op: &str) -> (PathBuf, Vec<u8>) {
    let image = Array3::from_shape_fn((1, 16, 16), |(_, i, j)| ((i * 3 + j) % 7) as f32 / 7.0);
    let ctx = BuildContext::new(image.shape(), 0, dir);
    let physics = posterior::spec::build(op, &ctx).unwrap();
    let noise = posterior::spec::noise::parse_noise("none").unwrap();
    let y = physics.measure(image.view().into_dyn(), &noise, 0).unwrap();
    let side = Sidecar {
        format: measurement::FORMAT.into(),
        operator: op.into(),
        noise: "none".into(),
        seed: 0,
        base_dir: dir.to_path_buf(),
        image_shape: image.shape().to_vec(),
        measurement_shape: y.shape().to_vec(),
        intensity: io::Intensity::scaled(255.0, "8-bit"),
        display_range: [0.0, 1.0],
        data_range: 1.0,
        source: Source {
            path: dir.join("image.png"),
            slice: None,
            axis: io::SliceAxis::Axial,
            to_grayscale: false,
        },
        from_data: false,
    };
    let p = dir.join("y.npy");
    measurement::write(&p, &y, &side).unwrap();
    let text = std::fs::read(Sidecar::path_for(&p)).unwrap();
    (p, text)
}

#[test]
fn fuzz_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    for op in [
        "blur:kernel=gaussian,sigma=1",
        "mri:coils=2,accel=2",
        "ct:views=8",
        "phase",
    ] {
        let (y, text) = sidecar_seed(dir.path(), op);
        let npy = std::fs::read(&y).unwrap();
        fuzz(
            &format!("sidecar {op}"),
            Kind::Text,
            &text,
            text.len(),
            |b| {
                let d = tempfile::tempdir().unwrap();
                let y = d.path().join("y.npy");
                std::fs::write(&y, &npy).unwrap();
                std::fs::write(Sidecar::path_for(&y), b).unwrap();
                let (y, side) = match measurement::read(&y) {
                    Ok(r) => r,
                    Err(e) => return refused(e),
                };
                let physics = match side.physics() {
                    Ok(p) => p,
                    Err(e) => return refused(e),
                };
                // A cheap reconstruction through the rebuilt model: finite or an error.
                let method = if physics.family.name == "phase" {
                    "gd"
                } else {
                    "adjoint"
                };
                let mut opts = posterior::recon::ReconOptions::new(method.parse().unwrap());
                if method == "gd" {
                    opts.iters = Some(2);
                }
                match posterior::recon::reconstruct(&physics, y.view(), &opts, &mut |_, _| {}) {
                    Ok(x) if x.iter().all(|v| v.is_finite()) => Ok(true),
                    Ok(_) => Err("exit-0 reconstruction with non-finite values".into()),
                    Err(e) => refused(e),
                }
            },
        );
    }
}

#[test]
fn fuzz_suite() {
    let dir = tempfile::tempdir().unwrap();
    let png = data("example.png");
    let text = format!(
        r#"name = "fuzz"
range = [0.0, 1.0]
seeds = [0, 1]

[[data]]
name = "img"
kind = "files"
path = "{}"
files = ["example.png"]
size = 16
clip = [0.0, 1.0]

[[tasks]]
name = "blur"
op = "blur:kernel=gaussian,sigma=1.5"
noise = "gaussian:sigma=0.02"

[[tasks]]
name = "mri"
op = "mri:accel=4"
noise = "none"

[[methods]]
name = "cg"
method = "cg"
iters = 5
lambda = 0.01

[[methods]]
name = "tv"
method = "tv"
iters = 5
"#,
        png.parent().unwrap().display()
    );
    let suite_path = dir.path().join("suite.toml");
    std::fs::write(&suite_path, &text).unwrap();
    let plan = |p: &Path| -> posterior::Result<posterior::bench::Plan> {
        posterior::bench::Plan::new(
            posterior::bench::SuiteFile::read(p)?,
            &posterior::bench::RunOptions::default(),
        )
    };
    plan(&suite_path).expect("the seed suite plans");
    fuzz("suite", Kind::Text, text.as_bytes(), text.len(), |b| {
        with_file("suite.toml", b, |p| match plan(p) {
            Ok(plan) => {
                if plan.images.iter().any(|i| i.data.len() > cap()) {
                    return Err("an image over the cap".into());
                }
                Ok(true)
            }
            Err(e) => refused(e),
        })
    });
}

#[test]
fn mutations_hit_what_they_aim_at() {
    // The harness itself: number and string edits find their targets.
    let t = br#"{"a": [1, -2.5e3], "b": "x"}"#;
    assert_eq!(number_spans(t).len(), 2);
    assert_eq!(string_spans(t).len(), 3);
    let m = apply(t, t.len(), &[Mutation::EditNumber { which: 1, value: 7 }]);
    assert_eq!(
        std::str::from_utf8(&m).unwrap(),
        r#"{"a": [1, 1e39], "b": "x"}"#
    );
    let m = apply(
        b"abcdefgh",
        4,
        &[Mutation::SetWord {
            at: 0.99,
            width: 2,
            value: 0x4242,
        }],
    );
    assert_eq!(&m, b"abBBefgh");
    let _ = Array2::<f32>::zeros((1, 1));
}

/// fastMRI HDF5 (`io::fastmri` over the pure-Rust `hdf5-reader`): mutations aimed at the
/// first 4 KiB (superblock, root group, object headers, the datasets' layout and dtype
/// messages), where a reader decides what it will allocate and where it will seek. The
/// k-space payload behind them only changes values, which the sanity check covers.
#[test]
fn fuzz_fastmri() {
    let seed = std::fs::read(data("fastmri/brain_2slice.h5")).unwrap();
    fuzz("fastmri h5", Kind::Binary, &seed, 4096, |b| {
        with_file("x.h5", b, |p| match io::fastmri::read(p, Some(1)) {
            Ok(s) => {
                if s.kspace.len() > cap() || s.slice >= s.slices.max(1) {
                    return Err(format!(
                        "k-space {:?}, slice {} of {}",
                        s.kspace.dim(),
                        s.slice,
                        s.slices
                    ));
                }
                Ok(true)
            }
            Err(e) => refused(e),
        })
    });
}

/// Raw k-space as `.npy` `(coils, 2, H, W)` through `io::kspace::read`, the path
/// `posterior reconstruct kspace.npy --op mri` takes (shape and value checks included).
#[test]
fn fuzz_kspace_npy() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k.npy");
    let a = ArrayD::from_shape_fn(IxDyn(&[2, 2, 8, 8]), |d| {
        ((d[0] + 2 * d[1] + d[2] * d[3]) as f32).sin()
    });
    io::write_npy(&p, a.view()).unwrap();
    let seed = std::fs::read(&p).unwrap();
    fuzz("kspace npy", Kind::Binary, &seed, 128, |b| {
        with_file("k.npy", b, |p| match io::kspace::read(p, None) {
            Ok(k) => {
                if k.data.len() > cap() || k.data.iter().any(|v| !v.is_finite()) {
                    return Err(format!("k-space {:?}", k.data.dim()));
                }
                Ok(true)
            }
            Err(e) => refused(e),
        })
    });
}
