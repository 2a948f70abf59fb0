//! A real control plane for the test run: etcd, kube-apiserver and kube-controller-manager
//! (deployment, replicaset, endpoints, EndpointSlice, EndpointSlice mirroring and garbage
//! collection controllers), built from Kubernetes' own modules
//! by `scripts/k8s-binaries.sh`, started on loopback inside the run's network namespace and
//! killed when the run ends (the run's PID namespace kills anything left).
//!
//! Identities are client certificates from a CA made for the run: `admin` (system:masters)
//! for the tests and the controller-manager, and any other user name on demand, such as
//! `system:serviceaccount:rouse:rouse`, which RBAC treats exactly as that ServiceAccount.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::time::Instant;

/// Where the API server listens (inside the namespace).
pub const API: &str = "https://127.0.0.1:6443";

/// A running control plane.
pub struct Cluster {
    /// The run's folder: certificates, kubeconfigs, etcd data, logs.
    pub dir: PathBuf,
    bin: PathBuf,
    ca: Issuer<'static, KeyPair>,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    controllers: Option<Child>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Cluster {
    /// Stops every process of the control plane.
    pub fn stop(&mut self) {
        for c in [&mut self.controllers, &mut self.apiserver, &mut self.etcd]
            .into_iter()
            .flatten()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn(bin: &Path, name: &str, args: &[String], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    Command::new(bin.join(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name} from {}: {e}", bin.display()))
}

impl Cluster {
    /// Starts etcd, the API server and the controllers, and waits until the API server is
    /// ready.
    pub async fn start(bin: &Path, dir: &Path) -> Cluster {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, "rouse-test-ca");
        let key = KeyPair::generate().unwrap();
        let ca_pem = p.self_signed(&key).unwrap().pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
        let mut c = Cluster {
            dir: dir.to_owned(),
            bin: bin.to_owned(),
            ca: Issuer::new(p, key),
            etcd: None,
            apiserver: None,
            controllers: None,
        };
        c.issue(
            "apiserver",
            "kube-apiserver",
            &[],
            &[
                "127.0.0.1",
                "192.0.2.1",
                "localhost",
                "kubernetes.default.svc",
            ],
        );
        let sa = KeyPair::generate().unwrap();
        std::fs::write(dir.join("sa.key"), sa.serialize_pem()).unwrap();
        std::fs::write(dir.join("sa.pub"), sa.public_key_pem()).unwrap();
        let d = |f: &str| dir.join(f).display().to_string();
        c.etcd = Some(spawn(
            bin,
            "etcd",
            &[
                format!("--data-dir={}", d("etcd")),
                "--listen-client-urls=http://127.0.0.1:2379".into(),
                "--advertise-client-urls=http://127.0.0.1:2379".into(),
                "--listen-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
                "--initial-cluster=default=http://127.0.0.1:2380".into(),
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
            &dir.join("etcd.log"),
        ));
        c.start_apiserver();
        c.wait_ready(Duration::from_secs(120)).await;
        let kc = c.kubeconfig("controller-manager", "admin", &["system:masters"]);
        c.controllers = Some(spawn(
            bin,
            "kube-controller-manager",
            &[
                format!("--kubeconfig={}", kc.display()),
                "--controllers=deployment-controller,replicaset-controller,statefulset-controller,endpointslice-controller,endpoints-controller,endpointslice-mirroring-controller,garbage-collector-controller".into(),
                "--leader-elect=false".into(),
                "--use-service-account-credentials=false".into(),
                "--secure-port=0".into(),
                "--concurrent-deployment-syncs=10".into(),
                "--concurrent-replicaset-syncs=10".into(),
                "--concurrent-service-endpoint-syncs=10".into(),
                "-v=1".into(),
            ],
            &dir.join("kube-controller-manager.log"),
        ));
        c
    }

    fn start_apiserver(&mut self) {
        let d = |f: &str| self.dir.join(f).display().to_string();
        self.apiserver = Some(spawn(
            &self.bin,
            "kube-apiserver",
            &[
                "--etcd-servers=http://127.0.0.1:2379".into(),
                // Every address of the test's network namespace: Knative's components run as
                // Pods with networks of their own and reach it at 192.0.2.1.
                "--bind-address=0.0.0.0".into(),
                "--secure-port=6443".into(),
                "--advertise-address=192.0.2.1".into(),
                format!("--tls-cert-file={}", d("apiserver.pem")),
                format!("--tls-private-key-file={}", d("apiserver.key")),
                format!("--client-ca-file={}", d("ca.pem")),
                "--authorization-mode=RBAC".into(),
                "--service-account-issuer=https://kubernetes.default.svc".into(),
                format!("--service-account-key-file={}", d("sa.pub")),
                format!("--service-account-signing-key-file={}", d("sa.key")),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                // Pods here run without service-account tokens: the local node has no use
                // for them.
                "--disable-admission-plugins=ServiceAccount".into(),
                "--enable-priority-and-fairness=false".into(),
                "--profiling=false".into(),
                "--endpoint-reconciler-type=none".into(),
            ],
            &self.dir.join("kube-apiserver.log"),
        ));
    }

    /// Stops the API server (etcd and the controllers stay).
    pub fn stop_apiserver(&mut self) {
        if let Some(mut a) = self.apiserver.take() {
            let _ = a.kill();
            let _ = a.wait();
        }
    }

    /// Starts the API server again after [`Cluster::stop_apiserver`] and waits until ready.
    pub async fn restart_apiserver(&mut self) {
        self.start_apiserver();
        self.wait_ready(Duration::from_secs(60)).await;
    }

    async fn wait_ready(&mut self, within: Duration) {
        let client = self.admin().await;
        let began = Instant::now();
        loop {
            let req = http::Request::get("/readyz").body(Vec::new()).unwrap();
            if client.request_text(req).await.is_ok() {
                return;
            }
            if let Some(a) = self.apiserver.as_mut()
                && let Ok(Some(status)) = a.try_wait()
            {
                panic!(
                    "kube-apiserver exited with {status}; its log:\n{}",
                    tail(&self.dir.join("kube-apiserver.log"))
                );
            }
            assert!(
                began.elapsed() < within,
                "kube-apiserver not ready after {within:?}; its log:\n{}",
                tail(&self.dir.join("kube-apiserver.log"))
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Issues `<file>.pem` / `<file>.key` for `user` in `groups` (client) with `names` as
    /// server names.
    pub fn issue(&self, file: &str, user: &str, groups: &[&str], names: &[&str]) {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, user);
        for g in groups {
            dn.push(DnType::OrganizationName, *g);
        }
        p.distinguished_name = dn;
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.dir.join(format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{file}.key")), key.serialize_pem()).unwrap();
    }

    /// Writes a kubeconfig `<file>.kubeconfig` for `user` in `groups`; returns its path.
    pub fn kubeconfig(&self, file: &str, user: &str, groups: &[&str]) -> PathBuf {
        self.kubeconfig_at(file, user, groups, API)
    }

    /// [`Cluster::kubeconfig`] reaching the API server at `server` (Pods with a network of
    /// their own use `https://192.0.2.1:6443`).
    pub fn kubeconfig_at(&self, file: &str, user: &str, groups: &[&str], server: &str) -> PathBuf {
        self.issue(file, user, groups, &[]);
        let d = |f: &str| self.dir.join(f).display().to_string();
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {server}\n    certificate-authority: {}\nusers:\n- name: {file}\n  user:\n    client-certificate: {}\n    client-key: {}\ncontexts:\n- name: test\n  context: {{cluster: test, user: {file}}}\ncurrent-context: test\n",
            d("ca.pem"),
            d(&format!("{file}.pem")),
            d(&format!("{file}.key")),
        );
        let path = self.dir.join(format!("{file}.kubeconfig"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// A client acting as `user` in `groups`.
    pub async fn client(&self, user: &str, groups: &[&str]) -> kube::Client {
        let file = user.replace(':', "-");
        let path = self.kubeconfig(&file, user, groups);
        let kc = kube::config::Kubeconfig::read_from(&path).unwrap();
        let cfg =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .unwrap();
        kube::Client::try_from(cfg).unwrap()
    }

    /// A client with every right.
    pub async fn admin(&self) -> kube::Client {
        self.client("admin", &["system:masters"]).await
    }
}

/// The last 40 lines of a log, for a failure message.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
