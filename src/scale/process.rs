//! The process scaler: each endpoint is a local process started from the revision's command
//! with a free loopback port, probed until ready, and stopped (SIGTERM, then SIGKILL after a
//! grace period) when the revision scales down or rouse exits.
//!
//! One manager task per revision owns the set of instances; each instance has a task that owns
//! its child process and reports back (ready, failed to start, exited). Readiness is probed
//! every few milliseconds and reported the moment it passes, and the manager publishes the new
//! endpoint set immediately, which wakes held requests with no probe period in between.

use super::port_holder::{self, Holder};
use super::scaler::{Backoff, Scaler};
use crate::config::{self, Ready};
use crate::probe::Check;
use crate::revision::Revision;
use crate::revision::endpoint::Endpoint;
use http::HeaderValue;
use http::header::USER_AGENT;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{info, warn};

/// How often a booting process is probed: every millisecond at first, because many backends
/// are up within a few and the wait between the boot and the probe that sees it is pure
/// cold-start overhead; every 5 ms once the boot has taken longer than `PROBE_FAST_FOR`, so a
/// slow boot is not probed a thousand times a second.
const PROBE_FAST: Duration = Duration::from_millis(1);
const PROBE_FAST_FOR: Duration = Duration::from_millis(50);
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Longest a single probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);
/// How often a port found held by another process is looked at again.
const FOREIGN_EVERY: Duration = Duration::from_millis(100);
/// A process that exits sooner than this after becoming ready counts towards backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

/// Starts backends as local processes.
#[derive(Debug)]
pub struct ProcessScaler {
    desired: watch::Sender<u32>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ProcessScaler {
    /// Starts the manager task for `rev`.
    pub fn start(rev: Arc<Revision>, spec: &config::Process) -> ProcessScaler {
        let (desired, desired_rx) = watch::channel(0);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(manage(rev, Arc::new(spec.clone()), desired_rx, stop_rx));
        ProcessScaler {
            desired,
            stop,
            task: Mutex::new(Some(task)),
        }
    }
}

impl Scaler for ProcessScaler {
    fn scale(&self, desired: u32) {
        self.desired.send_replace(desired);
    }

    fn stop(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let _ = self.stop.send(true);
            let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(t) = task {
                let _ = t.await;
            }
        })
    }
}

enum Event {
    Ready {
        id: u64,
        boot: Duration,
    },
    Failed {
        id: u64,
        reason: String,
    },
    Exited {
        id: u64,
        reason: String,
    },
    /// The process exited before it was ready because another process took its port.
    PortTaken {
        id: u64,
        by: String,
    },
}

struct Instance {
    id: u64,
    addr: SocketAddr,
    ready_at: Option<Instant>,
    /// The live endpoint once published, so a stop can wait for its in-flight requests even
    /// after it has left the endpoint set.
    ep: Option<Arc<Endpoint>>,
    stop: Option<oneshot::Sender<Option<Arc<Endpoint>>>>,
    task: JoinHandle<()>,
}

async fn manage(
    rev: Arc<Revision>,
    spec: Arc<config::Process>,
    mut desired: watch::Receiver<u32>,
    mut stop: watch::Receiver<bool>,
) {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let mut live: Vec<Instance> = Vec::new();
    let mut stopping: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    let mut backoff = Backoff::new(spec.max_backoff.0);
    let mut retry_at: Option<Instant> = None;
    loop {
        // Reconcile the instance count with the wish.
        let want = *desired.borrow_and_update() as usize;
        let can_start = retry_at.is_none_or(|t| Instant::now() >= t);
        if live.len() < want && can_start {
            retry_at = None;
            rev.clear_failure();
            while live.len() < want {
                next_id += 1;
                match start_instance(next_id, &rev, &spec, events_tx.clone()) {
                    Ok(inst) => live.push(inst),
                    Err(reason) => {
                        warn!(service = %rev.service, revision = %rev.name, %reason, "cannot start backend");
                        let pause = backoff.fail();
                        if live.iter().all(|i| i.ready_at.is_none()) {
                            rev.fail_start(&reason, pause);
                        } else {
                            rev.metrics.start_failure();
                        }
                        retry_at = Some(Instant::now() + pause);
                        break;
                    }
                }
            }
        }
        if live.len() > want {
            // Booting instances go first (nothing is using them), then the newest ready ones.
            live.sort_by_key(|i| (i.ready_at.is_none(), i.ready_at));
            let victims: Vec<Instance> = live.drain(want..).collect();
            publish(&rev, &mut live);
            for mut v in victims {
                if let Some(tx) = v.stop.take() {
                    let _ = tx.send(v.ep.take());
                }
                stopping.push(v.task);
            }
        }
        stopping.retain(|t| !t.is_finished());
        tokio::select! {
            r = stop.changed() => if r.is_err() || *stop.borrow() { break },
            r = desired.changed() => if r.is_err() { break },
            () = crate::clock::sleep_until_opt(retry_at) => {}
            Some(ev) = events.recv() => match ev {
                Event::Ready { id, boot } => {
                    if let Some(i) = live.iter_mut().find(|i| i.id == id) {
                        i.ready_at = Some(Instant::now());
                        info!(service = %rev.service, revision = %rev.name, addr = %i.addr,
                            "backend ready after {} ms", boot.as_millis());
                    }
                    backoff.reset();
                    rev.clear_failure();
                    publish(&rev, &mut live);
                }
                Event::Failed { id, reason } => {
                    forget_grpc(&rev, &live, id);
                    live.retain(|i| i.id != id);
                    let pause = backoff.fail();
                    warn!(service = %rev.service, revision = %rev.name, %reason,
                        "backend failed to start; next attempt in {} ms", pause.as_millis());
                    retry_at = Some(Instant::now() + pause);
                    if live.iter().all(|i| i.ready_at.is_none()) {
                        rev.fail_start(&reason, pause);
                    } else {
                        rev.metrics.start_failure();
                    }
                    publish(&rev, &mut live);
                }
                Event::PortTaken { id, by } => {
                    // No failure and no backoff: the next pass of the loop starts it again,
                    // on a port picked afresh.
                    forget_grpc(&rev, &live, id);
                    live.retain(|i| i.id != id);
                    warn!(service = %rev.service, revision = %rev.name, holder = %by,
                        "backend could not listen: its port was taken by another process; starting it on another port");
                }
                Event::Exited { id, reason } => {
                    let short_lived = live
                        .iter()
                        .find(|i| i.id == id)
                        .and_then(|i| i.ready_at)
                        .is_some_and(|t| t.elapsed() < STABLE_AFTER);
                    forget_grpc(&rev, &live, id);
                    live.retain(|i| i.id != id);
                    warn!(service = %rev.service, revision = %rev.name, %reason, "backend exited");
                    publish(&rev, &mut live);
                    if short_lived {
                        retry_at = Some(Instant::now() + backoff.fail());
                    }
                }
            },
        }
    }
    // Shutdown: take every endpoint out (unless the revision has meanwhile been given static
    // endpoints by a reload), then stop all processes together, each after its in-flight
    // requests finish.
    if rev.is_managed() {
        rev.set_endpoint_addrs(&[]);
    }
    for mut i in live {
        if let Some(tx) = i.stop.take() {
            let _ = tx.send(i.ep.take());
        }
        stopping.push(i.task);
    }
    for t in stopping {
        let _ = t.await;
    }
}

/// Makes the ready instances the revision's endpoints, and remembers each one's live
/// endpoint for a later graceful stop.
fn publish(rev: &Revision, live: &mut [Instance]) {
    if !rev.is_managed() {
        // A reload made the revision static while this scaler winds down: its endpoints now
        // come from the file.
        return;
    }
    let ready: Vec<SocketAddr> = live
        .iter()
        .filter(|i| i.ready_at.is_some())
        .map(|i| i.addr)
        .collect();
    rev.set_endpoint_addrs(&ready);
    let eps = rev.endpoints();
    for i in live.iter_mut().filter(|i| i.ready_at.is_some()) {
        i.ep = eps.iter().find(|e| e.addr == i.addr).cloned();
    }
}

/// The instance `id` is gone: so is its gRPC port.
fn forget_grpc(rev: &Revision, live: &[Instance], id: u64) {
    if let Some(i) = live.iter().find(|i| i.id == id) {
        rev.set_grpc_addr(i.addr, None);
    }
}

fn free_port() -> std::io::Result<u16> {
    // The kernel picks a free port; the small window until the child binds it is acceptable
    // on loopback, and a lost race shows up as a failed start that is retried. But the kernel
    // may hand the same port out again before the child has bound it, and two backends told
    // one port would answer each other's readiness checks (one that never starts looks
    // ready): ports given out lately are not given out again.
    static RECENT: std::sync::Mutex<std::collections::VecDeque<u16>> =
        std::sync::Mutex::new(std::collections::VecDeque::new());
    const KEPT: usize = 256;
    let mut recent = RECENT.lock().unwrap_or_else(|p| p.into_inner());
    let mut last = None;
    for _ in 0..32 {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        last = Some(port);
        if !recent.contains(&port) {
            break;
        }
    }
    let port = last.unwrap_or(0);
    if recent.len() == KEPT {
        recent.pop_front();
    }
    recent.push_back(port);
    Ok(port)
}

fn start_instance(
    id: u64,
    rev: &Arc<Revision>,
    spec: &Arc<config::Process>,
    events: mpsc::UnboundedSender<Event>,
) -> Result<Instance, String> {
    let port = free_port().map_err(|e| format!("no free port: {e}"))?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let p = port.to_string();
    // A backend that also serves gRPC on a port of its own (`grpc_port: 0`) is given one.
    let grpc = match rev.settings().grpc_port {
        Some(0) => Some(free_port().map_err(|e| format!("no free port: {e}"))?),
        _ => None,
    };
    let g = grpc.map(|g| g.to_string()).unwrap_or_default();
    let args: Vec<String> = spec
        .command
        .iter()
        .map(|a| a.replace("{port}", &p).replace("{grpc_port}", &g))
        .collect();
    let mut cmd = Command::new(&args[0]);
    if let Some(g) = grpc {
        cmd.env("GRPC_PORT", g.to_string());
        rev.set_grpc_addr(addr, Some(SocketAddr::from(([127, 0, 0, 1], g))));
    }
    cmd.args(&args[1..])
        .env("PORT", &p)
        .envs(&spec.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that stopping it reaches every process it forked.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &spec.cwd {
        cmd.current_dir(dir);
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", spec.command[0]))?;
    info!(service = %rev.service, revision = %rev.name, %addr, pid = child.id(), "starting backend");
    let (stop_tx, stop_rx) = oneshot::channel();
    let label = format!("{}/{}", rev.service, rev.name);
    let task = tokio::spawn(run_instance(
        id,
        addr,
        child,
        spec.clone(),
        label,
        events,
        stop_rx,
    ));
    Ok(Instance {
        id,
        addr,
        ready_at: None,
        ep: None,
        stop: Some(stop_tx),
        task,
    })
}

/// Owns one child process from start to exit.
async fn run_instance(
    id: u64,
    addr: SocketAddr,
    mut child: Child,
    spec: Arc<config::Process>,
    label: String,
    events: mpsc::UnboundedSender<Event>,
    mut stop: oneshot::Receiver<Option<Arc<Endpoint>>>,
) {
    let started = Instant::now();
    // Whatever road this task leaves by, the backend's workers go with it.
    let group = Group(
        child
            .id()
            .and_then(|p| i32::try_from(p).ok())
            .map(Pid::from_raw),
    );
    let last_err = Arc::new(Mutex::new(String::new()));
    forward_output(&mut child, &label, &last_err);
    let describe = |status: std::io::Result<std::process::ExitStatus>| {
        let last = last_err.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let status = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("unknown status ({e})"),
        };
        if last.is_empty() {
            status
        } else {
            format!("{status}; last stderr line: {last}")
        }
    };
    // Boot: probe until ready, unless the process exits, misses its deadline, or is stopped.
    // A probe answered by a listener outside the backend's process group is not the
    // backend's answer: its port was taken after rouse picked it.
    let deadline = started + spec.boot_timeout.0;
    let leader = group.0.and_then(|p| u32::try_from(p.as_raw()).ok());
    let mut foreign: Option<Holder> = None;
    let ready = async {
        loop {
            if probe(addr, &spec.ready).await {
                match held_by(addr.port(), leader).await {
                    Holder::Group | Holder::Unknown => return,
                    h => {
                        if foreign.is_none() {
                            warn!(backend = %label, %addr, holder = %h.describe(),
                                "the backend's port answers, but another process listens on it");
                        }
                        foreign = Some(h);
                        tokio::time::sleep(FOREIGN_EVERY).await;
                        continue;
                    }
                }
            }
            let every = if started.elapsed() < PROBE_FAST_FOR {
                PROBE_FAST
            } else {
                PROBE_EVERY
            };
            tokio::time::sleep(every).await;
        }
    };
    tokio::select! {
        () = ready => {
            let _ = events.send(Event::Ready { id, boot: started.elapsed() });
        }
        status = child.wait() => {
            // Let the output readers catch the last lines the process wrote.
            tokio::time::sleep(Duration::from_millis(20)).await;
            // A backend that could not listen because its port was taken meanwhile did
            // nothing wrong: it is started again on another port.
            if let h @ Holder::Foreign(_) = held_by(addr.port(), leader).await {
                let _ = events.send(Event::PortTaken { id, by: h.describe() });
                return;
            }
            let reason = format!("process exited before it was ready: {}", describe(status));
            let _ = events.send(Event::Failed { id, reason });
            return;
        }
        () = tokio::time::sleep_until(deadline) => {
            let reason = format!(
                "process was not ready within the {:?} boot timeout{}{}",
                spec.boot_timeout.0,
                match &foreign {
                    Some(h) => format!(
                        "; port {} is listened on by {}, outside the backend's process group \
                         (the command must listen on PORT itself, not hand it to another program)",
                        addr.port(),
                        h.describe()
                    ),
                    None => String::new(),
                },
                match last_err.lock().unwrap_or_else(|p| p.into_inner()).as_str() {
                    "" => String::new(),
                    l => format!("; last stderr line: {l}"),
                }
            );
            // Reported before the process is stopped, so held requests hear at once.
            let _ = events.send(Event::Failed { id, reason });
            terminate(&mut child, &group, spec.stop_grace.0).await;
            return;
        }
        _ = &mut stop => {
            terminate(&mut child, &group, spec.stop_grace.0).await;
            return;
        }
    }
    // Running: until it exits on its own or is told to stop.
    tokio::select! {
        status = child.wait() => {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = events.send(Event::Exited { id, reason: describe(status) });
        }
        ep = &mut stop => {
            // Already out of the endpoint set: let its in-flight requests finish first.
            if let Ok(Some(ep)) = ep {
                let until = Instant::now() + spec.stop_grace.0;
                while ep.in_flight() > 0 && Instant::now() < until {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            terminate(&mut child, &group, spec.stop_grace.0).await;
            info!(%addr, backend = %label, "backend stopped");
        }
    }
}

/// Who listens on `port`, read off the request path's threads. `leader` is the backend's
/// process group (its members may outlive the process rouse started).
async fn held_by(port: u16, leader: Option<u32>) -> Holder {
    let Some(leader) = leader else {
        return Holder::Unknown;
    };
    tokio::task::spawn_blocking(move || port_holder::holder(port, leader))
        .await
        .unwrap_or(Holder::Unknown)
}

/// A backend's process group: the process and every process it forked (a server's workers).
/// Dropping it kills what is left of the group, so a worker that ignores SIGTERM, or outlives
/// a parent that crashed, cannot keep running and holding the port.
struct Group(Option<Pid>);

impl Group {
    fn signal(&self, sig: Signal) {
        if let Some(pgid) = self.0 {
            // ESRCH once the group is gone is the expected end.
            let _ = killpg(pgid, sig);
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}

/// SIGTERM to the whole group, then SIGKILL to it if the process is still there after `grace`.
async fn terminate(child: &mut Child, group: &Group, grace: Duration) {
    group.signal(Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_ok() {
        return;
    }
    group.signal(Signal::SIGKILL);
    let _ = child.kill().await;
}

/// Sends the child's output to rouse's log, one line at a time, prefixed with the revision;
/// remembers the last stderr line for failure messages.
fn forward_output(child: &mut Child, label: &str, last_err: &Arc<Mutex<String>>) {
    if let Some(out) = child.stdout.take() {
        let label = label.to_owned();
        tokio::spawn(async move {
            let mut lines = BufReader::new(out).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                info!(target: "backend", backend = %label, "{line}");
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        let label = label.to_owned();
        let last = last_err.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(err).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if !line.trim().is_empty() {
                    *last.lock().unwrap_or_else(|p| p.into_inner()) = line.clone();
                }
                info!(target: "backend", backend = %label, stream = "stderr", "{line}");
            }
        });
    }
}

/// One readiness check.
async fn probe(addr: SocketAddr, how: &Ready) -> bool {
    let check = match how {
        Ready::Tcp => Check::Tcp(addr),
        // Any answer below 500 means the process is up and serving, even a 404 for a path
        // the backend does not have.
        Ready::HttpGet(path) => Check::Http {
            addr,
            host: addr.to_string(),
            path: path.clone(),
            headers: vec![(USER_AGENT, HeaderValue::from_static("rouse-probe"))],
            ready: 100..500,
        },
    };
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, check.once()).await,
        Ok(true)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server that answers every request with `status` and closes.
    async fn answering(status: u16) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = s.read(&mut buf).await;
                    let _ = s
                        .write_all(
                            format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_http_get_readiness_check_counts_any_answer_below_500() {
        let get = Ready::HttpGet("/healthz".to_owned());
        for (status, ready) in [
            (200, true),
            (301, true),
            (404, true),
            (500, false),
            (503, false),
        ] {
            assert_eq!(
                probe(answering(status).await, &get).await,
                ready,
                "{status}"
            );
        }
        // Nothing listening: not ready.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = l.local_addr().unwrap();
        drop(l);
        assert!(!probe(gone, &get).await);
        assert!(!probe(gone, &Ready::Tcp).await);
    }
}
