//! TLS: SNI certificates, ALPN, live certificate reload, HTTP→HTTPS redirect, TLS upstreams,
//! clear errors for unusable files. Certificates are made at test time by a throwaway CA.

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Pki {
    dir: PathBuf,
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = temp_dir(name);
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let ca = p.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir,
            ca_pem: ca.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// Issues a leaf for `names` into `<file>.pem` / `<file>.key`; returns its DER.
    fn leaf(&self, file: &str, names: &[&str]) -> CertificateDer<'static> {
        let p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        // Write to temp names and rename, so a watcher never reads half a pair.
        std::fs::write(self.dir.join(format!("{file}.pem.tmp")), cert.pem()).unwrap();
        std::fs::write(
            self.dir.join(format!("{file}.key.tmp")),
            key.serialize_pem(),
        )
        .unwrap();
        std::fs::rename(
            self.dir.join(format!("{file}.key.tmp")),
            self.dir.join(format!("{file}.key")),
        )
        .unwrap();
        std::fs::rename(
            self.dir.join(format!("{file}.pem.tmp")),
            self.dir.join(format!("{file}.pem")),
        )
        .unwrap();
        cert.der().clone()
    }

    fn path(&self, f: &str) -> String {
        self.dir.join(f).display().to_string()
    }

    /// A TLS listener serving a.pem/a.key for a.test, then b.pem/b.key for b.test and
    /// *.wild.test.
    fn listener(&self) -> TlsListener {
        self.listener_with(&self.path("a.pem"), &self.path("a.key"))
    }

    /// [`Pki::listener`] with the files `cert` and `key` in place of a.pem and a.key.
    fn listener_with(&self, cert: &str, key: &str) -> TlsListener {
        TlsListener::new()
            .cert(Cert::new(cert, key).host("a.test"))
            .cert(
                Cert::new(&self.path("b.pem"), &self.path("b.key"))
                    .host("b.test")
                    .host("*.wild.test"),
            )
    }

    fn client(&self, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls::pki_types::pem::PemObject::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let mut cfg = rustls::ClientConfig::builder_with_provider(tls_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

async fn handshake(pki: &Pki, addr: SocketAddr, sni: &str, alpn: &[&[u8]]) -> Tls {
    let tcp = TcpStream::connect(addr).await.unwrap();
    pki.client(alpn)
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .expect("TLS handshake with rouse")
}

fn peer_cert(s: &Tls) -> CertificateDer<'static> {
    s.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned()
}

/// Accepts any server certificate: for finding out which one rouse serves, right or wrong.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The certificate rouse serves for SNI name `sni` (`None`: no SNI, as a client connecting
/// by IP address sends).
async fn served(addr: SocketAddr, sni: Option<&str>) -> CertificateDer<'static> {
    let provider = tls_provider();
    let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let name = match sni {
        Some(n) => ServerName::try_from(n.to_owned()).unwrap(),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = TcpStream::connect(addr).await.unwrap();
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake with rouse");
    peer_cert(&s)
}

async fn get_over(s: Tls, host: &str) -> Got {
    let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(s);
    let res = if h2 {
        let (mut send, conn) =
            hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        send.send_request(
            Request::get(format!("https://{host}/p"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(
            Request::get("/p")
                .header("host", host)
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap()
    };
    let (parts, body) = res.into_parts();
    Got {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body.collect().await.unwrap().to_bytes()).into_owned(),
        version: parts.version,
    }
}

/// A gateway (with admin, files checked every 100 ms) with the TLS listener `tls`, sending
/// everything to `backend`.
fn tls_config(tls: TlsListener, backend: SocketAddr) -> Cfg {
    Cfg::single(Rev::new("r").endpoint(backend))
        .admin()
        .watch_interval("100ms")
        .tls(tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_alpn_the_protocol() {
    let pki = Pki::new("tls-sni");
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test", "*.wild.test"]);
    let be = Backend::start("be").await;
    let gw = tls_config(pki.listener(), be.addr).start().await;
    let addr = gw.tls_addr().unwrap();
    assert_eq!(peer_cert(&handshake(&pki, addr, "a.test", &[]).await), a);
    assert_eq!(peer_cert(&handshake(&pki, addr, "b.test", &[]).await), b);
    assert_eq!(
        peer_cert(&handshake(&pki, addr, "x.wild.test", &[]).await),
        b
    );
    // No matching name, no SNI at all, or a name the wildcard does not cover (it covers one
    // label): the default, which is the first certificate when none is marked.
    for sni in [
        Some("other.test"),
        None,
        Some("a.b.wild.test"),
        Some("wild.test"),
    ] {
        assert_eq!(served(addr, sni).await, a, "{sni:?}");
    }
    // A client that checks names rejects it for other.test, as it should.
    let tcp = TcpStream::connect(addr).await.unwrap();
    let err = pki
        .client(&[])
        .connect(ServerName::try_from("other.test").unwrap(), tcp)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");

    let h2 = handshake(&pki, addr, "a.test", &[b"h2", b"http/1.1"]).await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let got = get_over(h2, "a.test").await;
    assert_eq!(
        (got.status, got.version, got.body.as_str()),
        (StatusCode::OK, Version::HTTP_2, "be")
    );
    let h1 = handshake(&pki, addr, "a.test", &[b"http/1.1"]).await;
    let got = get_over(h1, "a.test").await;
    assert_eq!(
        (got.status, got.version),
        (StatusCode::OK, Version::HTTP_11)
    );
    // Without ALPN, HTTP/1.1: HTTP/2 over TLS is only ever negotiated (RFC 9113, 3.3).
    let plain = handshake(&pki, addr, "a.test", &[]).await;
    assert_eq!(plain.get_ref().1.alpn_protocol(), None);
    let got = get_over(plain, "a.test").await;
    assert_eq!(
        (got.status, got.version),
        (StatusCode::OK, Version::HTTP_11)
    );
    assert_eq!(
        be.headers_at("/p").get("x-forwarded-proto").unwrap(),
        "https"
    );
    // HTTP/1.1 framing is checked over TLS as in clear: a bare LF is refused.
    let mut raw = handshake(&pki, addr, "a.test", &[]).await;
    raw.write_all(b"GET /p HTTP/1.1\r\nHost: a.test\nX: y\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = raw.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out);
    assert!(
        out.starts_with("HTTP/1.1 400") && out.contains("ends in LF without CR"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_certificate_files_are_used_without_restart() {
    let pki = Pki::new("tls-reload");
    let old = pki.leaf("a", &["a.test"]);
    pki.leaf("b", &["b.test"]);
    let be = Backend::start("be").await;
    let gw = tls_config(pki.listener(), be.addr).start().await;
    let addr = gw.tls_addr().unwrap();
    let established = handshake(&pki, addr, "a.test", &[b"http/1.1"]).await;
    assert_eq!(peer_cert(&established), old);
    let new = pki.leaf("a", &["a.test"]);
    assert_ne!(old, new);
    let mut seen = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let c = peer_cert(&handshake(&pki, addr, "a.test", &[]).await);
        if c == new {
            seen = Some(c);
            break;
        }
    }
    assert!(seen.is_some(), "new certificate never served");
    // The connection made before the change is unaffected.
    assert_eq!(get_over(established, "a.test").await.status, StatusCode::OK);
    // A broken key file is refused and the current certificate stays (four checks of the
    // files at 100 ms)...
    std::fs::write(pki.dir.join("a.key"), "not a key").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(peer_cert(&handshake(&pki, addr, "a.test", &[]).await), new);
    // ...and the files are still watched: a good pair after it is taken.
    let third = pki.leaf("a", &["a.test"]);
    let mut taken = false;
    for _ in 0..100 {
        if peer_cert(&handshake(&pki, addr, "a.test", &[]).await) == third {
            taken = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        taken,
        "the certificate after the broken key was never served"
    );
}

/// The certificate marked `default: true` is served for names no certificate lists and for
/// clients that send no name; the handshake is given `handshake_timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_marked_default_certificate_is_served_for_unknown_names() {
    let pki = Pki::new("tls-default");
    let a = pki.leaf("a", &["a.test"]);
    let b = pki.leaf("b", &["b.test"]);
    let be = Backend::start("be").await;
    let listener = TlsListener::new()
        .cert(Cert::new(&pki.path("a.pem"), &pki.path("a.key")).host("a.test"))
        .cert(
            Cert::new(&pki.path("b.pem"), &pki.path("b.key"))
                .host("b.test")
                .default_for_unknown_names(),
        )
        .handshake_timeout("300ms");
    let gw = tls_config(listener, be.addr).start().await;
    let addr = gw.tls_addr().unwrap();
    assert_eq!(served(addr, Some("a.test")).await, a);
    assert_eq!(served(addr, Some("other.test")).await, b);
    assert_eq!(served(addr, None).await, b);
    // A client that opens a connection and never says hello is let go (the default would
    // hold it 10 s).
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "not closed after handshake_timeout: {closed:?}"
    );
}

#[tokio::test]
async fn cleartext_requests_can_be_redirected_to_https() {
    let pki = Pki::new("tls-redirect");
    pki.leaf("a", &["a.test"]);
    pki.leaf("b", &["b.test"]);
    let be = Backend::start("be").await;
    let gw = tls_config(pki.listener().redirect_http(true), be.addr)
        .start()
        .await;
    let port = gw.tls_addr().unwrap().port();
    let got = get(&h1_client(), gw.addr(), "a.test:8080", "/x?y=1", &[]).await;
    assert_eq!(got.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        got.header("location"),
        format!("https://a.test:{port}/x?y=1")
    );
    assert_eq!(be.requests(), 0);
}

#[tokio::test]
async fn a_service_can_redirect_its_own_cleartext_requests() {
    let pki = Pki::new("tls-redirect-service");
    pki.leaf("a", &["a.test"]);
    pki.leaf("b", &["b.test"]);
    let be = Backend::start("be").await;
    let gw = Cfg::new()
        .tls(pki.listener().redirect_port(443))
        .service(
            Svc::new("secure")
                .host("a.test")
                .redirect_to_https(true)
                .only(Rev::new("r").endpoint(be.addr)),
        )
        .service(
            Svc::new("plain")
                .host("b.test")
                .only(Rev::new("r").endpoint(be.addr)),
        )
        .start()
        .await;
    let got = get(&h1_client(), gw.addr(), "a.test:8080", "/x?y=1", &[]).await;
    assert_eq!(got.status, StatusCode::MOVED_PERMANENTLY);
    // Port 443 is the scheme's own: left out.
    assert_eq!(got.header("location"), "https://a.test/x?y=1");
    assert_eq!(be.requests(), 0);
    let got = get(&h1_client(), gw.addr(), "b.test", "/", &[]).await;
    assert_eq!(got.status, StatusCode::OK, "other services serve cleartext");
    let tls = handshake(&pki, gw.tls_addr().unwrap(), "a.test", &[]).await;
    assert_eq!(get_over(tls, "a.test").await.status, StatusCode::OK);
    // Without a TLS listener there is nowhere to redirect to: refused with the key path.
    let err = Config::parse(
        "listen: 127.0.0.1:0\nservices:\n  - { name: s, hosts: ['*'], redirect_to_https: true, traffic: [{ revision: r, percent: 100 }], revisions: [{ name: r, endpoints: ['127.0.0.1:1'] }] }\n",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("services[0].redirect_to_https: there is no TLS listener"),
        "{err}"
    );
}

/// A backend served over TLS with a certificate for 127.0.0.1: GET answers `secure upstream`,
/// anything else the length of the body it read. Counts its connections.
async fn tls_backend(pki: &Pki) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    pki.leaf("up", &["127.0.0.1", "up.test"]);
    let certs: Vec<CertificateDer<'static>> =
        rustls::pki_types::pem::PemObject::pem_file_iter(pki.dir.join("up.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
    let key = rustls::pki_types::pem::PemObject::from_pem_file(pki.dir.join("up.key")).unwrap();
    let cfg = rustls::ServerConfig::builder_with_provider(tls_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let conns = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = conns.clone();
    let addr = serve_each(move |s| {
        let acceptor = acceptor.clone();
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            let Ok(s) = acceptor.accept(s).await else {
                return;
            };
            let svc = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let text = match req.method() {
                        &http::Method::GET => "secure upstream".to_owned(),
                        _ => {
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            body.len().to_string()
                        }
                    };
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        text,
                    ))))
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(s), svc)
                .await;
        }
    })
    .await;
    (addr, conns)
}

/// Over a TLS upstream, a chunked request body of several megabytes goes out whole (its last
/// chunk flushed out of the TLS session, not left in it), and the connection then carries the
/// next requests: one connection for all of them.
#[tokio::test]
async fn upstream_tls_carries_streamed_bodies_and_keeps_its_connection() {
    let pki = Pki::new("tls-upstream-body");
    let (up, conns) = tls_backend(&pki).await;
    let ca = pki.path("ca.pem");
    let gw = Cfg::single(Rev::new("r").endpoint(up).tls(&ca, None))
        .start()
        .await;
    let counted = tokio::time::timeout(Duration::from_secs(20), upload(gw.addr(), 4))
        .await
        .expect("the upload is answered");
    assert_eq!(counted, (4 << 20).to_string());
    let c = h1_client();
    for _ in 0..3 {
        let got = get(&c, gw.addr(), "x", "/", &[]).await;
        assert_eq!(
            (got.status, got.body.as_str()),
            (StatusCode::OK, "secure upstream")
        );
    }
    assert_eq!(conns.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn upstream_tls_verifies_against_the_given_ca() {
    let pki = Pki::new("tls-upstream");
    let (up, _) = tls_backend(&pki).await;
    let ca = pki.path("ca.pem");
    let cfg = |server_name| Cfg::single(Rev::new("r").endpoint(up).tls(&ca, server_name));
    let gw = cfg(None).start().await;
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(
        (got.status, got.body.as_str()),
        (StatusCode::OK, "secure upstream")
    );
    let gw = cfg(Some("up.test")).start().await;
    assert_eq!(
        get(&h1_client(), gw.addr(), "x", "/", &[]).await.status,
        StatusCode::OK
    );
    // A name the certificate does not carry: the connection is refused with a clear reason.
    let gw = cfg(Some("wrong.test")).start().await;
    let got = get(&h1_client(), gw.addr(), "x", "/", &[]).await;
    assert_eq!(got.status, StatusCode::BAD_GATEWAY);
    assert!(got.body.contains("TLS handshake failed"), "{}", got.body);
}

#[tokio::test]
async fn unusable_certificate_files_are_clear_errors() {
    let pki = Pki::new("tls-bad");
    pki.leaf("a", &["a.test"]);
    pki.leaf("b", &["b.test"]);
    let be = Backend::start("be").await;
    // The listener with `cert` and `key` in place of a's files.
    let with = |cert: &str, key: &str| tls_config(pki.listener_with(cert, key), be.addr);
    let check =
        |cfg: Cfg| async move { cfg.try_start().await.map(|_| ()).unwrap_err().to_string() };
    let (a_pem, a_key) = (pki.path("a.pem"), pki.path("a.key"));
    let missing = check(with(&a_pem, "/nonexistent/a.key")).await;
    assert!(
        missing.contains("cannot read /nonexistent/a.key"),
        "{missing}"
    );
    // b's key with a's certificate.
    let swapped = with(&a_pem, &pki.path("b.key"));
    let swapped_err = check(swapped.clone()).await;
    assert!(
        swapped_err.contains("does not match the certificate"),
        "{swapped_err}"
    );
    std::fs::write(pki.dir.join("junk.pem"), "hello").unwrap();
    let junk = check(with(&pki.path("junk.pem"), &a_key)).await;
    assert!(junk.contains("contains no PEM certificate"), "{junk}");
    // The same through `rouse validate`.
    let path = pki.dir.join("bad.yaml");
    std::fs::write(&path, swapped.yaml()).unwrap();
    let out = std::process::Command::new(bin())
        .args(["validate", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not match"));
}
