//! The command-line interface. (Being written.)
