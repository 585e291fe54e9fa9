//! `bench durable`: the floor under an acknowledged, stored push. A server
//! that answers "stored" only once the message is on disk pays at least one
//! write and one `fdatasync` per acknowledgement it cannot share with another
//! (with one publisher in flight, every push is its own flush). This measures
//! exactly that, on the file system of `--dir`, with nothing else around it:
//! one thread writes a record of `--size` bytes at the next offset of a file
//! it preallocated (so no flush has to update the file's size or extents),
//! then calls `fdatasync`, `--writes` times.
//!
//! It reports CPU per durable write (this thread's time on CPU, from
//! `/proc/thread-self/schedstat`, kernel time included: the flush's block
//! I/O is charged to the caller), and the latency of each write + flush. A
//! stored REST push (`bench latency --store true`) is compared against this
//! per push; an in-memory server (Nchan, `--store false`) is not bound by it.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use hdrhistogram::Histogram;

use crate::proc::parse_schedstat;

/// Arguments of `bench durable`.
#[derive(Clone, Debug, clap::Args)]
pub(crate) struct DurableArgs {
    /// Directory on the file system to measure (e.g. pushgate's `--data`).
    /// A scratch file is created there and removed afterwards.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Durable writes to time.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    writes: u64,
    /// Bytes per write (a stored push's record is a few hundred bytes).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    size: u32,
    /// Preallocated file size, MiB; the writes wrap around within it.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=4096))]
    file_mib: u64,
}

/// What one run measured.
#[derive(Debug)]
pub(crate) struct DurableReport {
    /// Writes timed.
    pub(crate) writes: u64,
    /// This thread's CPU time per write + flush, microseconds.
    pub(crate) cpu_us: f64,
    /// Write + flush latency percentiles, microseconds: p50, p99, p99.9.
    pub(crate) latency_us: [f64; 3],
    /// Durable writes per second with one writer.
    pub(crate) per_sec: f64,
}

/// Runs `bench durable` and prints its report.
pub(crate) fn run(a: &DurableArgs) -> anyhow::Result<()> {
    let path = a.dir.join(format!(".bench-durable-{}", std::process::id()));
    let result = measure(&path, a);
    let _ = std::fs::remove_file(&path);
    let r = result?;
    println!(
        "durable: {} writes of {} B + fdatasync in {} | cpu per write {:.1} us | latency us p50 {:.0} p99 {:.0} p99.9 {:.0} | {:.0} writes/s with one writer",
        r.writes,
        a.size,
        a.dir.display(),
        r.cpu_us,
        r.latency_us[0],
        r.latency_us[1],
        r.latency_us[2],
        r.per_sec
    );
    Ok(())
}

fn measure(path: &std::path::Path, a: &DurableArgs) -> anyhow::Result<DurableReport> {
    let file = preallocate(path, a.file_mib << 20)
        .with_context(|| format!("preparing {}", path.display()))?;
    let record = vec![0x5a_u8; a.size as usize];
    let slots = ((a.file_mib << 20) / u64::from(a.size)).max(1);
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).context("histogram")?;
    let cpu0 = thread_cpu_ns()?;
    let start = Instant::now();
    for i in 0..a.writes {
        let t = Instant::now();
        file.write_all_at(&record, (i % slots) * u64::from(a.size))
            .context("write")?;
        file.sync_data().context("fdatasync")?;
        let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
        latency.saturating_record(ns);
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = thread_cpu_ns()?.saturating_sub(cpu0);
    let us = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    Ok(DurableReport {
        writes: a.writes,
        cpu_us: cpu as f64 / 1000.0 / a.writes as f64,
        latency_us: [us(0.5), us(0.99), us(0.999)],
        per_sec: a.writes as f64 / wall,
    })
}

/// Creates `path` filled with zeros and flushed, so later overwrites change
/// no metadata.
fn preallocate(path: &std::path::Path, bytes: u64) -> anyhow::Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)?;
    let zeros = vec![0_u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        file.write_all(&zeros[..n])?;
        left -= n as u64;
    }
    file.sync_all()?;
    Ok(file)
}

/// This thread's time on CPU so far, nanoseconds.
fn thread_cpu_ns() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")
        .context("reading /proc/thread-self/schedstat (Linux only)")?;
    parse_schedstat(&text).context("parsing /proc/thread-self/schedstat")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_run_reports_every_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = DurableArgs {
            dir: dir.path().to_path_buf(),
            writes: 50,
            size: 300,
            file_mib: 1,
        };
        let path = dir.path().join("scratch");
        let r = measure(&path, &args).expect("measure");
        assert_eq!(r.writes, 50);
        assert!(r.cpu_us > 0.0, "no CPU time measured");
        assert!(r.latency_us[0] > 0.0 && r.latency_us[0] <= r.latency_us[2]);
        // The file keeps its preallocated size: writes wrap inside it.
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 1 << 20);
    }
}
