//! The `rouse` command: parses the CLI, sets up logging and runs a role until a signal.

use anyhow::Context;
use clap::{Parser, Subcommand};
use rouse::config::Config;
use rouse::config::reload::Overrides;
use rouse::roles::gateway::Gateway;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

#[derive(Parser)]
#[command(
    name = "rouse",
    version,
    about = "Concurrency-aware reverse proxy and activator for scale-to-zero workloads"
)]
struct Cli {
    /// How log lines are written: `text` (coloured only on a terminal, and not with NO_COLOR)
    /// or `json` (one object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ROUSE_LOG_FORMAT")]
    log_format: LogFormat,
    /// Threads that serve client connections, each with a runtime of its own; a connection,
    /// its requests and their upstream connections stay on the thread that took it. Default:
    /// one per CPU available to the process. With 1, one thread runs everything.
    #[arg(long, global = true, value_name = "N", env = "ROUSE_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    workers: Option<u16>,
    /// Serve on tokio's work-stealing runtime instead, whose threads share all tasks: one
    /// connection's HTTP/2 streams can then use every CPU. For loads that arrive over a few
    /// HTTP/2 connections; the per-thread workers cost less per request.
    #[arg(
        long,
        global = true,
        env = "ROUSE_WORK_STEALING",
        conflicts_with = "workers"
    )]
    work_stealing: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// A config file, given bare or with `--config`.
#[derive(clap::Args)]
struct ConfigFile {
    /// Path of the YAML config.
    #[arg(value_name = "FILE", conflicts_with = "config")]
    file: Option<PathBuf>,
    /// Path of the YAML config (the same as giving it bare).
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
}

impl ConfigFile {
    fn path(self) -> Option<PathBuf> {
        self.file.or(self.config)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway described by a YAML config file (without one: the built-in demo).
    #[command(alias = "run")]
    Gateway {
        /// The YAML config (omit it to run the demo in config/demo.yaml).
        #[command(flatten)]
        config: ConfigFile,
        /// Serve on this address instead of the config's `listen`, e.g. 127.0.0.1:8081.
        #[arg(long, value_name = "ADDR", value_parser = rouse::config::parse_addr)]
        listen: Option<SocketAddr>,
        /// Serve the admin endpoints (status page, metrics) here instead of the config's
        /// `admin`.
        #[arg(long, value_name = "ADDR", value_parser = rouse::config::parse_addr)]
        admin: Option<SocketAddr>,
    },
    /// Run beside one app container as Knative's queue-proxy does, configured by the same
    /// environment variables (or the flags below).
    Sidecar(Box<rouse::knative::env::SidecarArgs>),
    /// Take the place of Knative's activator: hold requests for revisions at zero, report
    /// their demand to Knative's autoscaler, and send them on to the pods once they are up;
    /// configured by Knative's environment (or the flags below).
    #[cfg(feature = "kubernetes")]
    Activator(Box<rouse::roles::activator::ActivatorArgs>),
    /// Add the rouse sidecar to the workloads of Kubernetes manifests (YAML on stdin or from
    /// a file, to stdout), with the app's readiness probe moved to it as Knative does.
    #[cfg(feature = "kubernetes")]
    Inject {
        /// Manifests to read; `-` or nothing for stdin.
        #[arg(short = 'f', long = "filename", default_value = "-")]
        file: PathBuf,
        /// The rouse image for the sidecar.
        #[arg(long, default_value = concat!("rouse:", env!("CARGO_PKG_VERSION")))]
        image: String,
        /// Most requests one pod handles at once; 0 for no limit (annotation
        /// rouse.dev/container-concurrency overrides).
        #[arg(long, default_value_t = 0)]
        container_concurrency: u32,
        /// Total time per request in seconds, 0 for none (annotation rouse.dev/timeout-seconds
        /// overrides).
        #[arg(long, default_value_t = 300)]
        revision_timeout_seconds: u32,
        /// The app container; default the first (annotation rouse.dev/container overrides).
        #[arg(long)]
        container: Option<String>,
    },
    /// Check a config file and exit: 0 if valid, 1 with every problem and its key path if not.
    Validate {
        #[command(flatten)]
        config: ConfigFile,
    },
    /// Print the route table (hosts, paths, splits, revisions) of a config file, or of a
    /// running rouse asked at its admin address.
    Routes {
        #[command(flatten)]
        config: ConfigFile,
        /// Ask the rouse running with this admin address, e.g. 127.0.0.1:9901 (it includes
        /// routes from Kubernetes).
        #[arg(long, value_name = "ADDR", conflicts_with_all = ["file", "config"])]
        admin: Option<String>,
    },
}

fn init_logging(format: LogFormat) {
    // RUST_LOG takes the same `target=level,...` form as env_logger, without regexes; in a
    // Knative pod, SERVING_LOGGING_LEVEL (debug, info, warn, error) is the fallback.
    let filter: Targets = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("SERVING_LOGGING_LEVEL"))
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| "info".parse().expect("static filter parses"));
    let layer = tracing_subscriber::fmt::layer().with_target(false);
    let layer = match format {
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
        LogFormat::Text => {
            use std::io::IsTerminal;
            let colour = std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            layer.with_ansi(colour).boxed()
        }
    };
    tracing_subscriber::registry()
        .with(layer)
        .with(filter)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let process = Process {
        log: cli.log_format,
        workers: cli.workers,
        work_stealing: cli.work_stealing,
    };
    match cli.command {
        Command::Validate { config } => {
            let Some(config) = config.path() else {
                eprintln!("rouse validate: give the config file to check: rouse validate FILE");
                return ExitCode::from(2);
            };
            validate(&config)
        }
        Command::Routes { config, admin } => routes(config.path(), admin.as_deref()),
        Command::Sidecar(args) => {
            let settings = match args.settings() {
                Ok(s) => s,
                Err(e) => {
                    eprint!("rouse sidecar: {e}");
                    return ExitCode::FAILURE;
                }
            };
            serve(process, "rouse sidecar", sidecar(settings))
        }
        Command::Gateway {
            config,
            listen,
            admin,
        } => serve(
            process,
            "rouse",
            gateway(config.path(), Overrides { listen, admin }),
        ),
        #[cfg(feature = "kubernetes")]
        Command::Activator(args) => {
            let (cfg, quiet) = match (args.config(), args.quiet()) {
                (Ok(c), Ok(q)) => (c, q),
                (Err(e), _) => {
                    eprintln!("rouse activator: {e}");
                    return ExitCode::FAILURE;
                }
                (_, Err(e)) => {
                    eprintln!("rouse activator: {e}");
                    return ExitCode::FAILURE;
                }
            };
            serve(process, "rouse activator", activator(cfg, quiet))
        }
        #[cfg(feature = "kubernetes")]
        Command::Inject {
            file,
            image,
            container_concurrency,
            revision_timeout_seconds,
            container,
        } => inject(
            &file,
            &rouse::kubernetes::inject::Options {
                image,
                container_concurrency,
                timeout_seconds: revision_timeout_seconds,
                container,
            },
        ),
    }
}

/// `rouse validate`: every problem with its key path, or a one-line summary.
fn validate(path: &std::path::Path) -> ExitCode {
    match Config::load(path).and_then(|cfg| {
        cfg.check_tls_files()?;
        Ok(cfg)
    }) {
        Ok(cfg) => {
            let revisions: usize = cfg.services.iter().map(|s| s.revisions.len()).sum();
            println!(
                "{}: valid ({}, {})",
                path.display(),
                plural(cfg.services.len(), "service"),
                plural(revisions, "revision")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::FAILURE
        }
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `rouse routes`: the route table of a file, or of a running rouse.
fn routes(file: Option<PathBuf>, admin: Option<&str>) -> ExitCode {
    use rouse::admin::status::{ServiceView, print_routes, routes};
    let services: Result<Vec<ServiceView>, String> = match (file, admin) {
        (Some(path), _) => Config::load(&path)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|cfg| {
                rouse::proxy::router::RouteTable::build(
                    &cfg,
                    &std::sync::Arc::new(rouse::metrics::Metrics::new()),
                    None,
                )
                .map_err(|e| format!("{}: {e}", path.display()))
            })
            .map(|t| routes(&t)),
        (None, Some(addr)) => fetch_routes(addr),
        (None, None) => {
            eprintln!(
                "rouse routes: give a config file (rouse routes FILE), or the admin address of a \
                 running rouse (rouse routes --admin 127.0.0.1:9901)"
            );
            return ExitCode::from(2);
        }
    };
    match services {
        Ok(s) => {
            print!("{}", print_routes(&s));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rouse routes: {e}");
            ExitCode::FAILURE
        }
    }
}

/// GET `/api/routes` from a running rouse's admin listener: one short HTTP/1.0 exchange.
fn fetch_routes(addr: &str) -> Result<Vec<rouse::admin::status::ServiceView>, String> {
    use std::io::{Read, Write};
    let fail = |e: &dyn std::fmt::Display| {
        format!(
            "cannot ask the rouse at {addr}: {e}; is it running, and is {addr} its `admin` address?"
        )
    };
    let mut s = std::net::TcpStream::connect(addr).map_err(|e| fail(&e))?;
    let timeout = Some(std::time::Duration::from_secs(5));
    s.set_read_timeout(timeout).map_err(|e| fail(&e))?;
    write!(s, "GET /api/routes HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| fail(&e))?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| fail(&e))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail(&"no HTTP answer"))?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        let status = head.lines().next().unwrap_or_default();
        return Err(fail(&format_args!(
            "it answered {status:?} (a rouse older than this one, or not rouse)"
        )));
    }
    serde_json::from_str(body).map_err(|e| fail(&format_args!("unreadable answer: {e}")))
}

/// `rouse inject`: manifests in, manifests with the sidecar out; what was done on stderr.
#[cfg(feature = "kubernetes")]
fn inject(file: &std::path::Path, opts: &rouse::kubernetes::inject::Options) -> ExitCode {
    use std::io::Read;
    let mut input = String::new();
    let read = if file.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut input).map(|_| ())
    } else {
        std::fs::read_to_string(file).map(|s| input = s)
    };
    if let Err(e) = read {
        eprintln!("rouse inject: cannot read {}: {e}", file.display());
        return ExitCode::FAILURE;
    }
    match rouse::kubernetes::inject::inject(&input, opts) {
        Ok((out, report)) => {
            print!("{out}");
            for line in report {
                eprintln!("rouse inject: {line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rouse inject: {e}; nothing was written");
            ExitCode::FAILURE
        }
    }
}

/// How the process runs a role: its log format and its threads.
struct Process {
    log: LogFormat,
    workers: Option<u16>,
    work_stealing: bool,
}

/// Runs a role until it stops: logging, the open-file limit, the runtime, and the exit status.
fn serve(p: Process, label: &str, role: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    init_logging(p.log);
    raise_fd_limit();
    match runtime(&p).and_then(|rt| rt.block_on(role)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{label}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The demo served when `gateway` gets no config file.
const DEMO: &str = include_str!("../config/demo.yaml");

/// Every held or proxied request holds one or two sockets; the usual soft limit of 1024 would
/// cap rouse far below its queue bounds, so raise it to the hard limit.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
    }
}

/// The role's runtime. One worker (one CPU available, as for a pinned sidecar or a 1-CPU
/// container, or `--workers 1`): a single-threaded runtime that does everything. More: the
/// role's control work on a single-threaded runtime here, and the client connections on that
/// many worker threads ([`rouse::workers`]), installed before the role makes its listeners.
/// `--work-stealing`: tokio's shared scheduler, one thread per CPU.
fn runtime(p: &Process) -> anyhow::Result<tokio::runtime::Runtime> {
    if p.work_stealing {
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime");
    }
    let n = match p.workers {
        Some(n) => usize::from(n),
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    if n > 1 {
        let workers =
            rouse::workers::Workers::start(n).context("cannot start the worker threads")?;
        if rouse::workers::install(workers).is_err() {
            anyhow::bail!("worker threads were started twice");
        }
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn gateway(path: Option<PathBuf>, overrides: Overrides) -> anyhow::Result<()> {
    let mut cfg = match &path {
        Some(p) => Config::load(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        None => {
            tracing::info!("no --config given: serving the built-in demo (config/demo.yaml)");
            Config::parse(DEMO).map_err(|e| anyhow::anyhow!("built-in demo: {e}"))?
        }
    };
    overrides.apply(&mut cfg);
    let watch_every = cfg.watch_interval.0;
    let signals = Signals::take()?;
    let gw = Gateway::start(cfg)
        .await
        .context("cannot start the gateway listeners")?;
    let reloader = path
        .as_deref()
        .map(|p| gw.reloader_with(p, overrides.clone()));
    let watcher = reloader
        .clone()
        .filter(|_| !watch_every.is_zero())
        .map(|r| tokio::spawn(r.watch(watch_every)));
    wait_for_stop(signals, reloader.as_ref()).await?;
    tracing::info!("shutting down: draining in-flight requests");
    // Shutdown waits for a reload in progress and blocks new ones; only then is the watcher
    // stopped, so it is never cancelled in the middle of starting or stopping scalers.
    let report = gw.shutdown().await;
    if let Some(w) = watcher {
        w.abort();
    }
    tracing::info!(?report, "stopped");
    Ok(())
}

/// `rouse activator`: the gateway with Knative's activator contract; on SIGTERM, health
/// checks fail for `quiet` while everything is still served, then it drains.
#[cfg(feature = "kubernetes")]
async fn activator(cfg: Config, quiet: std::time::Duration) -> anyhow::Result<()> {
    let signals = Signals::take()?;
    let gw = Gateway::start(cfg)
        .await
        .context("cannot start the activator's listeners")?;
    wait_for_stop(signals, None).await?;
    tracing::info!(quiet = ?quiet, "draining: health checks now fail; still serving");
    gw.begin_drain();
    tokio::time::sleep(quiet).await;
    let report = gw.shutdown().await;
    tracing::info!(?report, "stopped");
    Ok(())
}

async fn sidecar(settings: rouse::knative::env::SidecarSettings) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let sc = rouse::roles::sidecar::Sidecar::start(settings)
        .await
        .context("cannot start the sidecar listeners")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("draining: probes now fail; serving until traffic stops");
    let out = sc.shutdown().await;
    tracing::info!(
        took_ms = out.took.as_millis() as u64,
        active_left = out.active_left,
        "drained"
    );
    Ok(())
}

/// The signals a running role answers, taken before it listens: a SIGHUP that arrives as the
/// first requests are served must reload, not end the process (the default action).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn take() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }
}

/// Waits for SIGTERM or SIGINT; SIGHUP reloads the config file meanwhile.
async fn wait_for_stop(
    signals: Signals,
    reloader: Option<&rouse::roles::gateway::Reloader>,
) -> anyhow::Result<()> {
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;
    loop {
        tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = int.recv() => return Ok(()),
            // Reloading runs on its own task: one that restarts a scaler can take as long as a
            // backend's stop_grace, and SIGTERM must not wait for it.
            _ = hup.recv() => match reloader {
                Some(r) => {
                    let r = r.clone();
                    tokio::spawn(async move { r.reload().await });
                }
                None => tracing::warn!("SIGHUP ignored: the built-in demo has no file to reload"),
            },
        }
    }
}
