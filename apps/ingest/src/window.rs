//! Event-time windows: which window a reading belongs to, and which windows
//! a batch closes. A series' watermark is the latest `observed_at` it has
//! seen minus the allowed lateness; a window `[start, start + length)` is
//! closed once the watermark reaches its end. Readings for a window that was
//! already closed are late: they re-trigger its aggregation once.

use chrono::{DateTime, Duration, Utc};

/// The windowing rules for a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windowing {
    /// Window length (windows are aligned to the Unix epoch).
    pub length: Duration,
    /// How long after a window's end readings are still on time.
    pub allowed_lateness: Duration,
    /// Most windows one batch may close per series (a device silent for a
    /// month does not enqueue a month of empty windows).
    pub max_closed_per_batch: usize,
}

impl Default for Windowing {
    fn default() -> Self {
        Self {
            length: Duration::minutes(1),
            allowed_lateness: Duration::seconds(10),
            max_closed_per_batch: 100,
        }
    }
}

impl Windowing {
    /// Start of the window holding `at`.
    pub fn window_start(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        let length = self.length.num_microseconds().unwrap_or(i64::MAX).max(1);
        let micros = at.timestamp_micros();
        DateTime::from_timestamp_micros(micros - micros.rem_euclid(length)).unwrap_or(at)
    }

    /// The watermark after seeing readings up to `latest`.
    pub fn watermark(&self, latest: DateTime<Utc>) -> DateTime<Utc> {
        latest - self.allowed_lateness
    }

    /// Whether the window starting at `start` is closed under `watermark`.
    pub fn is_closed(&self, start: DateTime<Utc>, watermark: DateTime<Utc>) -> bool {
        start + self.length <= watermark
    }

    /// Starts of the windows that close when the watermark moves from
    /// `before` to `after`, oldest first, at most `max_closed_per_batch`
    /// (the newest ones are kept).
    pub fn closed_between(
        &self,
        before: DateTime<Utc>,
        after: DateTime<Utc>,
    ) -> Vec<DateTime<Utc>> {
        let mut starts = Vec::new();
        // The newest window closed by `after` ends at or before it.
        let mut end = self.window_start(after);
        while end > before && starts.len() < self.max_closed_per_batch {
            starts.push(end - self.length);
            end -= self.length;
        }
        starts.reverse();
        starts
    }

    /// The windows a batch asks to aggregate, given the series' watermark
    /// before it (`None` for a new series), after it, and the times of the
    /// readings the batch newly stored: the windows the watermark closed,
    /// plus closed windows that received readings. A window that was closed
    /// before the batch is flagged late (re-aggregated once).
    pub fn to_aggregate(
        &self,
        before: Option<DateTime<Utc>>,
        after: DateTime<Utc>,
        stored: impl IntoIterator<Item = DateTime<Utc>>,
    ) -> Vec<(DateTime<Utc>, bool)> {
        let mut windows: Vec<(DateTime<Utc>, bool)> = match before {
            Some(before) if after > before => self
                .closed_between(before, after)
                .into_iter()
                .map(|start| (start, false))
                .collect(),
            _ => Vec::new(),
        };
        for at in stored {
            let start = self.window_start(at);
            if self.is_closed(start, after) {
                let late = before.is_some_and(|b| self.is_closed(start, b));
                windows.push((start, late));
            }
        }
        windows.sort();
        windows.dedup_by_key(|(start, _)| *start);
        windows
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap()
    }

    fn rules() -> Windowing {
        Windowing {
            length: Duration::seconds(60),
            allowed_lateness: Duration::seconds(10),
            max_closed_per_batch: 100,
        }
    }

    #[test]
    fn windows_are_aligned_and_close_after_lateness() {
        let w = rules();
        assert_eq!(w.window_start(at(125)), at(120));
        assert_eq!(w.window_start(at(-5)), at(-60));
        assert!(
            !w.is_closed(at(60), w.watermark(at(125))),
            "115 < 120: still open"
        );
        assert!(w.is_closed(at(60), w.watermark(at(130))));
    }

    #[test]
    fn a_moving_watermark_closes_each_window_once() {
        let w = rules();
        assert_eq!(
            w.closed_between(at(100), at(115)),
            Vec::<DateTime<Utc>>::new()
        );
        assert_eq!(w.closed_between(at(115), at(125)), [at(60)]);
        assert_eq!(
            w.closed_between(at(125), at(310)),
            [at(120), at(180), at(240)]
        );
        assert_eq!(
            w.closed_between(at(310), at(300)),
            Vec::<DateTime<Utc>>::new(),
            "watermarks never go back"
        );
    }

    #[test]
    fn a_long_silence_closes_a_bounded_number_of_windows() {
        let w = Windowing {
            max_closed_per_batch: 3,
            ..rules()
        };
        assert_eq!(
            w.closed_between(at(0), at(100_000)),
            [at(99_780), at(99_840), at(99_900)]
        );
    }

    #[test]
    fn batches_aggregate_closed_windows_and_flag_late_ones() {
        let w = rules();
        // A new series whose batch spans three windows: the two closed ones.
        assert_eq!(
            w.to_aggregate(None, at(185 - 10), [at(5), at(70), at(185)]),
            [(at(0), false), (at(60), false)]
        );
        // A late reading for window 0 after the watermark passed it.
        assert_eq!(
            w.to_aggregate(Some(at(175)), at(175), [at(30)]),
            [(at(0), true)]
        );
        // The watermark moves past 180: window 120 closes, on time.
        assert_eq!(
            w.to_aggregate(Some(at(175)), at(250), [at(260)]),
            [(at(120), false), (at(180), false)]
        );
    }

    proptest! {
        /// Any sequence of watermarks closes every window between the first
        /// and the last exactly once, in order.
        #[test]
        fn windows_close_exactly_once(steps in proptest::collection::vec(0i64..400, 1..40)) {
            let w = rules();
            let mut watermark = at(1_000);
            let mut closed = Vec::new();
            for step in steps {
                let next = watermark + Duration::seconds(step);
                closed.extend(w.closed_between(watermark, next));
                watermark = next;
            }
            let expected: Vec<_> = std::iter::successors(Some(at(960)), |s| Some(*s + Duration::seconds(60)))
                .take_while(|s| *s + Duration::seconds(60) <= watermark)
                .collect();
            prop_assert_eq!(closed, expected);
        }
    }
}
