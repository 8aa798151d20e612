//! The monoio runtime a test server runs on: io_uring, or the epoll
//! fallback when `HEARTH_TEST_LEGACY_DRIVER` is set (`scripts/test.sh`
//! runs the HTTP suites once on each, so both drivers are covered).
//!
//! Kept apart from `common/mod.rs` so the HTTP-layer tests can include it
//! alone (`#[path]`) without building the whole-binary helpers.

use std::future::Future;

/// Runs `fut` to completion on a fresh runtime of the driver under test.
pub fn block_on_test_driver<F: Future>(fut: F) -> F::Output {
    if std::env::var_os("HEARTH_TEST_LEGACY_DRIVER").is_some() {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
            .block_on(fut)
    } else {
        monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .enable_timer()
            .build()
            .expect("runtime")
            .block_on(fut)
    }
}
