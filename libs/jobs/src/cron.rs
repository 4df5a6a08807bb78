//! Periodic jobs from standard five-field cron expressions in a time zone.
//!
//! The node holding the `cron` lease inserts each due tick's job with a
//! unique key over (name, tick) held in every state, so a tick is enqueued
//! at most once however many nodes run, fail over or restart.

use std::{fmt, str::FromStr};

use chrono::{
    DateTime, Datelike as _, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike as _, Utc,
};
use chrono_tz::Tz;

use crate::{NewJob, UniqueOpts};

/// A parsed cron expression: `minute hour day-of-month month day-of-week`,
/// each a `*`, a number or name, a range `a-b`, a step `*/n` or `a-b/n`, or
/// a list of those; or one of `@yearly`, `@monthly`, `@weekly`, `@daily`,
/// `@hourly`. When both day fields are restricted, a day matching either
/// runs (as in Vixie cron).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronSchedule {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_restricted: bool,
    weekdays_restricted: bool,
    source: String,
}

/// Why a cron expression does not parse; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cron expression {expression:?}: {field} field: {problem}")]
pub struct CronError {
    /// The whole expression.
    pub expression: String,
    /// `minute`, `hour`, `day-of-month`, `month`, `day-of-week`, or `expression`.
    pub field: &'static str,
    /// What is wrong.
    pub problem: String,
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// Parses one field into a bit set over `min..=max`.
fn parse_field(
    text: &str,
    min: u32,
    max: u32,
    names: &[&str],
    name_base: u32,
) -> Result<(u64, bool), String> {
    let value = |token: &str| -> Result<u32, String> {
        let lower = token.to_ascii_lowercase();
        if let Some(i) = names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + name_base);
        }
        let number: u32 = token
            .parse()
            .map_err(|_| format!("{token:?} is not a number or name"))?;
        // Day-of-week 7 is Sunday, as in most crons.
        let number = if max == 6 && number == 7 { 0 } else { number };
        if number < min || number > max {
            return Err(format!("value {number} out of range {min}-{max}"));
        }
        Ok(number)
    };
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| format!("step {step:?} is not a number"))?;
                if step == 0 {
                    return Err("step must be at least 1".into());
                }
                (range, step)
            }
            None => (part, 1),
        };
        let (start, end) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("range {range:?} runs backwards"));
            }
            (a, b)
        } else {
            let a = value(range)?;
            (a, if part.contains('/') { max } else { a })
        };
        let mut v = start;
        while v <= end {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok((bits, text != "*"))
}

impl FromStr for CronSchedule {
    type Err = CronError;

    fn from_str(expression: &str) -> Result<Self, Self::Err> {
        let error = |field, problem: String| CronError {
            expression: expression.to_owned(),
            field,
            problem,
        };
        let expanded = match expression.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(error(
                "expression",
                format!("expected 5 fields, got {}", fields.len()),
            ));
        }
        let (minutes, _) = parse_field(fields[0], 0, 59, &[], 0).map_err(|p| error("minute", p))?;
        let (hours, _) = parse_field(fields[1], 0, 23, &[], 0).map_err(|p| error("hour", p))?;
        let (days, days_restricted) =
            parse_field(fields[2], 1, 31, &[], 0).map_err(|p| error("day-of-month", p))?;
        let (months, _) =
            parse_field(fields[3], 1, 12, &MONTHS, 1).map_err(|p| error("month", p))?;
        let (weekdays, weekdays_restricted) =
            parse_field(fields[4], 0, 6, &WEEKDAYS, 0).map_err(|p| error("day-of-week", p))?;
        Ok(Self {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            days_restricted,
            weekdays_restricted,
            source: expression.trim().to_owned(),
        })
    }
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl CronSchedule {
    fn day_matches(&self, date: NaiveDate) -> bool {
        let day = self.days & (1 << date.day()) != 0;
        let weekday = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => day || weekday,
            (true, false) => day,
            (false, true) => weekday,
            (false, false) => true,
        }
    }

    /// The first tick strictly after `after`, in `tz`'s wall-clock time.
    /// A wall-clock minute skipped by a DST jump is skipped; one repeated
    /// by a DST fall-back runs once (at its first occurrence).
    pub fn next_after(&self, after: DateTime<Utc>, tz: Tz) -> Option<DateTime<Utc>> {
        let local = after.with_timezone(&tz).naive_local();
        let mut t = (local + Duration::minutes(1))
            .with_second(0)?
            .with_nanosecond(0)?;
        // Five years of days is more than any valid expression needs
        // (29 February on a Monday recurs within 28 years only via either-day
        // matching, which is handled day by day).
        let limit = t + Duration::days(366 * 5);
        while t < limit {
            if self.months & (1 << t.month()) == 0 {
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = NaiveDate::from_ymd_opt(y, m, 1)?.and_hms_opt(0, 0, 0)?;
                continue;
            }
            if !self.day_matches(t.date()) {
                t = t.date().succ_opt()?.and_hms_opt(0, 0, 0)?;
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = next_hour(t)?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t += Duration::minutes(1);
                continue;
            }
            match tz.from_local_datetime(&t).earliest() {
                Some(at) if at.with_timezone(&Utc) > after => return Some(at.with_timezone(&Utc)),
                _ => t += Duration::minutes(1),
            }
        }
        None
    }
}

fn next_hour(t: NaiveDateTime) -> Option<NaiveDateTime> {
    (t + Duration::hours(1)).with_minute(0)
}

/// A job inserted on a schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct CronJob {
    /// Stable name; part of each tick's unique key.
    pub name: String,
    /// When.
    pub schedule: CronSchedule,
    /// In which time zone the schedule's wall-clock times are read.
    pub timezone: Tz,
    /// What to insert at each tick.
    pub job: NewJob,
}

impl CronJob {
    /// A cron job; `timezone` is an IANA name such as `Europe/Berlin` or `UTC`.
    pub fn new(
        name: impl Into<String>,
        expression: &str,
        timezone: &str,
        job: NewJob,
    ) -> Result<Self, CronError> {
        let schedule: CronSchedule = expression.parse()?;
        let timezone: Tz = timezone.parse().map_err(|_| CronError {
            expression: expression.to_owned(),
            field: "expression",
            problem: format!("unknown time zone {timezone:?}"),
        })?;
        Ok(Self {
            name: name.into(),
            schedule,
            timezone,
            job,
        })
    }

    /// The job for the tick at `tick`, unique for (name, tick) forever.
    pub fn job_for(&self, tick: DateTime<Utc>) -> NewJob {
        let mut job = self.job.clone();
        job.unique = Some(UniqueOpts {
            salt: Some(format!("cron:{}:{}", self.name, tick.timestamp())),
            ..UniqueOpts::forever()
        });
        if let Some(meta) = job.meta.as_object_mut() {
            meta.insert(
                "cron".into(),
                serde_json::json!({"name": self.name, "tick": tick.to_rfc3339()}),
            );
        }
        job
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn next(expr: &str, after: &str, tz: &str) -> String {
        let schedule: CronSchedule = expr.parse().unwrap();
        schedule
            .next_after(utc(after), tz.parse().unwrap())
            .unwrap()
            .to_rfc3339()
    }

    #[test]
    fn common_expressions() {
        assert_eq!(
            next("*/15 * * * *", "2026-01-01T10:07:30Z", "UTC"),
            "2026-01-01T10:15:00+00:00"
        );
        assert_eq!(
            next("0 3 * * *", "2026-01-01T03:00:00Z", "UTC"),
            "2026-01-02T03:00:00+00:00"
        );
        assert_eq!(
            next("30 9 * * mon-fri", "2026-01-02T10:00:00Z", "UTC"),
            "2026-01-05T09:30:00+00:00"
        );
        assert_eq!(
            next("0 0 1 jan *", "2026-03-01T00:00:00Z", "UTC"),
            "2027-01-01T00:00:00+00:00"
        );
        assert_eq!(
            next("@hourly", "2026-01-01T10:59:59Z", "UTC"),
            "2026-01-01T11:00:00+00:00"
        );
        // Either day field matches when both are restricted.
        assert_eq!(
            next("0 0 13 * fri", "2026-02-01T00:00:00Z", "UTC"),
            "2026-02-06T00:00:00+00:00"
        );
        assert_eq!(
            next("0 0 29 2 *", "2026-03-01T00:00:00Z", "UTC"),
            "2028-02-29T00:00:00+00:00"
        );
    }

    #[test]
    fn time_zones_and_daylight_saving() {
        // 03:00 in Berlin is 02:00 UTC in winter, 01:00 UTC in summer.
        assert_eq!(
            next("0 3 * * *", "2026-01-10T12:00:00Z", "Europe/Berlin"),
            "2026-01-11T02:00:00+00:00"
        );
        assert_eq!(
            next("0 3 * * *", "2026-07-10T12:00:00Z", "Europe/Berlin"),
            "2026-07-11T01:00:00+00:00"
        );
        // 02:30 does not exist on 29 March 2026 in Berlin: skipped to the next day.
        assert_eq!(
            next("30 2 * * *", "2026-03-28T12:00:00Z", "Europe/Berlin"),
            "2026-03-30T00:30:00+00:00"
        );
        // 02:30 happens twice on 25 October 2026: it runs once.
        let first = next("30 2 * * *", "2026-10-24T12:00:00Z", "Europe/Berlin");
        assert_eq!(first, "2026-10-25T00:30:00+00:00");
        assert_eq!(
            next("30 2 * * *", &first, "Europe/Berlin"),
            "2026-10-26T01:30:00+00:00"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let error = "61 * * * *"
            .parse::<CronSchedule>()
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "cron expression \"61 * * * *\": minute field: value 61 out of range 0-59"
        );
        let error = "* * * * * *".parse::<CronSchedule>().unwrap_err();
        assert_eq!(
            (error.field, error.problem.as_str()),
            ("expression", "expected 5 fields, got 6")
        );
        assert_eq!(
            "* * * foo *".parse::<CronSchedule>().unwrap_err().field,
            "month"
        );
        assert_eq!(
            "* * * * */0".parse::<CronSchedule>().unwrap_err().problem,
            "step must be at least 1"
        );
        assert!(
            CronJob::new(
                "x",
                "@daily",
                "Mars/Olympus",
                NewJob::new("noop", serde_json::json!({}))
            )
            .is_err()
        );
    }

    #[test]
    fn each_tick_has_its_own_unique_key() {
        let cron = CronJob::new(
            "nightly",
            "@daily",
            "UTC",
            NewJob::new("noop", serde_json::json!({})),
        )
        .unwrap();
        let a = cron.job_for(utc("2026-01-01T00:00:00Z"));
        let b = cron.job_for(utc("2026-01-02T00:00:00Z"));
        let now = Utc::now();
        let key = |j: &NewJob| crate::unique_key(j, j.unique.as_ref().unwrap(), now);
        assert_ne!(key(&a), key(&b));
        assert_eq!(key(&a), key(&cron.job_for(utc("2026-01-01T00:00:00Z"))));
    }
}
