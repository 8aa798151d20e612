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
    let directives = directives(cfg);
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

/// The filter: the configured level, with the targets that are noisy or
/// costly at INFO quietened unless the operator names them.
fn directives(cfg: &LogSection) -> String {
    let mut directives = cfg.level.clone();
    // ruma's auth rules log every accepted event at INFO: a line per event
    // sent, at fan-out rates. Quiet unless the operator names the target.
    if !directives.contains("ruma_state_res") {
        directives.push_str(",ruma_state_res=warn");
    }
    // ruma's push evaluator opens an INFO span per rule-set evaluation and
    // per JSON value it flattens; enabled, each span formats its fields
    // (~2 % of a send's CPU). Its warnings (a duplicate JSON path) still
    // show; a global `debug` does not reach it unless the target is named.
    if !directives.contains("ruma_common") {
        directives.push_str(",ruma_common=warn");
    }
    if !cfg.access_log {
        directives.push_str(",hearth::access=off");
    }
    directives
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ruma_targets_are_quiet_unless_named() {
        let mut cfg = LogSection::default();
        let d = directives(&cfg);
        assert!(d.contains("ruma_state_res=warn"), "{d}");
        assert!(d.contains("ruma_common=warn"), "{d}");
        cfg.level = "info,ruma_common=debug".into();
        let d = directives(&cfg);
        assert!(!d.contains("ruma_common=warn"), "{d}");
        assert!(EnvFilter::try_new(&d).is_ok());
    }
}
