//! Sync tokens: the vector of every shard's stream positions.
//!
//! Each shard is a stream writer (like one of Synapse's event persisters)
//! with two counters: `persisted` numbers everything it writes to
//! PostgreSQL (events of the rooms it owns, receipts, the account data and
//! to-device messages of the users it owns…), `ephemeral` numbers what it
//! keeps only in memory (typing, presence). A token says, per shard, "the
//! client has seen everything up to here". Format (opaque to clients):
//! `s` then one `persisted.ephemeral` pair per shard joined by `_`, e.g.
//! `s105.1732480000123_88.0`.
//!
//! Stability across restarts: persisted positions resume after the highest
//! one in the database; ephemeral counters start at the boot time in
//! milliseconds, so they keep growing across restarts too. A token written
//! for a different shard count still parses: missing shards read as 0.

use std::fmt;

/// One shard's positions in a token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ShardPos {
    pub persisted: i64,
    pub ephemeral: i64,
}

impl ShardPos {
    /// Componentwise maximum.
    pub fn max(self, other: ShardPos) -> ShardPos {
        ShardPos {
            persisted: self.persisted.max(other.persisted),
            ephemeral: self.ephemeral.max(other.ephemeral),
        }
    }

    /// Whether anything in `self` is beyond `since`.
    pub fn is_after(self, since: ShardPos) -> bool {
        self.persisted > since.persisted || self.ephemeral > since.ephemeral
    }
}

/// A position in every shard's stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct StreamToken {
    shards: Vec<ShardPos>,
}

/// A token a client sent that we cannot read (mapped to 400 `M_INVALID_PARAM`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed stream token")]
pub struct TokenError;

/// Most shards a token may name: bounds the work a hostile token causes.
const MAX_SHARDS: usize = 1024;

impl StreamToken {
    /// All zeros for `n` shards (the start of every stream).
    pub fn zero(n: usize) -> StreamToken {
        StreamToken {
            shards: vec![ShardPos::default(); n],
        }
    }

    pub fn from_positions(shards: Vec<ShardPos>) -> StreamToken {
        StreamToken { shards }
    }

    /// The positions of shard `s` (zero if the token predates that shard).
    pub fn get(&self, s: usize) -> ShardPos {
        self.shards.get(s).copied().unwrap_or_default()
    }

    pub fn persisted(&self, s: usize) -> i64 {
        self.get(s).persisted
    }

    pub fn ephemeral(&self, s: usize) -> i64 {
        self.get(s).ephemeral
    }

    /// Number of shards the token names.
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// Raises shard `s` to at least `pos` (growing the vector if needed).
    pub fn advance(&mut self, s: usize, pos: ShardPos) {
        if self.shards.len() <= s {
            self.shards.resize(s + 1, ShardPos::default());
        }
        self.shards[s] = self.shards[s].max(pos);
    }

    /// Componentwise maximum of two tokens.
    pub fn max(&self, other: &StreamToken) -> StreamToken {
        let n = self.shards.len().max(other.shards.len());
        StreamToken {
            shards: (0..n).map(|s| self.get(s).max(other.get(s))).collect(),
        }
    }

    /// Whether any shard position of `self` is beyond `since`.
    pub fn is_after(&self, since: &StreamToken) -> bool {
        (0..self.shards.len()).any(|s| self.get(s).is_after(since.get(s)))
    }

    /// The per-shard persisted positions, as a PostgreSQL `bigint[]`
    /// parameter (`stream_ordering <= ($1::bigint[])[stream_shard + 1]`),
    /// padded with zeros to `n` shards.
    pub fn persisted_vec(&self, n: usize) -> Vec<i64> {
        (0..n.max(self.shards.len()))
            .map(|s| self.persisted(s))
            .collect()
    }

    /// Parses a token as [`fmt::Display`] writes it.
    pub fn parse(s: &str) -> Result<StreamToken, TokenError> {
        let body = s.strip_prefix('s').ok_or(TokenError)?;
        if body.is_empty() {
            return Err(TokenError);
        }
        let mut shards = Vec::new();
        for part in body.split('_') {
            if shards.len() == MAX_SHARDS {
                return Err(TokenError);
            }
            let (p, e) = part.split_once('.').ok_or(TokenError)?;
            let num = |x: &str| -> Result<i64, TokenError> {
                if x.is_empty() || !x.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(TokenError);
                }
                x.parse::<i64>().map_err(|_| TokenError)
            };
            shards.push(ShardPos {
                persisted: num(p)?,
                ephemeral: num(e)?,
            });
        }
        Ok(StreamToken { shards })
    }
}

impl fmt::Display for StreamToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("s")?;
        if self.shards.is_empty() {
            return f.write_str("0.0");
        }
        for (i, p) in self.shards.iter().enumerate() {
            if i > 0 {
                f.write_str("_")?;
            }
            write!(f, "{}.{}", p.persisted, p.ephemeral)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for StreamToken {
    type Err = TokenError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StreamToken::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(p: i64, e: i64) -> ShardPos {
        ShardPos {
            persisted: p,
            ephemeral: e,
        }
    }

    #[test]
    fn round_trip() {
        let t = StreamToken::from_positions(vec![pos(105, 1_732_480_000_123), pos(88, 0)]);
        let s = t.to_string();
        assert_eq!(s, "s105.1732480000123_88.0");
        assert_eq!(StreamToken::parse(&s), Ok(t));
    }

    #[test]
    fn malformed_tokens_are_errors() {
        for bad in [
            "",
            "s",
            "x1.2",
            "s1",
            "s1.",
            "s.1",
            "s1.2_",
            "s-1.2",
            "s1.2.3",
            "s1.2__3.4",
            "s99999999999999999999.0",
            "s+1.0",
            "s 1.0",
        ] {
            assert_eq!(StreamToken::parse(bad), Err(TokenError), "{bad:?}");
        }
        let huge = format!("s{}", vec!["1.1"; MAX_SHARDS + 1].join("_"));
        assert_eq!(StreamToken::parse(&huge), Err(TokenError));
    }

    #[test]
    fn other_shard_counts_read_as_zero() {
        let t = StreamToken::parse("s5.6").unwrap();
        assert_eq!(t.get(0), pos(5, 6));
        assert_eq!(t.get(3), pos(0, 0));
        assert_eq!(t.persisted_vec(3), vec![5, 0, 0]);
    }

    #[test]
    fn max_and_is_after() {
        let a = StreamToken::from_positions(vec![pos(5, 1), pos(2, 9)]);
        let b = StreamToken::from_positions(vec![pos(3, 1)]);
        assert_eq!(
            a.max(&b),
            StreamToken::from_positions(vec![pos(5, 1), pos(2, 9)])
        );
        assert!(a.is_after(&b));
        assert!(!b.is_after(&a));
        let mut c = b.clone();
        c.advance(2, pos(1, 0));
        assert_eq!(c.len(), 3);
        assert!(c.is_after(&a));
    }
}
