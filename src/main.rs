//! The `rouse` command: parses the CLI, sets up logging and runs a role until a signal.

use anyhow::Context;
use clap::{Parser, Subcommand};
use rouse::config::Config;
use rouse::roles::gateway::Gateway;
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
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the gateway described by a YAML config file (without one: the built-in demo).
    #[command(alias = "run")]
    Gateway {
        /// Path of the YAML config; omit it to run the demo in config/demo.yaml.
        #[arg(short, long)]
        config: Option<PathBuf>,
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
        /// Path of the YAML config.
        #[arg(short, long)]
        config: PathBuf,
    },
}

fn init_logging() {
    // RUST_LOG takes the same `target=level,...` form as env_logger, without regexes; in a
    // Knative pod, SERVING_LOGGING_LEVEL (debug, info, warn, error) is the fallback.
    let filter: Targets = std::env::var("RUST_LOG")
        .or_else(|_| std::env::var("SERVING_LOGGING_LEVEL"))
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| "info".parse().expect("static filter parses"));
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_target(false))
        .with(filter)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => match Config::load(&config).and_then(|cfg| {
            cfg.check_tls_files()?;
            Ok(cfg)
        }) {
            Ok(cfg) => {
                println!(
                    "{}: valid ({} services, {} revisions)",
                    config.display(),
                    cfg.services.len(),
                    cfg.services
                        .iter()
                        .map(|s| s.revisions.len())
                        .sum::<usize>()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", config.display());
                ExitCode::FAILURE
            }
        },
        Command::Sidecar(args) => {
            let settings = match args.settings() {
                Ok(s) => s,
                Err(e) => {
                    eprint!("rouse sidecar: {e}");
                    return ExitCode::FAILURE;
                }
            };
            serve("rouse sidecar", sidecar(settings))
        }
        Command::Gateway { config } => serve("rouse", gateway(config)),
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
            serve("rouse activator", activator(cfg, quiet))
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

/// Runs a role until it stops: logging, the open-file limit, the runtime, and the exit status.
fn serve(label: &str, role: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    init_logging();
    raise_fd_limit();
    match runtime().and_then(|rt| rt.block_on(role)) {
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

/// One CPU available (a pinned sidecar, a 1-CPU container): a single-threaded runtime, which
/// skips the work-stealing scheduler's cross-thread bookkeeping; otherwise one worker per CPU.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut b = if cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    b.enable_all()
        .build()
        .context("cannot start the async runtime")
}

async fn gateway(path: Option<PathBuf>) -> anyhow::Result<()> {
    let cfg = match &path {
        Some(p) => Config::load(p).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        None => {
            tracing::info!("no --config given: serving the built-in demo (config/demo.yaml)");
            Config::parse(DEMO).map_err(|e| anyhow::anyhow!("built-in demo: {e}"))?
        }
    };
    let watch_every = cfg.watch_interval.0;
    let gw = Gateway::start(cfg)
        .await
        .context("cannot start the gateway listeners")?;
    let reloader = path.as_deref().map(|p| gw.reloader(p));
    let watcher = reloader
        .clone()
        .filter(|_| !watch_every.is_zero())
        .map(|r| tokio::spawn(r.watch(watch_every)));
    wait_for_stop(reloader.as_ref()).await?;
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
    let gw = Gateway::start(cfg)
        .await
        .context("cannot start the activator's listeners")?;
    wait_for_stop(None).await?;
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

/// Waits for SIGTERM or SIGINT; SIGHUP reloads the config file meanwhile.
async fn wait_for_stop(reloader: Option<&rouse::roles::gateway::Reloader>) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?;
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
