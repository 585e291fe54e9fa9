//! `pushgate token`: a client token (JWT, HS256) for development.

use std::process::ExitCode;

use clap::CommandFactory;

use crate::settings::{Cli, FileValues, TokenArgs};

/// Prints a token for `args.user`, signed with the given secret, the
/// config file's, or the one kept in the data directory.
pub(crate) fn run(args: TokenArgs) -> ExitCode {
    let (file_secret, file_data) = match args.config.as_deref().map(file_settings) {
        None => (None, None),
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            eprintln!("pushgate token: {e}");
            return ExitCode::from(crate::EXIT_USAGE);
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
                    return ExitCode::from(crate::EXIT_USAGE);
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
        send: args.no_send.then_some(false),
        publish: args.publish,
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

/// `token_secret` and `data` of a standalone config file (whose other keys
/// are checked too: it is the file the server reads).
fn file_settings(
    path: &std::path::Path,
) -> Result<(Option<String>, Option<std::path::PathBuf>), crate::settings::ConfigError> {
    let file = FileValues::read(path)?;
    let standalone = Cli::command();
    let secret = file.get(&standalone, "token_secret")?;
    let data = file.get(&standalone, "data")?.map(Into::into);
    Ok((secret, data))
}
