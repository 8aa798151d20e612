//! Per-shard async primitives (single-threaded, no locks) and the clock.
//!
//! Everything here is `!Send` on purpose: each shard owns its own instances,
//! built on `Rc`/`RefCell`/`Cell`; cross-shard traffic goes through the mesh.

pub mod clock;
pub mod fair_gate;
pub mod future_cache;
pub mod linearizer;
pub mod notify;
pub mod rwlock;
pub mod shared_future;
pub mod task;

pub use clock::{timeout, unix_ms, unix_ms_i64, Clock, ClockHandle, Elapsed, FakeClock, RealClock};
pub use fair_gate::{FairGate, Full, GatePermit};
pub use future_cache::FutureCache;
pub use linearizer::{Linearizer, LinearizerGuard};
pub use notify::{Notified, Notify};
pub use rwlock::{ReadWriteLock, RwGuard};
pub use shared_future::{Observer, SharedFuture};
pub use task::yield_now;
