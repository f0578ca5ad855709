//! IANA time zones for croner, which computes occurrences with chrono's
//! `TimeZone` trait, taken from jiff's copy of the tz database compiled
//! into this crate.
//!
//! Why not chrono-tz: its database is a table of static structs, one
//! pointer per span, which the dynamic loader relocates when the module or
//! the Python extension is loaded: about 1 MB of private memory in every
//! worker process, whether it uses schedules or not. jiff keeps the
//! database as compiled TZif bytes and reads a zone only when it is named.
//! Its copy is also the newer one. Never the host's `/usr/share/zoneinfo`:
//! the module and every client must read the same rules, or the scripts
//! engine and the module would disagree on an occurrence.

use std::fmt;

use chrono::{Datelike, Timelike};
use chrono::{FixedOffset, MappedLocalTime, NaiveDate, NaiveDateTime, NaiveTime, Offset, TimeZone};
use jiff::tz::{AmbiguousOffset, TimeZoneDatabase};

/// An IANA time zone (`Europe/Berlin`, `UTC`).
#[derive(Clone)]
pub struct Zone {
    tz: jiff::tz::TimeZone,
}

impl Zone {
    /// The zone of that IANA name, case insensitively (`europe/berlin` is
    /// `Europe/Berlin`), or None for a name the database does not hold.
    pub fn named(name: &str) -> Option<Zone> {
        // A handle to the compiled-in database costs nothing to make; jiff
        // keeps each zone it has read for the next lookup.
        let tz = TimeZoneDatabase::bundled().get(name).ok()?;
        // `Etc/Unknown` is jiff's zone for "no zone": it has no IANA name.
        tz.iana_name()?;
        Some(Zone { tz })
    }

    /// The zone's canonical IANA name.
    pub fn name(&self) -> &str {
        self.tz.iana_name().unwrap_or("UTC")
    }

    fn offset(&self, offset: jiff::tz::Offset) -> ZoneOffset {
        ZoneOffset {
            zone: self.clone(),
            // jiff's offsets stay within ±25:59:59, chrono's within ±24 h.
            fixed: FixedOffset::east_opt(offset.seconds()).unwrap_or_else(|| chrono::Utc.fix()),
        }
    }
}

impl fmt::Debug for Zone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq for Zone {
    fn eq(&self, other: &Zone) -> bool {
        self.name() == other.name()
    }
}

/// A zone's UTC offset at one instant, with the zone (chrono rebuilds a
/// zone from an offset).
#[derive(Clone)]
pub struct ZoneOffset {
    zone: Zone,
    fixed: FixedOffset,
}

impl Offset for ZoneOffset {
    fn fix(&self) -> FixedOffset {
        self.fixed
    }
}

impl fmt::Debug for ZoneOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.fixed, self.zone)
    }
}

/// chrono's wall time as jiff's, or None outside jiff's years (-9999 to
/// 9999), which no schedule reaches.
fn civil(local: &NaiveDateTime) -> Option<jiff::civil::DateTime> {
    jiff::civil::DateTime::new(
        i16::try_from(local.year()).ok()?,
        local.month() as i8,
        local.day() as i8,
        local.hour() as i8,
        local.minute() as i8,
        local.second() as i8,
        // chrono writes a leap second as a nanosecond past 999,999,999.
        local.nanosecond().min(999_999_999) as i32,
    )
    .ok()
}

impl TimeZone for Zone {
    type Offset = ZoneOffset;

    fn from_offset(offset: &ZoneOffset) -> Zone {
        offset.zone.clone()
    }

    fn offset_from_local_date(&self, local: &NaiveDate) -> MappedLocalTime<ZoneOffset> {
        self.offset_from_local_datetime(&local.and_time(NaiveTime::MIN))
    }

    /// One offset; none in a gap that a clock change skips; both in a
    /// repeated hour, the earlier instant's (the offset before the change)
    /// first, as chrono expects.
    fn offset_from_local_datetime(&self, local: &NaiveDateTime) -> MappedLocalTime<ZoneOffset> {
        let Some(civil) = civil(local) else {
            return MappedLocalTime::None;
        };
        match self.tz.to_ambiguous_timestamp(civil).offset() {
            AmbiguousOffset::Unambiguous { offset } => MappedLocalTime::Single(self.offset(offset)),
            AmbiguousOffset::Gap { .. } => MappedLocalTime::None,
            AmbiguousOffset::Fold { before, after } => {
                MappedLocalTime::Ambiguous(self.offset(before), self.offset(after))
            }
        }
    }

    fn offset_from_utc_date(&self, utc: &NaiveDate) -> ZoneOffset {
        self.offset_from_utc_datetime(&utc.and_time(NaiveTime::MIN))
    }

    fn offset_from_utc_datetime(&self, utc: &NaiveDateTime) -> ZoneOffset {
        // Clamped to jiff's range: its first or last offset beyond it.
        let second = utc.and_utc().timestamp().clamp(
            jiff::Timestamp::MIN.as_second(),
            jiff::Timestamp::MAX.as_second(),
        );
        let at = jiff::Timestamp::from_second(second).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        self.offset(self.tz.to_offset(at))
    }
}
