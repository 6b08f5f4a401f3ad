//! A suite's images: read from its data sources and cut to one size and one range.
//!
//! - `dataset` sources are directories written by `notebooks/data.py` (format
//!   `posterior-dataset-v1`): `manifest.json` and `test.npy` `(N, 1, H, W)` stored as uint8,
//!   float16, float32 or float64; the manifest's `to_model_range` (`x = v * scale + offset`)
//!   maps stored values onto the prior's model range `[-1, 1]`, which is then mapped
//!   linearly onto the suite's `range` (image units).
//! - `files` sources are read exactly as `posterior degrade` reads them
//!   ([`crate::io::read_image`]: DICOM CT as `HU / 1000 + 1` = attenuation relative to
//!   water, clipped at 0; PNG in [0, 1]; NIfTI middle axial slice; `.npy` as stored).
//!
//! Then, per source: a non-square image is centre-cropped to a square and resampled to
//! `size x size` (area averaging when the side is a multiple of `size`, else bilinear with
//! pixel centres aligned), and clipped to `clip`.

use std::path::{Path, PathBuf};

use ndarray::{s, Array2, Array3, Axis};
use serde::Deserialize;

use super::suite::{expand_path, DataSource, Suite};
use crate::error::{Error, Result};
use crate::io::{self, ReadOptions};

/// One image of a suite: its id (unique in the suite) and its pixels `(C, H, W)` in the
/// suite's image units.
#[derive(Clone, Debug)]
pub struct BenchImage {
    pub id: String,
    pub data: Array3<f32>,
}

#[derive(Deserialize)]
struct Manifest {
    format: String,
    files: std::collections::BTreeMap<String, ManifestFile>,
    to_model_range: ModelRange,
}

#[derive(Deserialize)]
struct ManifestFile {
    file: String,
}

#[derive(Deserialize)]
struct ModelRange {
    scale: f64,
    offset: f64,
}

/// The directory of a source, checked to exist; the error names the recipe that makes it.
pub fn source_dir(src: &DataSource, base: &Path) -> Result<PathBuf> {
    let dir = expand_path(&src.path, base)?;
    if !dir.is_dir() {
        let hint = match &src.recipe {
            Some(r) => format!("; make it with: {r}"),
            None => String::new(),
        };
        return Err(Error::file(
            &dir,
            format!("data `{}`: directory not found{hint}", src.name),
        ));
    }
    Ok(dir)
}

/// Reads every image of every source, in order, in the suite's image units.
pub fn load_images(suite: &Suite, base: &Path) -> Result<Vec<BenchImage>> {
    let mut out = Vec::new();
    for src in &suite.data {
        let dir = source_dir(src, base)?;
        let raw: Vec<(String, Array3<f32>)> = match src.kind.as_str() {
            "dataset" => load_dataset(src, &dir, suite.range)?,
            _ => load_files(src, &dir)?,
        };
        for (id, img) in raw {
            let img = cut(img, src.size);
            let img = match src.clip {
                Some([lo, hi]) => img.mapv(|v| v.clamp(lo, hi)),
                None => img,
            };
            out.push(BenchImage { id, data: img });
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for im in &out {
        if !seen.insert(im.id.clone()) {
            return Err(Error::Invalid(format!(
                "image id `{}` occurs twice: give the data sources distinct names",
                im.id
            )));
        }
    }
    Ok(out)
}

fn load_dataset(
    src: &DataSource,
    dir: &Path,
    range: [f32; 2],
) -> Result<Vec<(String, Array3<f32>)>> {
    let mpath = dir.join("manifest.json");
    let text = crate::io::read_text(&mpath).map_err(|e| {
        Error::file(
            &mpath,
            format!("data `{}`: cannot read the dataset manifest ({e}); expected a directory written by notebooks/data.py", src.name),
        )
    })?;
    let man: Manifest = serde_json::from_str(&text)
        .map_err(|e| Error::file(&mpath, format!("malformed dataset manifest: {e}")))?;
    if man.format != "posterior-dataset-v1" {
        return Err(Error::file(
            &mpath,
            format!("format `{}`, expected `posterior-dataset-v1`", man.format),
        ));
    }
    let split = src.split.as_deref().unwrap_or("test");
    let entry = man
        .files
        .get(split)
        .ok_or_else(|| Error::file(&mpath, format!("the dataset has no split `{split}`")))?;
    let npy = dir.join(&entry.file);
    let all = read_npy_any(&npy)?;
    if all.ndim() != 4 {
        return Err(Error::file(
            &npy,
            format!("shape {:?}: expected (N, C, H, W)", all.shape()),
        ));
    }
    let n = all.shape()[0];
    let (ms, mo) = (man.to_model_range.scale, man.to_model_range.offset);
    let [lo, hi] = range;
    let mut out = Vec::new();
    for &i in &src.indices {
        if i >= n {
            return Err(Error::file(
                &npy,
                format!(
                    "data `{}`: index {i} is out of range: the {split} split has {n} images (valid 0..={})",
                    src.name,
                    n.saturating_sub(1)
                ),
            ));
        }
        let img = all
            .index_axis(Axis(0), i)
            .mapv(|v| {
                let model = v as f64 * ms + mo;
                (lo as f64 + (model + 1.0) / 2.0 * (hi - lo) as f64) as f32
            })
            .into_dimensionality::<ndarray::Ix3>()
            .map_err(|e| Error::file(&npy, e))?;
        out.push((format!("{}-{i}", src.name), img));
    }
    Ok(out)
}

fn load_files(src: &DataSource, dir: &Path) -> Result<Vec<(String, Array3<f32>)>> {
    let mut out = Vec::new();
    for f in &src.files {
        let path = dir.join(f);
        let loaded = io::read_image(&path, &ReadOptions::default())
            .map_err(|e| Error::Invalid(format!("data `{}`: {e}", src.name)))?;
        let stem = f
            .split('/')
            .next_back()
            .unwrap_or(f)
            .split('.')
            .next()
            .unwrap_or(f)
            .to_string();
        out.push((format!("{}-{stem}", src.name), loaded.data));
    }
    Ok(out)
}

/// Centre-crops to a square and resamples to `size x size`; `None` keeps the image.
pub fn cut(img: Array3<f32>, size: Option<usize>) -> Array3<f32> {
    let Some(size) = size else { return img };
    let (c, h, w) = img.dim();
    let side = h.min(w);
    let (y0, x0) = ((h - side) / 2, (w - side) / 2);
    let sq = img.slice(s![.., y0..y0 + side, x0..x0 + side]).to_owned();
    if side == size {
        return sq;
    }
    let mut out = Array3::zeros((c, size, size));
    for ch in 0..c {
        let plane = sq.index_axis(Axis(0), ch).to_owned();
        let r = if side % size == 0 {
            area(&plane, side / size)
        } else {
            bilinear(&plane, size)
        };
        out.index_axis_mut(Axis(0), ch).assign(&r);
    }
    out
}

fn area(a: &Array2<f32>, f: usize) -> Array2<f32> {
    let n = a.nrows() / f;
    Array2::from_shape_fn((n, n), |(i, j)| {
        let block = a.slice(s![i * f..(i + 1) * f, j * f..(j + 1) * f]);
        (block.iter().map(|&v| v as f64).sum::<f64>() / (f * f) as f64) as f32
    })
}

fn bilinear(a: &Array2<f32>, size: usize) -> Array2<f32> {
    let n = a.nrows();
    let scale = n as f64 / size as f64;
    let coord = |i: usize| {
        let x = ((i as f64 + 0.5) * scale - 0.5).clamp(0.0, (n - 1) as f64);
        let i0 = x.floor() as usize;
        (i0, (i0 + 1).min(n - 1), x - i0 as f64)
    };
    Array2::from_shape_fn((size, size), |(i, j)| {
        let (y0, y1, fy) = coord(i);
        let (x0, x1, fx) = coord(j);
        let v = |y: usize, x: usize| a[[y, x]] as f64;
        let top = v(y0, x0) * (1.0 - fx) + v(y0, x1) * fx;
        let bot = v(y1, x0) * (1.0 - fx) + v(y1, x1) * fx;
        (top * (1.0 - fy) + bot * fy) as f32
    })
}

/// Reads a `.npy` array of uint8, float16, float32 or float64 (little-endian, C order) as
/// `f32`; other element types are an error naming the type.
pub fn read_npy_any(path: &Path) -> Result<ndarray::ArrayD<f32>> {
    let bytes = crate::io::read_bytes(path, crate::limits::max_file_bytes())?;
    let bad = |m: &str| Error::file(path, format!("not a readable .npy file: {m}"));
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad("no NUMPY magic"));
    }
    let (hlen, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        _ => return Err(bad("unsupported version")),
    };
    let header = bytes
        .get(start..start + hlen)
        .and_then(|h| std::str::from_utf8(h).ok())
        .ok_or_else(|| bad("truncated header"))?;
    let field = |key: &str| -> Option<&str> {
        let i = header.find(&format!("'{key}'"))? + key.len() + 2;
        let rest = header[i..].trim_start().strip_prefix(':')?.trim_start();
        Some(rest)
    };
    let descr = field("descr")
        .and_then(|r| r.strip_prefix('\''))
        .and_then(|r| r.split('\'').next())
        .ok_or_else(|| bad("no descr"))?;
    if field("fortran_order").is_some_and(|r| r.starts_with("True")) {
        return Err(bad("Fortran order is not supported; save with C order"));
    }
    let shape: Vec<usize> = field("shape")
        .and_then(|r| r.strip_prefix('('))
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| bad("no shape"))?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| bad("malformed shape"))?;
    let count: usize = shape.iter().product();
    let data = &bytes[start + hlen..];
    let (width, convert): (usize, fn(&[u8]) -> f32) = match descr {
        "|u1" | "<u1" => (1, |b| b[0] as f32),
        "<f2" => (2, |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        "<f4" => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        "<f8" => (8, |b| {
            f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
        }),
        other => {
            return Err(Error::file(
                path,
                format!("element type `{other}` is not supported; expected uint8, float16, float32 or float64 (little-endian)"),
            ))
        }
    };
    if data.len() != count * width {
        return Err(Error::file(
            path,
            format!(
                "holds {} data bytes but its header declares {count} values of {width} bytes",
                data.len()
            ),
        ));
    }
    let values: Vec<f32> = data.chunks_exact(width).map(convert).collect();
    if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
        return Err(Error::file(path, format!("value {bad} is NaN or infinite")));
    }
    ndarray::ArrayD::from_shape_vec(shape, values).map_err(|e| Error::file(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_resampling_averages_blocks_and_bilinear_keeps_constants() {
        let img = Array3::from_shape_fn((1, 4, 6), |(_, i, j)| (i * 6 + j) as f32);
        // Centre crop to 4x4 (columns 1..5), then 2x2 blocks.
        let out = cut(img, Some(2));
        assert_eq!(out.shape(), &[1, 2, 2]);
        // Block rows 0-1, cols 1-2: values 1, 2, 7, 8.
        assert_eq!(out[[0, 0, 0]], 4.5);
        assert_eq!(out[[0, 1, 1]], (15.0 + 16.0 + 21.0 + 22.0) / 4.0);
        let flat = Array3::from_elem((1, 5, 5), 3.0f32);
        let out = cut(flat, Some(3));
        assert!(out.iter().all(|&v| (v - 3.0).abs() < 1e-6));
    }

    #[test]
    fn npy_reader_handles_u8_and_f16_and_rejects_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let header = |descr: &str, shape: &str| {
            let mut h =
                format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
            while (10 + h.len() + 1) % 64 != 0 {
                h.push(' ');
            }
            h.push('\n');
            let mut b = b"\x93NUMPY\x01\x00".to_vec();
            b.extend_from_slice(&(h.len() as u16).to_le_bytes());
            b.extend_from_slice(h.as_bytes());
            b
        };
        let p = dir.path().join("u8.npy");
        let mut b = header("|u1", "(2, 2)");
        b.extend_from_slice(&[0, 1, 128, 255]);
        std::fs::write(&p, &b).unwrap();
        let a = read_npy_any(&p).unwrap();
        assert_eq!(a.shape(), &[2, 2]);
        assert_eq!(
            a.iter().copied().collect::<Vec<_>>(),
            vec![0.0, 1.0, 128.0, 255.0]
        );
        let p = dir.path().join("f2.npy");
        let mut b = header("<f2", "(3,)");
        for v in [-1.0f32, 0.5, 2.0] {
            b.extend_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
        std::fs::write(&p, &b).unwrap();
        assert_eq!(
            read_npy_any(&p)
                .unwrap()
                .iter()
                .copied()
                .collect::<Vec<_>>(),
            vec![-1.0, 0.5, 2.0]
        );
        b.pop();
        std::fs::write(&p, &b).unwrap();
        let e = read_npy_any(&p).unwrap_err().to_string();
        assert!(e.contains("declares 3 values"), "{e}");
    }
}
