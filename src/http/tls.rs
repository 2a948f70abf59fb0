//! TLS on rustls with the aws-lc-rs provider (the only crypto provider in the build): listener
//! certificates chosen by SNI and reloaded when their files change, and TLS to upstreams.
//!
//! Protocol versions are rustls's safe defaults, TLS 1.2 and 1.3 only. The listener offers
//! ALPN `h2` and `http/1.1`, and ALPN picks which of the listener's HTTP servers serves the
//! connection (HTTP/1.1 when the client offers none).

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

/// A certificate chain and its key, PEM files, re-read when they change.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Certificate {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// SNI names this certificate serves; `*.example.com` matches one label.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Serve this one when SNI is absent or matches nothing (default: the first).
    #[serde(default)]
    pub default: bool,
}

/// TLS from rouse to a revision's endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    /// PEM bundle of the CA certificates that sign the endpoints' certificates.
    pub ca: PathBuf,
    /// Name to verify the endpoints' certificates against; default: the endpoint's IP address.
    #[serde(default)]
    pub server_name: Option<String>,
}

/// A certificate or key file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file holds no PEM certificate.
    #[error("{0} contains no PEM certificate (expected -----BEGIN CERTIFICATE-----)")]
    NoCertificate(PathBuf),
    /// The file holds no usable private key.
    #[error(
        "{path} contains no usable private key (expected a PEM PKCS#8, PKCS#1 or SEC1 key): {reason}"
    )]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The key does not belong to the certificate.
    #[error("the key in {key} does not match the certificate in {cert}: {reason}")]
    Mismatch {
        /// Certificate file.
        cert: PathBuf,
        /// Key file.
        key: PathBuf,
        /// Why.
        reason: String,
    },
    /// A `server_name` that is not a DNS name or IP address.
    #[error("invalid server_name {name:?}: {reason}")]
    BadServerName {
        /// The value given.
        name: String,
        /// Why.
        reason: String,
    },
    /// A CA bundle could not be used.
    #[error("no usable CA certificate in {path}: {reason}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The one crypto provider rouse uses.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    certified_key_pem(&read(cert)?, &read(key)?).map_err(|e| match e {
        PemError::NoCertificate => TlsError::NoCertificate(cert.to_owned()),
        PemError::BadKey(reason) => TlsError::BadKey {
            path: key.to_owned(),
            reason,
        },
        PemError::Mismatch(reason) => TlsError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
            reason,
        },
    })
}

/// Why a PEM certificate and key given as bytes cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    /// No certificate in the chain's PEM.
    #[error("holds no PEM certificate")]
    NoCertificate,
    /// The key cannot be read.
    #[error("holds no usable private key ({0})")]
    BadKey(String),
    /// The key does not fit the certificate, or the algorithm is unsupported.
    #[error("certificate and key do not go together ({0})")]
    Mismatch(String),
}

/// A certificate chain and key from PEM bytes (a Kubernetes TLS Secret's `tls.crt` and
/// `tls.key`).
pub fn certified_key_pem(cert: &[u8], key: &[u8]) -> Result<CertifiedKey, PemError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(PemError::NoCertificate);
    }
    let der = PrivateKeyDer::from_pem_slice(key).map_err(|e| PemError::BadKey(e.to_string()))?;
    CertifiedKey::from_der(chain, der, &provider()).map_err(|e| PemError::Mismatch(e.to_string()))
}

/// The loaded certificates, indexed by host name.
#[derive(Debug, Default)]
struct Certs {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` stored as `example.com`: matches exactly one more label.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl Certs {
    fn load(list: &[Certificate]) -> Result<Certs, TlsError> {
        let mut certs = Certs::default();
        for (i, c) in list.iter().enumerate() {
            let ck = Arc::new(certified_key(&c.cert, &c.key)?);
            certs.add(&c.hosts, &ck);
            // The one marked default, else the first.
            if c.default || i == 0 {
                certs.default = Some(ck);
            }
        }
        Ok(certs)
    }

    fn add(&mut self, hosts: &[String], ck: &Arc<CertifiedKey>) {
        for h in hosts {
            let h = h.trim().to_ascii_lowercase();
            match h.strip_prefix("*.") {
                Some(suffix) => self.wildcard.insert(suffix.to_owned(), ck.clone()),
                None => self.exact.insert(h, ck.clone()),
            };
        }
    }

    /// The certificate for `name` by exact name, else by wildcard.
    fn find(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        if let Some(c) = self.exact.get(&name) {
            return Some(c.clone());
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).cloned()
    }
}

/// The listener's certificates, swappable at run time.
#[derive(Debug)]
pub struct CertStore {
    sources: Vec<Certificate>,
    current: ArcSwap<Certs>,
    /// Certificates given at run time (from Kubernetes Secrets), tried before the files'.
    given: ArcSwap<Certs>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let files = self.current.load();
        let Some(name) = hello.server_name() else {
            return files.default.clone();
        };
        self.given
            .load()
            .find(name)
            .or_else(|| files.find(name))
            .or_else(|| files.default.clone())
    }
}

impl CertStore {
    /// Loads every certificate; fails on the first unusable file.
    pub fn load(list: &[Certificate]) -> Result<CertStore, TlsError> {
        Ok(CertStore {
            current: ArcSwap::from_pointee(Certs::load(list)?),
            sources: list.to_vec(),
            given: ArcSwap::from_pointee(Certs::default()),
        })
    }

    /// Replaces the certificates given at run time: each serves its host names (exact, or
    /// `*.` wildcards), ahead of the files' certificates. New handshakes see them at once.
    pub fn set_given(&self, list: &[(Vec<String>, Arc<CertifiedKey>)]) {
        let mut certs = Certs::default();
        for (hosts, ck) in list {
            certs.add(hosts, ck);
        }
        self.given.store(Arc::new(certs));
    }

    fn fingerprint(&self) -> Vec<Option<Vec<u8>>> {
        self.sources
            .iter()
            .flat_map(|c| [&c.cert, &c.key])
            .map(|p| std::fs::read(p).ok())
            .collect()
    }

    /// Re-reads the files every `interval` and swaps in the new certificates when any file
    /// changed and all of them load. New handshakes use them; established connections keep
    /// theirs. A bad file is logged and the previous certificates stay.
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut last = self.fingerprint();
        loop {
            tokio::time::sleep(interval).await;
            let now = self.fingerprint();
            if now == last {
                continue;
            }
            last = now;
            match Certs::load(&self.sources) {
                Ok(c) => {
                    self.current.store(Arc::new(c));
                    info!("TLS certificates reloaded");
                }
                Err(e) => warn!("TLS certificates not reloaded, keeping the current ones: {e}"),
            }
        }
    }

    /// A rustls server config using this store, offering h2 and http/1.1.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the provider supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Arc::new(cfg)
    }
}

/// The client side of TLS to one revision's endpoints.
#[derive(Clone)]
pub struct Connector {
    /// The configuration this was built from, to tell on reload whether it changed.
    pub source: (UpstreamTls, bool),
    /// The connector (CA roots, ALPN).
    pub connector: tokio_rustls::TlsConnector,
    /// Name to verify the endpoint's certificate against; `None` = the endpoint's IP address.
    pub server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// Builds the client side from a revision's `tls` section; `h2` selects the ALPN offered.
    pub fn new(cfg: &UpstreamTls, h2: bool) -> Result<Connector, TlsError> {
        let pem = read(&cfg.ca)?;
        let mut roots = rustls::RootCertStore::empty();
        let mut added = 0;
        for c in CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok) {
            if roots.add(c).is_ok() {
                added += 1;
            }
        }
        if added == 0 {
            return Err(TlsError::BadCa {
                path: cfg.ca.clone(),
                reason: "no PEM certificate could be added as a trust anchor".into(),
            });
        }
        let mut client = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("the provider supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let server_name = cfg
            .server_name
            .as_deref()
            .map(|n| ServerName::try_from(n.to_owned()))
            .transpose()
            .map_err(|e| TlsError::BadServerName {
                name: cfg.server_name.clone().unwrap_or_default(),
                reason: e.to_string(),
            })?;
        Ok(Connector {
            source: (cfg.clone(), h2),
            connector: tokio_rustls::TlsConnector::from(Arc::new(client)),
            server_name,
        })
    }
}
