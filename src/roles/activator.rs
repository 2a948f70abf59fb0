//! `rouse activator`: a drop-in for Knative's activator. Knative's environment and ports →
//! a gateway config with `kubernetes.activator` (Knative's Revisions as routes, the activator
//! front) and `kubernetes.autoscaler` (the stats link) → [`Gateway`](super::gateway::Gateway).
//! Everything it does is in those shared blocks; this file only says which ones and with what.

use crate::config::{Config, ConfigError};
use serde_json::json;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// The activator's settings, as flags or Knative's environment (flags win).
#[derive(Debug, Clone, clap::Args)]
pub struct ActivatorArgs {
    /// HTTP/1.1 port (h2c with prior knowledge is also accepted there), Knative's 8012.
    #[arg(long, default_value = "0.0.0.0:8012")]
    pub listen: SocketAddr,
    /// h2c port, Knative's 8013.
    #[arg(long, default_value = "0.0.0.0:8013")]
    pub listen_h2c: SocketAddr,
    /// Prometheus `/metrics` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:9090")]
    pub admin: SocketAddr,
    /// This pod's name: the stats carry it.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// This pod's IP: where this replica finds itself among the activators in front of a
    /// revision, to take its share of the pods.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<IpAddr>,
    /// Knative Serving's namespace (the autoscaler's).
    #[arg(long, env = "SYSTEM_NAMESPACE", default_value = "knative-serving")]
    pub system_namespace: String,
    /// The cluster's DNS domain.
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// The autoscaler's stats websocket; default
    /// ws://autoscaler.<system-namespace>.svc.<cluster-domain>:8080.
    #[arg(long)]
    pub autoscaler: Option<String>,
    /// Serve only the Revisions of this namespace (default: all).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Most requests held per revision while it has no free pod; more get 503.
    #[arg(long, default_value_t = 1000)]
    pub max_held: usize,
    /// Most declared body bytes of the requests held per revision (e.g. 64MiB).
    #[arg(long, default_value = "64MiB")]
    pub max_held_bytes: String,
    /// Longest a request is held (e.g. 30s); default until the revision's timeout.
    #[arg(long)]
    pub max_wait: Option<String>,
    /// After SIGTERM, how long health checks fail while requests are still served, for the
    /// Service to stop sending new ones (Knative's activator waits 45s).
    #[arg(long, default_value = "45s")]
    pub drain_quiet: String,
    /// Then, how long requests in flight may take to finish.
    #[arg(long, default_value = "600s")]
    pub drain_timeout: String,
}

impl ActivatorArgs {
    /// The gateway config these settings stand for, checked with the config's own rules
    /// (problems are named by their config key).
    pub fn config(&self) -> Result<Config, ConfigError> {
        let autoscaler = self.autoscaler.clone().unwrap_or_else(|| {
            format!(
                "ws://autoscaler.{}.svc.{}:8080",
                self.system_namespace, self.cluster_domain
            )
        });
        let mut queue = json!({
            "max_requests": self.max_held,
            "max_bytes": self.max_held_bytes,
        });
        // Knative's activator holds a request until the revision's own timeout.
        queue["max_wait"] = json!(self.max_wait.as_deref().unwrap_or("0s"));
        // Knative's autoscaler adds the pods: no wait can be predicted here.
        queue["target_wait"] = json!("0s");
        let cfg = json!({
            "listen": self.listen.to_string(),
            "listen_internal": self.listen_h2c.to_string(),
            "admin": self.admin.to_string(),
            "drain_timeout": self.drain_timeout,
            "kubernetes": {
                "activator": {
                    "cluster_domain": self.cluster_domain,
                    "namespace": self.namespace,
                    "pod_ip": self.pod_ip.map(|ip| ip.to_string()),
                    "queue": queue,
                },
                "autoscaler": {
                    "url": autoscaler,
                    "pod_name": self.pod_name,
                },
            },
        });
        // YAML is a superset of JSON: one parser, one set of rules and messages.
        Config::parse(&cfg.to_string())
    }

    /// `--drain-quiet`.
    pub fn quiet(&self) -> Result<Duration, String> {
        humantime::parse_duration(&self.drain_quiet)
            .map_err(|e| format!("--drain-quiet {:?}: {e}; write e.g. 45s", self.drain_quiet))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: ActivatorArgs,
    }

    fn args(flags: &[&str]) -> ActivatorArgs {
        let mut all = vec!["rouse"];
        all.extend_from_slice(flags);
        Cli::try_parse_from(all).unwrap().a
    }

    #[test]
    fn knatives_ports_and_autoscaler_by_default() {
        let cfg = args(&["--pod-ip", "10.0.0.7", "--pod-name", "activator-x"])
            .config()
            .unwrap();
        assert_eq!(cfg.listen.0.port(), 8012);
        assert_eq!(cfg.listen_internal.unwrap().0.port(), 8013);
        let a = cfg.kubernetes.activator.unwrap();
        assert_eq!(a.pod_ip, Some([10, 0, 0, 7].into()));
        assert_eq!(a.queue.max_requests, 1000);
        let link = cfg.kubernetes.autoscaler.unwrap();
        assert_eq!(
            link.url,
            "ws://autoscaler.knative-serving.svc.cluster.local:8080"
        );
        assert_eq!(link.pod_name.as_deref(), Some("activator-x"));
    }

    #[test]
    fn bad_values_are_named_with_what_to_write() {
        let e = args(&["--max-held-bytes", "lots"])
            .config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("kubernetes.activator.queue.max_bytes"), "{e}");
        let e = args(&["--autoscaler", "http://x:8080"])
            .config()
            .unwrap_err()
            .to_string();
        assert!(e.contains("kubernetes.autoscaler.url"), "{e}");
        assert!(e.contains("ws://"), "{e}");
        let e = args(&["--drain-quiet", "soon"]).quiet().unwrap_err();
        assert!(e.contains("--drain-quiet") && e.contains("45s"), "{e}");
    }
}
