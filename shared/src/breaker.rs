//! A circuit breaker, as a pure state machine (time is passed in).
//!
//! Closed: requests flow; consecutive failures are counted and, at the
//! threshold, the breaker opens. Open: nothing is admitted until the
//! cool-down has passed and a probe (a health check) succeeds; a failed probe
//! starts another cool-down. Half-open: exactly one trial request is admitted;
//! its success closes the breaker, its failure opens it again.
//!
//! Results of requests admitted before the breaker opened are ignored once it
//! is open or half-open: only the trial decides, so a slow old success cannot
//! close a breaker that a newer failure opened.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The breaker's state as reported to others (load reports, logs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (at least 1).
    pub failure_threshold: u32,
    /// How long an open breaker waits before it may be probed.
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: 3,
            cool_down: Duration::from_secs(1),
        }
    }
}

/// May a request go now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Yes, an ordinary request.
    Yes,
    /// Yes, as the half-open breaker's one trial: its result decides.
    Trial,
    /// No: the breaker is open, or its trial is already under way.
    No,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    /// `trial_out`: the one trial request has been admitted and not yet reported.
    HalfOpen {
        trial_out: bool,
    },
}

/// What changed, so the caller can log transitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    Opened,
    HalfOpened,
    Closed,
}

#[derive(Debug, Clone)]
pub struct Breaker {
    cfg: BreakerConfig,
    failures: u32,
    phase: Phase,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        Breaker {
            cfg: BreakerConfig {
                failure_threshold: cfg.failure_threshold.max(1),
                ..cfg
            },
            failures: 0,
            phase: Phase::Closed,
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { .. } => BreakerState::Open,
            Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Consecutive failures counted while closed.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// How many requests the breaker would admit now: unbounded (`None`), one, or none.
    pub fn capacity(&self) -> Option<u32> {
        match self.phase {
            Phase::Closed => None,
            Phase::HalfOpen { trial_out: false } => Some(1),
            Phase::HalfOpen { trial_out: true } | Phase::Open { .. } => Some(0),
        }
    }

    /// Admits a request or not. A [`Admit::Trial`] must be followed by
    /// `on_success(true)`, `on_failure(true, _)` or `on_abandoned()`.
    pub fn admit(&mut self) -> Admit {
        match self.phase {
            Phase::Closed => Admit::Yes,
            Phase::HalfOpen { trial_out: false } => {
                self.phase = Phase::HalfOpen { trial_out: true };
                Admit::Trial
            }
            Phase::HalfOpen { trial_out: true } | Phase::Open { .. } => Admit::No,
        }
    }

    /// A request succeeded. `trial` tells whether it was admitted as the trial.
    pub fn on_success(&mut self, trial: bool) -> Transition {
        match self.phase {
            Phase::Closed => {
                self.failures = 0;
                Transition::None
            }
            Phase::HalfOpen { trial_out: true } if trial => {
                self.close();
                Transition::Closed
            }
            Phase::HalfOpen { .. } | Phase::Open { .. } => Transition::None,
        }
    }

    /// A request failed at `now`. `trial` tells whether it was admitted as the trial.
    pub fn on_failure(&mut self, trial: bool, now: Instant) -> Transition {
        match self.phase {
            Phase::Closed => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.cfg.failure_threshold {
                    self.open(now);
                    Transition::Opened
                } else {
                    Transition::None
                }
            }
            Phase::HalfOpen { trial_out: true } if trial => {
                self.open(now);
                Transition::Opened
            }
            Phase::HalfOpen { .. } | Phase::Open { .. } => Transition::None,
        }
    }

    /// The trial ended without telling anything (its caller left): another may go.
    pub fn on_abandoned(&mut self) {
        if let Phase::HalfOpen { trial_out: true } = self.phase {
            self.phase = Phase::HalfOpen { trial_out: false };
        }
    }

    /// True when the breaker is open and its cool-down has passed: time to probe.
    pub fn probe_due(&self, now: Instant) -> bool {
        matches!(self.phase, Phase::Open { until } if now >= until)
    }

    /// The result of a probe (a health check) at `now`. A good probe after the
    /// cool-down half-opens the breaker; a bad one while not closed (re)starts
    /// the cool-down. Probes of a closed breaker change nothing.
    pub fn on_probe(&mut self, ok: bool, now: Instant) -> Transition {
        match (self.phase, ok) {
            (Phase::Closed, _) => Transition::None,
            (Phase::Open { until }, true) if now >= until => {
                self.phase = Phase::HalfOpen { trial_out: false };
                Transition::HalfOpened
            }
            (Phase::Open { .. }, true) | (Phase::HalfOpen { .. }, true) => Transition::None,
            (Phase::Open { .. }, false) => {
                self.open(now);
                Transition::None
            }
            (Phase::HalfOpen { .. }, false) => {
                self.open(now);
                Transition::Opened
            }
        }
    }

    fn open(&mut self, now: Instant) {
        self.phase = Phase::Open {
            until: now + self.cfg.cool_down,
        };
        self.failures = 0;
    }

    fn close(&mut self) {
        self.phase = Phase::Closed;
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(2);

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig {
            failure_threshold: 3,
            cool_down: COOL,
        })
    }

    #[test]
    fn consecutive_failures_open_it_and_a_success_resets_the_count() {
        let t0 = Instant::now();
        let mut b = breaker();
        assert_eq!(b.admit(), Admit::Yes);
        assert_eq!(b.on_failure(false, t0), Transition::None);
        assert_eq!(b.on_failure(false, t0), Transition::None);
        assert_eq!(b.on_success(false), Transition::None);
        assert_eq!(b.failures(), 0);
        b.on_failure(false, t0);
        b.on_failure(false, t0);
        assert_eq!(b.on_failure(false, t0), Transition::Opened);
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.admit(), Admit::No);
        assert_eq!(b.capacity(), Some(0));
    }

    #[test]
    fn no_probe_before_the_cool_down_and_a_failed_probe_restarts_it() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(false, t0);
        }
        assert!(!b.probe_due(t0 + COOL / 2));
        assert_eq!(b.on_probe(true, t0 + COOL / 2), Transition::None);
        assert_eq!(b.state(), BreakerState::Open, "too early to half-open");
        assert!(b.probe_due(t0 + COOL));
        let t1 = t0 + COOL;
        assert_eq!(b.on_probe(false, t1), Transition::None);
        assert!(
            !b.probe_due(t1 + COOL / 2),
            "a failed probe starts a new cool-down"
        );
        assert_eq!(b.on_probe(true, t1 + COOL), Transition::HalfOpened);
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }

    #[test]
    fn half_open_admits_one_trial_whose_result_decides() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(false, t0);
        }
        b.on_probe(true, t0 + COOL);
        assert_eq!(b.capacity(), Some(1));
        assert_eq!(b.admit(), Admit::Trial);
        assert_eq!(b.admit(), Admit::No, "one trial at a time");
        assert_eq!(b.capacity(), Some(0));
        // An old request's success does not close it; the trial's failure reopens it.
        assert_eq!(b.on_success(false), Transition::None);
        assert_eq!(b.on_failure(true, t0 + COOL), Transition::Opened);
        assert_eq!(b.state(), BreakerState::Open);
        // Next round: the trial succeeds and the breaker closes.
        b.on_probe(true, t0 + COOL * 2);
        assert_eq!(b.admit(), Admit::Trial);
        assert_eq!(b.on_success(true), Transition::Closed);
        assert_eq!(b.state(), BreakerState::Closed);
        assert_eq!(b.capacity(), None);
        assert_eq!(b.admit(), Admit::Yes);
    }

    #[test]
    fn an_abandoned_trial_lets_another_go_and_a_bad_probe_reopens() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(false, t0);
        }
        b.on_probe(true, t0 + COOL);
        assert_eq!(b.admit(), Admit::Trial);
        b.on_abandoned();
        assert_eq!(b.admit(), Admit::Trial);
        assert_eq!(b.on_probe(false, t0 + COOL), Transition::Opened);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[test]
    fn failures_of_old_requests_while_open_change_nothing() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(false, t0);
        }
        // Late failures must not push the cool-down further out.
        assert_eq!(b.on_failure(false, t0 + COOL), Transition::None);
        assert!(b.probe_due(t0 + COOL));
        // A closed breaker ignores probes, and a threshold of 0 is taken as 1.
        let mut b = Breaker::new(BreakerConfig {
            failure_threshold: 0,
            cool_down: COOL,
        });
        assert_eq!(b.on_probe(false, t0), Transition::None);
        assert_eq!(b.on_failure(false, t0), Transition::Opened);
    }
}
