//! `[rate_limits]`: Synapse's `rc_*` options under one section, with
//! Synapse's defaults. `enabled = false` switches every limiter off; each
//! limiter has its own `enabled` too. Unset `per_second`/`burst_count` take
//! the limiter's default, so `HEARTH_RATE_LIMITS__MESSAGE__BURST_COUNT=50`
//! alone is a complete override.

use serde::{Deserialize, Serialize};

use super::bucket::Rate;

/// One token-bucket limiter (`rc_message`, `rc_registration`, …).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limit {
    pub enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_second: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub burst_count: Option<u32>,
}

impl Default for Limit {
    fn default() -> Self {
        Limit {
            enabled: true,
            per_second: None,
            burst_count: None,
        }
    }
}

impl Limit {
    /// The rate in force, `None` when switched off.
    pub fn rate(&self, default: Rate) -> Option<Rate> {
        self.enabled.then(|| Rate {
            per_second: self.per_second.unwrap_or(default.per_second),
            burst: self
                .burst_count
                .map_or(default.burst, |b| f64::from(b.max(1))),
        })
    }
}

/// `rc_login`: per client IP, per account tried, and failed attempts per
/// account (whatever the IP).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoginLimits {
    pub address: Limit,
    pub account: Limit,
    pub failed_attempts: Limit,
}

/// `rc_joins`: joins of a room this server is in, and of rooms elsewhere
/// (a federation join costs far more).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JoinLimits {
    pub local: Limit,
    pub remote: Limit,
}

/// `rc_federation`: per origin server, on inbound federation requests.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FederationLimits {
    pub enabled: bool,
    /// The window `sleep_limit` counts requests in.
    pub window_size_ms: u64,
    /// Requests of one origin per window served without delay.
    pub sleep_limit: u32,
    /// The delay of each request over `sleep_limit`.
    pub sleep_delay_ms: u64,
    /// Requests of one origin in progress (running, delayed or queued)
    /// beyond which more are refused with 429.
    pub reject_limit: u32,
    /// Requests of one origin processed at once; the rest queue.
    pub concurrent: u32,
}

impl Default for FederationLimits {
    fn default() -> Self {
        FederationLimits {
            enabled: true,
            window_size_ms: 1000,
            sleep_limit: 10,
            sleep_delay_ms: 500,
            reject_limit: 50,
            concurrent: 3,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSection {
    /// The one switch for all of them (tests and benchmarks: `false`).
    pub enabled: bool,
    /// `rc_message`: events sent per user.
    pub message: Limit,
    /// `rc_registration`: `/register` per client IP.
    pub registration: Limit,
    pub login: LoginLimits,
    pub joins: JoinLimits,
    /// `rc_joins_per_room`: joins (local users) of one room.
    pub joins_per_room: Limit,
    pub federation: FederationLimits,
}

impl Default for RateLimitSection {
    fn default() -> Self {
        RateLimitSection {
            enabled: true,
            message: Limit::default(),
            registration: Limit::default(),
            login: LoginLimits::default(),
            joins: JoinLimits::default(),
            joins_per_room: Limit::default(),
            federation: FederationLimits::default(),
        }
    }
}

/// Synapse's defaults (docs/usage/configuration, "Ratelimiting").
pub mod defaults {
    use super::Rate;

    const fn r(per_second: f64, burst: f64) -> Rate {
        Rate { per_second, burst }
    }
    pub const MESSAGE: Rate = r(0.2, 10.0);
    pub const REGISTRATION: Rate = r(0.17, 3.0);
    pub const LOGIN_ADDRESS: Rate = r(0.003, 5.0);
    pub const LOGIN_ACCOUNT: Rate = r(0.003, 5.0);
    pub const LOGIN_FAILED: Rate = r(0.17, 3.0);
    pub const JOINS_LOCAL: Rate = r(0.1, 10.0);
    pub const JOINS_REMOTE: Rate = r(0.01, 10.0);
    pub const JOINS_PER_ROOM: Rate = r(1.0, 10.0);
}

impl RateLimitSection {
    /// Checks serde cannot express; `Err((key, message))`.
    pub fn validate(&self) -> Result<(), (String, &'static str)> {
        for (name, l) in [
            ("message", &self.message),
            ("registration", &self.registration),
            ("login.address", &self.login.address),
            ("login.account", &self.login.account),
            ("login.failed_attempts", &self.login.failed_attempts),
            ("joins.local", &self.joins.local),
            ("joins.remote", &self.joins.remote),
            ("joins_per_room", &self.joins_per_room),
        ] {
            if let Some(p) = l.per_second {
                if !(p.is_finite() && p > 0.0) {
                    return Err((
                        format!("rate_limits.{name}.per_second"),
                        "must be a number greater than 0",
                    ));
                }
            }
        }
        let f = &self.federation;
        if f.window_size_ms == 0 || f.concurrent == 0 || f.reject_limit == 0 {
            return Err((
                "rate_limits.federation".into(),
                "window_size_ms, concurrent and reject_limit must be greater than 0",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_limits_take_defaults() {
        let l: Limit = toml::from_str("burst_count = 2").unwrap();
        assert_eq!(
            l.rate(defaults::MESSAGE),
            Some(Rate {
                per_second: 0.2,
                burst: 2.0
            })
        );
        let off: Limit = toml::from_str("enabled = false").unwrap();
        assert_eq!(off.rate(defaults::MESSAGE), None);
    }

    #[test]
    fn bad_rates_are_refused() {
        let mut s = RateLimitSection::default();
        assert!(s.validate().is_ok());
        s.login.failed_attempts.per_second = Some(0.0);
        assert_eq!(
            s.validate().unwrap_err().0,
            "rate_limits.login.failed_attempts.per_second"
        );
    }
}
