//! ETA from position and admission rate, and the measured-rate estimator. Pure: no clock reads,
//! no Redis; callers pass instants and counters in.

use std::collections::VecDeque;

/// Expected wait in whole seconds with a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Eta {
    pub eta_seconds: u64,
    /// Optimistic bound: admission runs at the configured rate (or the measured one, if higher).
    pub eta_min_seconds: u64,
    /// Pessimistic bound: the measured rate drops by a third.
    pub eta_max_seconds: u64,
}

/// `position` is 1-based (1 = next to be admitted). `measured` is the recent admission rate per
/// second if there is enough history to trust it; `configured` is the event's ratePerSecond.
/// `until_on_sale` is added when the sale has not started yet.
pub fn eta(position: u64, measured: Option<f64>, configured: u32, until_on_sale_secs: u64) -> Eta {
    let configured = f64::from(configured.max(1));
    // Below a floor the measurement means "admission is stalled" (e.g. maxActive reached); keep a
    // finite answer that is honest about being long.
    let rate = measured.map(|m| m.max(configured / 100.0)).unwrap_or(configured);
    let secs = |users: f64, r: f64| -> u64 { (users / r).ceil() as u64 + until_on_sale_secs };
    let p = position as f64;
    Eta {
        eta_seconds: secs(p, rate),
        eta_min_seconds: secs(p, rate.max(configured)),
        eta_max_seconds: secs(p * 1.5, rate),
    }
}

/// Keeps `(t_ms, admitted_total, depth)` samples over a window and reports the admission rate.
/// A window in which the queue ran empty says how many users came, not how fast admission can
/// go, so it yields no measurement (callers fall back to the configured rate).
#[derive(Debug, Clone)]
pub struct RateEstimator {
    window_ms: i64,
    min_span_ms: i64,
    samples: VecDeque<(i64, u64, u64)>,
}

impl RateEstimator {
    pub fn new(window_ms: i64, min_span_ms: i64) -> Self {
        Self {
            window_ms,
            min_span_ms,
            samples: VecDeque::new(),
        }
    }

    pub fn record(&mut self, t_ms: i64, admitted_total: u64, depth: u64) {
        if let Some(&(_, last, _)) = self.samples.back()
            && admitted_total < last
        {
            // The counter went backwards (keys were reset): start over.
            self.samples.clear();
        }
        self.samples.push_back((t_ms, admitted_total, depth));
        while let Some(&(t0, _, _)) = self.samples.front() {
            if t_ms - t0 > self.window_ms {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Users per second over the window, or None until the samples span `min_span_ms`.
    pub fn rate(&self) -> Option<f64> {
        let (t0, a0, _) = *self.samples.front()?;
        let (t1, a1, _) = *self.samples.back()?;
        if t1 - t0 < self.min_span_ms || self.samples.iter().any(|&(_, _, depth)| depth == 0) {
            return None;
        }
        Some((a1 - a0) as f64 * 1000.0 / (t1 - t0) as f64)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn eta_table() {
        // (position, measured, configured, until) -> (eta, min, max)
        let cases = [
            (100, None, 50, 0, (2, 2, 3)),
            (101, None, 50, 0, (3, 3, 4)),
            (100, Some(10.0), 50, 0, (10, 2, 15)),
            (100, Some(100.0), 50, 0, (1, 1, 2)),
            (1, None, 50, 30, (31, 31, 31)),
            (100, Some(0.0), 50, 0, (200, 2, 300)),
        ];
        for (pos, measured, configured, until, (e, lo, hi)) in cases {
            let got = eta(pos, measured, configured, until);
            assert_eq!(
                (got.eta_seconds, got.eta_min_seconds, got.eta_max_seconds),
                (e, lo, hi),
                "{pos} {measured:?} {configured} {until}"
            );
            assert!(got.eta_min_seconds <= got.eta_seconds && got.eta_seconds <= got.eta_max_seconds);
        }
    }

    #[test]
    fn estimator_needs_a_span_and_forgets_old_samples() {
        let mut r = RateEstimator::new(30_000, 5_000);
        r.record(0, 0, 9);
        r.record(1_000, 50, 9);
        assert_eq!(r.rate(), None);
        for s in 2..=10 {
            r.record(s * 1000, (s * 50) as u64, 9);
        }
        assert_eq!(r.rate(), Some(50.0));
        // 40 s later at a lower rate: only the last 30 s count.
        for s in 11..=50 {
            r.record(s * 1000, 500 + ((s - 10) * 10) as u64, 9);
        }
        assert!((r.rate().unwrap() - 10.0).abs() < 1e-9);
        // The queue ran empty: no measurement until that sample leaves the window.
        r.record(51_000, 910, 0);
        assert_eq!(r.rate(), None);
        r.record(52_000, 0, 9);
        assert_eq!(r.rate(), None);
    }
}
