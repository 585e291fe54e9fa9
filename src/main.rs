//! The `pushgate` binary: parses the command line, loads configuration, sets
//! up logging and runs the chosen component. All logic lives in the crates.

mod adapters;
mod cli;
mod cluster;
mod config;
mod net;
mod secrets;
mod signal;
mod standalone;
mod tls;

use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, LogFormat, TokenArgs};

// The allocator is the system's unless built with `--features mimalloc`.
// Measured on 15,000 idle authenticated WebSocket connections (see
// bench/results/): glibc malloc held about 3.3 KB of RSS per connection
// and mimalloc 5.6 to 6.6 KB (memory freed after each handshake stays
// reserved per thread), at the same push latency and CPU. Memory per
// connection is what limits a room, so the default follows the measurement.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

fn token(args: TokenArgs) -> ExitCode {
    let (file_secret, file_data) = match args.config.as_deref().map(config::token_settings) {
        None => (None, None),
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            eprintln!("pushgate token: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let secret = match args.token_secret.or(file_secret) {
        Some(s) => s,
        None => {
            let path = args
                .data
                .or(file_data)
                .unwrap_or_else(|| "data".into())
                .join("token_secret");
            match std::fs::read_to_string(&path) {
                Ok(s) => s.trim().to_owned(),
                Err(e) => {
                    eprintln!(
                        "pushgate token: no --token-secret given and cannot read {}: {e}\n\
                         (run `pushgate` once to generate one, or pass --token-secret)",
                        path.display()
                    );
                    return ExitCode::from(EXIT_USAGE);
                }
            }
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = proto::token::Claims {
        sub: args.user,
        exp: now + args.ttl,
        dev: args.device,
        channels: args.channels,
    };
    match proto::token::mint(&claims, secret.as_bytes()) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("pushgate token: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are answers, not errors; any other parse
            // failure is a usage error (EX_USAGE), like a bad config file.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let args = match cli.command {
        Some(Command::Token(t)) => return token(t),
        Some(Command::Standalone(a)) => *a,
        None => cli.standalone,
        Some(Command::Room(a)) => {
            // A certificate that does not load is a configuration error.
            if let Err(e) = tls::given(a.tls_cert.clone(), a.tls_key.clone()) {
                eprintln!("pushgate room: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
            net::init(a.common.net.settings());
            return run_node(a.common.log_format, cluster::run_room(*a));
        }
        Some(Command::Center(a)) => {
            net::init(a.common.net.settings());
            return run_node(a.common.log_format, cluster::run_center(*a));
        }
        Some(Command::Register(a)) => {
            net::init(a.common.net.settings());
            return run_node(a.common.log_format, cluster::run_register(a));
        }
        Some(Command::Saver(a)) => {
            net::init(a.common.net.settings());
            return run_node(a.common.log_format, cluster::run_saver(a));
        }
        Some(Command::Idgen(a)) => {
            net::init(a.common.net.settings());
            return run_node(a.common.log_format, cluster::run_idgen(a));
        }
        Some(Command::DevCluster(a)) => {
            return run_node(a.log_format, cluster::dev::run(a));
        }
    };
    let cfg = match config::Config::load(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pushgate: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    net::init(cfg.net);
    run_node(cfg.log_format, standalone::run(cfg))
}

/// Sets up logging and the runtime, and runs one component to its end.
fn run_node(
    log: LogFormat,
    main: impl std::future::Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    init_tracing(log);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
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
