//! Faults the simulator injects on purpose, so clients can be tested against
//! a vLLM that fails, hangs, drops connections, dies or starts slowly.

use std::sync::Arc;
use std::time::Duration;

use super::sse::StreamFaults;
use super::text::mix;

/// What the process does when `exit_after_requests` is reached (e.g. exit
/// with code 1). Without one, the simulator stops its own HTTP server, which
/// looks the same to clients: connections cut, then refused.
#[derive(Clone)]
pub struct ExitHook(pub Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for ExitHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExitHook")
    }
}

#[derive(Debug, Clone)]
pub struct Faults {
    /// Share of inference requests (0..=1) refused with `fail_status`,
    /// chosen deterministically from the seed and the request's number.
    pub fail_rate: f64,
    pub fail_status: u16,
    /// A response stops producing after this many tokens, connection kept open.
    pub stall_after_tokens: Option<u32>,
    /// A response's connection is cut after this many tokens (no `[DONE]`).
    pub drop_after_tokens: Option<u32>,
    /// The process "dies" when this many inference requests have arrived.
    pub exit_after_requests: Option<u64>,
    /// `/health` answers 503 for this long after start (wall-clock seconds).
    pub unhealthy_secs: f64,
    pub on_exit: Option<ExitHook>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            fail_rate: 0.0,
            fail_status: 500,
            stall_after_tokens: None,
            drop_after_tokens: None,
            exit_after_requests: None,
            unhealthy_secs: 0.0,
            on_exit: None,
        }
    }
}

impl Faults {
    pub fn validate(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.fail_rate) {
            return Err(format!(
                "fail-rate must be within 0..=1, got {}",
                self.fail_rate
            ));
        }
        if !(400..=599).contains(&self.fail_status) {
            return Err(format!(
                "fail-status must be an HTTP error status (400..=599), got {}",
                self.fail_status
            ));
        }
        if !self.unhealthy_secs.is_finite() || self.unhealthy_secs < 0.0 {
            return Err(format!(
                "unhealthy-secs must be >= 0, got {}",
                self.unhealthy_secs
            ));
        }
        if self.exit_after_requests == Some(0) {
            return Err("exit-after-requests must be at least 1".to_owned());
        }
        Ok(())
    }

    /// Whether the `n`th inference request (1-based) fails on purpose.
    pub fn fails(&self, seed: u64, n: u64) -> bool {
        if self.fail_rate <= 0.0 {
            return false;
        }
        let unit = (mix(seed ^ 0x4641_494c, n) >> 11) as f64 / (1u64 << 53) as f64;
        unit < self.fail_rate
    }

    pub fn unhealthy_for(&self) -> Duration {
        Duration::try_from_secs_f64(self.unhealthy_secs).unwrap_or(Duration::ZERO)
    }

    pub fn stream(&self) -> StreamFaults {
        StreamFaults {
            stall_after: self.stall_after_tokens,
            drop_after: self.drop_after_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fail_rate_is_deterministic_and_close_to_the_rate() {
        let f = Faults {
            fail_rate: 0.25,
            ..Faults::default()
        };
        let picks: Vec<bool> = (1..=4000).map(|n| f.fails(9, n)).collect();
        let again: Vec<bool> = (1..=4000).map(|n| f.fails(9, n)).collect();
        assert_eq!(picks, again);
        let share = picks.iter().filter(|&&b| b).count() as f64 / 4000.0;
        assert!((0.2..0.3).contains(&share), "{share}");
        assert!(!Faults::default().fails(9, 1));
        let all = Faults {
            fail_rate: 1.0,
            ..Faults::default()
        };
        assert!((1..100).all(|n| all.fails(1, n)));
    }

    #[test]
    fn validation_names_the_flag() {
        let bad = Faults {
            fail_status: 200,
            ..Faults::default()
        };
        assert!(bad.validate().unwrap_err().contains("fail-status"));
    }
}
