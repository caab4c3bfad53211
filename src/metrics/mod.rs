//! Evaluation networks. The Fréchet distance itself is a few lines of float64 linear algebra on 400×400
//! matrices and lives with the rest of the protocol in Python (`latte_rs.metrics`).

pub mod i3d;

pub use i3d::{prepare, I3d, I3D_FEATURES, I3D_MIN_FRAMES, I3D_SIZE};
