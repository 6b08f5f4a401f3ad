//! A reader (and a small writer) for the safetensors format, the container that prior
//! directories store their weights in.
//!
//! Layout: an 8-byte little-endian header length `n`, `n` bytes of JSON
//! (`{"key": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//! "__metadata__": {..}}`), then the data block; offsets are relative to the start of the
//! data block and every tensor is stored contiguous, row-major, little-endian. F32, F16,
//! BF16 and F64 tensors are read (and widened or narrowed to f32); every inconsistency (a
//! truncated file, offsets out of range, a byte count that disagrees with the shape) is an
//! error naming the file and the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Element types the reader accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
    F64,
}

impl Dtype {
    fn parse(s: &str) -> Option<Dtype> {
        Some(match s {
            "F32" => Dtype::F32,
            "F16" => Dtype::F16,
            "BF16" => Dtype::Bf16,
            "F64" => Dtype::F64,
            _ => return None,
        })
    }
    fn size(self) -> usize {
        match self {
            Dtype::F16 | Dtype::Bf16 => 2,
            Dtype::F32 => 4,
            Dtype::F64 => 8,
        }
    }
    /// The name used in the file header (`F32`, `F16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::Bf16 => "BF16",
            Dtype::F64 => "F64",
        }
    }
}

/// One tensor's entry in the header.
#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    begin: usize,
    end: usize,
}

/// A safetensors file read into memory.
#[derive(Debug)]
pub struct SafeTensors {
    path: PathBuf,
    tensors: BTreeMap<String, TensorInfo>,
    data: Vec<u8>,
}

fn file_err(path: &Path, message: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Refuses tensors whose data ranges overlap: each byte of the data block belongs to at
/// most one tensor (as the format requires), so no two keys alias the same weights.
fn check_disjoint(path: &Path, tensors: &BTreeMap<String, TensorInfo>) -> Result<()> {
    let mut spans: Vec<(usize, usize, &str)> = tensors
        .iter()
        .filter(|(_, t)| t.end > t.begin)
        .map(|(k, t)| (t.begin, t.end, k.as_str()))
        .collect();
    spans.sort_unstable();
    for w in spans.windows(2) {
        let ((b0, e0, k0), (b1, e1, k1)) = (w[0], w[1]);
        if b1 < e0 {
            return Err(file_err(
                path,
                format!(
                    "tensors `{k0}` (bytes {b0}..{e0}) and `{k1}` (bytes {b1}..{e1}) overlap in \
                     the data block: corrupt or hand-edited header"
                ),
            ));
        }
    }
    Ok(())
}

impl SafeTensors {
    /// Reads and validates `path`.
    pub fn read(path: &Path) -> Result<SafeTensors> {
        let bytes = crate::io::read_bytes(path, crate::limits::max_file_bytes())?;
        Self::parse(path, bytes)
    }

    /// Parses the bytes of a safetensors file (`path` is used in messages only).
    pub fn parse(path: &Path, mut bytes: Vec<u8>) -> Result<SafeTensors> {
        let err = |m: String| file_err(path, m);
        if bytes.len() < 8 {
            return Err(err(format!(
                "not a safetensors file: {} bytes, shorter than the 8-byte header length (truncated?)",
                bytes.len()
            )));
        }
        let mut len8 = [0u8; 8];
        len8.copy_from_slice(&bytes[..8]);
        let n = u64::from_le_bytes(len8);
        let header_end = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_add(8))
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                err(format!(
                    "header length {n} exceeds the file size {} (truncated or not a safetensors file)",
                    bytes.len()
                ))
            })?;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..header_end])
            .map_err(|e| err(format!("the header is not valid JSON: {e}")))?;
        let obj = header
            .as_object()
            .ok_or_else(|| err("the header is not a JSON object".into()))?;
        let data_len = bytes.len() - header_end;
        let mut tensors = BTreeMap::new();
        for (key, entry) in obj {
            if key == "__metadata__" {
                continue;
            }
            let bad = |what: &str| err(format!("tensor `{key}`: {what}"));
            let dtype_s = entry
                .get("dtype")
                .and_then(|d| d.as_str())
                .ok_or_else(|| bad("missing dtype"))?;
            let dtype = Dtype::parse(dtype_s).ok_or_else(|| {
                bad(&format!(
                    "dtype {dtype_s} is not supported (expected F32, F16, BF16 or F64)"
                ))
            })?;
            let shape: Vec<usize> = entry
                .get("shape")
                .and_then(|s| s.as_array())
                .and_then(|s| {
                    s.iter()
                        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                        .collect()
                })
                .ok_or_else(|| bad("missing or malformed shape"))?;
            let offs: Vec<usize> = entry
                .get("data_offsets")
                .and_then(|s| s.as_array())
                .and_then(|s| {
                    s.iter()
                        .map(|d| d.as_u64().and_then(|d| usize::try_from(d).ok()))
                        .collect()
                })
                .filter(|v: &Vec<usize>| v.len() == 2)
                .ok_or_else(|| bad("missing or malformed data_offsets"))?;
            let (begin, end) = (offs[0], offs[1]);
            let want = shape
                .iter()
                .try_fold(dtype.size(), |acc, &d| acc.checked_mul(d));
            if end < begin || end > data_len {
                return Err(bad(&format!(
                    "data_offsets [{begin}, {end}] lie outside the {data_len}-byte data block (truncated file?)"
                )));
            }
            if want != Some(end - begin) {
                return Err(bad(&format!(
                    "{} bytes stored for shape {shape:?} of {dtype_s}, expected {}",
                    end - begin,
                    want.map_or("an overflowing count".to_string(), |w| w.to_string())
                )));
            }
            tensors.insert(
                key.clone(),
                TensorInfo {
                    dtype,
                    shape,
                    begin,
                    end,
                },
            );
        }
        check_disjoint(path, &tensors)?;
        bytes.drain(..header_end);
        Ok(SafeTensors {
            path: path.to_path_buf(),
            tensors,
            data: bytes,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// Tensor names in sorted order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|k| k.as_str())
    }
    /// A tensor's header entry.
    pub fn info(&self, key: &str) -> Option<&TensorInfo> {
        self.tensors.get(key)
    }
    /// The element type shared by all tensors, or `None` for an empty or mixed file.
    pub fn common_dtype(&self) -> Option<Dtype> {
        let mut it = self.tensors.values().map(|t| t.dtype);
        let first = it.next()?;
        it.all(|d| d == first).then_some(first)
    }

    /// The values of tensor `key` as f32 (f16/bf16 widened exactly, f64 rounded).
    pub fn f32_values(&self, key: &str) -> Result<Vec<f32>> {
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| file_err(&self.path, format!("missing tensor `{key}`")))?;
        let raw = &self.data[t.begin..t.end];
        Ok(match t.dtype {
            Dtype::F32 => raw
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => widen_f16(raw),
            Dtype::Bf16 => raw
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => raw
                .chunks_exact(8)
                .map(|b| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(b);
                    f64::from_le_bytes(a) as f32
                })
                .collect(),
        })
    }
}

/// Little-endian IEEE binary16 values to f32, exactly (subnormals, infinities and NaN
/// payloads as `half` widens them), in one branch-free loop that vectorises: the shipped
/// priors are f16, and the per-element conversion was a large part of opening one.
fn widen_f16(raw: &[u8]) -> Vec<f32> {
    let mut out = vec![0.0f32; raw.len() / 2];
    crate::nn::simd::wide!({
        for (o, b) in out.iter_mut().zip(raw.chunks_exact(2)) {
            *o = f16_bits_to_f32(u16::from_le_bytes([b[0], b[1]]));
        }
    });
    out
}

/// One binary16 bit pattern as f32. Finite values: the exponent and mantissa bits moved to
/// f32's positions are the value times 2^-112 (subnormals land on f32 subnormals), so one
/// multiplication by 2^112 rebiases exactly. Infinities and NaNs (exponent all ones) keep
/// their payload, NaNs made quiet.
#[inline(always)]
fn f16_bits_to_f32(h: u16) -> f32 {
    let h = h as u32;
    let sign = (h & 0x8000) << 16;
    let em = h & 0x7fff;
    let finite = (f32::from_bits(em << 13) * f32::from_bits(0x7780_0000)).to_bits();
    let man = (em & 0x3ff) << 13;
    let special = 0x7f80_0000 | man | if man != 0 { 0x0040_0000 } else { 0 };
    f32::from_bits(sign | if em >= 0x7c00 { special } else { finite })
}

/// Serialises f32 tensors (`(key, shape, values)`) as a safetensors file in `dtype`
/// (`F32` or `F16`), keys in sorted order. Used to write prior directories from Rust and in
/// tests; the file is written to a temporary name and renamed.
pub fn write(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: Dtype) -> Result<()> {
    if !matches!(dtype, Dtype::F32 | Dtype::F16) {
        return Err(file_err(path, "only F32 and F16 can be written"));
    }
    let mut sorted: Vec<&(String, Vec<usize>, Vec<f32>)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (key, shape, values) in sorted {
        if shape.iter().product::<usize>() != values.len() {
            return Err(file_err(
                path,
                format!(
                    "tensor `{key}`: {} values for shape {shape:?}",
                    values.len()
                ),
            ));
        }
        let begin = data.len();
        for &v in values {
            match dtype {
                Dtype::F16 => data.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                _ => data.extend_from_slice(&v.to_le_bytes()),
            }
        }
        header.insert(
            key.clone(),
            serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [begin, data.len()]}),
        );
    }
    let mut head = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| file_err(path, e.to_string()))?;
    while (head.len() + 8) % 8 != 0 {
        head.push(b' ');
    }
    let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&head);
    bytes.extend_from_slice(&data);
    crate::io::write_atomic(path, |tmp| {
        std::fs::write(tmp, &bytes).map_err(|e| file_err(path, format!("cannot write: {e}")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<(String, Vec<usize>, Vec<f32>)> {
        vec![
            (
                "b.weight".into(),
                vec![2, 3],
                vec![1.0, -2.0, 0.5, 0.25, 3.0, -0.125],
            ),
            ("a.bias".into(), vec![2], vec![1.5, -7.0]),
        ]
    }

    #[test]
    fn round_trips_f32_and_f16_and_reports_corruption() {
        let dir = tempfile::tempdir().unwrap();
        for dtype in [Dtype::F32, Dtype::F16] {
            let p = dir.path().join(format!("w{}.safetensors", dtype.name()));
            write(&p, &sample(), dtype).unwrap();
            let st = SafeTensors::read(&p).unwrap();
            assert_eq!(st.keys().collect::<Vec<_>>(), vec!["a.bias", "b.weight"]);
            assert_eq!(st.common_dtype(), Some(dtype));
            assert_eq!(st.info("b.weight").unwrap().shape, vec![2, 3]);
            // All sample values are exact in f16.
            assert_eq!(st.f32_values("b.weight").unwrap(), sample()[0].2);
            assert!(st.f32_values("nope").is_err());
            // Truncations at every length are errors, never panics.
            let bytes = std::fs::read(&p).unwrap();
            for cut in [0, 4, 8, 20, bytes.len() - 1] {
                let e = SafeTensors::parse(&p, bytes[..cut].to_vec()).unwrap_err();
                assert!(
                    e.to_string().contains("truncated") || e.to_string().contains("JSON"),
                    "{e}"
                );
            }
        }
        // A header whose byte count disagrees with the shape names the key.
        let head = br#"{"k":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#;
        let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(head);
        bytes.extend_from_slice(&[0u8; 8]);
        let e = SafeTensors::parse(Path::new("x"), bytes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`k`") && e.contains("expected 12"), "{e}");
    }

    #[test]
    fn overlapping_data_offsets_are_refused() {
        let parse = |head: &[u8]| {
            let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(head);
            bytes.extend_from_slice(&[0u8; 16]);
            SafeTensors::parse(Path::new("x"), bytes)
        };
        let e = parse(br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`a`") && e.contains("`b`") && e.contains("overlap"),
            "{e}"
        );
        // Adjacent ranges, and an empty tensor anywhere, are fine.
        parse(br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"c":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}"#)
            .unwrap();
    }

    #[test]
    fn f16_widening_is_exact_for_every_bit_pattern() {
        let raw: Vec<u8> = (0..=u16::MAX).flat_map(|h| h.to_le_bytes()).collect();
        let got = widen_f16(&raw);
        for (h, g) in (0..=u16::MAX).zip(&got) {
            let want = half::f16::from_bits(h).to_f32();
            assert_eq!(
                g.to_bits(),
                want.to_bits(),
                "f16 bits {h:#06x}: {g} vs {want}"
            );
        }
    }
}
