//! Checkpoints as named tensors: PyTorch `.pt` files read natively ([`StateDict`]: the zip
//! container of [`zip`] and the safe pickle subset of [`pickle`]), and safetensors files,
//! both behind [`TensorSource`], which is what the network builders take weights from.
//!
//! A `.pt` file is a zip archive `<prefix>/data.pkl` (the pickled object, whose tensors are
//! references to storages), `<prefix>/data/<key>` (one entry per storage, raw little-endian
//! elements) and a few small records (`byteorder`, `version`). A state dict is a (possibly
//! ordered) dict from names to tensors; training scripts often nest it (`{'ema': sd,
//! 'model': sd, 'step': n}`): [`StateDict::read_pt`] picks the nested dict by key, by default
//! the first of `ema`, `model`, `state_dict` (what `notebooks/convert_checkpoint.py` does), and
//! strips DataParallel's `module.` prefix. Every tensor's size and its view into its storage
//! are checked against the archive entry and [`crate::limits`] before anything is read.

pub mod pickle;
pub mod zip;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::{Error, Result};
use crate::nn::safetensors::SafeTensors;
use pickle::{StorageDtype, TensorRef, Value};
use zip::ZipArchive;

/// Named f32 tensors, wherever they are stored.
pub trait TensorSource {
    /// The file the tensors come from (for messages).
    fn path(&self) -> &Path;
    /// Every tensor name, sorted.
    fn tensor_names(&self) -> Vec<String>;
    /// The shape of tensor `name`, if it exists.
    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>>;
    /// The row-major values of tensor `name`, widened or narrowed to f32.
    fn tensor_f32(&self, name: &str) -> Result<Vec<f32>>;
}

impl TensorSource for SafeTensors {
    fn path(&self) -> &Path {
        SafeTensors::path(self)
    }
    fn tensor_names(&self) -> Vec<String> {
        self.keys().map(str::to_string).collect()
    }
    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.info(name).map(|i| i.shape.clone())
    }
    fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        self.f32_values(name)
    }
}

/// Opens a weights file by its extension: `.safetensors`, or a PyTorch zip checkpoint
/// (`.pt`, `.pth`, `.bin`, `.ckpt`; nested checkpoints picked as [`StateDict::read_pt`] does).
pub fn open_weights(path: &Path) -> Result<Box<dyn TensorSource>> {
    match crate::io::extension(path).as_str() {
        "safetensors" => Ok(Box::new(SafeTensors::read(path)?)),
        "pt" | "pth" | "bin" | "ckpt" => Ok(Box::new(StateDict::read_pt(path, None)?)),
        other => Err(Error::file(
            path,
            format!(
                "weights of type `.{other}` are not read: expected .safetensors or a PyTorch checkpoint (.pt, .pth, .bin)"
            ),
        )),
    }
}

/// The weights of one network being built: each tensor taken once, its shape checked
/// against what the architecture asks for and its values for finiteness, and (at
/// [`Weights::finish`]) every stored tensor required to have been used. Messages name the
/// weights file, the tensor and the configuration file that describes the architecture.
pub struct Weights<'a> {
    src: &'a dyn TensorSource,
    config_file: String,
    used: BTreeSet<String>,
    count: usize,
}

impl<'a> Weights<'a> {
    /// Weights from `src` for the architecture described in `config_file` (`model.json`,
    /// `config.json`; named in messages).
    pub fn new(src: &'a dyn TensorSource, config_file: &str) -> Weights<'a> {
        Weights {
            src,
            config_file: config_file.to_string(),
            used: BTreeSet::new(),
            count: 0,
        }
    }

    fn err(&self, m: String) -> Error {
        Error::file(self.src.path(), m)
    }

    /// Whether tensor `name` is stored.
    pub fn contains(&self, name: &str) -> bool {
        self.src.tensor_shape(name).is_some()
    }

    /// The stored shape of tensor `name`.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        self.src.tensor_shape(name)
    }

    /// Every stored tensor name.
    pub fn names(&self) -> Vec<String> {
        self.src.tensor_names()
    }

    /// The values of tensor `name`, which must have `shape`.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let cfg = &self.config_file;
        let found = self.src.tensor_shape(name).ok_or_else(|| {
            self.err(format!(
                "missing tensor `{name}` (shape {shape:?}) that the architecture in {cfg} needs; the configuration disagrees with the weights"
            ))
        })?;
        if found != shape {
            return Err(Error::Shape(format!(
                "{}: tensor `{name}` has shape {found:?}, but the architecture in {cfg} expects {shape:?}; the configuration disagrees with the weights",
                self.src.path().display()
            )));
        }
        let v = self.src.tensor_f32(name)?;
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(self.err(format!(
                "tensor `{name}` holds a non-finite value at flat index {i}"
            )));
        }
        self.used.insert(name.to_string());
        self.count += v.len();
        Ok(v)
    }

    /// Checks that every stored tensor was used and returns the number of values taken;
    /// `declared` is a parameter count the configuration states, checked when given.
    pub fn finish(self, declared: Option<usize>) -> Result<usize> {
        let unused: Vec<String> = self
            .src
            .tensor_names()
            .into_iter()
            .filter(|k| !self.used.contains(k))
            .collect();
        if let Some(first) = unused.first() {
            return Err(self.err(format!(
                "{} stored tensor(s) are not part of the architecture in {}, e.g. `{first}`; the configuration disagrees with the weights",
                unused.len(),
                self.config_file
            )));
        }
        if let Some(n) = declared {
            if n != self.count {
                return Err(self.err(format!(
                    "{} declares {n} parameters, the weights hold {}",
                    self.config_file, self.count
                )));
            }
        }
        Ok(self.count)
    }
}

impl crate::nn::unet::ParamSource for Weights<'_> {
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Weights::take(self, key, shape)
    }
}

/// The tensors of a PyTorch `.pt` checkpoint, read without running any of its code.
#[derive(Debug)]
pub struct StateDict {
    archive: ZipArchive,
    /// `<prefix>/data/`: where the storages are.
    data_dir: String,
    tensors: BTreeMap<String, TensorRef>,
    picked: Option<String>,
}

/// The keys a nested checkpoint is searched for, in order, when none is given.
pub const NESTED_KEYS: [&str; 3] = ["ema", "model", "state_dict"];

fn str_key(k: &Value) -> Option<&str> {
    match k {
        Value::Str(s) => Some(s),
        _ => None,
    }
}

impl StateDict {
    /// Reads the state dict in `path`; `key` picks a nested dict (`--key ema`), else the
    /// first of [`NESTED_KEYS`] that holds a dict is taken when the top level is not itself
    /// a state dict.
    pub fn read_pt(path: &Path, key: Option<&str>) -> Result<StateDict> {
        let archive = ZipArchive::open(path)?;
        let err = |m: String| Error::file(path, m);
        let pkl: Vec<String> = archive
            .names()
            .filter(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
            .map(str::to_string)
            .collect();
        let pkl = match pkl.as_slice() {
            [one] => one.clone(),
            [] if archive.names().any(|n| n.ends_with("constants.pkl")) => {
                return Err(Error::Unsupported(format!(
                    "{}: a TorchScript archive (torch.jit.save), not a state dict: save the weights with torch.save(model.state_dict(), path)",
                    path.display()
                )))
            }
            [] => {
                return Err(err(
                    "a zip archive without `<name>/data.pkl`: not a PyTorch checkpoint".into(),
                ))
            }
            many => {
                return Err(err(format!(
                    "a zip archive with {} pickles ({}): not a single PyTorch checkpoint",
                    many.len(),
                    many.join(", ")
                )))
            }
        };
        let prefix = pkl.trim_end_matches("data.pkl").to_string();
        if let Some(bo) = archive
            .entry(&format!("{prefix}byteorder"))
            .map(|e| e.name.clone())
        {
            let order = archive.read(&bo)?;
            if order.as_ref() != b"little" {
                return Err(Error::Unsupported(format!(
                    "{}: byte order `{}`: only little-endian checkpoints are read",
                    path.display(),
                    String::from_utf8_lossy(&order)
                )));
            }
        }
        let bytes = archive.read(&pkl)?;
        let top = pickle::load(&bytes).map_err(|e| {
            err(format!(
                "zip entry `{pkl}`, pickle byte {}: {}",
                e.offset, e.message
            ))
        })?;
        let (dict, picked) = pick(path, top, key)?;
        let mut tensors = BTreeMap::new();
        let where_ = |name: &str| match &picked {
            Some(p) => format!("`{p}.{name}`"),
            None => format!("`{name}`"),
        };
        for (k, v) in dict.borrow().iter() {
            let name = str_key(k).ok_or_else(|| {
                err(format!(
                    "the state dict has a key that is {}, expected a string",
                    k.kind()
                ))
            })?;
            match v {
                Value::Tensor(t) => {
                    tensors.insert(name.to_string(), (**t).clone());
                }
                other => {
                    return Err(err(format!(
                        "{} is {}, not a tensor: the {} is not a state dict (name -> tensor){}",
                        where_(name),
                        other.kind(),
                        picked
                            .as_deref()
                            .map_or("file".to_string(), |p| format!("entry `{p}`")),
                        if picked.is_none() {
                            "; pick the nested state dict with --key"
                        } else {
                            ""
                        }
                    )))
                }
            }
        }
        if !tensors.is_empty() && tensors.keys().all(|k| k.starts_with("module.")) {
            tensors = tensors
                .into_iter()
                .map(|(k, v)| (k["module.".len()..].to_string(), v))
                .collect();
        }
        let sd = StateDict {
            archive,
            data_dir: format!("{prefix}data/"),
            tensors,
            picked,
        };
        for (name, t) in &sd.tensors {
            sd.check_view(name, t)?;
        }
        Ok(sd)
    }

    /// The nested key the state dict was taken from, if any.
    pub fn picked(&self) -> Option<&str> {
        self.picked.as_deref()
    }

    /// The element type of tensor `name` as stored.
    pub fn dtype(&self, name: &str) -> Option<StorageDtype> {
        self.tensors.get(name).map(|t| t.dtype)
    }

    fn err(&self, name: &str, m: String) -> Error {
        Error::file(self.archive.path(), format!("tensor `{name}`: {m}"))
    }

    /// Checks a tensor's size and its view into its storage against the archive entry.
    fn check_view(&self, name: &str, t: &TensorRef) -> Result<()> {
        let n = crate::limits::check_elements(&format!("tensor `{name}`"), &t.shape)?;
        let entry = format!("{}{}", self.data_dir, t.storage);
        let e = self.archive.entry(&entry).ok_or_else(|| {
            self.err(
                name,
                format!("its storage `{entry}` is missing from the archive"),
            )
        })?;
        let need = t.storage_len.checked_mul(t.dtype.size() as u64);
        if need.is_none_or(|b| b > e.size()) {
            return Err(self.err(
                name,
                format!(
                    "its storage claims {} {} elements but the entry `{entry}` holds {} bytes (truncated or forged)",
                    t.storage_len,
                    t.dtype.name(),
                    e.size()
                ),
            ));
        }
        if n > 0 {
            let last = t
                .shape
                .iter()
                .zip(&t.strides)
                .try_fold(t.offset, |acc, (&d, &s)| {
                    (d as u64 - 1)
                        .checked_mul(s as u64)
                        .and_then(|x| acc.checked_add(x))
                });
            if last.is_none_or(|l| l >= t.storage_len) {
                return Err(self.err(
                    name,
                    format!(
                        "the view (offset {}, size {:?}, stride {:?}) reaches past its storage of {} elements",
                        t.offset, t.shape, t.strides, t.storage_len
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The dict holding the tensors: the top level, or a nested entry.
fn pick(path: &Path, top: Value, key: Option<&str>) -> Result<(pickle::DictRef, Option<String>)> {
    let err = |m: String| Error::file(path, m);
    let Value::Dict(top) = top else {
        return Err(err(format!(
            "the checkpoint holds {}, expected a dict (a state dict, or one nesting it)",
            top.kind()
        )));
    };
    let entry = |k: &str| -> Option<Value> {
        top.borrow()
            .iter()
            .find(|(kk, _)| str_key(kk) == Some(k))
            .map(|(_, v)| v.clone())
    };
    let keys = || -> String {
        top.borrow()
            .iter()
            .filter_map(|(k, _)| str_key(k).map(|s| format!("`{s}`")))
            .take(12)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if let Some(k) = key {
        return match entry(k) {
            Some(Value::Dict(d)) => Ok((d, Some(k.to_string()))),
            Some(other) => Err(err(format!(
                "the entry `{k}` chosen by --key is {}, not a state dict",
                other.kind()
            ))),
            None => Err(err(format!(
                "no entry `{k}` (--key) at the top level; it holds {}",
                keys()
            ))),
        };
    }
    let all_tensors = top
        .borrow()
        .iter()
        .all(|(_, v)| matches!(v, Value::Tensor(_)));
    if all_tensors {
        return Ok((top, None));
    }
    for k in NESTED_KEYS {
        if let Some(Value::Dict(d)) = entry(k) {
            return Ok((d, Some(k.to_string())));
        }
    }
    Ok((top, None))
}

/// Elements of a strided view, in row-major order of `shape`.
fn strided_indices(t: &TensorRef) -> impl Iterator<Item = usize> + '_ {
    let n: usize = t.shape.iter().product();
    let mut idx = vec![0usize; t.shape.len()];
    let mut pos = t.offset as usize;
    (0..n).map(move |i| {
        let here = pos;
        if i + 1 < n {
            for ax in (0..idx.len()).rev() {
                idx[ax] += 1;
                pos += t.strides[ax];
                if idx[ax] < t.shape[ax] {
                    break;
                }
                pos -= t.strides[ax] * t.shape[ax];
                idx[ax] = 0;
            }
        }
        here
    })
}

fn decode(dtype: StorageDtype, b: &[u8]) -> Option<f32> {
    Some(match dtype {
        StorageDtype::F32 => f32::from_le_bytes(b.try_into().ok()?),
        StorageDtype::F16 => half::f16::from_le_bytes(b.try_into().ok()?).to_f32(),
        StorageDtype::Bf16 => half::bf16::from_le_bytes(b.try_into().ok()?).to_f32(),
        StorageDtype::F64 => f64::from_le_bytes(b.try_into().ok()?) as f32,
        _ => return None,
    })
}

impl TensorSource for StateDict {
    fn path(&self) -> &Path {
        self.archive.path()
    }
    fn tensor_names(&self) -> Vec<String> {
        self.tensors.keys().cloned().collect()
    }
    fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.shape.clone())
    }
    fn tensor_f32(&self, name: &str) -> Result<Vec<f32>> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| self.err(name, "missing from the state dict".into()))?;
        if decode(t.dtype, &vec![0u8; t.dtype.size()]).is_none() {
            return Err(Error::Unsupported(format!(
                "{}: tensor `{name}` is {}, expected a floating-point tensor",
                self.archive.path().display(),
                t.dtype.name()
            )));
        }
        let bytes = self
            .archive
            .read(&format!("{}{}", self.data_dir, t.storage))?;
        let es = t.dtype.size();
        // Bounds were checked at load (`check_view`), so every index is inside `bytes`.
        let at = |i: usize| decode(t.dtype, &bytes[i * es..(i + 1) * es]).unwrap_or(f32::NAN);
        Ok(strided_indices(t).map(at).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strided_views_walk_row_major() {
        let t = TensorRef {
            storage: "0".into(),
            dtype: StorageDtype::F32,
            storage_len: 6,
            offset: 0,
            shape: vec![2, 3],
            strides: vec![1, 2],
        };
        // A transposed (3, 2) storage read as (2, 3): element [i, j] at i + 2 j.
        assert_eq!(
            strided_indices(&t).collect::<Vec<_>>(),
            vec![0, 2, 4, 1, 3, 5]
        );
        let t = TensorRef {
            shape: vec![],
            strides: vec![],
            offset: 4,
            ..t
        };
        assert_eq!(strided_indices(&t).collect::<Vec<_>>(), vec![4]);
    }
}
