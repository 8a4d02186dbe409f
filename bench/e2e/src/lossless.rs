//! The zero-loss throughput search (RFC 2544 §26.1): the highest offered rate
//! at which the forwarder loses at most [`MAX_LOSS`] of the frames, found by a
//! binary search over paced trials. Pure: the trial is a closure, so the
//! search's logic is tested without the kernel.
use std::time::Duration;

use anyhow::Result;
use serde::{Deserialize, Serialize};

/// The loss a passing trial may have: 0.1 %.
pub const MAX_LOSS: f64 = 0.001;
/// A trial whose generator sent less than this share of the asked rate (its
/// frames counted until the last one left its TX ring) fails: a forwarder that
/// slows its sender down is not keeping up, though it loses nothing (the
/// generator alone paces to within 0.1 %).
pub const MIN_ACHIEVED: f64 = 0.99;
/// The search stops when the bracket (highest pass, lowest failure) is this
/// narrow, relative to its top.
pub const PRECISION: f64 = 0.02;
/// After a trial's last frame left the generator, before its received count
/// is read: the frames still in the forwarder's rings arrive.
pub const DRAIN: Duration = Duration::from_millis(100);
/// The highest share of the generator's unpaced rate a search tries.
pub const GENERATOR_SHARE: f64 = 0.98;
/// The flush before each trial: 500 frames, one at a time.
pub const FLUSH_RATE: u32 = 10_000;
pub const FLUSH: Duration = Duration::from_millis(50);
/// Before each trial, so that the forwarder's rings and queues are empty.
pub const PAUSE: Duration = Duration::from_millis(50);
/// The top of the bracket: this many times the first rate tried, and grown by
/// as much while it passes.
pub const CEILING_FACTOR: f64 = 1.5;

/// One paced trial: the rate asked for, the frames sent and received, and the
/// seconds the sending took.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct Trial {
    pub rate: f64,
    pub sent: u64,
    pub received: u64,
    pub seconds: f64,
}

impl Trial {
    /// 1 − received ÷ sent; a trial that sent nothing lost everything.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        1.0 - self.received as f64 / self.sent as f64
    }

    pub fn passes(&self) -> bool {
        // In counts: 1 − 99 900 ÷ 100 000 is a hair above 0.001 in floating point.
        let lost = self.sent.saturating_sub(self.received);
        self.sent > 0 && lost as f64 <= MAX_LOSS * self.sent as f64 && !self.short()
    }

    /// Whether the generator fell short of the asked rate (see [`MIN_ACHIEVED`]).
    pub fn short(&self) -> bool {
        self.achieved() < MIN_ACHIEVED * self.rate
    }

    /// The rate the generator achieved (frames per second).
    pub fn achieved(&self) -> f64 {
        if self.seconds > 0.0 {
            self.sent as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Where a search starts, how high it may go, and how many trials it has.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The first rate tried (the overload window's received rate: near the
    /// answer).
    pub start: f64,
    /// The top of the bracket, tried after the first pass; when it passes,
    /// the bracket grows by half up to `limit`.
    pub ceiling: f64,
    /// The highest rate ever tried (what the generator can send).
    pub limit: f64,
    /// Rates tried, at most (a rate takes up to two trials).
    pub max_rates: usize,
}

/// A finished search: every trial in order, and the highest passing one.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Search {
    pub trials: Vec<Trial>,
    pub best: Option<Trial>,
    /// The lowest rate that failed; None when none did.
    pub lowest_failure: Option<f64>,
}

/// Binary search on the offered rate, starting at `bounds.start`: until a
/// rate fails the next one is the ceiling (grown by half each time it passes,
/// up to the limit); then each rate halves the bracket between the highest
/// rate that passed (0 before any) and the lowest that failed. A rate that
/// lost frames fails only when a second trial at it loses them too (it passes
/// with the best of two): on this VM a forwarding core's scheduling hiccup of
/// a millisecond overflows veth's 256-frame ring, and one such hiccup would
/// otherwise end the search far below what the forwarder carries the rest of
/// the time. A trial short of its rate (push-back) is not repeated: that
/// repeats. It stops when the bracket is within [`PRECISION`], at a passing
/// limit, or after `max_rates` rates.
pub fn search(bounds: Bounds, mut trial: impl FnMut(f64) -> Result<Trial>) -> Result<Search> {
    let limit = bounds.limit.max(1.0);
    let mut ceiling = bounds.ceiling.clamp(1.0, limit);
    let mut pass = 0.0f64;
    let mut out = Search {
        trials: Vec::new(),
        best: None,
        lowest_failure: None,
    };
    let mut rate = bounds.start.clamp(1.0, ceiling);
    for _ in 0..bounds.max_rates {
        let mut t = trial(rate)?;
        out.trials.push(t);
        if !t.passes() && !t.short() {
            t = trial(rate)?;
            out.trials.push(t);
        }
        if t.passes() {
            pass = rate;
            out.best = Some(t);
        } else {
            out.lowest_failure = Some(out.lowest_failure.map_or(rate, |f: f64| f.min(rate)));
        }
        if pass >= ceiling {
            if ceiling >= limit {
                break;
            }
            ceiling = (ceiling * CEILING_FACTOR).min(limit);
        }
        rate = match out.lowest_failure {
            // Only passes so far: the top of the bracket next.
            None => ceiling,
            Some(fail) if fail - pass <= PRECISION * fail => break,
            Some(fail) => (pass + fail) / 2.0,
        };
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use anyhow::bail;

    use super::*;

    /// A forwarder that delivers every frame up to `capacity` per second and
    /// loses the excess, trials of one second at exactly the asked rate.
    fn forwarder(capacity: f64) -> impl FnMut(f64) -> Result<Trial> {
        move |rate| {
            let sent = rate.round() as u64;
            Ok(Trial {
                rate,
                sent,
                received: sent.min(capacity as u64),
                seconds: 1.0,
            })
        }
    }

    /// The rates a search tried, after checking how it tried them: a rate
    /// twice in a row only after a trial that lost frames, never three times,
    /// and at most `max_rates` rates.
    fn rates(s: &Search, max_rates: usize) -> usize {
        let t = &s.trials;
        let mut rates = 0;
        let mut i = 0;
        while i < t.len() {
            rates += 1;
            if t.get(i + 1).is_some_and(|next| next.rate == t[i].rate) {
                assert!(!t[i].passes() && !t[i].short(), "trial {i} repeated: {s:?}");
                i += 1;
            }
            i += 1;
        }
        assert!(rates <= max_rates, "{rates} rates: {s:?}");
        rates
    }

    fn bounds(start: f64, ceiling: f64) -> Bounds {
        Bounds {
            start,
            ceiling,
            limit: ceiling,
            max_rates: 8,
        }
    }

    #[test]
    fn loss_and_pass() {
        let t = |sent, received| Trial {
            rate: 1000.0,
            sent,
            received,
            seconds: 0.5,
        };
        assert!(t(100_000, 100_000).passes());
        assert!(t(100_000, 99_900).passes());
        assert!(!t(100_000, 99_899).passes());
        assert!(!t(0, 0).passes());
        // 0.5 s at 1000/s is 500 frames: 495 is 1 % short, 494 more.
        assert!(t(495, 495).passes());
        assert!(!t(494, 494).passes() && t(494, 494).short());
        assert_eq!(t(0, 0).loss(), 1.0);
        assert_eq!(t(1000, 500).achieved(), 2000.0);
    }

    #[test]
    fn finds_the_capacity_within_the_precision() {
        // Within 8 trials when the capacity is at least half the start.
        for (capacity, start, ceiling) in [
            (260_000.0, 240_000.0, 360_000.0),
            (260_000.0, 300_000.0, 450_000.0),
            (121_000.0, 240_000.0, 360_000.0),
            (355_000.0, 240_000.0, 360_000.0),
        ] {
            let s = search(bounds(start, ceiling), forwarder(capacity)).unwrap();
            let best = s.best.expect("a rate passed").rate;
            assert!(best <= capacity, "{capacity}: {best} loses frames");
            let fail = s.lowest_failure.expect("a rate failed");
            assert!(capacity < fail, "{capacity}: {s:?}");
            assert!(
                fail - best <= PRECISION * fail,
                "{capacity}: bracket {best}..{fail}"
            );
            rates(&s, 8);
        }
        // Far below the start the budget ends first, the bracket still right.
        let s = search(bounds(240_000.0, 360_000.0), forwarder(50_000.0)).unwrap();
        assert_eq!(rates(&s, 8), 8);
        let best = s.best.expect("a rate passed").rate;
        assert!(
            best <= 50_000.0 && 50_000.0 < s.lowest_failure.unwrap(),
            "{s:?}"
        );
    }

    #[test]
    fn a_forwarder_faster_than_the_limit_is_reported_at_the_limit() {
        let s = search(bounds(200_000.0, 300_000.0), forwarder(1e9)).unwrap();
        assert_eq!(s.best.unwrap().rate, 300_000.0);
        assert_eq!(s.trials.last().unwrap().rate, 300_000.0);
        assert_eq!(s.lowest_failure, None);
        assert_eq!(
            s.trials.len(),
            rates(&s, 8),
            "nothing failed, nothing repeated"
        );
    }

    #[test]
    fn a_passing_ceiling_grows_the_bracket_up_to_the_limit() {
        let b = Bounds {
            limit: 1_000_000.0,
            ..bounds(200_000.0, 300_000.0)
        };
        let s = search(b, forwarder(400_000.0)).unwrap();
        let best = s.best.unwrap().rate;
        let fail = s.lowest_failure.unwrap();
        assert!(best <= 400_000.0 && 400_000.0 < fail, "{s:?}");
        assert!(fail - best <= PRECISION * fail, "{s:?}");
        // The ceiling grew once, to 450k, and no trial went above it.
        assert!(s.trials.iter().all(|t| t.rate <= 450_000.0), "{s:?}");
        let s = search(b, forwarder(1e9)).unwrap();
        assert_eq!(s.best.unwrap().rate, 1_000_000.0, "{s:?}");
    }

    #[test]
    fn stops_after_max_rates_when_nothing_passes() {
        let s = search(bounds(200_000.0, 300_000.0), forwarder(0.0)).unwrap();
        assert_eq!(s.best, None);
        // Each rate twice, each failure halving the rate.
        assert_eq!(rates(&s, 8), 8);
        assert_eq!(s.trials.len(), 16);
        assert_eq!(s.trials[1].rate, 200_000.0);
        assert_eq!(s.trials[2].rate, 100_000.0);
        assert_eq!(s.lowest_failure, Some(s.trials[15].rate));
    }

    #[test]
    fn one_failed_trial_at_a_rate_the_forwarder_carries_does_not_fail_the_rate() {
        // Every third trial meets a hiccup and loses 1 % of its frames.
        let mut inner = forwarder(260_000.0);
        let mut n = 0;
        let hiccups = move |rate| {
            n += 1;
            let mut t = inner(rate)?;
            if n % 3 == 1 {
                t.received = t.received * 99 / 100;
            }
            Ok(t)
        };
        let s = search(bounds(240_000.0, 360_000.0), hiccups).unwrap();
        rates(&s, 8);
        let (best, fail) = (s.best.unwrap().rate, s.lowest_failure.unwrap());
        assert!(best <= 260_000.0 && 260_000.0 < fail, "{s:?}");
        assert!(fail - best <= PRECISION * fail, "{s:?}");
        // The first trial, at 240k, met a hiccup: its repeat passed.
        assert!(!s.trials[0].passes() && s.trials[1].passes(), "{s:?}");
        assert_eq!(s.trials[1].rate, 240_000.0);
    }

    #[test]
    fn a_trial_short_of_its_rate_fails_even_without_loss() {
        // The forwarder pushes back above 230k/s: the generator sends no more,
        // and every frame it sends arrives.
        let push_back = |rate: f64| {
            let sent = rate.min(230_000.0) as u64;
            Ok(Trial {
                rate,
                sent,
                received: sent,
                seconds: 1.0,
            })
        };
        let s = search(bounds(250_000.0, 300_000.0), push_back).unwrap();
        // No short trial was repeated (`rates` checks each repeat).
        assert_eq!(s.trials.len(), rates(&s, 8), "{s:?}");
        let best = s.best.unwrap();
        assert!(
            best.achieved() <= 230_000.0 && best.achieved() > 225_000.0,
            "{s:?}"
        );
        assert!(s.trials.iter().any(|t| t.short() && !t.passes()));
    }

    #[test]
    fn a_failing_trial_ends_the_search_with_its_error() {
        let e = search(bounds(1.0, 2.0), |_| bail!("generator gone")).unwrap_err();
        assert_eq!(e.to_string(), "generator gone");
    }
}
