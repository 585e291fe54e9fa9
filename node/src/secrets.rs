//! The API key and token secret: given by configuration, or generated on the
//! first run and kept in the data dir (mode 0600) so that restarts keep them.

use std::io::Write;
use std::path::Path;

use rand::RngCore;

/// Where a secret came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Flag, environment or config file.
    Given,
    /// Read back from the data dir.
    Kept,
    /// Generated now and saved in the data dir.
    Generated,
}

/// A random secret: 32 bytes as 64 lowercase hex characters.
pub(crate) fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Returns `given`, else the secret kept in `dir/name`, else a new one saved there.
///
/// # Errors
/// I/O errors reading or writing the file.
pub(crate) fn load_or_generate(
    dir: &Path,
    name: &str,
    given: Option<&str>,
) -> std::io::Result<(String, Origin)> {
    if let Some(g) = given {
        return Ok((g.to_owned(), Origin::Given));
    }
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => return Ok((s.trim().to_owned(), Origin::Kept)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let secret = generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path)?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok((secret, Origin::Generated))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, o1) = load_or_generate(dir.path(), "k", None).expect("gen");
        let (b, o2) = load_or_generate(dir.path(), "k", None).expect("load");
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert_eq!((o1, o2), (Origin::Generated, Origin::Kept));
        let (c, o3) = load_or_generate(dir.path(), "k", Some("given-secret")).expect("given");
        assert_eq!((c.as_str(), o3), ("given-secret", Origin::Given));
    }
}
