//! Occurrences computed from injected times (no clock is read): daylight
//! saving transitions, leap days, seconds, intervals, refusals.

use chrono::{NaiveDate, TimeZone, Utc};

use super::*;

/// Unix ms of a wall-clock time in `tz` (the first instance if repeated),
/// by jiff's own conversion: not through the chrono adapter under test.
fn local_ms(tz: &str, y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
    let tz = jiff::tz::TimeZoneDatabase::bundled().get(tz).unwrap();
    let wall =
        jiff::civil::DateTime::new(y as i16, mo as i8, d as i8, h as i8, mi as i8, s as i8, 0)
            .unwrap();
    tz.to_ambiguous_timestamp(wall)
        .compatible()
        .unwrap()
        .as_millisecond()
}

/// Wall time in `tz` through the adapter: its offsets, or None in a gap.
fn adapter_offsets(tz: &Zone, y: i32, mo: u32, d: u32, h: u32, mi: u32) -> Vec<i32> {
    let naive = NaiveDate::from_ymd_opt(y, mo, d)
        .unwrap()
        .and_hms_opt(h, mi, 0)
        .unwrap();
    match tz.offset_from_local_datetime(&naive) {
        chrono::MappedLocalTime::Single(o) => vec![o.fix().local_minus_utc()],
        chrono::MappedLocalTime::Ambiguous(a, b) => {
            vec![a.fix().local_minus_utc(), b.fix().local_minus_utc()]
        }
        chrono::MappedLocalTime::None => vec![],
    }
}

fn utc_ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
        .unwrap()
        .timestamp_millis()
}

/// The occurrences from `from` (exclusive) up to `until` (inclusive).
fn occurrences(spec: &Spec, from: i64, until: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut at = from;
    while let Some(next) = spec.next_after(at) {
        if next > until {
            break;
        }
        out.push(next);
        at = next;
    }
    out
}

const HOUR: i64 = 3_600_000;

#[test]
fn a_daily_time_in_the_skipped_hour_runs_once_that_day_right_after_the_gap() {
    // Berlin skips 02:00-03:00 on 2025-03-30 (CET -> CEST).
    let spec = Spec::cron("30 2 * * *", "Europe/Berlin").unwrap();
    let from = local_ms("Europe/Berlin", 2025, 3, 28, 12, 0, 0);
    let until = local_ms("Europe/Berlin", 2025, 3, 31, 12, 0, 0);
    let runs = occurrences(&spec, from, until);
    assert_eq!(
        runs,
        vec![
            local_ms("Europe/Berlin", 2025, 3, 29, 2, 30, 0),
            // 02:30 does not exist that day: 03:00 CEST, 01:00 UTC.
            utc_ms(2025, 3, 30, 1, 0, 0),
            local_ms("Europe/Berlin", 2025, 3, 31, 2, 30, 0),
        ]
    );
    // The day after the change runs 23 hours after the one before it
    // (02:30 CET -> 02:30 CEST): wall-clock times, not fixed periods.
    assert_eq!(runs[2] - runs[0], 47 * HOUR);
}

#[test]
fn a_daily_time_in_the_repeated_hour_runs_once() {
    // Berlin repeats 02:00-03:00 on 2025-10-26 (CEST -> CET).
    let spec = Spec::cron("30 2 * * *", "Europe/Berlin").unwrap();
    let from = local_ms("Europe/Berlin", 2025, 10, 25, 12, 0, 0);
    let until = local_ms("Europe/Berlin", 2025, 10, 27, 12, 0, 0);
    let runs = occurrences(&spec, from, until);
    assert_eq!(
        runs,
        vec![
            // The first 02:30 (CEST, 00:30 UTC); the second (01:30 UTC) is skipped.
            utc_ms(2025, 10, 26, 0, 30, 0),
            local_ms("Europe/Berlin", 2025, 10, 27, 2, 30, 0),
        ]
    );
}

#[test]
fn every_minute_runs_through_both_instances_of_a_repeated_hour() {
    let spec = Spec::cron("0 * * * *", "Europe/Berlin").unwrap();
    // 23:00 UTC on the 25th is 01:00 CEST; 03:00 UTC on the 26th is 04:00 CET.
    let runs = occurrences(
        &spec,
        utc_ms(2025, 10, 25, 22, 30, 0),
        utc_ms(2025, 10, 26, 3, 0, 0),
    );
    let expected: Vec<i64> = (0..5)
        .map(|h| utc_ms(2025, 10, 25, 23, 0, 0) + h * HOUR)
        .collect();
    assert_eq!(runs, expected, "one run per real hour, 5 in 5 hours");
    // And in the spring, no run is made up for the skipped hour.
    let runs = occurrences(
        &spec,
        utc_ms(2025, 3, 29, 23, 30, 0),
        utc_ms(2025, 3, 30, 3, 0, 0),
    );
    let expected: Vec<i64> = (0..4)
        .map(|h| utc_ms(2025, 3, 30, 0, 0, 0) + h * HOUR)
        .collect();
    assert_eq!(runs, expected);
}

#[test]
fn a_new_york_daily_run_follows_its_clock_changes() {
    let spec = Spec::cron("0 9 * * *", "America/New_York").unwrap();
    // 2024-03-10: EST -> EDT. 09:00 is 14:00 UTC before, 13:00 UTC after.
    let runs = occurrences(
        &spec,
        utc_ms(2024, 3, 9, 0, 0, 0),
        utc_ms(2024, 3, 11, 0, 0, 0),
    );
    assert_eq!(
        runs,
        vec![utc_ms(2024, 3, 9, 14, 0, 0), utc_ms(2024, 3, 10, 13, 0, 0)]
    );
}

#[test]
fn leap_days() {
    let spec = Spec::cron("0 0 29 2 *", "UTC").unwrap();
    assert_eq!(
        spec.next_after(utc_ms(2025, 1, 1, 0, 0, 0)),
        Some(utc_ms(2028, 2, 29, 0, 0, 0))
    );
    // 2100 is no leap year: after 2096 comes 2104.
    assert_eq!(
        spec.next_after(utc_ms(2096, 2, 29, 0, 0, 0)),
        Some(utc_ms(2104, 2, 29, 0, 0, 0))
    );
    // The last day of February, leap year or not.
    let spec = Spec::cron("0 12 L 2 *", "UTC").unwrap();
    assert_eq!(
        occurrences(
            &spec,
            utc_ms(2027, 1, 1, 0, 0, 0),
            utc_ms(2029, 1, 1, 0, 0, 0)
        ),
        vec![utc_ms(2027, 2, 28, 12, 0, 0), utc_ms(2028, 2, 29, 12, 0, 0)]
    );
    // A daily run passes through February 29.
    let spec = Spec::cron("0 6 * * *", "Europe/Berlin").unwrap();
    let runs = occurrences(
        &spec,
        local_ms("Europe/Berlin", 2028, 2, 28, 7, 0, 0),
        local_ms("Europe/Berlin", 2028, 3, 1, 7, 0, 0),
    );
    assert_eq!(
        runs,
        vec![
            local_ms("Europe/Berlin", 2028, 2, 29, 6, 0, 0),
            local_ms("Europe/Berlin", 2028, 3, 1, 6, 0, 0)
        ]
    );
}

#[test]
fn six_fields_put_seconds_first() {
    let spec = Spec::cron("*/5 * * * * *", "UTC").unwrap();
    let t = utc_ms(2026, 1, 1, 0, 0, 0);
    assert_eq!(spec.next_after(t), Some(t + 5_000));
    assert_eq!(spec.next_after(t + 4_999), Some(t + 5_000));
    assert_eq!(spec.next_after(t + 5_000), Some(t + 10_000));
    let every_second = Spec::cron("* * * * * *", "UTC").unwrap();
    assert_eq!(every_second.next_after(t + 1), Some(t + 1_000));
    assert_eq!(
        occurrences(&every_second, t, t + 10_000),
        (1..=10).map(|s| t + s * 1000).collect::<Vec<_>>()
    );
    // Five fields: second 0 of the minute.
    let minutely = Spec::cron("* * * * *", "UTC").unwrap();
    assert_eq!(minutely.next_after(t + 1), Some(t + 60_000));
}

#[test]
fn every_runs_at_multiples_of_its_interval_since_the_epoch() {
    let spec = Spec::every(30).unwrap();
    let t = utc_ms(2026, 1, 1, 0, 0, 0);
    assert_eq!(spec.next_after(t), Some(t + 30_000));
    assert_eq!(spec.next_after(t + 29_999), Some(t + 30_000));
    assert_eq!(spec.next_after(t - 1), Some(t));
    assert_eq!(Spec::every(1).unwrap().next_after(1_500), Some(2_000));
}

#[test]
fn the_text_form_reads_back() {
    for text in [
        "every 30",
        "cron Europe/Berlin 0 3 * * *",
        "cron UTC */5 * * * * *",
    ] {
        let spec = Spec::parse(text).unwrap();
        assert_eq!(spec.text(), text);
        assert_eq!(Spec::parse(&spec.text()).unwrap(), spec);
    }
    assert_eq!(
        Spec::cron(" 0  3 * * * ", "Europe/Berlin").unwrap().text(),
        "cron Europe/Berlin 0 3 * * *"
    );
}

#[test]
fn bad_timings_are_refused_with_the_reason() {
    let cases = [
        (Spec::cron("0 3 * *", "UTC"), "has 4 fields"),
        (Spec::cron("0 0 3 * * * 2026", "UTC"), "has 7 fields"),
        (
            Spec::cron("61 * * * *", "UTC"),
            "invalid cron expression '61 * * * *'",
        ),
        (
            Spec::cron("banana * * * *", "UTC"),
            "invalid cron expression",
        ),
        (Spec::cron("@daily", "UTC"), "has 1 fields"),
        (
            Spec::cron("0 3 * * *", "Mars/Olympus"),
            "unknown time zone 'Mars/Olympus'",
        ),
        (Spec::every(0), "every must be between 1"),
        (
            Spec::every(MAX_EVERY_SECONDS + 1),
            "every must be between 1",
        ),
        (Spec::parse("hourly"), "invalid timing 'hourly'"),
        (Spec::parse("every x"), "expected every <seconds>"),
        (Spec::parse("cron"), "expected cron <zone> <fields>"),
    ];
    for (outcome, expected) in cases {
        let err = outcome.unwrap_err();
        assert!(err.0.contains(expected), "{err} lacks {expected}");
    }
}

#[test]
fn zones_are_named_as_the_database_names_them() {
    let berlin = Zone::named("europe/BERLIN").unwrap();
    assert_eq!(berlin.name(), "Europe/Berlin");
    assert_eq!(
        Spec::cron("0 3 * * *", "europe/berlin").unwrap().text(),
        "cron Europe/Berlin 0 3 * * *"
    );
    assert_eq!(Zone::named("UTC").unwrap().name(), "UTC");
    assert_eq!(Zone::named("US/Eastern").unwrap().name(), "US/Eastern");
    // jiff's placeholder for "no zone" is not a zone anyone can name.
    assert!(Zone::named("Etc/Unknown").is_none());
    assert!(Zone::named("").is_none());
    assert!(Zone::named("../../etc/passwd").is_none());
}

#[test]
fn the_adapter_gives_chrono_one_offset_none_in_a_gap_both_in_a_repeat() {
    let berlin = Zone::named("Europe/Berlin").unwrap();
    assert_eq!(adapter_offsets(&berlin, 2025, 7, 1, 12, 0), vec![7200]);
    assert_eq!(adapter_offsets(&berlin, 2025, 1, 1, 12, 0), vec![3600]);
    // 02:00-03:00 is skipped on 2025-03-30 and repeated on 2025-10-26,
    // first at +2 (the earlier instant), then at +1.
    assert_eq!(
        adapter_offsets(&berlin, 2025, 3, 30, 2, 30),
        Vec::<i32>::new()
    );
    assert_eq!(
        adapter_offsets(&berlin, 2025, 10, 26, 2, 30),
        vec![7200, 3600]
    );
    // From UTC: the offset in force at that instant.
    let at = |y, mo, d, h| {
        berlin
            .offset_from_utc_datetime(
                &NaiveDate::from_ymd_opt(y, mo, d)
                    .unwrap()
                    .and_hms_opt(h, 0, 0)
                    .unwrap(),
            )
            .fix()
            .local_minus_utc()
    };
    assert_eq!(at(2025, 10, 26, 0), 7200);
    assert_eq!(at(2025, 10, 26, 1), 3600);
    // Beyond the database's years the adapter still answers, without panicking.
    let far = NaiveDate::from_ymd_opt(200_000, 1, 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap();
    assert_eq!(
        berlin
            .offset_from_utc_datetime(&far)
            .fix()
            .local_minus_utc(),
        3600
    );
    assert!(matches!(
        berlin.offset_from_local_datetime(&far),
        chrono::MappedLocalTime::None
    ));
}

#[test]
fn a_date_that_never_comes_has_no_occurrence() {
    let spec = Spec::cron("0 0 30 2 *", "UTC").unwrap();
    assert_eq!(spec.next_after(utc_ms(2026, 1, 1, 0, 0, 0)), None);
}

#[test]
fn a_run_every_half_hour_covers_both_instances_of_the_repeated_hour() {
    let spec = Spec::cron("*/30 * * * *", "Europe/Berlin").unwrap();
    // 00:00 UTC is 02:00 CEST; 01:00 UTC is 02:00 CET again.
    let from = utc_ms(2025, 10, 25, 23, 45, 0);
    let runs = occurrences(&spec, from, utc_ms(2025, 10, 26, 2, 0, 0));
    let expected: Vec<i64> = (0..5)
        .map(|i| utc_ms(2025, 10, 26, 0, 0, 0) + i * HOUR / 2)
        .collect();
    assert_eq!(runs, expected);
    // Asked from inside the second instance, it goes on from there.
    assert_eq!(
        spec.next_after(utc_ms(2025, 10, 26, 1, 10, 0)),
        Some(utc_ms(2025, 10, 26, 1, 30, 0))
    );
}

#[test]
fn a_daily_time_asked_from_inside_the_repeated_hour_is_the_next_day() {
    let spec = Spec::cron("30 2 * * *", "Europe/Berlin").unwrap();
    // 01:00 UTC is 02:00 CET, the second instance; 02:30 already ran at 00:30 UTC.
    for at in [
        utc_ms(2025, 10, 26, 0, 30, 0),
        utc_ms(2025, 10, 26, 1, 0, 0),
        utc_ms(2025, 10, 26, 1, 45, 0),
    ] {
        assert_eq!(
            spec.next_after(at),
            Some(local_ms("Europe/Berlin", 2025, 10, 27, 2, 30, 0))
        );
    }
}

#[test]
fn every_second_runs_each_real_second_across_both_clock_changes() {
    let spec = Spec::cron("* * * * * *", "Europe/Berlin").unwrap();
    for change in [utc_ms(2025, 3, 30, 1, 0, 0), utc_ms(2025, 10, 26, 1, 0, 0)] {
        let runs = occurrences(&spec, change - 5_000, change + 5_000);
        assert_eq!(
            runs,
            (-4..=5).map(|s| change + s * 1000).collect::<Vec<_>>()
        );
    }
}

#[test]
fn a_half_hour_clock_change() {
    // Lord Howe Island moves by 30 minutes: +10:30 -> +11 on 2025-10-05 at 02:00.
    let spec = Spec::cron("15 2 * * *", "Australia/Lord_Howe").unwrap();
    let runs = occurrences(
        &spec,
        local_ms("Australia/Lord_Howe", 2025, 10, 4, 12, 0, 0),
        local_ms("Australia/Lord_Howe", 2025, 10, 6, 12, 0, 0),
    );
    assert_eq!(runs.len(), 2, "once on each day");
    // 02:15 is skipped on the 5th: it runs at 02:30, right after the gap.
    assert_eq!(
        runs[0],
        local_ms("Australia/Lord_Howe", 2025, 10, 5, 2, 30, 0)
    );
}
