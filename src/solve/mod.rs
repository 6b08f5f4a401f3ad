//! Classical reconstruction. (Being written.)
