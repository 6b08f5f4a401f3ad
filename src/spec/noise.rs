//! Noise specs: `gaussian:sigma=0.05`, `poisson:scale=100`, `complex-gaussian:sigma=0.01`,
//! `none`. (Being written.)
