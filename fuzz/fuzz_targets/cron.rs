//! Any text as a cron expression: a schedule or an error, never a panic;
//! a schedule's next fire time is always after the instant asked about.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(expression) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(schedule) = expression.parse::<jobs::CronSchedule>() {
        let after = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        for tz in [chrono_tz::UTC, chrono_tz::Europe::Berlin, chrono_tz::America::New_York] {
            if let Some(next) = schedule.next_after(after, tz) {
                assert!(next > after, "{expression:?}: {next} is not after {after}");
            }
        }
    }
});
