//! The `--config` TOML file. Its keys are the subcommand's flags with `_`
//! for `-` (`max_frame = 65536` is `--max-frame 65536`). A key the
//! subcommand does not have is an error, each value is checked by the
//! flag's own parser, and a value is applied only where neither a flag nor
//! a `PUSHGATE_*` variable set it: the file is turned into the flags it
//! stands for, so every rule of a flag holds for it too.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, Command};

/// A configuration that cannot be used (exit code 64).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConfigError(pub(crate) String);

/// The keys and values of a config file.
#[derive(Debug)]
pub(crate) struct FileValues {
    path: PathBuf,
    table: toml::Table,
}

impl FileValues {
    /// Reads and parses `path`.
    ///
    /// # Errors
    /// [`ConfigError`] when it cannot be read or is not TOML.
    pub(crate) fn read(path: &Path) -> Result<FileValues, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        let table = text
            .parse::<toml::Table>()
            .map_err(|e| ConfigError(format!("invalid config file {}: {e}", path.display())))?;
        Ok(FileValues {
            path: path.to_owned(),
            table,
        })
    }

    /// The string value of `key`, after checking that every key of the file
    /// is a flag of `cmd` (the value itself is not run through the flag's
    /// parser: `pushgate token` reads a server's secret and data directory
    /// this way, without parsing that server's command line).
    ///
    /// # Errors
    /// [`ConfigError`] for a key `cmd` does not have, or a value that is no
    /// setting (a table).
    pub(crate) fn get(&self, cmd: &Command, key: &str) -> Result<Option<String>, ConfigError> {
        self.check_keys(cmd)?;
        Ok(self
            .table
            .get(key)
            .and_then(|v| v.as_str().map(str::to_owned)))
    }

    fn bad(&self, key: &str, why: impl std::fmt::Display) -> ConfigError {
        ConfigError(format!(
            "invalid config file {}: {key}: {why}",
            self.path.display()
        ))
    }

    fn check_keys(&self, cmd: &Command) -> Result<(), ConfigError> {
        for (key, value) in &self.table {
            file_arg(cmd, key).ok_or_else(|| {
                self.bad(
                    key,
                    format!("unknown key (`pushgate {} --help` lists the flags; write them with `_` for `-`)", cmd.get_name()),
                )
            })?;
            values(value).map_err(|e| self.bad(key, e))?;
        }
        Ok(())
    }

    /// The flags (for the end of the command line) that set what the file
    /// sets and neither a flag nor the environment did, after checking
    /// every key and value against `cmd`.
    ///
    /// # Errors
    /// [`ConfigError`] for a key `cmd` does not have, or a bad value.
    pub(crate) fn as_flags(
        &self,
        cmd: &Command,
        given: &ArgMatches,
    ) -> Result<Vec<OsString>, ConfigError> {
        self.check_keys(cmd)?;
        let mut out = Vec::new();
        for (key, value) in &self.table {
            let Some(arg) = file_arg(cmd, key) else {
                continue;
            };
            if matches!(
                given.value_source(key),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            let flag = format!("--{}", arg.get_long().unwrap_or(key));
            let vals = values(value).map_err(|e| self.bad(key, e))?;
            match arg.get_action() {
                ArgAction::SetTrue => {
                    if vals.first().is_some_and(|v| v == "true") {
                        out.push(flag.into());
                    }
                }
                _ => {
                    // `--key=value`: a value that starts with `-` stays a value.
                    for v in vals {
                        out.push(format!("{flag}={v}").into());
                    }
                }
            }
        }
        Ok(out)
    }

    /// A value the flag's parser refused (`e`, from parsing the command
    /// line with the file's flags added: the flags alone parsed).
    pub(crate) fn refused(&self, e: &clap::Error) -> ConfigError {
        ConfigError(format!(
            "invalid config file {}: {}",
            self.path.display(),
            clap_reason(e)
        ))
    }
}

/// The flag a file key stands for: any long flag but `--config` and the
/// help and version flags.
fn file_arg<'c>(cmd: &'c Command, key: &str) -> Option<&'c clap::Arg> {
    if matches!(key, "config" | "help" | "version") {
        return None;
    }
    cmd.get_arguments()
        .find(|a| a.get_id() == key && a.get_long().is_some())
}

/// A TOML value as the flag values it stands for.
fn values(v: &toml::Value) -> Result<Vec<String>, String> {
    Ok(match v {
        toml::Value::String(s) => vec![s.clone()],
        toml::Value::Integer(i) => vec![i.to_string()],
        toml::Value::Float(f) => vec![f.to_string()],
        toml::Value::Boolean(b) => vec![b.to_string()],
        toml::Value::Array(a) => {
            let mut out = Vec::with_capacity(a.len());
            for item in a {
                match values(item)?.as_slice() {
                    [one] => out.push(one.clone()),
                    _ => return Err("nested arrays and tables are not settings".into()),
                }
            }
            out
        }
        toml::Value::Datetime(d) => vec![d.to_string()],
        toml::Value::Table(_) => return Err("a table is not a setting".into()),
    })
}

/// The reason in a clap value error, without its usage lines.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.trim_start_matches("error: ").to_owned()
}
