//! Cartesian k-space undersampling masks.
//!
//! A mask is an `(H, W)` array of f32 in {0, 1} over the *centred* k-space grid of
//! [`crate::fft::Fft2::forward_centered`]: the zero frequency (DC) sits at index
//! `(H/2, W/2)` (floor division). The readout direction runs along the rows' axis `H`
//! (fully sampled in every acquisition), and a phase-encode line is a COLUMN: the 1-D masks
//! sample whole columns `mask[.., j]`.
//!
//! `accel` is the acceleration factor, the ratio of the grid size to the number of sampled
//! entries. How close each kind gets to a sampled fraction of `1 / accel`:
//! - [`uniform1d`], [`random1d`]: exactly `round(W / accel)` columns, ACS included;
//! - [`gaussian2d`], [`poisson`]: exactly `round(H W / accel)` entries, ACS included.
//!
//! So the sampled fraction is within `0.5 / W` (resp. `0.5 / (H W)`) of `1 / accel`.
//!
//! The fully sampled centre (auto-calibration signal, ACS) is `acs` as a fraction of the
//! lines: `round(acs W)` columns around `W/2` for the 1-D masks; a block of
//! `round(acs H) x round(acs W)` entries around `(H/2, W/2)` for the 2-D ones (see
//! [`acs_range`]). An ACS region larger than the sampling budget is an error, not silently
//! over-sampled. Random masks depend on the seed only through
//! [`crate::rng::seeded`]`(seed, "mri-mask-<kind>")`: the same seed gives the same mask.

use std::ops::Range;

use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::error::{Error, Result};
use crate::rng;

const OP: &str = "mri mask";

/// The undersampling patterns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskKind {
    /// Equispaced phase-encode columns plus the ACS columns.
    Uniform1d,
    /// Uniformly random phase-encode columns plus the ACS columns.
    Random1d,
    /// Random entries drawn with a 2-D Gaussian variable density, plus the ACS block.
    Gaussian2d,
    /// Variable-density Poisson-disc entries, plus the ACS block.
    Poisson,
}

impl MaskKind {
    /// Every kind, in the order listed to users.
    pub const ALL: [MaskKind; 4] = [
        MaskKind::Uniform1d,
        MaskKind::Random1d,
        MaskKind::Gaussian2d,
        MaskKind::Poisson,
    ];

    /// The name used in specs: `uniform1d`, `random1d`, `gaussian2d`, `poisson`.
    pub fn name(self) -> &'static str {
        match self {
            MaskKind::Uniform1d => "uniform1d",
            MaskKind::Random1d => "random1d",
            MaskKind::Gaussian2d => "gaussian2d",
            MaskKind::Poisson => "poisson",
        }
    }

    /// The kind called `name`, or an error listing the kinds.
    pub fn parse(name: &str) -> Result<Self> {
        MaskKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .ok_or_else(|| {
                let names: Vec<_> = MaskKind::ALL.iter().map(|k| k.name()).collect();
                Error::param(
                    OP,
                    "mask",
                    format!("must be one of {}, got `{name}`", names.join(", ")),
                )
            })
    }

    /// Whether the pattern samples whole phase-encode columns.
    pub fn is_1d(self) -> bool {
        matches!(self, MaskKind::Uniform1d | MaskKind::Random1d)
    }
}

/// Builds a mask of `kind` for an `h x w` k-space grid (see the module docs).
pub fn make_mask(
    kind: MaskKind,
    h: usize,
    w: usize,
    accel: f64,
    acs: f64,
    seed: u64,
) -> Result<Array2<f32>> {
    match kind {
        MaskKind::Uniform1d => uniform1d(h, w, accel, acs),
        MaskKind::Random1d => random1d(h, w, accel, acs, seed),
        MaskKind::Gaussian2d => gaussian2d(h, w, accel, acs, seed),
        MaskKind::Poisson => poisson(h, w, accel, acs, seed),
    }
}

/// The fraction of sampled (non-zero) entries of a mask.
pub fn sampled_fraction(mask: &Array2<f32>) -> f64 {
    if mask.is_empty() {
        return 0.0;
    }
    mask.iter().filter(|&&v| v != 0.0).count() as f64 / mask.len() as f64
}

/// The centred index range of `round(acs n)` lines out of `n`, around `n / 2`:
/// `n/2 - k/2 .. n/2 - k/2 + k` (floor divisions), which always contains the DC index
/// `n / 2` when `k >= 1`.
pub fn acs_range(n: usize, acs: f64) -> Range<usize> {
    let k = ((acs * n as f64).round() as usize).min(n);
    let start = n / 2 - k / 2;
    start..start + k
}

/// Checks the shared parameters and returns the number of entries to sample out of `total`.
fn budget(h: usize, w: usize, accel: f64, acs: f64, total: usize) -> Result<usize> {
    if h == 0 || w == 0 {
        return Err(Error::param(
            OP,
            "shape",
            format!("must be at least 1 x 1, got {h} x {w}"),
        ));
    }
    if !(accel.is_finite() && accel >= 1.0) {
        return Err(Error::param(
            OP,
            "accel",
            format!("must be a finite number >= 1 (1 = fully sampled), got {accel}"),
        ));
    }
    if !(acs.is_finite() && (0.0..1.0).contains(&acs)) {
        return Err(Error::param(
            OP,
            "acs",
            format!("must lie in [0, 1) (a fraction of the lines), got {acs}"),
        ));
    }
    let n = (total as f64 / accel).round() as usize;
    if n == 0 {
        return Err(Error::param(
            OP,
            "accel",
            format!("{accel} leaves no sample of the {total} available; use accel <= {total}"),
        ));
    }
    Ok(n)
}

fn acs_too_large(n_acs: usize, n: usize, accel: f64, acs: f64) -> Error {
    Error::param(
        OP,
        "acs",
        format!(
            "{acs} gives {n_acs} fully sampled centre entries, more than the {n} that accel={accel} allows; \
             use acs < 1/accel"
        ),
    )
}

/// Sets every row of the columns `cols` to 1.
fn mask_from_columns(h: usize, w: usize, cols: &[bool]) -> Array2<f32> {
    Array2::from_shape_fn((h, w), |(_, j)| if cols[j] { 1.0 } else { 0.0 })
}

/// Equispaced phase-encode columns plus `round(acs W)` ACS columns.
///
/// The columns lie on a lattice `W/2 + round(k r)`, `k` integer, through the centre column,
/// with the spacing `r ~ (W - n_acs) / (round(W/accel) - n_acs)` adjusted (the classical
/// "every R-th line plus ACS" oversamples by the ACS lines): of the spacings near it, the
/// one giving the fewest columns >= `round(W / accel)` is taken, and the excess (usually 0
/// to 2 columns) is dropped from the outermost lattice columns, so the total is exactly
/// `round(W / accel)`. Deterministic.
pub fn uniform1d(h: usize, w: usize, accel: f64, acs: f64) -> Result<Array2<f32>> {
    let n = budget(h, w, accel, acs, w)?;
    let centre = acs_range(w, acs);
    if centre.len() > n {
        return Err(acs_too_large(centre.len(), n, accel, acs));
    }
    let lattice = |r: f64| -> Vec<bool> {
        let mut cols = vec![false; w];
        for j in centre.clone() {
            cols[j] = true;
        }
        let c = (w / 2) as f64;
        let kmax = (w as f64 / r).ceil() as i64 + 1;
        for k in -kmax..=kmax {
            let p = (c + (k as f64 * r).round()) as i64;
            if (0..w as i64).contains(&p) {
                cols[p as usize] = true;
            }
        }
        cols
    };
    let outer = n - centre.len();
    let count = |c: &[bool]| c.iter().filter(|&&b| b).count();
    let mut cols = if outer == 0 {
        let mut cols = vec![false; w];
        for j in centre.clone() {
            cols[j] = true;
        }
        cols
    } else {
        // The first-order spacing, then a small scan around it for the lattice with the
        // fewest columns >= n (spacing 1, every column, is the fallback).
        let r0 = ((w - centre.len()) as f64 / outer as f64).max(1.0);
        let mut best = lattice(1.0);
        let mut best_excess = count(&best) - n;
        for t in 0..=40 {
            if best_excess == 0 {
                break;
            }
            for r in [r0 * (1.0 + t as f64 * 0.005), r0 * (1.0 - t as f64 * 0.005)] {
                if r < 1.0 {
                    continue;
                }
                let cand = lattice(r);
                let c = count(&cand);
                if c >= n && c - n < best_excess {
                    best_excess = c - n;
                    best = cand;
                }
            }
        }
        best
    };
    // Drop the excess (usually 0 to 2 columns) from the outermost lattice columns.
    let mut outer_cols: Vec<usize> = (0..w)
        .filter(|&j| cols[j] && !centre.contains(&j))
        .collect();
    outer_cols.sort_by_key(|&j| std::cmp::Reverse((j.abs_diff(w / 2), j)));
    let excess = count(&cols) - n;
    for &j in outer_cols.iter().take(excess) {
        cols[j] = false;
    }
    Ok(mask_from_columns(h, w, &cols))
}

/// `round(W / accel)` columns: the `round(acs W)` ACS columns plus columns drawn uniformly
/// without replacement from the rest (seeded).
pub fn random1d(h: usize, w: usize, accel: f64, acs: f64, seed: u64) -> Result<Array2<f32>> {
    let n = budget(h, w, accel, acs, w)?;
    let centre = acs_range(w, acs);
    if centre.len() > n {
        return Err(acs_too_large(centre.len(), n, accel, acs));
    }
    let mut cols = vec![false; w];
    for j in centre.clone() {
        cols[j] = true;
    }
    let mut rest: Vec<usize> = (0..w).filter(|j| !centre.contains(j)).collect();
    let mut r = rng::seeded(seed, "mri-mask-random1d");
    let (picked, _) = rest.partial_shuffle(&mut r, n - centre.len());
    for &j in picked.iter() {
        cols[j] = true;
    }
    Ok(mask_from_columns(h, w, &cols))
}

/// The ACS block of a 2-D mask as (rows, columns).
fn acs_block(h: usize, w: usize, acs: f64) -> (Range<usize>, Range<usize>) {
    (acs_range(h, acs), acs_range(w, acs))
}

/// Standard deviation of the [`gaussian2d`] density, as a fraction of each side.
pub const GAUSSIAN_SIGMA: f64 = 0.25;

/// `round(H W / accel)` entries: the ACS block plus entries drawn without replacement with
/// probability proportional to the density `exp(-(dy^2 / 2 sy^2 + dx^2 / 2 sx^2))`, where
/// `(dy, dx)` is the offset from `(H/2, W/2)` and `sy = 0.25 H`, `sx = 0.25 W`
/// ([`GAUSSIAN_SIGMA`]). Weighted sampling without replacement is done with
/// Efraimidis–Spirakis keys `u^(1/p)` (seeded), keeping the largest.
pub fn gaussian2d(h: usize, w: usize, accel: f64, acs: f64, seed: u64) -> Result<Array2<f32>> {
    let n = budget(h, w, accel, acs, h * w)?;
    let (rows, cols) = acs_block(h, w, acs);
    let n_acs = rows.len() * cols.len();
    if n_acs > n {
        return Err(acs_too_large(n_acs, n, accel, acs));
    }
    let mut mask = Array2::<f32>::zeros((h, w));
    for i in rows.clone() {
        for j in cols.clone() {
            mask[[i, j]] = 1.0;
        }
    }
    let (sy, sx) = (GAUSSIAN_SIGMA * h as f64, GAUSSIAN_SIGMA * w as f64);
    let mut r = rng::seeded(seed, "mri-mask-gaussian2d");
    // Key ln(u) / p: ordering by it is ordering by u^(1/p), and it does not underflow.
    let mut keys: Vec<(f64, usize, usize)> = Vec::with_capacity(h * w);
    for i in 0..h {
        for j in 0..w {
            let u: f64 = r.random::<f64>().max(f64::MIN_POSITIVE);
            if rows.contains(&i) && cols.contains(&j) {
                continue;
            }
            let dy = i as f64 - (h / 2) as f64;
            let dx = j as f64 - (w / 2) as f64;
            let log_p = -(dy * dy / (2.0 * sy * sy) + dx * dx / (2.0 * sx * sx));
            keys.push((u.ln() * (-log_p).exp(), i, j));
        }
    }
    keys.sort_by(|a, b| b.0.total_cmp(&a.0));
    for &(_, i, j) in keys.iter().take(n - n_acs) {
        mask[[i, j]] = 1.0;
    }
    Ok(mask)
}

/// The slope of the Poisson-disc radius with the normalised distance from the centre.
pub const POISSON_SLOPE: f64 = 2.0;

/// The Poisson-disc exclusion radius (in pixels) at `(i, j)` for the scale `r0`:
/// `r0 (1 + POISSON_SLOPE rho)`, with `rho = sqrt((dy / (H/2))^2 + (dx / (W/2))^2)` the
/// normalised distance from the k-space centre (so the density falls off outwards).
pub fn poisson_radius(r0: f64, h: usize, w: usize, i: usize, j: usize) -> f64 {
    let dy = (i as f64 - (h / 2) as f64) / (h as f64 / 2.0).max(0.5);
    let dx = (j as f64 - (w / 2) as f64) / (w as f64 / 2.0).max(0.5);
    r0 * (1.0 + POISSON_SLOPE * (dy * dy + dx * dx).sqrt())
}

/// Variable-density Poisson-disc sampling, as BART `poisson` and SigPy `poisson` do, plus
/// the ACS block; exactly `round(H W / accel)` entries.
///
/// Every sampled entry `q` outside the ACS block keeps a distance of at least
/// `max(r(p), r(q))` from every other sampled entry `p` ([`poisson_radius`]). The set is
/// built by random sequential addition on the grid: the entries are visited in a seeded
/// random order and kept when they respect the radius to all kept ones (ACS entries are
/// kept from the start), which gives a maximal Poisson-disc set. The scale `r0` is found by
/// bisection as the largest one that keeps at least the budget; the few entries over it are
/// then dropped at random (dropping keeps the distance property).
pub fn poisson(h: usize, w: usize, accel: f64, acs: f64, seed: u64) -> Result<Array2<f32>> {
    poisson_with_scale(h, w, accel, acs, seed).map(|(m, _)| m)
}

/// [`poisson`], also returning the radius scale `r0` it settled on.
pub fn poisson_with_scale(
    h: usize,
    w: usize,
    accel: f64,
    acs: f64,
    seed: u64,
) -> Result<(Array2<f32>, f64)> {
    let n = budget(h, w, accel, acs, h * w)?;
    let (rows, cols) = acs_block(h, w, acs);
    let n_acs = rows.len() * cols.len();
    if n_acs > n {
        return Err(acs_too_large(n_acs, n, accel, acs));
    }
    let mut r = rng::seeded(seed, "mri-mask-poisson");
    let in_acs = |k: usize| rows.contains(&(k / w)) && cols.contains(&(k % w));
    let mut order: Vec<usize> = (0..h * w).filter(|&k| !in_acs(k)).collect();
    order.shuffle(&mut r);
    let half_min = (h.min(w) as f64 / 2.0).max(0.5);
    let run = |r0: f64| -> (Vec<bool>, usize) {
        let mut kept = vec![false; h * w];
        // The kept entries as a list too: when few are kept and the radius is large,
        // checking the list is cheaper than scanning the window.
        let mut list: Vec<(i64, i64)> = Vec::new();
        for i in rows.clone() {
            for j in cols.clone() {
                kept[i * w + j] = true;
                list.push((i as i64, j as i64));
            }
        }
        let radius: Vec<f64> = (0..h * w)
            .map(|k| poisson_radius(r0, h, w, k / w, k % w))
            .collect();
        // Along a distance d the radius grows by at most r0 * slope * d / half_min, so a
        // neighbour p with d < r(p) has r(p) <= r(q) / (1 - r0 * slope / half_min).
        let growth = 1.0 - r0 * POISSON_SLOPE / half_min;
        let r_max = radius.iter().cloned().fold(0.0, f64::max);
        let too_close = |qi: i64, qj: i64, pi: i64, pj: i64, rq: f64| {
            let d2 = ((pi - qi) * (pi - qi) + (pj - qj) * (pj - qj)) as f64;
            let rr = rq.max(radius[pi as usize * w + pj as usize]);
            d2 < rr * rr
        };
        for &q in &order {
            let (qi, qj) = ((q / w) as i64, (q % w) as i64);
            let rq = radius[q];
            let reach = if growth > 0.0 {
                (rq / growth).min(r_max)
            } else {
                r_max
            };
            let span = reach.ceil() as i64;
            let (i0, i1) = ((qi - span).max(0), (qi + span).min(h as i64 - 1));
            let (j0, j1) = ((qj - span).max(0), (qj + span).min(w as i64 - 1));
            let window = ((i1 - i0 + 1) * (j1 - j0 + 1)) as usize;
            let blocked = if window > list.len() {
                list.iter().any(|&(pi, pj)| too_close(qi, qj, pi, pj, rq))
            } else {
                (i0..=i1).any(|pi| {
                    (j0..=j1).any(|pj| {
                        kept[pi as usize * w + pj as usize] && too_close(qi, qj, pi, pj, rq)
                    })
                })
            };
            if !blocked {
                kept[q] = true;
                list.push((qi, qj));
            }
        }
        let count = list.len();
        (kept, count)
    };
    // r0 = 0 keeps every entry (count = H W >= n). Bracket the largest r0 with count >= n
    // by doubling from 0.5 (runs with a huge r0 scan huge windows, so never start there),
    // then bisect.
    let (mut best, mut best_count) = run(0.0);
    let (mut lo, mut hi) = (0.0f64, 0.5f64);
    loop {
        let (kept, count) = run(hi);
        if count < n {
            break;
        }
        (lo, best, best_count) = (hi, kept, count);
        if hi > 4.0 * h.max(w) as f64 {
            break; // every r0 keeps enough: only possible when n is the ACS block plus one
        }
        hi *= 2.0;
    }
    for _ in 0..40 {
        if hi - lo < 1e-3 * hi {
            break;
        }
        let mid = 0.5 * (lo + hi);
        let (kept, count) = run(mid);
        if count >= n {
            (lo, best, best_count) = (mid, kept, count);
        } else {
            hi = mid;
        }
    }
    // Drop the excess at random among the non-ACS entries.
    if best_count > n {
        let mut extra: Vec<usize> = order.iter().copied().filter(|&k| best[k]).collect();
        extra.shuffle(&mut r);
        for &k in extra.iter().take(best_count - n) {
            best[k] = false;
        }
    }
    let mask = Array2::from_shape_fn((h, w), |(i, j)| if best[i * w + j] { 1.0 } else { 0.0 });
    Ok((mask, lo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(m: &Array2<f32>) -> usize {
        m.iter().filter(|&&v| v != 0.0).count()
    }

    fn is_binary(m: &Array2<f32>) -> bool {
        m.iter().all(|&v| v == 0.0 || v == 1.0)
    }

    #[test]
    fn sampled_fraction_is_close_to_one_over_accel() {
        for &(h, w) in &[(64, 64), (48, 70), (33, 47)] {
            for &accel in &[2.0, 4.0, 6.0] {
                let acs = 0.08;
                // Exact counts (module docs): the fraction is within 0.5 / W of 1 / accel.
                let u = uniform1d(h, w, accel, acs).unwrap();
                let target = (w as f64 / accel).round() as usize;
                assert_eq!(count(&u), target * h, "uniform1d {h}x{w} accel {accel}");
                assert!((sampled_fraction(&u) - 1.0 / accel).abs() <= 0.5 / w as f64);
                let r = random1d(h, w, accel, acs, 3).unwrap();
                assert_eq!(count(&r), target * h, "random1d {h}x{w} accel {accel}");
                let target2 = ((h * w) as f64 / accel).round() as usize;
                let g = gaussian2d(h, w, accel, acs, 3).unwrap();
                assert_eq!(count(&g), target2, "gaussian2d {h}x{w} accel {accel}");
                let p = poisson(h, w, accel, acs, 3).unwrap();
                assert_eq!(count(&p), target2, "poisson {h}x{w} accel {accel}");
                for m in [&u, &r, &g, &p] {
                    assert!(is_binary(m));
                    assert_eq!(m.dim(), (h, w));
                }
            }
        }
    }

    #[test]
    fn uniform1d_is_exact_and_nearly_equispaced_over_many_widths() {
        let mut cases = 0;
        for w in (9..=200).step_by(7) {
            for accel in [1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0] {
                for acs in [0.0, 0.04, 0.08] {
                    let Ok(m) = uniform1d(1, w, accel, acs) else {
                        continue; // ACS larger than the budget: an error by design
                    };
                    let cols: Vec<usize> = (0..w).filter(|&j| m[[0, j]] == 1.0).collect();
                    let target = (w as f64 / accel).round() as usize;
                    assert_eq!(cols.len(), target, "w {w} accel {accel} acs {acs}");
                    assert_eq!(
                        m[[0, w / 2]],
                        1.0,
                        "w {w} accel {accel}: DC column unsampled"
                    );
                    // Outside the ACS block, gaps between neighbouring columns differ by at
                    // most one (the lattice spacing is rounded to whole columns).
                    let centre = acs_range(w, acs);
                    let gaps: Vec<usize> = cols
                        .windows(2)
                        .filter(|p| !centre.contains(&p[0]) && !centre.contains(&p[1]))
                        .map(|p| p[1] - p[0])
                        .collect();
                    if let (Some(lo), Some(hi)) = (gaps.iter().min(), gaps.iter().max()) {
                        assert!(hi - lo <= 1, "w {w} accel {accel} acs {acs}: gaps {gaps:?}");
                    }
                    cases += 1;
                }
            }
        }
        assert!(cases > 400, "only {cases} cases ran");
    }

    #[test]
    fn one_d_masks_sample_whole_columns_and_the_acs_block() {
        let (h, w, acs) = (20, 64, 0.1);
        let centre = acs_range(w, acs);
        assert_eq!(centre.len(), 6);
        assert!(centre.contains(&(w / 2)));
        for m in [
            uniform1d(h, w, 4.0, acs).unwrap(),
            random1d(h, w, 4.0, acs, 9).unwrap(),
        ] {
            for j in 0..w {
                let col = m.column(j);
                assert!(col.iter().all(|&v| v == col[0]), "column {j} is not whole");
            }
            for j in centre.clone() {
                assert_eq!(m[[0, j]], 1.0, "ACS column {j} unsampled");
            }
        }
    }

    #[test]
    fn uniform1d_is_equispaced_outside_the_centre() {
        let m = uniform1d(8, 96, 4.0, 0.0).unwrap();
        let cols: Vec<usize> = (0..96).filter(|&j| m[[0, j]] == 1.0).collect();
        assert!(cols.contains(&48));
        let gaps: Vec<usize> = cols.windows(2).map(|p| p[1] - p[0]).collect();
        assert!(gaps.iter().all(|&g| g == 4), "gaps {gaps:?}");
    }

    #[test]
    fn two_d_masks_fill_the_acs_block() {
        let (h, w, acs) = (40, 50, 0.1);
        let (rows, cols) = acs_block(h, w, acs);
        assert_eq!((rows.len(), cols.len()), (4, 5));
        for m in [
            gaussian2d(h, w, 5.0, acs, 1).unwrap(),
            poisson(h, w, 5.0, acs, 1).unwrap(),
        ] {
            for i in rows.clone() {
                for j in cols.clone() {
                    assert_eq!(m[[i, j]], 1.0);
                }
            }
        }
    }

    #[test]
    fn same_seed_same_mask_and_other_seed_other_mask() {
        for kind in [MaskKind::Random1d, MaskKind::Gaussian2d, MaskKind::Poisson] {
            let a = make_mask(kind, 32, 32, 4.0, 0.08, 7).unwrap();
            let b = make_mask(kind, 32, 32, 4.0, 0.08, 7).unwrap();
            let c = make_mask(kind, 32, 32, 4.0, 0.08, 8).unwrap();
            assert_eq!(a, b, "{kind:?}");
            assert_ne!(a, c, "{kind:?}");
        }
    }

    #[test]
    fn gaussian2d_is_denser_in_the_centre() {
        let m = gaussian2d(64, 64, 4.0, 0.0, 2).unwrap();
        let inner = m.slice(ndarray::s![16..48, 16..48]).sum() / (32.0 * 32.0);
        let total = m.sum() / (64.0 * 64.0);
        let outer = (m.sum() - inner * 1024.0) / (4096.0 - 1024.0);
        assert!(
            inner > 2.0 * outer,
            "inner {inner}, outer {outer}, all {total}"
        );
    }

    #[test]
    fn poisson_keeps_the_variable_minimum_distance() {
        for &(h, w, accel, seed) in &[(48, 48, 4.0, 1), (40, 56, 6.0, 2), (31, 37, 3.0, 3)] {
            let acs = 0.08;
            let (m, r0) = poisson_with_scale(h, w, accel, acs, seed).unwrap();
            // Distinct grid points are >= 1 apart: the test only bites where radii exceed 1.
            let rim = poisson_radius(r0, h, w, 0, 0);
            assert!(
                rim > 1.5,
                "rim radius {rim} (scale {r0}) too small to test anything"
            );
            let (rows, cols) = acs_block(h, w, acs);
            let in_acs = |i: usize, j: usize| rows.contains(&i) && cols.contains(&j);
            let pts: Vec<(usize, usize)> = m
                .indexed_iter()
                .filter(|(_, &v)| v == 1.0)
                .map(|(p, _)| p)
                .collect();
            let mut pairs_checked = 0;
            for (a, &(i1, j1)) in pts.iter().enumerate() {
                for &(i2, j2) in &pts[a + 1..] {
                    if in_acs(i1, j1) && in_acs(i2, j2) {
                        continue;
                    }
                    let d =
                        ((i1 as f64 - i2 as f64).powi(2) + (j1 as f64 - j2 as f64).powi(2)).sqrt();
                    let r = poisson_radius(r0, h, w, i1, j1).max(poisson_radius(r0, h, w, i2, j2));
                    assert!(d >= r - 1e-9, "({i1},{j1})-({i2},{j2}): {d} < {r}");
                    pairs_checked += 1;
                }
            }
            assert!(pairs_checked > 1000);
            // Variable density: the central quarter of the area is sampled at least twice
            // as densely as the rest.
            let (qh, qw) = (h / 4..3 * h / 4, w / 4..3 * w / 4);
            let c = m.slice(ndarray::s![qh.clone(), qw.clone()]).sum() as f64;
            let inner = c / (qh.len() * qw.len()) as f64;
            let outer = (m.sum() as f64 - c) / (h * w - qh.len() * qw.len()) as f64;
            assert!(inner > 2.0 * outer, "density centre {inner}, rim {outer}");
        }
    }

    #[test]
    fn bad_parameters_are_errors_naming_the_key() {
        let e = uniform1d(8, 8, 0.5, 0.08).unwrap_err().to_string();
        assert!(e.contains("accel"), "{e}");
        let e = random1d(8, 8, 2.0, 1.5, 0).unwrap_err().to_string();
        assert!(e.contains("acs"), "{e}");
        let e = gaussian2d(64, 64, 16.0, 0.5, 0).unwrap_err().to_string();
        assert!(e.contains("acs") && e.contains("1/accel"), "{e}");
        let e = poisson(4, 4, 100.0, 0.0, 0).unwrap_err().to_string();
        assert!(e.contains("accel"), "{e}");
        let e = uniform1d(0, 8, 2.0, 0.0).unwrap_err().to_string();
        assert!(e.contains("shape"), "{e}");
        let e = MaskKind::parse("spiral").unwrap_err().to_string();
        assert!(e.contains("poisson"), "{e}");
        assert!(uniform1d(8, 8, f64::NAN, 0.0).is_err());
    }

    #[test]
    fn accel_one_samples_everything() {
        for kind in MaskKind::ALL {
            let m = make_mask(kind, 9, 10, 1.0, 0.1, 0).unwrap();
            assert_eq!(count(&m), 90, "{kind:?}");
        }
    }
}
