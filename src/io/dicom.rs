//! DICOM images through dicom-object / dicom-pixeldata (pure Rust, native codecs).
//!
//! The image attributes (rows, columns, frames, samples, bits allocated and stored, rescale
//! slope and intercept) are read and checked here before the pixel data is decoded:
//! dicom-pixeldata asserts on a Bits Stored of 0 or above 32, drops the rescale of colour
//! images and of files whose intercept it cannot read, and allocates whatever the header
//! claims. The rescale is applied as validated here (passed to the decoder as an
//! override), so it is never dropped silently; a colour image with a non-identity rescale
//! is refused.

use std::path::Path;

use dicom_object::{DefaultDicomObject, Tag};
use dicom_pixeldata::{ConvertOptions, ModalityLutOption, PixelDecoder, Rescale};
use ndarray::{s, Array3, Array4, Axis};

use super::{guard, Intensity, LoadedImage, ReadOptions};
use crate::error::{Error, Result};

const MODALITY: Tag = Tag(0x0008, 0x0060);
const RESCALE_TYPE: Tag = Tag(0x0028, 0x1054);
const SAMPLES_PER_PIXEL: Tag = Tag(0x0028, 0x0002);
const PHOTOMETRIC: Tag = Tag(0x0028, 0x0004);
const NUMBER_OF_FRAMES: Tag = Tag(0x0028, 0x0008);
const ROWS: Tag = Tag(0x0028, 0x0010);
const COLUMNS: Tag = Tag(0x0028, 0x0011);
const BITS_ALLOCATED: Tag = Tag(0x0028, 0x0100);
const BITS_STORED: Tag = Tag(0x0028, 0x0101);
const RESCALE_INTERCEPT: Tag = Tag(0x0028, 0x1052);
const RESCALE_SLOPE: Tag = Tag(0x0028, 0x1053);
const PIXEL_DATA: Tag = Tag(0x7FE0, 0x0010);

/// Transfer syntaxes whose pixel data is stored uncompressed (its length is checkable).
const NATIVE_SYNTAXES: [&str; 3] = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
];

/// The image attributes the decoder relies on, checked.
#[derive(Debug)]
struct Attributes {
    frames: usize,
    samples: usize,
    /// The rescale (slope, intercept) to apply to monochrome images.
    rescale: (f64, f64),
}

/// The value length that means "undefined" (a sequence or item closed by a delimiter).
const UNDEFINED: u32 = 0xFFFF_FFFF;

/// Walks the element headers of a part-10 file and refuses any element whose declared
/// length runs past the end of the file. dicom-parser reserves and zero-fills the declared
/// length before reading it, so 21 stray bytes at the end of a 133 KB file can make it
/// touch 3.6 GB; this walk bounds every claim by the file's size first. Sequences (and, in
/// implicit VR, values that start with an item tag) are walked into; encapsulated pixel
/// fragments are skipped over. A deflated data set is not walked (its lengths are inside
/// the compressed stream).
fn check_element_lengths(path: &Path, b: &[u8]) -> Result<()> {
    if b.len() < 132 || &b[128..132] != b"DICM" {
        return Ok(()); // the parser says what is wrong
    }
    let n = b.len();
    let u16_at = |i: usize, big: bool| {
        let v = [b[i], b[i + 1]];
        if big {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        }
    };
    let u32_at = |i: usize, big: bool| {
        let v = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if big {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    };
    let (mut pos, mut in_meta, mut fragments) = (132usize, true, false);
    let (mut explicit, mut big) = (true, false);
    let mut syntax = String::new();
    while pos + 8 <= n {
        if in_meta && u16_at(pos, false) != 0x0002 {
            in_meta = false;
            match syntax.as_str() {
                "1.2.840.10008.1.2" => explicit = false,
                "1.2.840.10008.1.2.2" => big = true,
                "1.2.840.10008.1.2.1.99" => return Ok(()),
                _ => {}
            }
        }
        let be = big && !in_meta;
        let (group, elem) = (u16_at(pos, be), u16_at(pos + 2, be));
        if group == 0xFFFE {
            // Item or delimiter: tag and a 4-byte length, no VR.
            let len = u32_at(pos + 4, be);
            pos += 8;
            if elem == 0xE0DD {
                fragments = false;
            } else if elem == 0xE000 && len != UNDEFINED {
                if pos.saturating_add(len as usize) > n {
                    return Err(Error::file(
                        path,
                        format!(
                            "corrupt DICOM: an item at byte {} claims {len} bytes, but only {} remain",
                            pos - 8,
                            n - pos
                        ),
                    ));
                }
                if fragments {
                    pos += len as usize;
                }
            }
            continue;
        }
        let ex = explicit || in_meta;
        let vr = [b[pos + 4], b[pos + 5]];
        // As dicom-parser reads them: the short-form VRs have a 2-byte length; every other
        // VR, unknown ones included (read as UN), has 2 reserved bytes and a 4-byte length.
        const SHORT: [&[u8; 2]; 21] = [
            b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT",
            b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
        ];
        let long = ex && !SHORT.contains(&&vr);
        let (len, header) = if !ex {
            (u32_at(pos + 4, be), 8)
        } else if long {
            if pos + 12 > n {
                break;
            }
            (u32_at(pos + 8, be), 12)
        } else {
            (u16_at(pos + 6, be) as u32, 8)
        };
        let start = pos;
        pos += header;
        if len == UNDEFINED {
            fragments = (group, elem) == (0x7FE0, 0x0010);
            continue; // walk into the sequence (or the fragments)
        }
        let len = len as usize;
        if pos.saturating_add(len) > n {
            return Err(Error::file(
                path,
                format!(
                    "corrupt DICOM: element ({group:04X},{elem:04X}) at byte {start} claims {len} \
                     bytes, but only {} remain in the file",
                    n - pos
                ),
            ));
        }
        if in_meta && (group, elem) == (0x0002, 0x0010) {
            syntax = String::from_utf8_lossy(&b[pos..pos + len])
                .trim_end_matches(['\0', ' '])
                .to_string();
        }
        let item_tag: [u8; 4] = if be {
            [0xFF, 0xFE, 0xE0, 0x00]
        } else {
            [0xFE, 0xFF, 0x00, 0xE0]
        };
        let sequence = (ex && &vr == b"SQ") || (!ex && b[pos..].starts_with(&item_tag));
        if !sequence {
            pos += len;
        }
    }
    Ok(())
}

/// Reads and checks the image attributes before any pixel data is decoded.
fn check_attributes(path: &Path, obj: &DefaultDicomObject) -> Result<Attributes> {
    let bad = |m: String| Error::file(path, m);
    let int = |tag: Tag, name: &str, default: Option<i64>| -> Result<i64> {
        match obj.element_opt(tag).ok().flatten() {
            Some(e) => e
                .to_int::<i64>()
                .map_err(|_| bad(format!("DICOM attribute {name} {tag} is not an integer"))),
            None => default.ok_or_else(|| bad(format!("DICOM attribute {name} {tag} is missing"))),
        }
    };
    let rows = int(ROWS, "Rows", None)?;
    let cols = int(COLUMNS, "Columns", None)?;
    let samples = int(SAMPLES_PER_PIXEL, "Samples per Pixel", Some(1))?;
    let frames = int(NUMBER_OF_FRAMES, "Number of Frames", Some(1))?;
    let allocated = int(BITS_ALLOCATED, "Bits Allocated", None)?;
    let stored = int(BITS_STORED, "Bits Stored", Some(allocated))?;
    if rows < 1 || cols < 1 || frames < 1 {
        return Err(bad(format!(
            "DICOM image of {frames} frame(s) of {rows} x {cols} pixels; expected at least one frame of at least 1 x 1"
        )));
    }
    if samples != 1 && samples != 3 {
        return Err(bad(format!(
            "{samples} samples per pixel; expected 1 (monochrome) or 3 (RGB)"
        )));
    }
    if !matches!(allocated, 8 | 16 | 32) {
        return Err(Error::Unsupported(format!(
            "{}: Bits Allocated {allocated}; expected 8, 16 or 32",
            path.display()
        )));
    }
    if !(1..=allocated).contains(&stored) {
        return Err(bad(format!(
            "Bits Stored {stored} is outside 1..={allocated} (Bits Allocated): corrupt header"
        )));
    }
    let shape = [
        frames as usize,
        rows as usize,
        cols as usize,
        samples as usize,
    ];
    let n =
        crate::limits::check_elements(&format!("{} (DICOM pixel data)", path.display()), &shape)?;
    if NATIVE_SYNTAXES.contains(&obj.meta().transfer_syntax().trim_end_matches('\0')) {
        let stored_len = obj
            .element_opt(PIXEL_DATA)
            .ok()
            .flatten()
            .and_then(|e| e.value().primitive().map(|p| p.calculate_byte_len() as u64))
            .ok_or_else(|| bad("no pixel data (7FE0,0010) element".into()))?;
        let needed = n * (allocated as u64 / 8);
        if stored_len < needed {
            return Err(bad(format!(
                "truncated pixel data: {stored_len} bytes for {frames} frame(s) of {rows} x {cols} x {samples} \
                 at {allocated} bits = {needed} bytes"
            )));
        }
    }
    let number = |tag: Tag, name: &str, default: f64| -> Result<f64> {
        let Some(e) = obj.element_opt(tag).ok().flatten() else {
            return Ok(default);
        };
        let values = e.to_multi_float64().map_err(|_| {
            bad(format!(
                "DICOM {name} {tag} is not a number: the rescale cannot be applied"
            ))
        })?;
        let first = *values
            .first()
            .ok_or_else(|| bad(format!("DICOM {name} {tag} is empty")))?;
        if values.iter().any(|&v| v != first) {
            return Err(Error::Unsupported(format!(
                "{}: per-frame {name} values {values:?} are not supported",
                path.display()
            )));
        }
        crate::limits::check_number(&format!("DICOM {name}"), first)
            .map_err(|e| bad(e.to_string()))?;
        Ok(first)
    };
    let slope = number(RESCALE_SLOPE, "Rescale Slope", 1.0)?;
    let intercept = number(RESCALE_INTERCEPT, "Rescale Intercept", 0.0)?;
    if samples == 3 && (slope != 1.0 || intercept != 0.0) {
        return Err(Error::Unsupported(format!(
            "{}: a rescale (slope {slope}, intercept {intercept}) on a colour image is not \
             supported (DICOM defines the modality rescale for monochrome images)",
            path.display()
        )));
    }
    if samples == 1 && slope == 0.0 {
        return Err(bad(
            "Rescale Slope is 0: every pixel would map to the intercept".into(),
        ));
    }
    Ok(Attributes {
        frames: frames as usize,
        samples: samples as usize,
        rescale: (slope, intercept),
    })
}

/// Lowest CT value kept, in HU (air); lower values (field-of-view padding) are raised.
const CT_FLOOR_HU: f32 = -1000.0;

/// Reads one frame (`opts.slice`, default the middle one) of a DICOM file. CT (Modality
/// CT, or Rescale Type HU) comes out as HU / 1000 + 1 clipped at 0; other monochrome
/// images as value / max(frame) (MONOCHROME1 inverted first: max + min - value); RGB as
/// value / (2^bits stored - 1). `opts.axis` is not used: frames are taken as stored.
pub(super) fn read(path: &Path, opts: &ReadOptions) -> Result<LoadedImage> {
    guard::no_panic(path, "DICOM", || read_guarded(path, opts))
}

fn read_guarded(path: &Path, opts: &ReadOptions) -> Result<LoadedImage> {
    let bytes = super::read_bytes(path, crate::limits::max_file_bytes())?;
    check_element_lengths(path, &bytes)?;
    drop(bytes);
    let obj = dicom_object::open_file(path).map_err(|e| {
        Error::file(path, format!("not a readable DICOM file (expected a DICOM part-10 file with the DICM preamble): {e}"))
    })?;
    let attrs = check_attributes(path, &obj)?;
    let text = |tag: Tag| -> Option<String> {
        obj.element_opt(tag)
            .ok()
            .flatten()
            .and_then(|e| e.to_str().ok())
            .map(|s| s.trim().to_uppercase())
    };
    let modality = text(MODALITY).unwrap_or_default();
    let is_ct = modality == "CT" || text(RESCALE_TYPE).as_deref() == Some("HU");
    let pixels = obj
        .decode_pixel_data()
        .map_err(|e| Error::file(path, format!("cannot decode the DICOM pixel data: {e}")))?;
    let bits = pixels.bits_stored();
    let monochrome1 = pixels.photometric_interpretation().to_string() == "MONOCHROME1";
    if text(PHOTOMETRIC).is_some_and(|p| p.starts_with("MONOCHROME")) != (attrs.samples == 1) {
        return Err(Error::file(
            path,
            format!(
                "Photometric Interpretation {:?} disagrees with {} sample(s) per pixel",
                text(PHOTOMETRIC).unwrap_or_default(),
                attrs.samples
            ),
        ));
    }
    // (frames, rows, cols, samples), the validated rescale applied.
    let (slope, intercept) = attrs.rescale;
    let options = ConvertOptions::new()
        .with_modality_lut(ModalityLutOption::Override(Rescale::new(slope, intercept)));
    let arr = pixels
        .to_ndarray_with_options::<f32>(&options)
        .map_err(|e| Error::file(path, format!("cannot convert the DICOM pixel data: {e}")))?;
    // dicom-pixeldata has its own ndarray version: copy over in logical order.
    let (n, rows, cols, samples) = arr.dim();
    if n != attrs.frames || samples != attrs.samples {
        return Err(Error::file(
            path,
            format!(
                "decoded {n} frame(s) of {samples} sample(s), but the header says {} of {}",
                attrs.frames, attrs.samples
            ),
        ));
    }
    let arr = Array4::from_shape_vec((n, rows, cols, samples), arr.iter().copied().collect())
        .map_err(|e| Error::file(path, e))?;
    let k = opts.slice.unwrap_or(n / 2);
    if k >= n {
        return Err(Error::file(
            path,
            format!(
                "frame {k} is out of range: the file has {n} frame(s) (valid 0..={})",
                n.saturating_sub(1)
            ),
        ));
    }
    // (C, H, W)
    let frame: Array3<f32> = arr
        .slice(s![k, .., .., ..])
        .permuted_axes([2, 0, 1])
        .as_standard_layout()
        .into_owned();
    let source = if n > 1 {
        format!("{}[frame {k}]", path.display())
    } else {
        path.display().to_string()
    };
    let (data, intensity) = if is_ct && samples == 1 {
        let data = frame.mapv(|hu| (hu.max(CT_FLOOR_HU) / 1000.0) + 1.0);
        let intensity = Intensity {
            scale: 1000.0,
            offset: -1000.0,
            unit: "HU".into(),
            clip_min: Some(CT_FLOOR_HU),
        };
        (data, intensity)
    } else if samples == 1 {
        let max = frame.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let min = frame.iter().copied().fold(f32::INFINITY, f32::min);
        let frame = if monochrome1 {
            frame.mapv(|v| max + min - v)
        } else {
            frame
        };
        let top = frame.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let scale = if top.is_finite() && top > 0.0 {
            top
        } else {
            1.0
        };
        (frame / scale, Intensity::scaled(scale, "dicom"))
    } else if samples == 3 {
        let scale = ((1u64 << bits.clamp(1, 32)) - 1) as f32;
        (frame / scale, Intensity::scaled(scale, "dicom"))
    } else {
        return Err(Error::file(
            path,
            format!("{samples} samples per pixel; expected 1 (monochrome) or 3 (RGB)"),
        ));
    };
    debug_assert_eq!(data.len_of(Axis(0)), samples);
    Ok(LoadedImage {
        data,
        intensity,
        source,
    })
}
