//! Logging: `tracing` with text or JSON output chosen by config.
//!
//! Every request runs in a span carrying its request id, method and path (set
//! up by the HTTP layer), and the access log is one INFO line per request on
//! target `hearth::access`; `log.access_log = false` filters that target out.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::{LogFormat, LogSection};

/// Install the global subscriber. Safe to call twice (the second is ignored),
/// which keeps tests that start several servers in one process simple.
pub fn init(cfg: &LogSection) {
    let mut directives = cfg.level.clone();
    // ruma's auth rules log every accepted event at INFO: a line per event
    // sent, at fan-out rates. Quiet unless the operator names the target.
    if !directives.contains("ruma_state_res") {
        directives.push_str(",ruma_state_res=warn");
    }
    if !cfg.access_log {
        directives.push_str(",hearth::access=off");
    }
    let filter = EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .with_thread_names(true);
    let _ = match cfg.format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
}
