//! Where the client listeners' TLS certificate comes from, and its reload.
//!
//! - Given (`--tls-cert FILE --tls-key FILE`, PEM): served on wss://, TLS
//!   over TCP and QUIC; checked at start-up (a bad file is a configuration
//!   error, exit 64).
//! - Not given, standalone: a self-signed certificate (ECDSA P-256, for
//!   `localhost`, `127.0.0.1` and `::1`) generated on the first run into
//!   the data dir (`tls_cert.pem`, `tls_key.pem` mode 0600) and reused
//!   afterwards. Only QUIC uses it: WebSocket and TCP stay plain.
//! - Not given, cluster room with `--quic`: the same kind of certificate,
//!   generated at start-up and kept in memory only (a room has no data
//!   dir); give rooms real certificates in production.
//!
//! SIGHUP reloads the certificate from its files (given or in the data
//! dir) without touching established connections; a file that does not load
//! leaves the current certificate in place and logs an error.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use room::{TlsCerts, TlsError};
use tracing::{error, info};

/// Self-signed certificate file in the data dir.
pub(crate) const CERT_FILE: &str = "tls_cert.pem";
/// Its private key.
pub(crate) const KEY_FILE: &str = "tls_key.pem";

/// Certificate files given by configuration, checked loadable.
#[derive(Clone, Debug)]
pub(crate) struct Given {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
    pub(crate) certs: TlsCerts,
}

/// Loads `--tls-cert` / `--tls-key`: both or neither.
///
/// # Errors
/// A message for the user (exit 64) when only one is given or they do not load.
pub(crate) fn given(cert: Option<PathBuf>, key: Option<PathBuf>) -> Result<Option<Given>, String> {
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(_), None) => Err("--tls-cert needs --tls-key (the certificate's private key)".into()),
        (None, Some(_)) => Err("--tls-key needs --tls-cert".into()),
        (Some(cert), Some(key)) => {
            let certs = TlsCerts::load(&cert, &key).map_err(|e: TlsError| e.to_string())?;
            Ok(Some(Given { cert, key, certs }))
        }
    }
}

/// A new self-signed certificate and key, PEM.
fn generate() -> anyhow::Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("generate tls key")?;
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let mut params = rcgen::CertificateParams::new(names).context("tls certificate names")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pushgate self-signed");
    let cert = params
        .self_signed(&key)
        .context("self-sign tls certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Writes `text` to `path` through a temporary file and a rename; `secret`
/// files get mode 0600.
fn write_file(path: &Path, text: &str, secret: bool) -> std::io::Result<()> {
    let tmp = path.with_extension("pem.tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// The self-signed certificate kept in `dir`, generated there when missing.
/// Returns it, its two files, and whether it was generated now.
///
/// # Errors
/// When the files cannot be written, or exist but do not load (they are
/// never overwritten: someone may have put a certificate there on purpose).
pub(crate) fn self_signed_in(dir: &Path) -> anyhow::Result<(TlsCerts, PathBuf, PathBuf, bool)> {
    let cert = dir.join(CERT_FILE);
    let key = dir.join(KEY_FILE);
    let generated = if cert.is_file() && key.is_file() {
        false
    } else {
        let (c, k) = generate()?;
        // The key first: a certificate without its key is never left behind.
        write_file(&key, &k, true).with_context(|| format!("write {}", key.display()))?;
        write_file(&cert, &c, false).with_context(|| format!("write {}", cert.display()))?;
        true
    };
    let certs = TlsCerts::load(&cert, &key)
        .with_context(|| format!("self-signed tls certificate in {}", dir.display()))?;
    Ok((certs, cert, key, generated))
}

/// A self-signed certificate generated now and kept in memory only.
///
/// # Errors
/// When generation fails.
pub(crate) fn ephemeral() -> anyhow::Result<TlsCerts> {
    let (c, k) = generate()?;
    TlsCerts::from_pem(c.as_bytes(), k.as_bytes()).context("self-signed tls certificate")
}

/// Where a room's certificate comes from when none is given.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fallback<'a> {
    /// Standalone: self-signed, kept in this data directory, QUIC only.
    KeptIn(&'a Path),
    /// A cluster room with QUIC: self-signed, in memory, QUIC only.
    Ephemeral,
    /// A cluster room without QUIC: no certificate.
    None,
}

/// A room's TLS: its certificate, whether WebSocket and TCP serve it, and
/// the SIGHUP handler that reloads it.
pub(crate) struct RoomTls {
    /// The certificate (QUIC's, and the streams' when `streams`).
    pub(crate) certs: Option<TlsCerts>,
    /// WebSocket and TCP use TLS (a certificate was given).
    pub(crate) streams: bool,
    /// Reloads `certs` on SIGHUP (installed already).
    pub(crate) reloader: Option<Reloader>,
    /// Where the certificate came from, for the start-up log line.
    pub(crate) origin: String,
}

impl RoomTls {
    /// The given certificate, else the `fallback`; installs the SIGHUP
    /// handler before anything is served.
    ///
    /// # Errors
    /// When a certificate cannot be made or kept, or SIGHUP cannot be handled.
    pub(crate) fn new(given: Option<Given>, fallback: Fallback<'_>) -> anyhow::Result<RoomTls> {
        let (certs, files, streams, origin) = match (given, fallback) {
            (Some(g), _) => {
                let origin = format!(
                    "tls certificate {} (wss:// and tls over tcp on)",
                    g.cert.display()
                );
                (g.certs, Some((g.cert, g.key)), true, origin)
            }
            (None, Fallback::KeptIn(dir)) => {
                let (certs, cert, key, generated) = self_signed_in(dir)?;
                let how = if generated {
                    "generated and kept"
                } else {
                    "kept"
                };
                let origin = format!(
                    "self-signed tls certificate {how} in {} (quic only; ws and tcp are plain)",
                    dir.display()
                );
                (certs, Some((cert, key)), false, origin)
            }
            (None, Fallback::Ephemeral) => {
                let origin = "self-signed tls certificate in memory (quic only)".to_owned();
                (ephemeral()?, None, false, origin)
            }
            (None, Fallback::None) => {
                return Ok(RoomTls {
                    certs: None,
                    streams: false,
                    reloader: None,
                    origin: "no tls".to_owned(),
                })
            }
        };
        let reloader = Reloader::install(certs.clone(), files).context("install SIGHUP handler")?;
        Ok(RoomTls {
            certs: Some(certs),
            streams,
            reloader: Some(reloader),
            origin,
        })
    }

    /// The certificate WebSocket and TCP serve, if any.
    pub(crate) fn stream_certs(&self) -> Option<TlsCerts> {
        self.streams.then(|| self.certs.clone()).flatten()
    }
}

/// Reloads the certificate on SIGHUP. The handler is installed by
/// [`Reloader::install`], before `ready`: SIGHUP's default action would
/// end the process.
pub(crate) struct Reloader {
    #[cfg(unix)]
    hup: tokio::signal::unix::Signal,
    certs: TlsCerts,
    /// The files to reload from; `None` for an in-memory certificate.
    files: Option<(PathBuf, PathBuf)>,
}

impl Reloader {
    /// Installs the SIGHUP handler now.
    ///
    /// # Errors
    /// When the handler cannot be registered.
    pub(crate) fn install(
        certs: TlsCerts,
        files: Option<(PathBuf, PathBuf)>,
    ) -> std::io::Result<Reloader> {
        Ok(Reloader {
            #[cfg(unix)]
            hup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
            certs,
            files,
        })
    }

    /// Reloads on every SIGHUP until the task is aborted.
    pub(crate) fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    #[cfg(unix)]
    async fn run(mut self) {
        while self.hup.recv().await.is_some() {
            self.reload();
        }
    }

    #[cfg(not(unix))]
    async fn run(self) {
        let _ = self;
        std::future::pending::<()>().await;
    }

    /// One reload: the new certificate for new handshakes, or an error and the old one.
    fn reload(&self) {
        let Some((cert, key)) = &self.files else {
            info!("SIGHUP: the tls certificate is generated in memory; nothing to reload");
            return;
        };
        match self.certs.reload(cert, key) {
            Ok(()) => info!(
                cert = %cert.display(),
                fingerprint = %self.certs.fingerprint(),
                "tls certificate reloaded"
            ),
            Err(e) => error!(
                error = %e,
                fingerprint = %self.certs.fingerprint(),
                "tls certificate reload failed; keeping the current certificate"
            ),
        }
    }
}
