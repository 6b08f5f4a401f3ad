//! `posterior priors`: the priors reachable by name (prior directories and diffusers
//! directories under the search path), with what they model.

use std::io::Write;

use serde::Serialize;

use crate::error::Result;
use crate::prior::network::prior_card;
use crate::prior::shipped_priors;

/// One row of the listing.
#[derive(Serialize, Debug)]
pub struct PriorEntry {
    pub name: String,
    /// The network's `architecture.type` (`guided-diffusion-unet`, `diffusers-unet2d`,
    /// `edm-dhariwal-unet`, `edm-song-unet`).
    pub architecture: String,
    /// What the prior models (`natural images`, `brain MRI (magnitude)`, ...), from the
    /// card's `domain` field.
    pub domain: String,
    /// `[H, W]`.
    pub resolution: [usize; 2],
    pub channels: usize,
    /// The intensity range the prior works in.
    pub range: [f32; 2],
    pub parameters: Option<usize>,
    /// Bytes of the weights file.
    pub size_bytes: u64,
    pub path: String,
    /// Set when the card cannot be read (the row is still listed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// Reads every reachable prior's card.
pub fn entries() -> Vec<PriorEntry> {
    shipped_priors()
        .into_iter()
        .map(|(name, dir)| {
            let path = dir.display().to_string();
            match prior_card(&dir, None) {
                Ok((card, weights, _)) => {
                    let size_bytes = std::fs::metadata(weights).map_or(0, |m| m.len());
                    PriorEntry {
                        name,
                        architecture: card.architecture.type_name().to_string(),
                        domain: card
                            .extra
                            .get("domain")
                            .and_then(|d| d.as_str())
                            .unwrap_or("unspecified")
                            .to_string(),
                        resolution: card.resolution,
                        channels: card.channels,
                        range: card.intensity_range,
                        parameters: card.declared_parameters(),
                        size_bytes,
                        path,
                        problem: None,
                    }
                }
                Err(e) => PriorEntry {
                    name,
                    architecture: String::new(),
                    domain: String::new(),
                    resolution: [0, 0],
                    channels: 0,
                    range: [0.0, 0.0],
                    parameters: None,
                    size_bytes: 0,
                    path,
                    problem: Some(e.to_string()),
                },
            }
        })
        .collect()
}

/// Runs `posterior priors`.
pub fn run(json: bool) -> Result<()> {
    let rows = entries();
    if json {
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| crate::error::Error::Invalid(e.to_string()))?;
        // A closed pipe (`| head`) is not an error worth reporting.
        let mut out = std::io::stdout().lock();
        return match writeln!(out, "{text}") {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(
                crate::error::Error::Invalid(format!("cannot write to stdout: {e}")),
            ),
            _ => Ok(()),
        };
    }
    if rows.is_empty() {
        println!(
            "no priors found (searched $POSTERIOR_PRIORS and {})",
            crate::prior::prior_roots()
                .last()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        );
        return Ok(());
    }
    // Column widths from the contents, so long names and domains keep the table aligned.
    let name_w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
    let arch_w = rows
        .iter()
        .map(|r| r.architecture.len())
        .max()
        .unwrap_or(0)
        .max(4);
    let domain_w = rows
        .iter()
        .map(|r| r.domain.len())
        .max()
        .unwrap_or(0)
        .max(6);
    println!(
        "{:<name_w$}  {:<arch_w$}  {:<domain_w$} {:>9} {:>3} {:>14} {:>9}",
        "name", "type", "domain", "size", "ch", "range", "weights"
    );
    for r in rows {
        if let Some(p) = &r.problem {
            println!("{:<name_w$}  unreadable: {p}", r.name);
            continue;
        }
        println!(
            "{:<name_w$}  {:<arch_w$}  {:<domain_w$} {:>9} {:>3} {:>14} {:>9}",
            r.name,
            r.architecture,
            r.domain,
            format!("{}x{}", r.resolution[0], r.resolution[1]),
            r.channels,
            format!("[{}, {}]", r.range[0], r.range[1]),
            format!("{:.1} MB", r.size_bytes as f64 / 1e6)
        );
    }
    Ok(())
}
