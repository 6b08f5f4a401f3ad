//! Seeded random number generation: the same seed gives the same operator and the same
//! noise on every machine.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The random generator used everywhere in the toolkit.
pub type Rng = ChaCha8Rng;

/// A generator for `seed`, further separated by a `stream` label so that, for example, the
/// mask and the noise drawn from the same user seed are independent.
pub fn seeded(seed: u64, stream: &str) -> Rng {
    // FNV-1a of the label, mixed into the seed.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in stream.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ChaCha8Rng::seed_from_u64(seed ^ h.rotate_left(17))
}
