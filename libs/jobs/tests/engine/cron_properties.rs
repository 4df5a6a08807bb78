//! Cron schedules against a brute-force reference: for random five-field
//! expressions, time zones (with DST, and Lord Howe's half-hour shift) and
//! start instants, `next_after` returns exactly the first UTC minute after
//! the start whose wall-clock time matches every field (a skipped local
//! minute never fires; a repeated one fires at its first occurrence),
//! found here by walking minute by minute. Also the retry backoff's bounds.

use chrono::{DateTime, Datelike as _, Duration, TimeZone as _, Timelike as _, Utc};
use chrono_tz::Tz;
use jobs::CronSchedule;
use proptest::prelude::*;

/// One field as text and as the set of values it allows.
#[derive(Debug, Clone)]
struct Field {
    text: String,
    allowed: Vec<bool>,
}

/// A part of a field: `*`, `n`, `a-b`, `*/k` or `a-b/k`.
fn part(min: u32, max: u32) -> impl Strategy<Value = (String, Vec<u32>)> {
    let values = move |start: u32, end: u32, step: u32| -> Vec<u32> {
        (start..=end).step_by(step as usize).collect()
    };
    prop_oneof![
        Just(("*".to_owned(), values(min, max, 1))),
        (min..=max).prop_map(move |n| (n.to_string(), vec![n])),
        (min..=max, min..=max).prop_map(move |(a, b)| {
            let (a, b) = (a.min(b), a.max(b));
            (format!("{a}-{b}"), values(a, b, 1))
        }),
        (1..=max).prop_map(move |k| (format!("*/{k}"), values(min, max, k))),
        (min..=max, min..=max, 1..=max).prop_map(move |(a, b, k)| {
            let (a, b) = (a.min(b), a.max(b));
            (format!("{a}-{b}/{k}"), values(a, b, k))
        }),
    ]
}

/// A field of one to three parts joined by commas.
fn field(min: u32, max: u32) -> impl Strategy<Value = Field> {
    prop::collection::vec(part(min, max), 1..=3).prop_map(move |parts| {
        let mut allowed = vec![false; max as usize + 1];
        for (_, values) in &parts {
            for &v in values {
                allowed[v as usize] = true;
            }
        }
        Field {
            text: parts
                .iter()
                .map(|(t, _)| t.as_str())
                .collect::<Vec<_>>()
                .join(","),
            allowed,
        }
    })
}

/// The reference matcher: Vixie cron's rule that when both day fields are
/// restricted, either may match.
#[derive(Debug)]
struct Reference {
    minute: Field,
    hour: Field,
    day: Field,
    month: Field,
    weekday: Field,
}

impl Reference {
    fn expression(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.minute.text, self.hour.text, self.day.text, self.month.text, self.weekday.text
        )
    }

    fn matches(&self, local: chrono::NaiveDateTime) -> bool {
        let day = self.day.allowed[local.day() as usize];
        let weekday = self.weekday.allowed[local.weekday().num_days_from_sunday() as usize];
        let days = match (self.day.text != "*", self.weekday.text != "*") {
            (true, true) => day || weekday,
            (true, false) => day,
            (false, true) => weekday,
            (false, false) => true,
        };
        self.minute.allowed[local.minute() as usize]
            && self.hour.allowed[local.hour() as usize]
            && self.month.allowed[local.month() as usize]
            && days
    }

    /// The first UTC minute after `after`, within `horizon` minutes, whose
    /// local time matches and is that local time's first occurrence.
    fn next_after(&self, after: DateTime<Utc>, tz: Tz, horizon: i64) -> Option<DateTime<Utc>> {
        let start = after.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        (0..horizon)
            .map(|i| start + Duration::minutes(i))
            .find(|&u| {
                let local = u.with_timezone(&tz).naive_local();
                self.matches(local)
                    && tz
                        .from_local_datetime(&local)
                        .earliest()
                        .is_some_and(|first| first.with_timezone(&Utc) == u)
            })
    }
}

fn reference() -> impl Strategy<Value = Reference> {
    (
        field(0, 59),
        field(0, 23),
        field(1, 31),
        field(1, 12),
        field(0, 6),
    )
        .prop_map(|(minute, hour, day, month, weekday)| Reference {
            minute,
            hour,
            day,
            month,
            weekday,
        })
}

const ZONES: [Tz; 4] = [
    chrono_tz::UTC,
    chrono_tz::Europe::Berlin,
    chrono_tz::America::New_York,
    chrono_tz::Australia::Lord_Howe,
];

/// 60 days of minutes: enough for most generated expressions to fire, and
/// a bound on the walk for the rest.
const HORIZON: i64 = 60 * 24 * 60;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn next_fire_times_match_a_minute_by_minute_walk(
        reference in reference(),
        zone in 0..ZONES.len(),
        // 2026-01-01 to 2028-12-31, at any second.
        after in 1_767_225_600i64..1_861_919_999,
    ) {
        let tz = ZONES[zone];
        let after = Utc.timestamp_opt(after, 0).unwrap();
        let expression = reference.expression();
        let schedule: CronSchedule = expression.parse().unwrap();
        let got = schedule.next_after(after, tz);
        let expected = reference.next_after(after, tz, HORIZON);
        match (got, expected) {
            (got, Some(expected)) => prop_assert_eq!(got, Some(expected), "{} in {}", expression, tz),
            (Some(got), None) => {
                // Beyond the walk's horizon: still a matching first occurrence.
                prop_assert!(got > after + Duration::minutes(HORIZON), "{} in {}: {}", expression, tz, got);
                let local = got.with_timezone(&tz).naive_local();
                prop_assert!(reference.matches(local), "{} in {}: {}", expression, tz, got);
            }
            // Nothing within five years (e.g. 30 February) is allowed only
            // when nothing matches within the horizon either.
            (None, None) => {}
        }
    }

    #[test]
    fn the_default_backoff_grows_and_stays_within_its_jitter(attempt in 1i32..=100) {
        let base = (f64::from(attempt).powi(4) + 15.0).min(86_400.0);
        let delay = jobs::default_backoff(attempt).as_secs_f64();
        prop_assert!(delay >= base && delay <= base * 1.1 + 1e-9, "attempt {}: {}", attempt, delay);
        let next = (f64::from(attempt + 1).powi(4) + 15.0).min(86_400.0);
        prop_assert!(delay <= next * 1.1 + 1e-9, "never more than the next attempt's ceiling");
    }
}
