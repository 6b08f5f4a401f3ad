//! Image quality metrics. (Being written.)
