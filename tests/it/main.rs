//! The one integration-test binary: every suite is a module, so the crate links once.

mod activator;
mod config;
mod gateway;
mod layout;
mod lifecycle;
mod protocols;
mod reload;
mod sidecar;
mod support;
mod tls;
