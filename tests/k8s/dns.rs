//! The cluster's DNS, as far as the tests need it: A records for
//! `<service>.<namespace>.svc.cluster.local`, answered from the API server. A Service's name
//! resolves to the first ready address of its EndpointSlices (there is no kube-proxy to
//! carry a ClusterIP), an `ExternalName` Service to whatever its external name resolves to.
//! Every other name is NXDOMAIN. Pods with a network of their own use it (the local node
//! writes its address into their resolv.conf); Knative's httpproxy test image finds
//! cluster-local Ingress hosts through it.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, Client};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use tokio::net::UdpSocket;

const SUFFIX: &str = ".svc.cluster.local";

/// The resolv.conf of a Pod in namespace-independent form (Knative's tests all run in
/// `serving-tests`, whose search entry comes first).
pub fn resolv_conf(server: Ipv4Addr) -> String {
    format!(
        "nameserver {server}\nsearch serving-tests.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    )
}

/// Answers queries on `addr` until the runtime ends.
pub async fn serve(client: Client, addr: SocketAddr) {
    let sock = Arc::new(UdpSocket::bind(addr).await.expect("binding the test DNS"));
    let mut buf = [0u8; 512];
    loop {
        let Ok((n, from)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let query = buf[..n].to_vec();
        let (sock, client) = (sock.clone(), client.clone());
        tokio::spawn(async move {
            if let Some(reply) = answer(&client, &query).await {
                let _ = sock.send_to(&reply, from).await;
            }
        });
    }
}

/// The reply to one query; `None` for what is not a query.
async fn answer(client: &Client, q: &[u8]) -> Option<Vec<u8>> {
    if q.len() < 12 || q[2] & 0x80 != 0 || u16::from_be_bytes([q[4], q[5]]) != 1 {
        return None;
    }
    // The question: labels, then type and class.
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(i)?);
        i += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(i..i + len)?).to_ascii_lowercase());
        i += len;
    }
    let qtype = u16::from_be_bytes([*q.get(i)?, *q.get(i + 1)?]);
    let question = &q[12..i + 4];
    let found = resolve(client, &labels.join("."), 0).await;
    let mut r = Vec::with_capacity(64);
    r.extend_from_slice(&q[..2]);
    // A response, recursion desired and available; NXDOMAIN for a name that does not exist.
    let rcode = if found.is_some() { 0 } else { 3 };
    r.extend_from_slice(&[0x81, 0x80 | rcode]);
    let answers = match (found, qtype) {
        (Some(Some(ip)), 1) => vec![ip],
        _ => Vec::new(),
    };
    r.extend_from_slice(&1u16.to_be_bytes());
    r.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    r.extend_from_slice(&[0, 0, 0, 0]);
    r.extend_from_slice(question);
    for ip in answers {
        // The name by pointer to the question, type A, class IN, TTL 1 s, four bytes.
        r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}

/// `None`: no such name. `Some(None)`: the name exists but has no address now.
async fn resolve(client: &Client, name: &str, depth: u8) -> Option<Option<Ipv4Addr>> {
    let rest = name.trim_end_matches('.').strip_suffix(SUFFIX)?;
    let (svc, ns) = rest.split_once('.')?;
    if ns.contains('.') || depth > 4 {
        return None;
    }
    let s = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(svc)
        .await
        .ok()??;
    if let Some(ext) = s.spec.as_ref().and_then(|sp| sp.external_name.clone()) {
        return Box::pin(resolve(client, &ext, depth + 1)).await;
    }
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await
        .ok()?;
    let ip = slices
        .items
        .iter()
        .flat_map(|sl| sl.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| &e.addresses)
        .find_map(|a| a.parse().ok());
    Some(ip)
}
