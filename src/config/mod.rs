//! The YAML configuration: its schema ([`types`]), units ([`units`]: durations and byte
//! sizes), loading ([`load`]), the rules the types cannot say ([`validate`]), messages in the
//! file's words rather than Rust's (`words`) and reloading a running gateway ([`reload`]). A
//! file with any problem is rejected with the key path of every problem, so nothing starts on
//! a half-understood config.

pub mod load;
pub mod reload;
pub mod types;
pub mod units;
pub mod validate;
mod words;

pub use crate::http::tls::{Certificate, UpstreamTls};
pub use load::{ConfigError, ConfigIssue};
pub use types::*;
pub use units::{ByteSize, Dur};
