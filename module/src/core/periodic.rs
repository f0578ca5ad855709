//! A queue's periodic schedules (`VTASKS.SCHEDULE`): what each enqueues,
//! when it next falls due, and the rule that fires it. The module's queue
//! value holds a `Schedules`; the scripts engine keeps the same fields in
//! the keyspace (`{name}:schedules`, `{name}:schedules:due`) and fires them
//! by the same rule (`docs/PROTOCOL.md`, "Schedules").
//!
//! Exactly once: an occurrence becomes the task
//! `schedule:<name>:<occurrence ms>`, enqueued like any other, so whoever
//! meets it again (a replica, an AOF replay, a second engine, a schedule
//! edited back to the same time) finds the id taken.

use std::collections::BTreeMap;

use vtasks_protocol::{SCHEDULE_GRACE_MS, SCHEDULE_ID_PREFIX};
use vtasks_schedule::Spec;

/// What happens to occurrences found late (the server was down, or no
/// consumer fetched on the scripts engine).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// One run, however late, for everything missed (the default).
    Last,
    /// An occurrence more than `SCHEDULE_GRACE_MS` late is skipped.
    None,
}

impl CatchUp {
    pub fn name(self) -> &'static str {
        match self {
            CatchUp::Last => "last",
            CatchUp::None => "none",
        }
    }
}

/// What a schedule enqueues and when, as `VTASKS.SCHEDULE` sets it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// The timing in its text form (`every 30`, `cron UTC 0 3 * * *`):
    /// opaque to the command, computed with `vtasks_schedule` after a run.
    pub spec: Vec<u8>,
    pub payload: Vec<u8>,
    pub priority: i64,
    pub max_attempts: i64,
    pub catch_up: CatchUp,
    pub enabled: bool,
}

/// When a schedule runs next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    At(i64),
    /// It ran at `after` (server time) and its next occurrence, the first
    /// after that, is still to be computed (the scripts engine's client
    /// does it; the module only when its timing cannot be read).
    Pending {
        after: i64,
    },
    /// Its timing has no further occurrence.
    Never,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Periodic {
    pub def: Definition,
    pub next: Next,
    /// The occurrence of the last task enqueued, if any.
    pub last: Option<i64>,
    /// Tasks enqueued, and occurrences skipped (`CatchUp::None`).
    pub runs: u64,
    pub skipped: u64,
}

/// The id of the task of a schedule's occurrence.
pub fn task_id(name: &[u8], at: i64) -> Vec<u8> {
    let mut id = SCHEDULE_ID_PREFIX.as_bytes().to_vec();
    id.extend_from_slice(name);
    id.push(b':');
    id.extend_from_slice(at.to_string().as_bytes());
    id
}

/// What `set` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetOutcome {
    Added,
    Changed,
    Unchanged,
}

impl SetOutcome {
    pub fn name(self) -> &'static str {
        match self {
            SetOutcome::Added => "added",
            SetOutcome::Changed => "changed",
            SetOutcome::Unchanged => "unchanged",
        }
    }
}

/// One occurrence to enqueue, as `fire` decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firing {
    pub name: Vec<u8>,
    pub at: i64,
}

/// The schedules of one queue, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedules {
    by_name: BTreeMap<Vec<u8>, Periodic>,
}

impl Schedules {
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Vec<u8>, &Periodic)> {
        self.by_name.iter()
    }

    pub fn get(&self, name: &[u8]) -> Option<&Periodic> {
        self.by_name.get(name)
    }

    pub fn get_mut(&mut self, name: &[u8]) -> Option<&mut Periodic> {
        self.by_name.get_mut(name)
    }

    /// Restores a schedule as read from the encoding.
    pub fn insert(&mut self, name: Vec<u8>, periodic: Periodic) {
        self.by_name.insert(name, periodic);
    }

    /// Adds or changes a schedule; `next` is its next occurrence, as the
    /// caller computed it. An unchanged definition keeps its state (a
    /// worker that applies the same settings at every start moves nothing);
    /// a changed one takes effect at once, keeping its history.
    pub fn set(&mut self, name: &[u8], def: Definition, next: i64) -> SetOutcome {
        match self.by_name.get_mut(name) {
            Some(old) if old.def == def => SetOutcome::Unchanged,
            Some(old) => {
                old.def = def;
                old.next = Next::At(next);
                SetOutcome::Changed
            }
            None => {
                self.by_name.insert(
                    name.to_vec(),
                    Periodic {
                        def,
                        next: Next::At(next),
                        last: None,
                        runs: 0,
                        skipped: 0,
                    },
                );
                SetOutcome::Added
            }
        }
    }

    pub fn remove(&mut self, name: &[u8]) -> bool {
        self.by_name.remove(name).is_some()
    }

    /// Sets the next occurrence of a schedule pending since `after`; false
    /// (nothing changed) if it is not pending since then: another client
    /// computed it first, or the schedule was changed or removed.
    pub fn set_next(&mut self, name: &[u8], after: i64, next: Option<i64>) -> bool {
        match self.by_name.get_mut(name) {
            Some(p) if p.next == (Next::Pending { after }) => {
                p.next = next.map_or(Next::Never, Next::At);
                true
            }
            _ => false,
        }
    }

    /// The earliest occurrence of an enabled schedule.
    pub fn next_due(&self) -> Option<i64> {
        self.by_name
            .values()
            .filter(|p| p.def.enabled)
            .filter_map(|p| match p.next {
                Next::At(at) => Some(at),
                _ => None,
            })
            .min()
    }

    /// Fires the enabled schedules due at `now`, at most `limit`, earliest
    /// first (ties by name): each either runs (the caller enqueues its
    /// `Firing`) or, under `CatchUp::None` and more than the grace late, is
    /// skipped. Either way its next occurrence is the first after `now`,
    /// so one run stands for everything missed; `next_after` computes it
    /// (None leaves it pending, as the scripts engine does). Returns the
    /// runs and whether more were due than `limit`.
    pub fn fire(
        &mut self,
        now: i64,
        limit: usize,
        next_after: impl Fn(&[u8], i64) -> Option<Option<i64>>,
    ) -> (Vec<Firing>, bool) {
        let mut due: Vec<(i64, Vec<u8>)> = self
            .by_name
            .iter()
            .filter(|(_, p)| p.def.enabled)
            .filter_map(|(name, p)| match p.next {
                Next::At(at) if at <= now => Some((at, name.clone())),
                _ => None,
            })
            .collect();
        due.sort();
        let more = due.len() > limit;
        due.truncate(limit);
        let mut runs = Vec::new();
        for (at, name) in due {
            let p = self.by_name.get_mut(&name).expect("collected above");
            if p.def.catch_up == CatchUp::None && now - at > SCHEDULE_GRACE_MS {
                p.skipped += 1;
            } else {
                p.last = Some(at);
                runs.push(Firing {
                    name: name.clone(),
                    at,
                });
            }
            p.next = match next_after(&p.def.spec, now) {
                Some(Some(next)) => Next::At(next),
                Some(None) => Next::Never,
                None => Next::Pending { after: now },
            };
        }
        (runs, more)
    }

    /// Counts a run whose task was enqueued (not found already there).
    pub fn count_run(&mut self, name: &[u8]) {
        if let Some(p) = self.by_name.get_mut(name) {
            p.runs += 1;
        }
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.by_name
            .iter()
            .map(|(name, p)| name.len() + p.def.spec.len() + p.def.payload.len() + 96)
            .sum()
    }
}

/// The module's computation of a next occurrence: Some(next) from the
/// timing's text, or None when the text cannot be read (a client other
/// than vtasks' wrote it), which leaves the schedule pending for a client
/// to compute.
pub fn next_occurrence(spec: &[u8], after: i64) -> Option<Option<i64>> {
    let text = std::str::from_utf8(spec).ok()?;
    let spec = Spec::parse(text).ok()?;
    Some(spec.next_after(after))
}

/// The scripts engine's keyspace form of schedules: `{name}:schedules`
/// (hash: schedule name -> record) and `{name}:schedules:due` (sorted
/// set: every schedule name, scored by its next occurrence, `PENDING_SCORE`
/// while its next is to be computed, `IDLE_SCORE` when disabled or over).
pub mod layout {
    use super::*;
    use crate::core::error::{VtError, VtResult};
    use crate::core::keys::{QueueKeys, MAX_SCHEDULES};
    use crate::core::store::{Store, Val};

    /// The due-set score of a schedule whose next occurrence is pending.
    pub const PENDING_SCORE: i64 = -1;
    /// The due-set score of a disabled schedule, or one with no next
    /// occurrence: beyond every time a command accepts (2^48).
    pub const IDLE_SCORE: i64 = 1 << 52;

    fn bad(what: &str) -> VtError {
        VtError::Internal(format!("corrupt schedule record: {what}"))
    }

    /// `1 <priority> <attempts> <last|none> <enabled> <next>
    /// <last-run|-> <runs> <skipped>`, a newline, the timing, a newline,
    /// the payload; `<next>` is `@<ms>`, `p<after>` (pending) or `-`.
    pub fn encode(p: &Periodic) -> Vec<u8> {
        let next = match p.next {
            Next::At(at) => format!("@{at}"),
            Next::Pending { after } => format!("p{after}"),
            Next::Never => "-".into(),
        };
        let last = p.last.map_or("-".into(), |l| l.to_string());
        let mut out = format!(
            "1 {} {} {} {} {next} {last} {} {}\n",
            p.def.priority,
            p.def.max_attempts,
            p.def.catch_up.name(),
            p.def.enabled as u8,
            p.runs,
            p.skipped
        )
        .into_bytes();
        out.extend_from_slice(&p.def.spec);
        out.push(b'\n');
        out.extend_from_slice(&p.def.payload);
        out
    }

    pub fn decode(record: &[u8]) -> VtResult<Periodic> {
        let mut parts = record.splitn(3, |c| *c == b'\n');
        let (Some(head), Some(spec), Some(payload)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad("missing parts"));
        };
        let head = std::str::from_utf8(head).map_err(|_| bad("head"))?;
        let w: Vec<&str> = head.split(' ').collect();
        if w.len() != 9 || w[0] != "1" {
            return Err(bad("head"));
        }
        let num = |s: &str| s.parse::<i64>().map_err(|_| bad("number"));
        let next = match w[5].split_at_checked(1) {
            Some(("@", at)) => Next::At(num(at)?),
            Some(("p", after)) => Next::Pending { after: num(after)? },
            Some(("-", "")) => Next::Never,
            _ => return Err(bad("next")),
        };
        Ok(Periodic {
            def: Definition {
                spec: spec.to_vec(),
                payload: payload.to_vec(),
                priority: num(w[1])?,
                max_attempts: num(w[2])?,
                catch_up: match w[3] {
                    "last" => CatchUp::Last,
                    "none" => CatchUp::None,
                    _ => return Err(bad("catch-up")),
                },
                enabled: w[4] == "1",
            },
            next,
            last: if w[6] == "-" { None } else { Some(num(w[6])?) },
            runs: num(w[7])? as u64,
            skipped: num(w[8])? as u64,
        })
    }

    /// The due-set score of a schedule.
    pub fn due_score(p: &Periodic) -> i64 {
        match p.next {
            Next::At(at) if p.def.enabled => at,
            Next::Pending { .. } => PENDING_SCORE,
            _ => IDLE_SCORE,
        }
    }

    /// A layout queue's schedules, by name.
    pub fn read(store: &mut impl Store, keys: &QueueKeys) -> VtResult<Vec<(Vec<u8>, Periodic)>> {
        let mut names: Vec<Vec<u8>> = store
            .zrange_by_score(&keys.schedules_due, i64::MIN, i64::MAX, 0, MAX_SCHEDULES)?
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            let field = String::from_utf8_lossy(&name).into_owned();
            if let Some(record) = store.hget(&keys.schedules, &field)? {
                out.push((name, decode(&record)?));
            }
        }
        Ok(out)
    }

    /// Writes schedules in the layout (`VTASKS.EXPORT`).
    pub fn write(store: &mut impl Store, keys: &QueueKeys, schedules: &Schedules) -> VtResult<()> {
        for (name, p) in schedules.iter() {
            let field = String::from_utf8_lossy(name).into_owned();
            let record = encode(p);
            store.hset(&keys.schedules, &[(&field, Val::Bytes(&record))])?;
            store.zadd(&keys.schedules_due, due_score(p), name)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_record_reads_back() {
        let mut s = Schedules::default();
        let mut d = def("cron UTC 0 3 * * *", CatchUp::None);
        d.payload = b"{\"a\":\n1}\x00".to_vec();
        s.set(b"n", d, 5_000);
        s.fire(5_000, 10, |_, _| None);
        let p = s.get(b"n").unwrap();
        assert_eq!(&layout::decode(&layout::encode(p)).unwrap(), p);
        assert_eq!(layout::due_score(p), layout::PENDING_SCORE);
    }

    fn def(spec: &str, catch_up: CatchUp) -> Definition {
        Definition {
            spec: spec.as_bytes().to_vec(),
            payload: b"{}".to_vec(),
            priority: 0,
            max_attempts: 1,
            catch_up,
            enabled: true,
        }
    }

    #[test]
    fn a_run_stands_for_everything_missed_and_the_next_is_after_now() {
        let mut s = Schedules::default();
        assert_eq!(
            s.set(b"tick", def("every 10", CatchUp::Last), 10_000),
            SetOutcome::Added
        );
        assert_eq!(s.next_due(), Some(10_000));
        // Found 35 s late: one run, for the occurrence that was due.
        let (runs, more) = s.fire(45_000, 100, next_occurrence);
        assert!(!more);
        assert_eq!(
            runs,
            vec![Firing {
                name: b"tick".to_vec(),
                at: 10_000
            }]
        );
        assert_eq!(s.get(b"tick").unwrap().next, Next::At(50_000));
        assert_eq!(task_id(b"tick", 10_000), b"schedule:tick:10000".to_vec());
    }

    #[test]
    fn catch_up_none_skips_an_occurrence_found_later_than_the_grace() {
        let mut s = Schedules::default();
        s.set(b"a", def("every 100", CatchUp::None), 100_000);
        s.set(b"b", def("every 100", CatchUp::None), 100_000);
        // On time (within the grace): it runs.
        let (runs, _) = s.fire(100_000 + SCHEDULE_GRACE_MS, 100, next_occurrence);
        assert_eq!(runs.len(), 2);
        // 200 s is due; found past the grace: skipped, next after now.
        let now = 200_000 + SCHEDULE_GRACE_MS + 1;
        let (runs, _) = s.fire(now, 100, next_occurrence);
        assert!(runs.is_empty());
        let a = s.get(b"a").unwrap();
        assert_eq!(
            (a.skipped, a.last, a.next),
            (1, Some(100_000), Next::At(300_000))
        );
    }

    #[test]
    fn unchanged_settings_keep_the_state_and_changed_ones_take_effect() {
        let mut s = Schedules::default();
        s.set(b"a", def("every 10", CatchUp::Last), 10_000);
        s.fire(10_000, 100, next_occurrence);
        assert_eq!(
            s.set(b"a", def("every 10", CatchUp::Last), 99_000),
            SetOutcome::Unchanged
        );
        assert_eq!(s.get(b"a").unwrap().next, Next::At(20_000));
        assert_eq!(
            s.set(b"a", def("every 5", CatchUp::Last), 15_000),
            SetOutcome::Changed
        );
        let a = s.get(b"a").unwrap();
        assert_eq!((a.next, a.last), (Next::At(15_000), Some(10_000)));
        let mut off = def("every 5", CatchUp::Last);
        off.enabled = false;
        s.set(b"a", off, 15_000);
        assert_eq!(s.next_due(), None);
        assert!(s.fire(1_000_000, 100, next_occurrence).0.is_empty());
    }

    #[test]
    fn a_pending_next_is_set_once_by_compare_and_set() {
        let mut s = Schedules::default();
        s.set(b"a", def("every 10", CatchUp::Last), 10_000);
        // As the scripts engine: the next is left for the client.
        let (runs, _) = s.fire(10_003, 100, |_, _| None);
        assert_eq!(runs.len(), 1);
        assert_eq!(s.get(b"a").unwrap().next, Next::Pending { after: 10_003 });
        assert_eq!(s.next_due(), None);
        assert!(!s.set_next(b"a", 10_002, Some(20_000)), "another run's CAS");
        assert!(s.set_next(b"a", 10_003, Some(20_000)));
        assert!(!s.set_next(b"a", 10_003, Some(30_000)), "computed once");
        assert_eq!(s.next_due(), Some(20_000));
    }

    #[test]
    fn an_unreadable_timing_stays_pending_and_a_date_that_never_comes_ends_it() {
        let mut s = Schedules::default();
        s.set(b"bad", def("cron UTC 99 * * * *", CatchUp::Last), 1_000);
        s.set(b"feb30", def("cron UTC 0 0 30 2 *", CatchUp::Last), 1_000);
        let (runs, _) = s.fire(1_000, 100, next_occurrence);
        assert_eq!(runs.len(), 2);
        assert_eq!(s.get(b"bad").unwrap().next, Next::Pending { after: 1_000 });
        assert_eq!(s.get(b"feb30").unwrap().next, Next::Never);
    }

    #[test]
    fn a_pass_fires_at_most_its_limit_earliest_first() {
        let mut s = Schedules::default();
        for (name, at) in [(&b"c"[..], 1_000), (b"a", 2_000), (b"b", 1_000)] {
            s.set(name, def("every 3600", CatchUp::Last), at);
        }
        let (runs, more) = s.fire(5_000, 2, next_occurrence);
        assert!(more);
        let names: Vec<_> = runs.iter().map(|f| f.name.clone()).collect();
        assert_eq!(names, vec![b"b".to_vec(), b"c".to_vec()]);
    }
}
