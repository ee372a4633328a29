//! Small incremental statistics the rules share: a rolling window with O(1) mean and standard
//! deviation, the episode latch that deduplicates alerts, and number formatting for messages.

use std::collections::VecDeque;

use crate::event::Severity;

/// The last `cap` values with their seqs; mean and population standard deviation in O(1).
///
/// A ring buffer; sums are updated on push and recomputed exactly from the window every 8 × `cap`
/// pushes, so rounding cannot drift over millions of samples (amortised O(1)).
#[derive(Debug, Clone)]
pub struct Window {
    cap: usize,
    /// Oldest at `head` once full.
    items: Vec<(f64, u64)>,
    head: usize,
    sum: f64,
    sumsq: f64,
    since_exact: usize,
}

impl Window {
    pub fn new(cap: u32) -> Window {
        let cap = cap.max(1) as usize;
        Window {
            cap,
            items: Vec::with_capacity(cap),
            head: 0,
            sum: 0.0,
            sumsq: 0.0,
            since_exact: 0,
        }
    }

    pub fn push(&mut self, v: f64, seq: u64) {
        if self.items.len() < self.cap {
            self.items.push((v, seq));
        } else {
            let old = std::mem::replace(&mut self.items[self.head], (v, seq)).0;
            self.head = (self.head + 1) % self.cap;
            self.sum -= old;
            self.sumsq -= old * old;
        }
        self.sum += v;
        self.sumsq += v * v;
        self.since_exact += 1;
        if self.since_exact >= 8 * self.cap {
            self.since_exact = 0;
            self.sum = self.items.iter().map(|p| p.0).sum();
            self.sumsq = self.items.iter().map(|p| p.0 * p.0).sum();
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn mean(&self) -> f64 {
        if self.items.is_empty() {
            f64::NAN
        } else {
            self.sum / self.items.len() as f64
        }
    }

    /// Population standard deviation (numpy's default, as OLMo-core computes it).
    pub fn std(&self) -> f64 {
        let n = self.items.len() as f64;
        if n == 0.0 {
            return f64::NAN;
        }
        let m = self.sum / n;
        (self.sumsq / n - m * m).max(0.0).sqrt()
    }

    /// Oldest first.
    fn ordered(&self) -> impl Iterator<Item = &(f64, u64)> + '_ {
        let (a, b) = self.items.split_at(self.head);
        b.iter().chain(a)
    }

    pub fn seqs(&self) -> impl Iterator<Item = u64> + '_ {
        self.ordered().map(|p| p.1)
    }

    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.ordered().map(|p| p.0)
    }
}

/// The noise of a series, robustly: from its last `cap` successive differences, the median
/// absolute deviation × 1.4826 (the standard deviation for normal noise), divided by √2. A linear
/// trend shifts every difference equally and a few sharp moves (the end of a steep early decay,
/// the rise being judged) barely move a median, so neither counts as noise. O(1) to feed;
/// O(cap log cap) to ask, which the rules do only when everything else says alert.
#[derive(Debug, Clone)]
pub struct Noise {
    prev: f64,
    diffs: Window,
}

impl Noise {
    pub fn new(cap: u32) -> Noise {
        Noise {
            prev: f64::NAN,
            diffs: Window::new(cap),
        }
    }

    /// Feed the next finite value.
    pub fn push(&mut self, v: f64) {
        if self.prev.is_finite() {
            self.diffs.push(v - self.prev, 0);
        }
        self.prev = v;
    }

    /// The estimated standard deviation of one value around its trend, once 5 differences are
    /// in (0 before: no evidence of noise yet).
    pub fn sigma(&self) -> f64 {
        if self.diffs.len() < 5 {
            return 0.0;
        }
        let m = median(self.diffs.values());
        let mad = median(self.diffs.values().map(|d| (d - m).abs()));
        mad * 1.4826 / std::f64::consts::SQRT_2
    }
}

/// The last `cap` seqs, for evidence.
#[derive(Debug, Clone)]
pub struct SeqRing {
    cap: usize,
    items: VecDeque<u64>,
}

impl SeqRing {
    pub fn new(cap: usize) -> SeqRing {
        SeqRing {
            cap: cap.max(1),
            items: VecDeque::with_capacity(cap.max(1) + 1),
        }
    }

    pub fn push(&mut self, seq: u64) {
        if self.items.len() == self.cap {
            self.items.pop_front();
        }
        self.items.push_back(seq);
    }

    /// The last `n` seqs, oldest first.
    pub fn last(&self, n: usize) -> Vec<u64> {
        let skip = self.items.len().saturating_sub(n);
        self.items.iter().skip(skip).copied().collect()
    }
}

/// One alert per episode of a condition.
///
/// An alert opens an episode; while it is open the same condition does not alert again, except
/// to escalate (warn → stop). The episode closes after the condition has been false for
/// `rearm_after` consecutive evaluations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Latch {
    open: Option<Severity>,
    quiet: u32,
}

impl Latch {
    /// Feed the condition's state now (`Some(severity)` when it holds); returns the severity to
    /// alert with, if this evaluation alerts.
    pub fn update(&mut self, now: Option<Severity>, rearm_after: u32) -> Option<Severity> {
        match now {
            Some(s) => {
                self.quiet = 0;
                match self.open {
                    Some(open) if s <= open => None,
                    _ => {
                        self.open = Some(s);
                        Some(s)
                    }
                }
            }
            None => {
                if self.open.is_some() {
                    self.quiet += 1;
                    if self.quiet >= rearm_after {
                        self.open = None;
                        self.quiet = 0;
                    }
                }
                None
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }
}

/// A number as C's `%g` writes it (6 significant digits, shortest form); NaN and infinities as
/// the JSON edge spells them.
pub fn fmt_g(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.abs().log10().floor() as i32;
    // Rounding to 6 significant digits can carry into the next power of ten.
    let sci = format!("{:.5e}", v);
    let (mant, e) = sci.split_once('e').unwrap_or((&sci, "0"));
    let e: i32 = e.parse().unwrap_or(exp);
    if !(-4..6).contains(&e) {
        let mant = trim_zeros(mant);
        let sign = if e < 0 { '-' } else { '+' };
        format!("{mant}e{sign}{:02}", e.abs())
    } else {
        let decimals = (5 - e).max(0) as usize;
        trim_zeros(&format!("{:.*}", decimals, v)).to_owned()
    }
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// The median of some values (NaN when there are none).
pub fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_printf_g() {
        let cases = [
            (0.041234567, "0.0412346"),
            (1.0, "1"),
            (123456.0, "123456"),
            (1234567.0, "1.23457e+06"),
            (0.0001, "0.0001"),
            (0.00001234, "1.234e-05"),
            (-2.5, "-2.5"),
            (999999.5, "1e+06"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
            (0.0, "0"),
        ];
        for (v, want) in cases {
            assert_eq!(fmt_g(v), want, "{v}");
        }
    }

    #[test]
    fn window_statistics_match_a_direct_computation() {
        let mut w = Window::new(4);
        let xs = [1.0, 2.0, 4.0, 8.0, 16.0, 3.0, 1e9, 1e9 + 1.0, 5.0, 7.0];
        for (i, &x) in xs.iter().enumerate() {
            w.push(x, i as u64);
            let lo = (i + 1).saturating_sub(4);
            let s = &xs[lo..=i];
            let m = s.iter().sum::<f64>() / s.len() as f64;
            let sd = (s.iter().map(|x| (x - m).powi(2)).sum::<f64>() / s.len() as f64).sqrt();
            assert!(
                (w.mean() - m).abs() <= 1e-9 * m.abs().max(1.0),
                "mean at {i}"
            );
            assert!((w.std() - sd).abs() <= 1e-3 * sd.max(1.0), "std at {i}");
            assert_eq!(w.seqs().next(), Some(lo as u64));
        }
    }

    #[test]
    fn latch_alerts_once_per_episode_and_escalates() {
        use Severity::*;
        let mut l = Latch::default();
        let feed = [
            (Some(Warn), Some(Warn)),
            (Some(Warn), None),
            (Some(Stop), Some(Stop)),
            (None, None),
            (Some(Warn), None),
            (None, None),
            (None, None),
            (Some(Warn), Some(Warn)),
        ];
        for (i, (now, want)) in feed.into_iter().enumerate() {
            assert_eq!(l.update(now, 2), want, "step {i}");
        }
    }

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 2.0, 3.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
    }
}
