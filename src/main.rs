//! The `qail-daemon` binary: parse the command line, load the configuration, start logging,
//! run the daemon until SIGTERM or SIGINT; SIGHUP reloads the configuration file.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use qail_daemon::app::{Daemon, Reloader};
use qail_daemon::config::Config;

/// The daemon allocates and frees many small buffers per row and per statement; mimalloc
/// handles that pattern far better than the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// One daemon that owns this host's PostgreSQL connections and serves local processes over a
/// Unix socket.
#[derive(Parser)]
#[command(name = "qail-daemon", version, about, long_about = None)]
struct Cli {
    /// Configuration file (TOML). Every key can also be set through QAIL_* environment variables.
    #[arg(short, long, env = "QAIL_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate the configuration and print the effective settings with secrets redacted.
    CheckConfig,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env: HashMap<String, String> = std::env::vars().collect();
    let config = match Config::load(cli.config.as_deref(), &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("qail-daemon: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            print!("{}", config.to_redacted_toml());
            eprintln!("qail-daemon: configuration is valid");
            ExitCode::SUCCESS
        }
        Command::Run => run(config, cli.config, env),
    }
}

fn run(config: Config, path: Option<PathBuf>, env: HashMap<String, String>) -> ExitCode {
    qail_daemon::telemetry::init(&config.log);
    raise_open_file_limit();
    let mut builder = match config.runtime.worker_threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            if n > 1 {
                b.worker_threads(n);
            }
            b
        }
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("qail-daemon: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let daemon = match Daemon::bind(config).await {
            Ok(d) => d.with_config_file(path, env),
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let reloads = tokio::spawn(reload_on_sighup(daemon.reloader()));
        let result = daemon.run(shutdown_signal()).await;
        reloads.abort();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Reloads the configuration on every SIGHUP, for as long as the daemon runs.
async fn reload_on_sighup(reloader: Reloader) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload through the admin port only");
            return;
        }
    };
    while hup.recv().await.is_some() {
        tracing::info!("SIGHUP received: reloading the configuration");
        if let Err(e) = reloader.reload().await {
            tracing::error!(error = %e, "reload failed; the running configuration is unchanged");
        }
    }
}

/// Every client is a file descriptor: raise the soft limit to the hard one (often 1024 → much
/// more), so thousands of clients do not need `ulimit -n` in front of the daemon.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::debug!(from = soft, to = hard, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, soft, "cannot raise the open-file limit"),
        },
        Ok((soft, _)) => tracing::debug!(limit = soft, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-file limit"),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
