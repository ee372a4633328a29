//! Bounded, deterministic summaries of a series over epochs, for plotting.
//!
//! A [`Curve`] keeps every sample up to [`CAP`] buckets; past that, adjacent buckets merge in
//! pairs (each bucket then covers twice as many samples), so the memory of one curve is bounded
//! whatever the number of epochs. Every bucket keeps its lowest and highest finite value (with
//! their epochs) and its first non-finite sample, so spikes and NaNs survive any downsampling.
//! The summary is a pure function of the samples in order: a fold from a checkpoint and a fold
//! from the first event give the same curve.
//!
//! [`Thinned`] does the same for point markers (checkpoints, alerts): every item up to [`CAP`],
//! then every second one, every fourth, and so on.

/// Buckets (or thinned items) kept at most.
pub const CAP: usize = 32;

/// One bucket: `n` consecutive samples, from epoch `first` to epoch `last`.
#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    pub n: u64,
    pub first: u64,
    pub last: u64,
    /// Lowest and highest finite values, at the first epoch they were reached.
    pub min: Option<(u64, f64)>,
    pub max: Option<(u64, f64)>,
    /// The first NaN or ±Inf sample.
    pub nonfinite: Option<(u64, f64)>,
}

impl Bucket {
    fn new(epoch: u64, v: f64) -> Bucket {
        let fin = v.is_finite().then_some((epoch, v));
        Bucket {
            n: 1,
            first: epoch,
            last: epoch,
            min: fin,
            max: fin,
            nonfinite: (!v.is_finite()).then_some((epoch, v)),
        }
    }

    /// Add one sample at the end: the same as merging `Bucket::new(epoch, v)` into it, in place
    /// (the fold calls this for every sample of every metric).
    #[inline]
    fn push(&mut self, epoch: u64, v: f64) {
        self.n += 1;
        self.last = epoch;
        if v.is_finite() {
            match &mut self.min {
                Some(m) if v < m.1 => *m = (epoch, v),
                Some(_) => {}
                None => self.min = Some((epoch, v)),
            }
            match &mut self.max {
                Some(m) if v > m.1 => *m = (epoch, v),
                Some(_) => {}
                None => self.max = Some((epoch, v)),
            }
        } else if self.nonfinite.is_none() {
            self.nonfinite = Some((epoch, v));
        }
    }

    fn merge(a: &Bucket, b: &Bucket) -> Bucket {
        let pick = |x: Option<(u64, f64)>, y: Option<(u64, f64)>, lower: bool| match (x, y) {
            (Some(p), Some(q)) => {
                let take_q = if lower { q.1 < p.1 } else { q.1 > p.1 };
                Some(if take_q { q } else { p })
            }
            (p, q) => p.or(q),
        };
        Bucket {
            n: a.n + b.n,
            first: a.first,
            last: b.last,
            min: pick(a.min, b.min, true),
            max: pick(a.max, b.max, false),
            nonfinite: a.nonfinite.or(b.nonfinite),
        }
    }
}

/// A series over epochs, downsampled by min/max buckets past [`CAP`] buckets.
#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    /// Samples per full bucket (a power of two).
    pub width: u64,
    pub buckets: Vec<Bucket>,
}

impl Default for Curve {
    fn default() -> Curve {
        Curve {
            width: 1,
            buckets: Vec::new(),
        }
    }
}

impl Curve {
    pub fn add(&mut self, epoch: u64, v: f64) {
        if let Some(b) = self.buckets.last_mut()
            && b.n < self.width
        {
            b.push(epoch, v);
            return;
        }
        self.buckets.push(Bucket::new(epoch, v));
        if self.buckets.len() > CAP {
            let merged = self
                .buckets
                .chunks(2)
                .map(|c| match c {
                    [a, b] => Bucket::merge(a, b),
                    [a] => a.clone(),
                    _ => unreachable!("chunks of two"),
                })
                .collect();
            self.buckets = merged;
            self.width *= 2;
        }
    }

    /// The points to draw, in order: `Some(v)` for finite values (a bucket's lowest and highest,
    /// by epoch), `None` where a non-finite sample breaks the line.
    pub fn points(&self) -> Vec<(u64, Option<f64>)> {
        let mut out = Vec::with_capacity(self.buckets.len() * 2);
        for b in &self.buckets {
            let mut pts: Vec<(u64, Option<f64>)> = Vec::with_capacity(3);
            if let Some((e, v)) = b.min {
                pts.push((e, Some(v)));
            }
            if let Some((e, v)) = b.max
                && b.max != b.min
            {
                pts.push((e, Some(v)));
            }
            if let Some((e, _)) = b.nonfinite {
                pts.push((e, None));
            }
            // Stable: at equal epochs, values before the break.
            pts.sort_by_key(|p| (p.0, p.1.is_none()));
            out.extend(pts);
        }
        out
    }

    /// Every non-finite sample kept (one per bucket at most).
    pub fn nonfinite(&self) -> impl Iterator<Item = (u64, f64)> + '_ {
        self.buckets.iter().filter_map(|b| b.nonfinite)
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Slot of the learning rate in [`ExpCurves::add`] (metrics are numbered from 0 in the order they
/// first appeared, as in the run's aggregates).
pub const LR_SLOT: u32 = u32::MAX;

/// One experiment's curves: each metric's (named, in the order the metrics first appeared, as
/// `Run::metrics`) and the learning rate's. Kept out of the projection checkpoint, in the curve
/// cache (`super::shard`), and loaded only for the experiments that need them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExpCurves {
    pub metrics: Vec<(String, Curve)>,
    pub lr: Option<Curve>,
}

impl ExpCurves {
    /// Add a sample to the curve in `slot` ([`LR_SLOT`] for the learning rate). A metric slot is
    /// either one that exists or the next one (a metric seen for the first time, named `name`);
    /// anything else is refused, returning false (the caller's metrics and these curves
    /// disagree).
    #[must_use]
    #[inline(always)]
    pub fn add(&mut self, slot: u32, name: &str, epoch: u64, v: f64) -> bool {
        if slot == LR_SLOT {
            self.lr.get_or_insert_with(Curve::default).add(epoch, v);
            return true;
        }
        let s = slot as usize;
        match s.cmp(&self.metrics.len()) {
            std::cmp::Ordering::Less => self.metrics[s].1.add(epoch, v),
            std::cmp::Ordering::Equal => {
                let mut c = Curve::default();
                c.add(epoch, v);
                self.metrics.push((name.to_owned(), c));
            }
            std::cmp::Ordering::Greater => return false,
        }
        true
    }

    /// The curve of a metric, by name.
    pub fn metric(&self, name: &str) -> Option<&Curve> {
        self.metrics.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    pub fn is_empty(&self) -> bool {
        self.metrics.is_empty() && self.lr.is_none()
    }
}

/// Items kept at a stride: all of them up to [`CAP`], then every second, fourth, ....
#[derive(Debug, Clone, PartialEq)]
pub struct Thinned<T> {
    pub stride: u64,
    pub seen: u64,
    pub items: Vec<T>,
}

impl<T> Default for Thinned<T> {
    fn default() -> Thinned<T> {
        Thinned {
            stride: 1,
            seen: 0,
            items: Vec::new(),
        }
    }
}

impl<T> Thinned<T> {
    pub fn add(&mut self, x: T) {
        if self.seen.is_multiple_of(self.stride) {
            self.items.push(x);
            if self.items.len() > CAP {
                let mut k = 0;
                self.items.retain(|_| {
                    k += 1;
                    k % 2 == 1
                });
                self.stride *= 2;
            }
        }
        self.seen += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_stay_bounded_and_keep_spikes_and_non_finite() {
        let mut c = Curve::default();
        for e in 0..10_000u64 {
            let v = match e {
                5_000 => 1e6,
                7_777 => f64::NAN,
                _ => 1.0 / (e as f64 + 1.0),
            };
            c.add(e, v);
            assert!(c.buckets.len() <= CAP);
        }
        assert!(c.width > 1);
        let pts = c.points();
        assert!(pts.contains(&(5_000, Some(1e6))));
        assert!(pts.contains(&(7_777, None)));
        assert_eq!(c.buckets.iter().map(|b| b.n).sum::<u64>(), 10_000);
        // Splitting the samples anywhere gives the same curve (it is a pure fold).
        let mut d = Curve::default();
        for e in 0..10_000u64 {
            d.add(
                e,
                if e == 5_000 {
                    1e6
                } else if e == 7_777 {
                    f64::NAN
                } else {
                    1.0 / (e as f64 + 1.0)
                },
            );
        }
        assert_eq!(format!("{c:?}"), format!("{d:?}"));
    }

    proptest::proptest! {
        /// Adding a sample in place is merging a one-sample bucket: every field, every value
        /// (NaN, ±Inf, ties, -0.0), epochs in any order.
        #[test]
        fn push_is_merge_with_a_one_sample_bucket(
            start in (0u64..50, proptest::num::f64::ANY),
            samples in proptest::collection::vec(
                (0u64..50, proptest::prop_oneof![
                    proptest::num::f64::ANY,
                    proptest::sample::select(vec![0.0, -0.0, 1.0, f64::NAN, f64::INFINITY]),
                ]),
                0..40,
            ),
        ) {
            let mut pushed = Bucket::new(start.0, start.1);
            let mut merged = pushed.clone();
            for (e, v) in samples {
                pushed.push(e, v);
                merged = Bucket::merge(&merged, &Bucket::new(e, v));
                proptest::prop_assert_eq!(format!("{pushed:?}"), format!("{merged:?}"));
            }
        }
    }

    #[test]
    fn buckets_round_trip_through_the_checkpoint_even_when_epochs_go_back() {
        use crate::project::wire::{Dec, Wire};
        let mut c = Curve::default();
        // A resumed run: epochs restart, and one sample sits at the largest epoch there is.
        for e in (0..300u64).chain(0..300).chain([u64::MAX, 0]) {
            c.add(e, if e == 7 { f64::INFINITY } else { e as f64 });
        }
        let mut out = Vec::new();
        c.put(&mut out);
        let back = Curve::get(&mut Dec::new(&out)).unwrap();
        assert_eq!(format!("{back:?}"), format!("{c:?}"));
    }

    #[test]
    fn thinned_items_stay_bounded_at_a_stride() {
        let mut t = Thinned::default();
        for i in 0..1000u64 {
            t.add(i);
            assert!(t.items.len() <= CAP);
        }
        // The smallest power-of-two stride that keeps 1,000 items within CAP.
        let mut stride = 1u64;
        while 1000u64.div_ceil(stride) > CAP as u64 {
            stride *= 2;
        }
        assert_eq!(t.stride, stride);
        assert!(t.items.iter().all(|i| i % stride == 0));
        assert_eq!(t.items[0], 0);
    }
}
