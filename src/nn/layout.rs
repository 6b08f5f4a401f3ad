//! Checkpoint key layouts: how a network that shares guided-diffusion's block structure
//! (diffusers' `UNet2DModel`, EDM's `DhariwalUNet`) names and shapes its tensors.
//!
//! [`crate::nn::UNet::build`] asks for every parameter under guided-diffusion's name and
//! shape; a [`Renamed`] source answers from a checkpoint in another layout. Its [`Plan`]
//! maps each guided-diffusion module (`input_blocks.4.0`, `middle_block.1`, `out.2`) to the
//! foreign module and its kind: a plain layer (same parameter names and shapes, modulo the
//! trailing unit axes of 1x1 convolutions), a residual block (sub-layer names differ), or an
//! attention layer (whose `q, k, v` projections are assembled into the legacy `qkv` row
//! order that [`crate::nn::QkvAttentionLegacy`] reads).

use std::collections::BTreeMap;

use crate::checkpoint::Weights;
use crate::error::{Error, Result};
use crate::nn::unet::ParamSource;

/// The foreign module behind one guided-diffusion module.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// A conv, linear or norm layer with the same parameter names.
    Plain(String),
    /// A residual block.
    Res(String),
    /// An attention layer with `heads` heads.
    Attn { prefix: String, heads: usize },
}

/// guided-diffusion module name -> foreign module.
pub(crate) type Plan = BTreeMap<String, Target>;

/// The parts of a layout that differ between checkpoint families.
pub(crate) trait Naming {
    /// The foreign name of a residual block's sub-layer (`in_layers.0`, `in_layers.2`,
    /// `emb_layers.1`, `out_layers.0`, `out_layers.3`, `skip_connection`).
    fn res_part(&self, adm: &str) -> Option<&'static str>;
    /// The foreign name of an attention layer's norm (`norm`) or output projection
    /// (`proj_out`).
    fn attn_part(&self, adm: &str) -> Option<&'static str>;
    /// The `qkv` weight (`param` = `weight`: `(3C, C)` values) or bias (`3C`) of the
    /// attention layer `prefix` over `c` channels, in the legacy row order: head `h`'s q, k,
    /// v rows at `h 3d + part d + j` (`d = c / heads`).
    fn qkv(
        &self,
        w: &mut Weights,
        prefix: &str,
        c: usize,
        heads: usize,
        param: &str,
    ) -> Result<Vec<f32>>;
}

/// Guided-diffusion's parameters answered from a checkpoint in another layout.
pub(crate) struct Renamed<'a, 'w, N: Naming> {
    pub weights: &'a mut Weights<'w>,
    pub plan: Plan,
    pub naming: N,
    /// Prepended to every foreign name (EDM's wrappers store the network as `model.`).
    pub prefix: String,
}

/// Reorders the rows of `(rows, width)` values by `order` (`out[i] = in[order[i]]`).
pub(crate) fn permute_rows(v: &[f32], width: usize, order: &[usize]) -> Vec<f32> {
    order
        .iter()
        .flat_map(|&r| v[r * width..(r + 1) * width].iter().copied())
        .collect()
}

/// The row order that puts `3c` stored `q, k, v` rows into the legacy order (head `h`,
/// part `p`, channel `j` at `h 3d + p d + j`, `d = c / heads`): `order[legacy] = stored`,
/// with `stored(h, p, j, d)` the layout's row of the same value.
pub(crate) fn legacy_order(
    c: usize,
    heads: usize,
    stored: impl Fn(usize, usize, usize, usize) -> usize,
) -> Vec<usize> {
    let d = c / heads;
    let mut order = vec![0; 3 * c];
    for h in 0..heads {
        for p in 0..3 {
            for j in 0..d {
                order[h * 3 * d + p * d + j] = stored(h, p, j, d);
            }
        }
    }
    order
}

impl<N: Naming> Renamed<'_, '_, N> {
    /// A plain layer's tensor `name`: the guided-diffusion `shape`, where a trailing unit
    /// axis may be stored or not (1-D convs `(o, i, 1)` vs 2-D 1x1 convs `(o, i, 1, 1)`).
    fn plain(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match self.weights.shape_of(name) {
            Some(s) if s != shape && strip_units(&s) == strip_units(shape) => {
                self.weights.take(name, &s)
            }
            _ => self.weights.take(name, shape),
        }
    }
}

/// A shape without its trailing unit axes.
fn strip_units(s: &[usize]) -> &[usize] {
    let mut n = s.len();
    while n > 2 && s[n - 1] == 1 {
        n -= 1;
    }
    &s[..n]
}

impl<N: Naming> ParamSource for Renamed<'_, '_, N> {
    fn take(&mut self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let parts: Vec<&str> = key.split('.').collect();
        let unknown = || {
            Error::Invalid(format!(
                "layout: the network asked for `{key}`, which this checkpoint layout does not map"
            ))
        };
        let (param, module) = parts.split_last().ok_or_else(unknown)?;
        // The longest module prefix the plan knows: plain (the whole module), attention (one
        // sub-layer name), residual block (one or two).
        for cut in (1..=module.len()).rev() {
            let prefix = module[..cut].join(".");
            let Some(target) = self.plan.get(&prefix).cloned() else {
                continue;
            };
            let sub = module[cut..].join(".");
            let pre = &self.prefix;
            return match target {
                Target::Plain(to) if sub.is_empty() => {
                    self.plain(&format!("{pre}{to}.{param}"), shape)
                }
                Target::Res(to) => {
                    let part = self.naming.res_part(&sub).ok_or_else(unknown)?;
                    self.plain(&format!("{pre}{to}.{part}.{param}"), shape)
                }
                Target::Attn { prefix: to, heads } if sub == "qkv" => {
                    let c = match (*param, shape) {
                        ("bias", [n]) => n / 3,
                        (_, [_, c, ..]) => *c,
                        _ => return Err(unknown()),
                    };
                    self.naming
                        .qkv(self.weights, &format!("{pre}{to}"), c, heads, param)
                }
                Target::Attn { prefix: to, .. } => {
                    let part = self.naming.attn_part(&sub).ok_or_else(unknown)?;
                    self.plain(&format!("{pre}{to}.{part}.{param}"), shape)
                }
                Target::Plain(_) => Err(unknown()),
            };
        }
        Err(unknown())
    }
}
