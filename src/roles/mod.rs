//! The roles rouse runs as. Each is a short composition of the shared blocks; any decision
//! that is not a config switch belongs in those blocks, not here.

#[cfg(feature = "kubernetes")]
pub mod activator;
pub mod gateway;
pub mod sidecar;
