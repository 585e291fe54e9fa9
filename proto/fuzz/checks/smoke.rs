//! A small deterministic mutation runner for the stable smoke tests: the
//! same properties as the cargo-fuzz targets, run on a bounded number of
//! inputs (random bytes and mutants of seeds), with no coverage guidance and
//! no nightly toolchain. Included by `#[path]` from each crate's
//! `tests/fuzz_smoke.rs`; the fuzz targets themselves do not use it.
#![allow(dead_code)]

use std::path::Path;

/// splitmix64: tiny, seedable, good enough to pick mutations.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    pub(crate) fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// Values that often sit on a decoder's edges.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x02, 0x7f, 0x80, 0x81, 0xff, b'"', b'\\', b'{', b'}', b'[', b']', b',', b':',
    b'.', b'-', b'0', b'9', b'e', b'n', b't', b' ',
];

/// Applies 1 to 4 random edits to `data`: bit flips, byte overwrites with
/// interesting values, insertions, deletions, duplicated ranges,
/// truncation, and splices of `other`.
pub(crate) fn mutate(rng: &mut Rng, data: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..1 + rng.below(4) {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                data.insert(i, rng.byte());
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(8));
                data.drain(i..i + n);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                let chunk = data[i..i + n].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, chunk);
            }
            5 if len > 0 => data.truncate(rng.below(len)),
            6 if !other.is_empty() => {
                let i = rng.below(other.len());
                let n = 1 + rng.below((other.len() - i).min(32));
                let at = rng.below(len + 1);
                data.splice(at..at, other[i..i + n].iter().copied());
            }
            7 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.byte();
            }
            _ => {
                let i = rng.below(len + 1);
                data.insert(i, INTERESTING[rng.below(INTERESTING.len())]);
            }
        }
    }
}

/// The files of a committed seed directory (`proto/fuzz/seeds/<target>`),
/// sorted; none when it does not exist.
pub(crate) fn seed_files(dir: &Path) -> Vec<Vec<u8>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}

/// Runs `check` on every seed, then on `count` generated inputs: a quarter
/// random bytes, the rest mutants of the pool. The pool starts as the seeds
/// and takes in (up to 512) mutants that `check` reports as accepted, so
/// mutation keeps building on inputs that get past the first checks. A
/// panic in `check` fails the test and names the input.
pub(crate) fn run(name: &str, seeds: Vec<Vec<u8>>, count: usize, check: impl Fn(&[u8]) -> bool) {
    let mut pool = seeds;
    if pool.is_empty() {
        pool.push(Vec::new());
    }
    for s in &pool {
        guarded(name, s, &check);
    }
    let mut rng = Rng::new(0x5eed_0000 ^ name.len() as u64);
    let mut accepted = 0usize;
    for _ in 0..count {
        let input = if rng.below(4) == 0 {
            let n = rng.below(96);
            (0..n).map(|_| rng.byte()).collect()
        } else {
            let mut m = pool[rng.below(pool.len())].clone();
            let other = pool[rng.below(pool.len())].clone();
            mutate(&mut rng, &mut m, &other);
            m
        };
        if guarded(name, &input, &check) {
            accepted += 1;
            if pool.len() < 512 {
                pool.push(input);
            }
        }
    }
    eprintln!("{name}: {count} inputs, {accepted} accepted");
}

fn guarded(name: &str, input: &[u8], check: &impl Fn(&[u8]) -> bool) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(input))) {
        Ok(accepted) => accepted,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("?");
            panic!("{name}: check failed on input {input:02x?}: {msg}");
        }
    }
}
