//! Settings: every subcommand's flags, declared once per component and
//! composed (see [`commands`]). Each flag also reads `PUSHGATE_<NAME>`, and
//! every server subcommand takes `--config FILE` (TOML, the same keys with
//! `_` for `-`); flags win over the environment, which wins over the file,
//! which wins over the defaults declared here. Values are checked by the
//! same parsers wherever they come from ([`file`]), before any port is bound.

pub(crate) mod center;
pub(crate) mod commands;
pub(crate) mod dev;
mod file;
pub(crate) mod process;
pub(crate) mod room;
pub(crate) mod store;
mod values;

use std::ffi::OsString;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};

pub(crate) use commands::{
    CenterArgs, IdgenArgs, RegisterArgs, RoomArgs, SaverArgs, StandaloneArgs, TokenArgs,
};
pub(crate) use dev::DevClusterArgs;
pub(crate) use file::{ConfigError, FileValues};
pub(crate) use process::LogFormat;

/// pushgate: a real-time push gateway.
#[derive(Debug, Parser)]
#[command(name = "pushgate", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Option<Command>,

    /// Flags of `standalone` (the default command).
    #[command(flatten)]
    pub(crate) standalone: StandaloneArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run everything in one process (the default).
    Standalone(Box<StandaloneArgs>),
    /// Print a client token (JWT, HS256) for development.
    Token(TokenArgs),
    /// Cluster: a connection server (clients connect here).
    Room(Box<RoomArgs>),
    /// Cluster: the REST API and push routing (stateless; run several).
    Center(Box<CenterArgs>),
    /// Cluster: a directory partition (who is connected where; live rooms).
    Register(RegisterArgs),
    /// Cluster: the store service (offline queues, channel history).
    Saver(SaverArgs),
    /// Cluster: an id generator region.
    Idgen(IdgenArgs),
    /// A whole cluster on this machine (Redis, registers, idgens, saver, centers, N rooms).
    DevCluster(DevClusterArgs),
}

/// Why the command line could not be used.
#[derive(Debug)]
pub(crate) enum ParseError {
    /// From clap: a bad flag or value, or `--help`/`--version` (an answer).
    Clap(clap::Error),
    /// The config file could not be read or holds a bad key or value.
    File(ConfigError),
}

impl Cli {
    /// Parses `argv`: flags, then the environment, then the `--config`
    /// file, then the defaults.
    ///
    /// # Errors
    /// [`ParseError`] naming the flag, variable or file key at fault.
    pub(crate) fn parse_from<I, T>(argv: I) -> Result<Cli, ParseError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
        let cmd = Cli::command();
        // A first look, lenient (required flags may come from the file),
        // finds the subcommand and its `--config`.
        let Ok(first) = cmd.clone().ignore_errors(true).try_get_matches_from(&argv) else {
            return Cli::try_parse_from(&argv).map_err(ParseError::Clap);
        };
        let (sub, sub_matches) = match first.subcommand() {
            Some((name, m)) => (cmd.find_subcommand(name).unwrap_or(&cmd), m),
            None => (&cmd, &first),
        };
        let config = sub_matches
            .try_get_one::<std::path::PathBuf>("config")
            .ok()
            .flatten()
            .cloned();
        // `token` reads two keys of a standalone file; the others apply it whole.
        let Some(path) = config.filter(|_| sub.get_name() != "token") else {
            return Cli::try_parse_from(&argv).map_err(ParseError::Clap);
        };
        let file = FileValues::read(&path).map_err(ParseError::File)?;
        let extra = file.as_flags(sub, sub_matches).map_err(ParseError::File)?;
        let flags_only = argv.clone();
        argv.extend(extra);
        match Cli::try_parse_from(&argv) {
            Ok(cli) => Ok(cli),
            Err(e) if e.kind() == ErrorKind::MissingRequiredArgument => Err(ParseError::Clap(e)),
            Err(e) => match Cli::try_parse_from(&flags_only) {
                // The flags alone are fine (but for what the file was to
                // give): the file's value is at fault.
                Ok(_) => Err(ParseError::File(file.refused(&e))),
                Err(f) if f.kind() == ErrorKind::MissingRequiredArgument => {
                    Err(ParseError::File(file.refused(&e)))
                }
                Err(f) => Err(ParseError::Clap(f)),
            },
        }
    }
}

#[cfg(test)]
mod tests;
