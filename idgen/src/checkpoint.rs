//! Durable storage of the reserved mark.
//!
//! [`FileCheckpoint`] keeps one small text file per region in the data dir,
//! `DIR/idgen-<region>.ckpt`, holding `pushgate-idgen v1 region=<r> mark=<m>`.
//! It is replaced atomically: write a temp file, fsync it, rename it over the
//! old one, fsync the directory. A crash leaves either the old or the new mark.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::IdGenError;

/// Where the reserved mark lives. Implementations are blocking.
pub trait Checkpoint: Send + Sync + 'static {
    /// The last stored mark, `None` when none was ever stored.
    ///
    /// # Errors
    /// [`IdGenError::Checkpoint`] on I/O errors, [`IdGenError::Corrupt`] when
    /// what is stored is not a mark.
    fn load(&self) -> Result<Option<i64>, IdGenError>;

    /// Stores `mark`; durable when it returns.
    ///
    /// # Errors
    /// [`IdGenError::Checkpoint`] when the mark may not be durable.
    fn store(&self, mark: i64) -> Result<(), IdGenError>;
}

/// A checkpoint in `DIR/idgen-<region>.ckpt`.
#[derive(Debug, Clone)]
pub struct FileCheckpoint {
    dir: PathBuf,
    path: PathBuf,
    tmp: PathBuf,
    region: u16,
}

impl FileCheckpoint {
    /// The checkpoint of `region` in `dir` (the dir must exist to store).
    #[must_use]
    pub fn new(dir: &Path, region: u16) -> Self {
        FileCheckpoint {
            dir: dir.to_path_buf(),
            path: dir.join(format!("idgen-{region}.ckpt")),
            tmp: dir.join(format!("idgen-{region}.ckpt.tmp")),
            region,
        }
    }

    /// The path of the checkpoint file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Checkpoint for FileCheckpoint {
    fn load(&self) -> Result<Option<i64>, IdGenError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        parse(&text, self.region).map(Some)
    }

    fn store(&self, mark: i64) -> Result<(), IdGenError> {
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&self.tmp)?;
            writeln!(f, "pushgate-idgen v1 region={} mark={mark}", self.region)?;
            f.sync_all()?;
        }
        fs::rename(&self.tmp, &self.path)?;
        // The rename is durable only once the directory entry is.
        File::open(&self.dir)?.sync_all()?;
        Ok(())
    }
}

/// Parses `pushgate-idgen v1 region=<r> mark=<m>`.
fn parse(text: &str, region: u16) -> Result<i64, IdGenError> {
    let corrupt = || IdGenError::Corrupt(format!("unexpected content {:?}", text.trim()));
    let mut parts = text.split_whitespace();
    if parts.next() != Some("pushgate-idgen") || parts.next() != Some("v1") {
        return Err(corrupt());
    }
    let r: u16 = parts
        .next()
        .and_then(|p| p.strip_prefix("region="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(corrupt)?;
    if r != region {
        return Err(IdGenError::Corrupt(format!(
            "checkpoint of region {r} where region {region} was expected"
        )));
    }
    let mark: i64 = parts
        .next()
        .and_then(|p| p.strip_prefix("mark="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(corrupt)?;
    if mark < 0 || parts.next().is_some() {
        return Err(corrupt());
    }
    Ok(mark)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(FileCheckpoint::new(dir.path(), 3).load().unwrap(), None);
    }

    #[test]
    fn store_then_load() {
        let dir = tempfile::tempdir().unwrap();
        let ck = FileCheckpoint::new(dir.path(), 7);
        ck.store(42).unwrap();
        ck.store(1_700_000_000_000_000).unwrap();
        assert_eq!(ck.load().unwrap(), Some(1_700_000_000_000_000));
        assert!(ck.path().ends_with("idgen-7.ckpt"));
        assert!(!dir.path().join("idgen-7.ckpt.tmp").exists());
    }

    #[test]
    fn garbage_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let ck = FileCheckpoint::new(dir.path(), 1);
        for bad in [
            "",
            "hello",
            "pushgate-idgen v1 region=1 mark=x",
            "pushgate-idgen v1 region=1 mark=-5",
            "pushgate-idgen v2 region=1 mark=5",
        ] {
            fs::write(ck.path(), bad).unwrap();
            assert!(matches!(ck.load(), Err(IdGenError::Corrupt(_))), "{bad:?}");
        }
    }

    #[test]
    fn other_region_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        FileCheckpoint::new(dir.path(), 1).store(5).unwrap();
        fs::rename(
            dir.path().join("idgen-1.ckpt"),
            dir.path().join("idgen-2.ckpt"),
        )
        .unwrap();
        assert!(matches!(
            FileCheckpoint::new(dir.path(), 2).load(),
            Err(IdGenError::Corrupt(_))
        ));
    }
}
