//! Stable placement of rooms and users on shards.
//!
//! Must give the same answer in every build, process and platform (shards
//! of different processes, restarts, and tools must agree), so std's
//! randomly seeded SipHash is out. FNV-1a 64 over the identifier's bytes,
//! then Lamping & Veach's jump consistent hash to pick a shard: uniform, and
//! when `n` grows only ~1/n of the keys move (useful if the shard count ever
//! changes between restarts with state that is placed by this function).

use ruma::{RoomId, UserId};

/// FNV-1a, 64-bit.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes
        .iter()
        .fold(OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// Jump consistent hash: a bucket in `0..n` for `key` (0 when `n` is 0).
pub fn jump_consistent_hash(mut key: u64, n: usize) -> usize {
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    let (mut b, mut j) = (-1i64, 0i64);
    while j < n {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // IEEE-754 double arithmetic is exact-rounded everywhere: stable.
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    usize::try_from(b).unwrap_or(0)
}

/// The shard that owns `room_id`.
pub fn shard_for_room(room_id: &RoomId, n_shards: usize) -> usize {
    jump_consistent_hash(fnv1a64(room_id.as_str().as_bytes()), n_shards)
}

/// The shard that owns `user_id`.
pub fn shard_for_user(user_id: &UserId, n_shards: usize) -> usize {
    jump_consistent_hash(fnv1a64(user_id.as_str().as_bytes()), n_shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_reference_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn jump_hash_properties() {
        assert_eq!(jump_consistent_hash(42, 0), 0);
        assert_eq!(jump_consistent_hash(42, 1), 0);
        // Growing n from 10 to 11 moves keys only to the new bucket.
        let mut moved = 0;
        for k in 0..10_000u64 {
            let key = fnv1a64(&k.to_le_bytes());
            let (a, b) = (jump_consistent_hash(key, 10), jump_consistent_hash(key, 11));
            if a != b {
                assert_eq!(b, 10);
                moved += 1;
            }
        }
        assert!((600..1300).contains(&moved), "moved {moved}");
    }

    #[test]
    fn roughly_uniform_over_room_ids() {
        for n in [2usize, 3, 4, 8] {
            let mut counts = vec![0u32; n];
            for i in 0..20_000 {
                let s = format!("!r{i}x:example.com");
                let id = <&RoomId>::try_from(s.as_str()).unwrap();
                counts[shard_for_room(id, n)] += 1;
            }
            let expect = 20_000 / n as u32;
            for c in &counts {
                assert!(c.abs_diff(expect) < expect / 10, "n={n} {counts:?}");
            }
        }
    }

    #[test]
    fn stable_placement() {
        let rooms = [
            "!a:b",
            "!OGEhHVWSdvArJzumhm:matrix.org",
            "!room:example.com",
        ];
        let users = ["@alice:example.com", "@bob:b", "@_bridge_x:hs.local"];
        let mut got = Vec::new();
        for r in rooms {
            let id = <&RoomId>::try_from(r).unwrap();
            got.push([2, 4, 8, 64].map(|n| shard_for_room(id, n)));
        }
        for u in users {
            let id = <&UserId>::try_from(u).unwrap();
            got.push([2, 4, 8, 64].map(|n| shard_for_user(id, n)));
        }
        // Fixed forever: changing these moves every room and user.
        // (Cross-checked against an independent Python implementation.)
        let expected = vec![
            [1, 2, 2, 2],
            [1, 2, 2, 14],
            [1, 2, 7, 62],
            [1, 1, 1, 31],
            [1, 2, 5, 47],
            [1, 2, 4, 59],
        ];
        assert_eq!(got, expected);
    }
}
