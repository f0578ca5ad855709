//! When a vtasks schedule falls due: a cron expression (five fields, or six
//! with seconds first) in a time zone, or a fixed interval in seconds.
//!
//! The module computes a schedule's next occurrence with this crate after
//! each run; with the scripts engine the client does (Lua parses no cron)
//! and the server compare-and-sets it. Both read the same text form, so
//! both engines agree on every occurrence (`docs/PROTOCOL.md`, "Schedules").
//!
//! Time zones and daylight saving time follow croner's rules: a time of
//! day that a clock change skips runs at the first moment after the gap
//! (a daily 02:30 runs at 03:00 on the day the clocks skip 02:00-03:00),
//! and a time of day that repeats runs once, at its first instance; a
//! pattern that names no fixed time (every minute, `*/5` seconds) runs at
//! each real instant that matches, through both instances of a repeated
//! hour. No clock is read here: every function takes the time it needs.

use std::fmt;

use chrono::{DateTime, FixedOffset, Offset, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::{Cron, JobType};

mod zone;

pub use zone::Zone;

/// The longest interval an `every` schedule may have: one year, in seconds.
pub const MAX_EVERY_SECONDS: u64 = 366 * 24 * 3600;

/// The longest text form of a schedule's timing.
pub const MAX_SPEC_LEN: usize = 256;

/// A schedule's timing.
#[derive(Clone)]
pub enum Spec {
    /// Every `n` seconds, at the instants that are whole multiples of `n`
    /// seconds since the unix epoch (every 30 s runs at :00 and :30).
    Every(u64),
    /// A cron expression in a time zone.
    Cron {
        /// The fields as given, whitespace normalised to single spaces.
        fields: String,
        tz: Zone,
        cron: Box<Cron>,
    },
}

/// Why a schedule's timing was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError(pub String);

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SpecError {}

fn refuse<T>(message: String) -> Result<T, SpecError> {
    Err(SpecError(message))
}

impl Spec {
    /// Every `seconds` seconds (1 s to one year).
    pub fn every(seconds: u64) -> Result<Spec, SpecError> {
        if seconds == 0 || seconds > MAX_EVERY_SECONDS {
            return refuse(format!(
                "every must be between 1 and {MAX_EVERY_SECONDS} seconds, got {seconds}"
            ));
        }
        Ok(Spec::Every(seconds))
    }

    /// A cron expression of five fields (minute hour day-of-month month
    /// day-of-week) or six (seconds first), in the IANA time zone `tz`
    /// (`UTC`, `Europe/Berlin`; any case, kept in the database's).
    pub fn cron(expr: &str, tz: &str) -> Result<Spec, SpecError> {
        let fields: Vec<&str> = expr.split_whitespace().collect();
        if fields.len() != 5 && fields.len() != 6 {
            return refuse(format!(
                "cron expression '{expr}' has {} fields; expected 5 (minute hour day month weekday) \
                 or 6 (seconds first)",
                fields.len()
            ));
        }
        let fields = fields.join(" ");
        if fields.contains('@') {
            return refuse(format!(
                "cron expression '{expr}': nicknames such as @daily are not supported; write the fields"
            ));
        }
        let Some(tz) = Zone::named(tz) else {
            return refuse(format!(
                "unknown time zone '{tz}' (expected an IANA name such as Europe/Berlin or UTC)"
            ));
        };
        let parser = CronParser::builder()
            .seconds(Seconds::Optional)
            .year(Year::Disallowed)
            .build();
        let cron = parser
            .parse(&fields)
            .or_else(|err| refuse(format!("invalid cron expression '{expr}': {err}")))?;
        Ok(Spec::Cron {
            fields,
            tz,
            cron: Box::new(cron),
        })
    }

    /// Reads the text form (`every <seconds>` or `cron <zone> <fields>`).
    pub fn parse(text: &str) -> Result<Spec, SpecError> {
        if text.len() > MAX_SPEC_LEN {
            return refuse(format!(
                "a schedule's timing must be at most {MAX_SPEC_LEN} bytes"
            ));
        }
        let mut words = text.split_whitespace();
        match words.next() {
            Some("every") => {
                let n = words.next().and_then(|w| w.parse::<u64>().ok());
                match (n, words.next()) {
                    (Some(n), None) => Spec::every(n),
                    _ => refuse(format!("invalid timing '{text}': expected every <seconds>")),
                }
            }
            Some("cron") => {
                let Some(tz) = words.next() else {
                    return refuse(format!(
                        "invalid timing '{text}': expected cron <zone> <fields>"
                    ));
                };
                let rest: Vec<&str> = words.collect();
                Spec::cron(&rest.join(" "), tz)
            }
            _ => refuse(format!(
                "invalid timing '{text}': expected every <seconds> or cron <zone> <fields>"
            )),
        }
    }

    /// The text form the server stores, which `parse` reads back.
    pub fn text(&self) -> String {
        match self {
            Spec::Every(n) => format!("every {n}"),
            Spec::Cron { fields, tz, .. } => format!("cron {} {fields}", tz.name()),
        }
    }

    /// The first occurrence strictly after `after_ms` (unix ms), or None if
    /// there is none (a date that never comes, such as February 30).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match self {
            Spec::Every(n) => {
                let period = (*n as i64) * 1000;
                after_ms
                    .div_euclid(period)
                    .checked_add(1)?
                    .checked_mul(period)
            }
            Spec::Cron { tz, cron, .. } => {
                // Occurrences fall on whole seconds: the first one after
                // `after_ms` is the first one after its whole second.
                let after = after_ms.div_euclid(1000);
                let next = match cron.determine_job_type() {
                    JobType::FixedTime => next_fixed_time(cron, tz, after),
                    JobType::IntervalWildcard => next_interval(cron, tz, after),
                }?;
                next.checked_mul(1000)
            }
        }
    }
}

/// The UTC offset of `tz` at unix second `at`, in seconds.
fn offset_at(tz: &Zone, at: i64) -> Option<i32> {
    let utc = DateTime::<Utc>::from_timestamp(at, 0)?.naive_utc();
    Some(tz.offset_from_utc_datetime(&utc).fix().local_minus_utc())
}

/// croner's next occurrence strictly after unix second `after`, in `zone`.
fn croner_next<Z: TimeZone>(cron: &Cron, zone: &Z, after: i64) -> Option<i64> {
    let start = DateTime::<Utc>::from_timestamp(after, 0)?.with_timezone(zone);
    Some(cron.find_next_occurrence(&start, false).ok()?.timestamp())
}

/// A fixed time of day (single second, minute and hour): croner's rules,
/// which run a time in a skipped hour right after the gap and a time in a
/// repeated hour at its first instance. From inside the second instance
/// of a repeated hour croner answers the first instance of the next
/// matching wall time, which lies in the past: such a time already ran,
/// so the search starts again where the repeated hour ends.
fn next_fixed_time(cron: &Cron, tz: &Zone, after: i64) -> Option<i64> {
    let mut start = after;
    for _ in 0..3 {
        let next = croner_next(cron, tz, start)?;
        if next > after {
            return Some(next);
        }
        // Step to the first minute whose wall time is not repeated.
        let mut t = start;
        for _ in 0..=24 * 60 {
            t += 60;
            let local = DateTime::<Utc>::from_timestamp(t, 0)?
                .with_timezone(tz)
                .naive_local();
            if tz.from_local_datetime(&local).single().is_some() {
                break;
            }
        }
        start = t - 1;
    }
    None
}

/// A pattern with a wildcard, a step or a list in its time of day: it runs
/// at every real instant whose wall time matches, so a repeated hour runs
/// twice and a skipped hour not at all. Searched one stretch of constant
/// UTC offset at a time: within one, wall time is UTC plus that offset.
fn next_interval(cron: &Cron, tz: &Zone, after: i64) -> Option<i64> {
    let mut from = after;
    // The offset in force just after `from`.
    let mut offset = offset_at(tz, from + 1)?;
    // Clock changes are months apart; a few stretches always suffice.
    for _ in 0..16 {
        let fixed = FixedOffset::east_opt(offset)?;
        let candidate = croner_next(cron, &fixed, from)?;
        if offset_at(tz, candidate)? == offset {
            return Some(candidate);
        }
        // The offset changed between `from` and the candidate: find the
        // change (the first second with another offset) and search on
        // from there with the new offset.
        let (mut lo, mut hi) = (from + 1, candidate);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if offset_at(tz, mid)? == offset {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let change = if offset_at(tz, lo)? == offset { hi } else { lo };
        from = change - 1;
        offset = offset_at(tz, change)?;
    }
    None
}

impl fmt::Debug for Spec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

impl PartialEq for Spec {
    fn eq(&self, other: &Spec) -> bool {
        self.text() == other.text()
    }
}

#[cfg(test)]
mod tests;
