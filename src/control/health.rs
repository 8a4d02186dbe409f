//! Health-check rise/fall: a backend flips Down after `fall` consecutive failed
//! probes and back Up after `rise` consecutive successful ones.
use crate::config::HealthCheck;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Up,
    Down,
}

/// Rise/fall state of one backend.
///
/// Starts [`Health::Up`]: a configured backend is assumed healthy at start so traffic
/// flows before the first probes complete; it takes `fall` failures to take it out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthState {
    rise: u32,
    fall: u32,
    health: Health,
    successes: u32,
    failures: u32,
}

impl HealthState {
    pub fn new(check: &HealthCheck) -> Self {
        Self {
            rise: check.rise.max(1),
            fall: check.fall.max(1),
            health: Health::Up,
            successes: 0,
            failures: 0,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Records one probe result; returns `Some(new)` when the state flips: `fall`
    /// consecutive failures while Up -> Down, `rise` consecutive successes while
    /// Down -> Up. A result of the other kind resets the streak.
    pub fn record(&mut self, ok: bool) -> Option<Health> {
        if ok {
            self.successes = self.successes.saturating_add(1);
            self.failures = 0;
            if self.health == Health::Down && self.successes >= self.rise {
                self.health = Health::Up;
                return Some(Health::Up);
            }
        } else {
            self.failures = self.failures.saturating_add(1);
            self.successes = 0;
            if self.health == Health::Up && self.failures >= self.fall {
                self.health = Health::Down;
                return Some(Health::Down);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    impl HealthState {
        /// Current streaks: (consecutive successes, consecutive failures); one is 0.
        fn consecutive(&self) -> (u32, u32) {
            (self.successes, self.failures)
        }
    }

    fn state(rise: u32, fall: u32) -> HealthState {
        HealthState::new(&HealthCheck {
            rise,
            fall,
            ..HealthCheck::default()
        })
    }

    #[test]
    fn defaults() {
        let c = HealthCheck::default();
        assert_eq!(
            (c.interval, c.timeout, c.rise, c.fall),
            (Duration::from_secs(1), Duration::from_millis(500), 2, 3)
        );
        let s = HealthState::new(&c);
        assert_eq!((s.health(), s.consecutive()), (Health::Up, (0, 0)));
    }

    #[test]
    fn falls_after_fall_failures_and_rises_after_rise_successes() {
        let mut s = state(2, 3);
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(false), None);
        assert_eq!(s.consecutive(), (0, 2));
        assert_eq!(s.record(false), Some(Health::Down));
        assert_eq!(s.health(), Health::Down);
        // Further failures do not flip again.
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(true), None);
        assert_eq!(s.consecutive(), (1, 0));
        assert_eq!(s.record(true), Some(Health::Up));
        assert_eq!(s.health(), Health::Up);
        assert_eq!(s.record(true), None);
    }

    #[test]
    fn opposite_result_resets_streak() {
        let mut s = state(2, 3);
        for _ in 0..10 {
            assert_eq!(s.record(false), None);
            assert_eq!(s.record(false), None);
            assert_eq!(s.record(true), None);
        }
        assert_eq!(s.health(), Health::Up);
        for _ in 0..3 {
            s.record(false);
        }
        assert_eq!(s.health(), Health::Down);
        for _ in 0..10 {
            assert_eq!(s.record(true), None);
            assert_eq!(s.record(false), None);
        }
        assert_eq!(s.health(), Health::Down);
        assert_eq!(s.consecutive(), (0, 1));
    }

    #[test]
    fn rise_and_fall_of_one_flip_on_every_change() {
        let mut s = state(1, 1);
        assert_eq!(s.record(true), None);
        assert_eq!(s.record(false), Some(Health::Down));
        assert_eq!(s.record(false), None);
        assert_eq!(s.record(true), Some(Health::Up));
        assert_eq!(s.record(false), Some(Health::Down));
    }

    #[test]
    fn zero_thresholds_behave_as_one() {
        let mut s = state(0, 0);
        assert_eq!(s.record(false), Some(Health::Down));
        assert_eq!(s.record(true), Some(Health::Up));
    }
}
