//! The `pushgate` binary. Everything but the allocator lives in the
//! `pushgate-node` crate (node/): settings, the room node, standalone and
//! cluster processes; this file only picks the allocator and hands over.

use std::process::ExitCode;

// The allocator is the system's unless built with `--features mimalloc`.
// Measured on 15,000 idle authenticated WebSocket connections (see
// bench/results/): glibc malloc held about 3.3 KB of RSS per connection
// and mimalloc 5.6 to 6.6 KB (memory freed after each handshake stays
// reserved per thread), at the same push latency and CPU. Memory per
// connection is what limits a room, so the default follows the measurement.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    node::main()
}
