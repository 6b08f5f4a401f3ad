//! The `phase` operator family. (Being written.)

use posterior_operators::Operator;

use super::{BuildContext, Embedding, FamilyInfo, Spec};
use crate::error::{Error, Result};

pub static INFO: FamilyInfo = FamilyInfo {
    name: "phase",
    summary: "",
    params: &[],
    examples: &[],
    grayscale_only: false,
};

pub fn build(_spec: &Spec, _ctx: &BuildContext) -> Result<(Operator, Embedding)> {
    Err(Error::Invalid("phase: not available yet".into()))
}
