//! Reloading a running gateway's config file: on SIGHUP and whenever the file's content
//! changes. One reload runs at a time; content already applied is not applied twice (the
//! watcher and a SIGHUP may both see one change); an invalid file changes nothing, and the
//! running config keeps serving. Settings that only a restart can change are named in a
//! warning and kept.

use super::load::ConfigError;
use super::types::{Addr, Config, Kubernetes, Limits, Tls};
use super::units::Dur;
use crate::http::tls::CertStore;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// What a reload applies a new, validated config to.
pub trait Apply: Send + Sync + 'static {
    /// Applies `cfg`; an error leaves the running config in place.
    fn apply(&self, cfg: &Config) -> impl Future<Output = Result<(), ConfigError>> + Send;

    /// Counts one reload attempt and its result.
    fn counted(&self, ok: bool);
}

/// Serializes reloads and remembers the content last applied. Holding it blocks reloads (a
/// shutdown takes it for good).
pub type Applied = Arc<tokio::sync::Mutex<Option<Vec<u8>>>>;

/// Settings given on the command line, which win over the file's at start and on every
/// reload (so `rouse run --listen` is not undone, nor warned about, by a reload).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `listen`.
    pub listen: Option<std::net::SocketAddr>,
    /// `admin`.
    pub admin: Option<std::net::SocketAddr>,
}

impl Overrides {
    /// Puts the overrides into `cfg`.
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(a) = self.listen {
            cfg.listen = Addr(a);
        }
        if let Some(a) = self.admin {
            cfg.admin = Some(Addr(a));
        }
    }
}

/// Re-reads a config file and applies it.
#[derive(Debug)]
pub struct Reloader<T> {
    target: Arc<T>,
    path: PathBuf,
    applied: Applied,
    overrides: Overrides,
}

impl<T> Clone for Reloader<T> {
    fn clone(&self) -> Self {
        Reloader {
            target: self.target.clone(),
            path: self.path.clone(),
            applied: self.applied.clone(),
            overrides: self.overrides.clone(),
        }
    }
}

impl<T: Apply> Reloader<T> {
    /// A reloader of `path` into `target`, serialized by `applied`; `overrides` win over
    /// what the file says.
    pub fn new(target: Arc<T>, path: &Path, applied: Applied, overrides: Overrides) -> Reloader<T> {
        Reloader {
            target,
            path: path.to_owned(),
            applied,
            overrides,
        }
    }

    /// Reads, validates and applies the file. An invalid file changes nothing: the running
    /// config keeps serving, and the problems are logged with their key paths and counted.
    pub async fn reload(&self) -> Result<(), ConfigError> {
        let mut applied = self.applied.lock().await;
        // Read once: what is compared, parsed and remembered are the same bytes.
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(source) => {
                self.target.counted(false);
                let e = ConfigError::Read {
                    path: self.path.display().to_string(),
                    source,
                };
                warn!("config not reloaded, keeping the running one: {e}");
                return Err(e);
            }
        };
        if applied.as_ref() == Some(&bytes) {
            // The watcher and a SIGHUP both saw this change; it is applied once.
            return Ok(());
        }
        let text = String::from_utf8_lossy(&bytes);
        let result = async {
            let mut cfg = Config::parse(&text)?;
            self.overrides.apply(&mut cfg);
            // The listener's certificates are not swapped by a reload (the store re-reads its
            // own files), but a file that names unusable ones is still refused. Upstream CAs
            // are loaded by the apply step, before any live revision changes.
            if let Some(t) = &cfg.tls {
                CertStore::load(&t.certificates)?;
            }
            self.target.apply(&cfg).await
        }
        .await;
        match result {
            Ok(()) => {
                self.target.counted(true);
                *applied = Some(bytes);
                info!(path = %self.path.display(), "config reloaded");
                Ok(())
            }
            Err(e) => {
                self.target.counted(false);
                warn!(
                    path = %self.path.display(),
                    "config not reloaded, keeping the running one: {}",
                    e.one_line()
                );
                Err(e)
            }
        }
    }

    /// Checks the file every `interval` and reloads when its content changes. Runs until the
    /// task is dropped. Comparing content rather than timestamps also catches Kubernetes'
    /// ConfigMap updates, which swap a symlink.
    pub async fn watch(self, interval: Duration) {
        let mut last = std::fs::read(&self.path).ok();
        loop {
            tokio::time::sleep(interval).await;
            let now = std::fs::read(&self.path).ok();
            if now.is_some() && now != last {
                last = now;
                let _ = self.reload().await;
            }
        }
    }
}

/// The settings fixed when a gateway starts (listeners and their tuning): a reload that
/// changes them is told so, and they stay.
#[derive(Debug, Clone, PartialEq)]
pub struct StartOnly {
    listen: Addr,
    listen_internal: Option<Addr>,
    admin: Option<Addr>,
    limits: Limits,
    drain_timeout: Dur,
    watch_interval: Dur,
    tls: Option<Tls>,
    kubernetes: Kubernetes,
    access_log: Option<super::types::AccessLog>,
}

impl StartOnly {
    /// The start-only settings of `cfg`.
    pub fn of(cfg: &Config) -> StartOnly {
        StartOnly {
            listen: cfg.listen,
            listen_internal: cfg.listen_internal,
            admin: cfg.admin,
            limits: cfg.limits.clone(),
            drain_timeout: cfg.drain_timeout,
            watch_interval: cfg.watch_interval,
            tls: cfg.tls.clone(),
            kubernetes: cfg.kubernetes.clone(),
            access_log: cfg.access_log.clone(),
        }
    }

    /// The keys whose values differ in `next`.
    pub fn changed(&self, next: &StartOnly) -> Vec<&'static str> {
        [
            ("listen", self.listen != next.listen),
            (
                "listen_internal",
                self.listen_internal != next.listen_internal,
            ),
            ("admin", self.admin != next.admin),
            ("limits", self.limits != next.limits),
            ("drain_timeout", self.drain_timeout != next.drain_timeout),
            ("watch_interval", self.watch_interval != next.watch_interval),
            ("tls", self.tls != next.tls),
            ("kubernetes", self.kubernetes != next.kubernetes),
            ("access_log", self.access_log != next.access_log),
        ]
        .into_iter()
        .filter_map(|(key, differs)| differs.then_some(key))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_only_names_each_changed_key() {
        const SERVICES: &str = "services:\n  - { name: s, hosts: [\"*\"], traffic: [{ revision: r, percent: 100 }], revisions: [{ name: r, endpoints: [\"127.0.0.1:9\"] }] }\n";
        let a = StartOnly::of(&Config::parse(&format!("listen: 127.0.0.1:1\n{SERVICES}")).unwrap());
        assert!(a.changed(&a.clone()).is_empty());
        let b = StartOnly::of(
            &Config::parse(&format!(
                "listen: 127.0.0.1:2\ndrain_timeout: 3s\nlimits: {{ max_header_bytes: 16KiB }}\n{SERVICES}"
            ))
            .unwrap(),
        );
        assert_eq!(a.changed(&b), ["listen", "limits", "drain_timeout"]);
    }
}
