//! Per-connection cache of prepared statements, keyed by SQL text.
//!
//! The first use of a SQL string sends Parse + Describe(S) ahead of its
//! Bind/Execute in the same pipelined request; later uses (even ones sent
//! before the first one's answer arrived) send only Bind/Execute, because
//! the server processes messages in order. If the Parse fails, the reader
//! evicts the entry so the next use prepares again.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use postgres_protocol::Oid;

use super::types::Column;

/// A statement prepared (or being prepared) on one connection.
#[derive(Debug)]
pub(crate) struct Stmt {
    pub name: String,
    pub param_types: Vec<Oid>,
    /// Filled in by the reader from the Describe answer.
    pub columns: RefCell<Option<Rc<[Column]>>>,
    last_used: Cell<u64>,
}

/// What a query needs to send for a statement.
pub(crate) struct Prepared {
    pub stmt: Rc<Stmt>,
    /// Parse + Describe must be sent first.
    pub is_new: bool,
    /// Statements pushed out of the cache: close them server-side.
    pub evicted: Vec<Rc<Stmt>>,
}

pub(crate) struct StatementCache {
    by_sql: HashMap<String, Rc<Stmt>>,
    capacity: usize,
    next_id: u64,
    clock: u64,
    /// Parse messages sent, for tests and metrics.
    pub parses: u64,
}

impl StatementCache {
    pub(crate) fn new(capacity: usize) -> Self {
        StatementCache {
            by_sql: HashMap::new(),
            capacity: capacity.max(1),
            next_id: 0,
            clock: 0,
            parses: 0,
        }
    }

    /// Look up or create the statement for `sql` with these parameter types.
    /// A cached statement prepared with other parameter types is replaced.
    pub(crate) fn prepare(&mut self, sql: &str, param_types: &[Oid]) -> Prepared {
        self.clock += 1;
        let mut evicted = Vec::new();
        if let Some(s) = self.by_sql.get(sql) {
            if s.param_types == param_types {
                s.last_used.set(self.clock);
                return Prepared {
                    stmt: s.clone(),
                    is_new: false,
                    evicted,
                };
            }
            if let Some(old) = self.by_sql.remove(sql) {
                evicted.push(old);
            }
        }
        if self.by_sql.len() >= self.capacity {
            // Evict the least recently used: O(n), but only when full.
            if let Some(key) = self
                .by_sql
                .iter()
                .min_by_key(|(_, s)| s.last_used.get())
                .map(|(k, _)| k.clone())
            {
                if let Some(old) = self.by_sql.remove(&key) {
                    evicted.push(old);
                }
            }
        }
        self.next_id += 1;
        self.parses += 1;
        let stmt = Rc::new(Stmt {
            name: format!("h{}", self.next_id),
            param_types: param_types.to_vec(),
            columns: RefCell::new(None),
            last_used: Cell::new(self.clock),
        });
        self.by_sql.insert(sql.to_owned(), stmt.clone());
        Prepared {
            stmt,
            is_new: true,
            evicted,
        }
    }

    /// Forget `stmt` if it is still the cached one for its SQL (its Parse
    /// failed, or the server invalidated it).
    pub(crate) fn evict(&mut self, stmt: &Rc<Stmt>) {
        self.by_sql.retain(|_, s| !Rc::ptr_eq(s, stmt));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_sql.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_replace_and_evict() {
        let mut c = StatementCache::new(2);
        let a = c.prepare("select 1", &[]);
        assert!(a.is_new);
        let a2 = c.prepare("select 1", &[]);
        assert!(!a2.is_new);
        assert!(Rc::ptr_eq(&a.stmt, &a2.stmt));
        // Different parameter types: a new statement replaces the old.
        let b = c.prepare("select 1", &[20]);
        assert!(b.is_new && b.evicted.len() == 1);
        c.prepare("select 2", &[]);
        c.prepare("select 1", &[20]);
        let d = c.prepare("select 3", &[]);
        assert_eq!(d.evicted.len(), 1);
        assert!(!c.by_sql.contains_key("select 2"));
        assert_eq!(c.len(), 2);
        c.evict(&d.stmt);
        assert_eq!(c.len(), 1);
        assert_eq!(c.parses, 4);
    }
}
