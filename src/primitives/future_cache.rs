//! A shard-local, LRU-bounded cache that deduplicates concurrent loads
//! (Synapse's `DeferredCache` + `@cached`).
//!
//! Concurrent `get_or_load`s of one key share a single loader run
//! ([`SharedFuture`]). Errors reach every waiter of that run but are not
//! stored. `invalidate` (or `insert`) while a load is in flight detaches that
//! load: its waiters still get its result, but the result is not stored, so
//! a value read before the invalidation can never land after it. With a TTL
//! (measured on the [`Clock`]) expired entries count as misses and reload.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::clock::ClockHandle;
use super::shared_future::SharedFuture;

struct Entry<V> {
    value: V,
    expires: Option<Instant>,
}

struct Loading<V, E> {
    id: u64,
    fut: SharedFuture<Result<V, E>>,
}

struct State<K: Hash + Eq, V, E> {
    lru: LruCache<K, Entry<V>>,
    pending: HashMap<K, Loading<V, E>>,
    next_id: u64,
}

struct Inner<K: Hash + Eq, V, E> {
    name: String,
    ttl: Option<(Duration, ClockHandle)>,
    state: RefCell<State<K, V, E>>,
}

impl<K, V, E> Inner<K, V, E>
where
    K: Hash + Eq + Clone + 'static,
    V: Clone + 'static,
    E: Clone + 'static,
{
    fn expiry(&self) -> Option<Instant> {
        self.ttl.as_ref().map(|(ttl, clock)| clock.now() + *ttl)
    }

    /// A fresh cached value, dropping it if expired.
    fn lookup(&self, st: &mut State<K, V, E>, key: &K) -> Option<V> {
        let now = self.ttl.as_ref().map(|(_, c)| c.now());
        let entry = st.lru.get(key)?;
        match (entry.expires, now) {
            (Some(exp), Some(now)) if now >= exp => {
                st.lru.pop(key);
                None
            }
            _ => Some(entry.value.clone()),
        }
    }

    /// Called by the loader task when its load finishes.
    fn finish(&self, key: &K, id: u64, result: &Result<V, E>) {
        let mut st = self.state.borrow_mut();
        if st.pending.get(key).map(|l| l.id) != Some(id) {
            return; // invalidated or superseded meanwhile: don't store
        }
        st.pending.remove(key);
        if let Ok(v) = result {
            let expires = self.expiry();
            st.lru.put(
                key.clone(),
                Entry {
                    value: v.clone(),
                    expires,
                },
            );
        }
    }
}

/// Deduplicating, LRU-bounded, optionally TTL'd async cache. Cheap to clone
/// (shared). `E` must be `Clone` because every waiter gets the error.
pub struct FutureCache<K: Hash + Eq, V, E> {
    inner: Rc<Inner<K, V, E>>,
}

impl<K: Hash + Eq, V, E> Clone for FutureCache<K, V, E> {
    fn clone(&self) -> Self {
        FutureCache {
            inner: self.inner.clone(),
        }
    }
}

impl<K, V, E> FutureCache<K, V, E>
where
    K: Hash + Eq + Clone + 'static,
    V: Clone + 'static,
    E: Clone + 'static,
{
    /// A cache holding at most `capacity` entries (0 is treated as 1).
    pub fn new(name: impl Into<String>, capacity: usize) -> Self {
        Self::build(name.into(), capacity, None)
    }

    /// Like [`new`](Self::new), entries expiring `ttl` after they were stored.
    pub fn with_ttl(
        name: impl Into<String>,
        capacity: usize,
        ttl: Duration,
        clock: ClockHandle,
    ) -> Self {
        Self::build(name.into(), capacity, Some((ttl, clock)))
    }

    fn build(name: String, capacity: usize, ttl: Option<(Duration, ClockHandle)>) -> Self {
        let cap = NonZeroUsize::new(capacity).unwrap_or(NonZeroUsize::MIN);
        FutureCache {
            inner: Rc::new(Inner {
                name,
                ttl,
                state: RefCell::new(State {
                    lru: LruCache::new(cap),
                    pending: HashMap::new(),
                    next_id: 0,
                }),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The cached value, or the result of the (single, shared) load.
    ///
    /// The loader runs as its own local task, so it completes (and fills the
    /// cache) even if every caller stops waiting. Must be awaited on a monoio
    /// runtime.
    pub async fn get_or_load<F, Fut>(&self, key: K, loader: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>> + 'static,
    {
        let inner = &self.inner;
        let existing = {
            let mut st = inner.state.borrow_mut();
            if let Some(v) = inner.lookup(&mut st, &key) {
                return Ok(v);
            }
            st.pending.get(&key).map(|l| l.fut.clone())
        };
        let fut = match existing {
            Some(fut) => fut,
            None => {
                // Outside the borrow: the loader may itself touch this cache.
                let load = loader();
                let weak: Weak<Inner<K, V, E>> = Rc::downgrade(inner);
                let mut st = inner.state.borrow_mut();
                let id = st.next_id;
                st.next_id += 1;
                let k = key.clone();
                let fut = SharedFuture::spawn(async move {
                    let r = load.await;
                    if let Some(inner) = weak.upgrade() {
                        inner.finish(&k, id, &r);
                    }
                    r
                });
                let loading = Loading {
                    id,
                    fut: fut.clone(),
                };
                st.pending.insert(key, loading);
                fut
            }
        };
        fut.observe().await
    }

    /// The cached value, if present and fresh. Counts as a use for LRU.
    pub fn get_if_present(&self, key: &K) -> Option<V> {
        let mut st = self.inner.state.borrow_mut();
        self.inner.lookup(&mut st, key)
    }

    /// Store `value`; an in-flight load of `key` will not overwrite it.
    pub fn insert(&self, key: K, value: V) {
        let expires = self.inner.expiry();
        let mut st = self.inner.state.borrow_mut();
        st.pending.remove(&key);
        st.lru.put(key, Entry { value, expires });
    }

    /// Forget `key`, including any in-flight load's right to store.
    pub fn invalidate(&self, key: &K) {
        let mut st = self.inner.state.borrow_mut();
        st.lru.pop(key);
        st.pending.remove(key);
    }

    /// Forget everything (stored and in flight).
    pub fn invalidate_all(&self) {
        let mut st = self.inner.state.borrow_mut();
        st.lru.clear();
        st.pending.clear();
    }

    /// Stored entries (expired ones count until they are next looked up).
    pub fn len(&self) -> usize {
        self.inner.state.borrow().lru.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Loads in flight whose result will be stored.
    pub fn loading(&self) -> usize {
        self.inner.state.borrow().pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::clock::test_util::{block_on, settle};
    use crate::primitives::clock::{Clock, FakeClock};
    use std::cell::Cell;

    type Cache = FutureCache<u32, String, Rc<String>>;

    #[test]
    fn dedups_ten_concurrent_gets() {
        block_on(async {
            let cache = Cache::new("t", 10);
            let clock = FakeClock::new(0);
            let calls = Rc::new(Cell::new(0));
            let mut hs = Vec::new();
            for _ in 0..10 {
                let (cache, calls, clock) = (cache.clone(), calls.clone(), clock.clone());
                hs.push(monoio::spawn(async move {
                    cache
                        .get_or_load(1, || async move {
                            calls.set(calls.get() + 1);
                            clock.sleep(Duration::from_secs(1)).await;
                            Ok("one".to_string())
                        })
                        .await
                }));
            }
            settle().await;
            assert_eq!(cache.loading(), 1);
            clock.advance(Duration::from_secs(1));
            for h in hs {
                assert_eq!(h.await.unwrap(), "one");
            }
            assert_eq!(calls.get(), 1);
            assert_eq!(cache.get_if_present(&1).as_deref(), Some("one"));
            assert_eq!(cache.loading(), 0);
        });
    }

    #[test]
    fn errors_are_shared_but_not_cached() {
        block_on(async {
            let cache = Cache::new("t", 10);
            let calls = Rc::new(Cell::new(0));
            let load = |calls: Rc<Cell<u32>>| {
                move || async move {
                    calls.set(calls.get() + 1);
                    Err::<String, _>(Rc::new("db down".to_string()))
                }
            };
            let a = cache.get_or_load(1, load(calls.clone()));
            let b = cache.get_or_load(1, load(calls.clone()));
            let (a, b) = futures_util::join!(a, b);
            assert_eq!(a.unwrap_err().as_str(), "db down");
            assert!(b.is_err());
            assert_eq!(calls.get(), 1);
            assert!(cache.is_empty());
            assert!(cache.get_or_load(1, load(calls.clone())).await.is_err());
            assert_eq!(calls.get(), 2);
        });
    }

    #[test]
    fn lru_evicts_least_recently_used() {
        block_on(async {
            let cache = Cache::new("t", 2);
            cache.insert(1, "a".into());
            cache.insert(2, "b".into());
            assert!(cache.get_if_present(&1).is_some()); // 2 is now LRU
            let v = cache.get_or_load(3, || async { Ok("c".to_string()) }).await;
            assert_eq!(v.unwrap(), "c");
            assert_eq!(cache.len(), 2);
            assert!(cache.get_if_present(&2).is_none());
            assert!(cache.get_if_present(&1).is_some());
            cache.invalidate_all();
            assert!(cache.is_empty());
        });
    }

    #[test]
    fn invalidation_during_load_is_not_overwritten() {
        block_on(async {
            let cache = Cache::new("t", 10);
            let clock = FakeClock::new(0);
            let c = clock.clone();
            let old = monoio::spawn({
                let cache = cache.clone();
                async move {
                    cache
                        .get_or_load(7, || async move {
                            c.sleep(Duration::from_secs(1)).await;
                            Ok("stale".to_string())
                        })
                        .await
                }
            });
            settle().await;
            cache.invalidate(&7); // the row changed while we were reading it
                                  // A get after the invalidation starts a fresh load.
            let c = clock.clone();
            let fresh = monoio::spawn({
                let cache = cache.clone();
                async move {
                    cache
                        .get_or_load(7, || async move {
                            c.sleep(Duration::from_secs(2)).await;
                            Ok("fresh".to_string())
                        })
                        .await
                }
            });
            settle().await;
            clock.advance(Duration::from_secs(1));
            assert_eq!(old.await.unwrap(), "stale"); // its waiters still get it
            assert!(cache.get_if_present(&7).is_none()); // ...but it's not stored
            clock.advance(Duration::from_secs(1));
            assert_eq!(fresh.await.unwrap(), "fresh");
            assert_eq!(cache.get_if_present(&7).as_deref(), Some("fresh"));

            // insert() while loading also wins over the load.
            let c = clock.clone();
            let l = monoio::spawn({
                let cache = cache.clone();
                async move {
                    cache
                        .get_or_load(8, || async move {
                            c.sleep(Duration::from_secs(1)).await;
                            Ok("loaded".to_string())
                        })
                        .await
                }
            });
            settle().await;
            cache.insert(8, "inserted".into());
            clock.advance(Duration::from_secs(1));
            assert_eq!(l.await.unwrap(), "loaded");
            assert_eq!(cache.get_if_present(&8).as_deref(), Some("inserted"));
        });
    }

    #[test]
    fn ttl_expiry_reloads() {
        block_on(async {
            let clock = FakeClock::new(0);
            let cache = Cache::with_ttl("t", 10, Duration::from_secs(60), clock.handle());
            let calls = Rc::new(Cell::new(0));
            let load = || {
                let calls = calls.clone();
                move || async move {
                    calls.set(calls.get() + 1);
                    Ok::<_, Rc<String>>(format!("v{}", calls.get()))
                }
            };
            assert_eq!(cache.get_or_load(1, load()).await.unwrap(), "v1");
            clock.advance(Duration::from_secs(59));
            assert_eq!(cache.get_or_load(1, load()).await.unwrap(), "v1");
            clock.advance(Duration::from_secs(1));
            assert!(cache.get_if_present(&1).is_none());
            assert_eq!(cache.get_or_load(1, load()).await.unwrap(), "v2");
            assert_eq!(calls.get(), 2);
            assert_eq!(clock.now_ms(), 60_000);
        });
    }

    #[test]
    fn load_completes_even_if_caller_gives_up() {
        block_on(async {
            let cache = Cache::new("t", 10);
            let clock = FakeClock::new(0);
            let c = clock.clone();
            let mut get = Box::pin(cache.get_or_load(1, || async move {
                c.sleep(Duration::from_secs(1)).await;
                Ok("x".to_string())
            }));
            let p = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(get.as_mut().poll(cx).is_pending())
            })
            .await;
            assert!(p);
            drop(get);
            settle().await;
            clock.advance(Duration::from_secs(1));
            settle().await;
            assert_eq!(cache.get_if_present(&1).as_deref(), Some("x"));
        });
    }
}
