//! Reading and writing images, volumes and arrays. (Being written.)
