//! Which register partition owns a user: a pure function, no I/O.
//!
//! The mapping is `partition(user, n) = jump(fnv1a64(user id bytes), n)`:
//!
//! * [`fnv1a64`] is 64-bit FNV-1a (offset basis `0xcbf29ce484222325`, prime
//!   `0x100000001b3`) over the UTF-8 bytes of the user id. It is stable
//!   across processes, versions and platforms (unlike `std`'s `DefaultHasher`),
//!   so every center and room computes the same answer.
//! * [`jump`] is Lamping and Veach's jump consistent hash ("A Fast, Minimal
//!   Memory, Consistent Hash Algorithm", 2014). With `n` partitions numbered
//!   `0..n`, growing to `n + 1` moves only about `1/(n + 1)` of the users, and
//!   each of them moves to the new partition `n`; nothing else moves.
//!
//! Partitions are numbered, not named: removing a partition other than the
//! last one is a renumbering, so a cluster grows and shrinks at the end.

use proto::UserId;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a of `bytes`.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

/// Jump consistent hash: the bucket in `0..buckets` for `key`.
/// Returns 0 when `buckets` is 0 or 1.
pub fn jump(mut key: u64, buckets: u32) -> u32 {
    if buckets <= 1 {
        return 0;
    }
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < i64::from(buckets) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // (b + 1) * 2^31 / ((key >> 33) + 1), in floating point as in the paper.
        let r = (1u64 << 31) as f64 / ((key >> 33) + 1) as f64;
        j = ((b + 1) as f64 * r) as i64;
    }
    // b is in 0..buckets here, so it fits.
    u32::try_from(b).unwrap_or(0)
}

/// The register partition in `0..partitions` that owns `user`.
pub fn partition(user: &UserId, partitions: u32) -> u32 {
    jump(fnv1a64(user.as_str().as_bytes()), partitions)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn jump_known_vectors() {
        // Computed with an independent transcription of the paper's C++ code.
        assert_eq!(jump(0, 1), 0);
        assert_eq!(jump(0, 100), 0);
        assert_eq!(jump(1, 100), 55);
        assert_eq!(jump(0xdead_beef, 1000), 285);
        assert_eq!(jump(12345, 0), 0);
    }

    #[test]
    fn in_range_and_stable() {
        for n in 1..20u32 {
            for i in 0..200 {
                let u = UserId::from(format!("user-{i}"));
                let p = partition(&u, n);
                assert!(p < n);
                assert_eq!(p, partition(&u, n));
            }
        }
    }

    #[test]
    fn growing_moves_only_to_the_new_partition() {
        let users: Vec<UserId> = (0..5000).map(|i| UserId::from(format!("u{i}"))).collect();
        for n in 1..12u32 {
            let mut moved = 0;
            for u in &users {
                let a = partition(u, n);
                let b = partition(u, n + 1);
                if a != b {
                    assert_eq!(b, n, "a user moved to an old partition");
                    moved += 1;
                }
            }
            // Expected share 1/(n+1); allow generous slack.
            let expected = users.len() as f64 / f64::from(n + 1);
            assert!(
                (moved as f64) > expected * 0.7 && (moved as f64) < expected * 1.3,
                "n={n} moved={moved} expected~{expected}"
            );
        }
    }

    #[test]
    fn spreads_evenly() {
        let n = 8u32;
        let mut counts = [0u32; 8];
        for i in 0..8000 {
            counts[partition(&UserId::from(format!("user:{i}")), n) as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "{counts:?}");
        }
    }
}
