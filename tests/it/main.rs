//! The one integration-test binary: every suite is a module, so the crate links once. Each
//! suite covers one capability.

mod browser;
mod cli;
mod concurrency;
mod config;
mod connections;
mod drain;
mod forwarding;
mod grpc;
mod layout;
mod observe;
mod policies;
mod protocols;
mod reload;
mod routing;
mod scale_from_zero;
mod sidecar;
mod streaming;
mod support;
mod timeouts;
mod tls;
mod upstream;
mod websocket;
mod workers;
