//! Readings from Linux `/proc`: a process's resident memory (`VmRSS`) and CPU
//! times, the kernel's `Slab` memory, the open-files limit and the ephemeral
//! port range. The parsers are pure functions over the file text; the readers
//! return `None` where the file or field is missing (not Linux, process gone).

use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` times. `USER_HZ` is 100 on every
/// mainstream Linux architecture; reading `sysconf(_SC_CLK_TCK)` would need
/// `unsafe`, which the workspace forbids.
pub(crate) const CLOCK_TICKS_PER_SEC: u64 = 100;

/// CPU time a process has used, in clock ticks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct CpuTicks {
    /// Time in user mode.
    pub(crate) user: u64,
    /// Time in kernel mode.
    pub(crate) system: u64,
}

impl CpuTicks {
    /// User plus system time since `earlier`.
    pub(crate) fn since(self, earlier: CpuTicks) -> Duration {
        let ticks = (self.user + self.system).saturating_sub(earlier.user + earlier.system);
        Duration::from_millis(ticks * 1000 / CLOCK_TICKS_PER_SEC)
    }
}

/// The open-files limit of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NofileLimit {
    /// Soft limit (`None` = unlimited).
    pub(crate) soft: Option<u64>,
    /// Hard limit (`None` = unlimited).
    pub(crate) hard: Option<u64>,
}

/// `VmRSS` from the text of `/proc/PID/status`, in bytes.
pub(crate) fn parse_vm_rss(status: &str) -> Option<u64> {
    kb_field(status, "VmRSS:")
}

/// `Slab` from the text of `/proc/meminfo`, in bytes.
pub(crate) fn parse_slab(meminfo: &str) -> Option<u64> {
    kb_field(meminfo, "Slab:")
}

/// A `Name:   1234 kB` line, in bytes.
fn kb_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let mut parts = line[name.len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => value.checked_mul(1024),
        Some(_) => None,
    }
}

/// `utime` and `stime` (fields 14 and 15) from the text of `/proc/PID/stat`.
/// The command name (field 2) may hold spaces and parentheses, so fields are
/// counted from after its last `)`.
pub(crate) fn parse_stat_cpu(stat: &str) -> Option<CpuTicks> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state), so field N is rest[N - 3].
    Some(CpuTicks {
        user: fields.get(14 - 3)?.parse().ok()?,
        system: fields.get(15 - 3)?.parse().ok()?,
    })
}

/// Time on CPU (user and kernel, nanoseconds) from the text of a
/// `/proc/PID/task/TID/schedstat`: its first field.
pub(crate) fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// The `Max open files` line of `/proc/PID/limits`.
pub(crate) fn parse_nofile(limits: &str) -> Option<NofileLimit> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut parts = line["Max open files".len()..].split_whitespace();
    let value = |s: &str| -> Option<Option<u64>> {
        if s == "unlimited" {
            Some(None)
        } else {
            s.parse().ok().map(Some)
        }
    };
    Some(NofileLimit {
        soft: value(parts.next()?)?,
        hard: value(parts.next()?)?,
    })
}

/// The text of `/proc/sys/net/ipv4/ip_local_port_range`: `low high`.
pub(crate) fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut parts = text.split_whitespace();
    let low = parts.next()?.parse().ok()?;
    let high = parts.next()?.parse().ok()?;
    (low <= high).then_some((low, high))
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// Resident memory of process `pid`, in bytes.
pub(crate) fn rss(pid: u32) -> Option<u64> {
    parse_vm_rss(&read(&format!("/proc/{pid}/status"))?)
}

/// Resident memory of this process, in bytes.
pub(crate) fn self_rss() -> Option<u64> {
    parse_vm_rss(&read("/proc/self/status")?)
}

/// CPU time used so far by process `pid`.
pub(crate) fn cpu(pid: u32) -> Option<CpuTicks> {
    parse_stat_cpu(&read(&format!("/proc/{pid}/stat"))?)
}

/// CPU time used so far by each live thread of process `pid`, in
/// nanoseconds, as `(thread id, ns)` sorted by thread id: each
/// `/proc/PID/task/TID/schedstat`. Far finer than [`cpu`]'s clock ticks, for
/// short windows. Compare two readings thread by thread
/// ([`threads_cpu_delta`]): a thread that exits takes its whole time out of
/// any process-wide sum, which would make a window look cheaper by work done
/// before it (tokio's blocking-pool threads exit 10 s after their last job).
pub(crate) fn cpu_threads(pid: u32) -> Option<Vec<(u32, u64)>> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse().ok()) else {
            continue;
        };
        if let Some(ns) = std::fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .and_then(|t| parse_schedstat(&t))
        {
            out.push((tid, ns));
        }
    }
    out.sort_unstable();
    (!out.is_empty()).then_some(out)
}

/// CPU nanoseconds between two [`cpu_threads`] readings: per thread alive at
/// the end, its time minus its time at the start (all of it for a thread
/// born since). Threads that exited in between are left out: their time
/// inside the window is lost, but their earlier time is not subtracted.
pub(crate) fn threads_cpu_delta(earlier: &[(u32, u64)], later: &[(u32, u64)]) -> u64 {
    later
        .iter()
        .map(
            |&(tid, ns)| match earlier.binary_search_by_key(&tid, |&(t, _)| t) {
                Ok(i) => ns.saturating_sub(earlier[i].1),
                Err(_) => ns,
            },
        )
        .sum()
}

/// `MemAvailable` of `/proc/meminfo`, in bytes.
pub(crate) fn mem_available() -> Option<u64> {
    kb_field(&read("/proc/meminfo")?, "MemAvailable:")
}

/// `MemTotal` of `/proc/meminfo`, in bytes.
pub(crate) fn mem_total() -> Option<u64> {
    kb_field(&read("/proc/meminfo")?, "MemTotal:")
}

/// The kernel release (`/proc/sys/kernel/osrelease`).
pub(crate) fn kernel_release() -> Option<String> {
    Some(read("/proc/sys/kernel/osrelease")?.trim().to_string())
}

/// Kernel slab memory, in bytes (socket buffers and TCP state live there).
pub(crate) fn slab() -> Option<u64> {
    parse_slab(&read("/proc/meminfo")?)
}

/// This process's open-files limit.
pub(crate) fn nofile() -> Option<NofileLimit> {
    parse_nofile(&read("/proc/self/limits")?)
}

/// The ephemeral port range used for outgoing connections.
pub(crate) fn port_range() -> Option<(u16, u16)> {
    parse_port_range(&read("/proc/sys/net/ipv4/ip_local_port_range")?)
}

/// Fails with advice when the open-files limit is below `need`.
pub(crate) fn check_nofile(need: u64) -> anyhow::Result<()> {
    let Some(limit) = nofile() else {
        // Not Linux, or /proc not mounted: let the OS refuse later.
        return Ok(());
    };
    match limit.soft {
        Some(soft) if soft < need => anyhow::bail!(
            "open files limit (ulimit -n) is {soft}, this run needs at least {need}; \
             raise it with `ulimit -n {need}` (hard limit: {}), or LimitNOFILE= in a \
             systemd unit, or /etc/security/limits.conf (see bench/README.md)",
            limit
                .hard
                .map_or("unlimited".to_string(), |h| h.to_string())
        ),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss() {
        let status = "Name:\tpushgate\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(12345 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert_eq!(parse_vm_rss("VmRSS:\t12 MB\n"), None);
    }

    #[test]
    fn slab_field() {
        let meminfo =
            "MemTotal:  100 kB\nSReclaimable: 5 kB\nSlab:     2048 kB\nSUnreclaim: 7 kB\n";
        assert_eq!(parse_slab(meminfo), Some(2048 * 1024));
        assert_eq!(parse_slab("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn stat_cpu_with_awkward_comm() {
        // comm "(my (weird) proc)" holds spaces and parentheses.
        let stat = "4242 (my (weird) proc) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    731 92 0 0 20 0 4 0 12345 1000000 500 18446744073709551615";
        assert_eq!(
            parse_stat_cpu(stat),
            Some(CpuTicks {
                user: 731,
                system: 92
            })
        );
        assert_eq!(parse_stat_cpu("1 (x) S 1 2"), None);
        assert_eq!(parse_stat_cpu("no parens"), None);
    }

    #[test]
    fn cpu_since() {
        let a = CpuTicks {
            user: 100,
            system: 50,
        };
        let b = CpuTicks {
            user: 250,
            system: 100,
        };
        assert_eq!(b.since(a), Duration::from_secs(2));
        assert_eq!(a.since(b), Duration::ZERO);
    }

    #[test]
    fn schedstat_field() {
        assert_eq!(parse_schedstat("278898 1022178 3\n"), Some(278_898));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn thread_deltas() {
        let a = [(10, 1_000), (11, 5_000), (12, 7_000)];
        // 11 exited (its 5,000 ns are not subtracted), 13 was born.
        let b = [(10, 1_500), (12, 7_000), (13, 300)];
        assert_eq!(threads_cpu_delta(&a, &b), 500 + 300);
        assert_eq!(threads_cpu_delta(&b, &b), 0);
        assert_eq!(threads_cpu_delta(&[], &b), 1_500 + 7_000 + 300);
    }

    #[test]
    fn nofile_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max processes             63704                63704                processes\n\
                      Max open files            20000                unlimited            files\n";
        assert_eq!(
            parse_nofile(limits),
            Some(NofileLimit {
                soft: Some(20000),
                hard: None
            })
        );
        assert_eq!(parse_nofile("Max processes 1 1 processes\n"), None);
    }

    #[test]
    fn port_range_text() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("x"), None);
    }

    #[test]
    fn reads_own_process() {
        // This runs on Linux (the only platform bench supports).
        assert!(self_rss().is_some_and(|b| b > 0));
        assert!(cpu(std::process::id()).is_some());
        let threads = cpu_threads(std::process::id()).unwrap();
        assert!(threads.iter().any(|&(tid, _)| tid == std::process::id()));
        assert!(threads.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(slab().is_some_and(|b| b > 0));
        assert!(nofile().is_some());
    }
}
