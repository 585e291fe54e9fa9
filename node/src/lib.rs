//! pushgate's wiring: everything the `pushgate` binary does between the
//! command line and the service crates. Layers, top down:
//!
//! - [`main`]: parse the settings, set up logging and the runtime, run one
//!   component;
//! - `standalone`, `cluster::{room, center, services}`, `dev`: one process
//!   each, composed of the nodes below;
//! - `room_node::RoomNode` (a room with its client listeners),
//!   `api::ApiNode` (the REST API's HTTP server), `health::Health`,
//!   `cluster::membership` (the room's half of the lease protocol);
//! - `settings` (every flag, declared once per component), `backend`,
//!   `local_rooms` and `room_directory` (in-process glue), `net`, `tls`, `secrets`, `signal`.

mod api;
mod backend;
mod cluster;
mod dev;
mod events;
mod health;
mod jwks;
mod known;
mod local_rooms;
mod messages;
mod net;
mod presence;
mod room_directory;
mod room_node;
mod secrets;
mod settings;
mod signal;
mod standalone;
mod tls;
mod token;

use std::process::ExitCode;

use settings::{Cli, Command, LogFormat, ParseError};

/// `EX_USAGE`: the configuration cannot be used.
const EXIT_USAGE: u8 = 64;

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PUSHGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Parses the command line and runs the chosen component to its end: the
/// whole of the `pushgate` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ParseError::Clap(e)) => {
            // Help and version are answers, not errors; any other parse
            // failure is a usage error (EX_USAGE), like a bad config file.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
        Err(ParseError::File(e)) => {
            eprintln!("pushgate: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let args = match cli.command {
        Some(Command::Token(t)) => return token::run(t),
        Some(Command::Standalone(a)) => *a,
        None => cli.standalone,
        Some(Command::Room(a)) => {
            // A certificate that does not load is a configuration error.
            if let Err(e) = tls::given(a.room.tls_cert.clone(), a.room.tls_key.clone()) {
                eprintln!("pushgate room: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
            // So do token keys that do not load.
            if let Err(e) = a.room.token_keys() {
                eprintln!("pushgate room: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
            let process = a.common.process.clone();
            return run_node(&process, cluster::room::run(*a));
        }
        Some(Command::Center(a)) => {
            let process = a.common.process.clone();
            return run_node(&process, cluster::center::run(*a));
        }
        Some(Command::Register(a)) => {
            let process = a.common.process.clone();
            return run_node(&process, cluster::services::run_register(a));
        }
        Some(Command::Saver(a)) => {
            let process = a.common.process.clone();
            return run_node(&process, cluster::services::run_saver(a));
        }
        Some(Command::Idgen(a)) => {
            let process = a.common.process.clone();
            return run_node(&process, cluster::services::run_idgen(a));
        }
        Some(Command::DevCluster(a)) => {
            init_tracing(a.log_format);
            return run_runtime(dev::run(a));
        }
    };
    if let Err(e) = tls::given(args.room.tls_cert.clone(), args.room.tls_key.clone()) {
        eprintln!("pushgate: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    if let Err(e) = args.room.token_keys() {
        eprintln!("pushgate: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    run_node(&args.process.clone(), standalone::run(args))
}

/// Sets the process's network settings and logging, then runs one
/// component on a fresh runtime.
fn run_node(
    process: &settings::process::ProcessArgs,
    main: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    net::init(process.net.settings());
    init_tracing(process.log_format);
    run_runtime_on(process.worker_threads, main)
}

/// Runs `main` to its end on a runtime with one worker per core.
fn run_runtime(main: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    run_runtime_on(0, main)
}

/// Runs `main` to its end on a runtime with `workers` worker threads: 0 is
/// one per core, 1 is a current-thread runtime (every task, timer and
/// socket of the process on the thread that runs `main`, so no wake-up is
/// handed from one worker to another).
fn run_runtime_on(
    workers: usize,
    main: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    let built = match workers {
        0 => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pushgate: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("pushgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}
