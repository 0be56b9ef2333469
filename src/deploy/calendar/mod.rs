//! When an environment takes deploys: its windows (days and hours) and freezes (a range,
//! every year, or a day of every month), in its own named time zone. Pure: the time is
//! always given, never read, so the engine's clock (and a test's) decides.

use chrono::{DateTime, Utc};
use jiff::civil::{Date, DateTime as Civil, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::Deserialize;

use crate::deploy::job::{DeployJob, Source};

/// A freeze as the config writes it: one of `from`/`until`, `yearly` or `monthly`, and
/// why.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFreeze {
    pub from: Option<String>,
    pub until: Option<String>,
    /// `"12-20..01-03"`: every year from Dec 20 through Jan 3, both whole days.
    pub yearly: Option<String>,
    /// `"third Saturday"`, `"last Friday"`: that whole day of every month.
    pub monthly: Option<String>,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct Calendar {
    zone: TimeZone,
    zone_name: String,
    /// The calendar in the config's words, for a plan to show.
    pub summary: String,
    windows: Vec<Window>,
    freezes: Vec<Freeze>,
}

#[derive(Debug, Clone)]
struct Window {
    /// Monday first.
    days: [bool; 7],
    from: Time,
    /// `None`: the end of the day (`24:00`).
    to: Option<Time>,
}

#[derive(Debug, Clone)]
enum When {
    /// From this instant, up to (not including) that one.
    Once(Timestamp, Timestamp),
    /// From this month and day through that one (into the next year if it comes first).
    Yearly((i8, i8), (i8, i8)),
    /// The `nth` (1–5, or -1 for the last) such weekday of each month.
    Monthly(i8, Weekday),
}

#[derive(Debug, Clone)]
struct Freeze {
    when: When,
    reason: String,
}

/// Closed now: opens again at `until` (or, `opens` false, is still closed then: no
/// opening within the horizon); `why` says so in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub until: DateTime<Utc>,
    pub why: String,
    pub opens: bool,
}

/// A problem with one part of the calendar: where (`windows[1]`, `freezes[0].yearly`, …),
/// what, and what would do.
pub type Problem = (String, String, &'static str);

const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

/// How far ahead an opening is looked for: past it, the calendar says to look again then.
const HORIZON_DAYS: i64 = 400;

impl Calendar {
    /// Every problem at once; `zone` is an IANA name (`Europe/Berlin`).
    pub fn parse(
        zone: &str,
        windows: &[String],
        freezes: &[RawFreeze],
    ) -> Result<Calendar, Vec<Problem>> {
        let mut problems = vec![];
        let tz = match TimeZone::get(zone) {
            Ok(tz) => Some(tz),
            Err(_) => {
                problems.push((
                    "time_zone".into(),
                    format!("{zone:?} is not a time zone of the IANA database"),
                    "a name such as \"Europe/Berlin\", \"America/New_York\" or \"UTC\"",
                ));
                None
            }
        };
        let mut ws = vec![];
        for (i, w) in windows.iter().enumerate() {
            match parse_window(w) {
                Ok(w) => ws.push(w),
                Err(e) => problems.push((
                    format!("windows[{i}]"),
                    format!("{w:?}: {e}"),
                    "days and hours, e.g. \"Mon-Thu 09:00-16:00\" or \"Sat,Sun 10:00-12:00\"",
                )),
            }
        }
        let mut fs = vec![];
        for (i, f) in freezes.iter().enumerate() {
            let key = format!("freezes[{i}]");
            if f.reason.trim().is_empty() {
                problems.push((
                    format!("{key}.reason"),
                    "a freeze needs a reason".into(),
                    "say why, e.g. \"end-of-year holidays\": chat and status show it",
                ));
            }
            let when = match (&f.from, &f.until, &f.yearly, &f.monthly) {
                (Some(from), Some(until), None, None) => tz
                    .as_ref()
                    .map(|tz| parse_once(tz, from, until).map_err(|e| (key.clone(), e)))
                    .transpose(),
                (None, None, Some(y), None) => parse_yearly(y)
                    .map(Some)
                    .map_err(|e| (format!("{key}.yearly"), format!("{y:?}: {e}"))),
                (None, None, None, Some(m)) => parse_monthly(m)
                    .map(Some)
                    .map_err(|e| (format!("{key}.monthly"), format!("{m:?}: {e}"))),
                _ => Err((
                    key.clone(),
                    "give from and until, or yearly, or monthly".to_string(),
                )),
            };
            match when {
                Ok(Some(when)) => fs.push(Freeze {
                    when,
                    reason: f.reason.trim().to_string(),
                }),
                Ok(None) => {}
                Err((key, e)) => problems.push((
                    key,
                    e,
                    "from = \"2026-12-24\", until = \"2026-12-26\" (whole days; or \"2026-12-24T18:00\"), yearly = \"12-20..01-03\", or monthly = \"third Saturday\"",
                )),
            }
        }
        let said = |f: &RawFreeze| match (&f.from, &f.until, &f.yearly, &f.monthly) {
            (Some(a), Some(b), _, _) => format!("{} ({a} to {b})", f.reason.trim()),
            (_, _, Some(y), _) => format!("{} (every year {y})", f.reason.trim()),
            (_, _, _, Some(m)) => format!("{} (every {m} of the month)", f.reason.trim()),
            _ => f.reason.clone(),
        };
        let mut summary = vec![zone.trim().to_string()];
        if !windows.is_empty() {
            summary.push(format!("windows {}", windows.join(", ")));
        }
        if !freezes.is_empty() {
            let fs: Vec<String> = freezes.iter().map(said).collect();
            summary.push(format!("freezes {}", fs.join(", ")));
        }
        match (tz, problems.is_empty()) {
            (Some(tz), true) => Ok(Calendar {
                zone: tz,
                summary: summary.join("; "),
                zone_name: zone.trim().to_string(),
                windows: ws,
                freezes: fs,
            }),
            _ => Err(problems),
        }
    }

    /// Whether deploys wait now, and until when (the first instant in a window and in no
    /// freeze, looked for up to a little over a year ahead).
    pub fn closed(&self, now: DateTime<Utc>) -> Option<Closed> {
        let start = Timestamp::from_second(now.timestamp()).ok()?;
        let horizon = start.as_second() + HORIZON_DAYS * 86_400;
        let mut t = start;
        // What holds deploys back now: a freeze (its reason), or the windows (`None`).
        let mut now_frozen: Option<Option<String>> = None;
        let mut blockers = 0;
        while t.as_second() < horizon {
            if let Some((end, reason)) = self.freeze_at(t) {
                now_frozen.get_or_insert(Some(reason));
                t = end;
            } else if let Some(next) = self.next_window(t) {
                now_frozen.get_or_insert(None);
                t = next;
            } else {
                break;
            }
            blockers += 1;
        }
        let first = now_frozen?;
        if t.as_second() >= horizon {
            let again = DateTime::from_timestamp(horizon, 0)?;
            let why = match first {
                Some(reason) => format!("frozen ({reason}), no opening within {HORIZON_DAYS} days"),
                None => {
                    format!("outside the deploy windows, no opening within {HORIZON_DAYS} days")
                }
            };
            return Some(Closed {
                until: again,
                why,
                opens: false,
            });
        }
        let until = DateTime::from_timestamp(t.as_second(), 0)?;
        let when = self.show(t);
        let why = match (first, blockers) {
            (Some(reason), 1) => format!("frozen ({reason}) until {when}"),
            (Some(reason), _) => format!("frozen ({reason}); deploys resume {when}"),
            (None, 1) => format!("outside the deploy windows; the next opens {when}"),
            (None, _) => format!("outside the deploy windows; deploys resume {when}"),
        };
        Some(Closed {
            until,
            why,
            opens: true,
        })
    }

    /// `t` as the environment's people read it: `Mon 2026-12-07 09:00 Europe/Berlin`.
    fn show(&self, t: Timestamp) -> String {
        let local = t.to_zoned_datetime(self.zone.clone());
        format!(
            "{} {} {} {}",
            day_name(local.weekday()),
            local.date(),
            hhmm(local.time()),
            self.zone_name
        )
    }

    /// The end of the freezes `t` is in (the latest, as they may overlap), and the reason
    /// of the first.
    fn freeze_at(&self, t: Timestamp) -> Option<(Timestamp, String)> {
        let day = t.to_zoned_datetime(self.zone.clone()).date();
        let mut found: Option<(Timestamp, String)> = None;
        for f in &self.freezes {
            let span = match f.when {
                When::Once(a, b) => Some((a, b)),
                // This year's, or (wrapping the new year) last year's.
                When::Yearly(from, until) => [day.year() - 1, day.year()]
                    .into_iter()
                    .filter_map(|y| {
                        let end_year = if until < from { y + 1 } else { y };
                        let last = Date::new(end_year, until.0, until.1).ok()?;
                        let a = self.midnight(Date::new(y, from.0, from.1).ok()?)?;
                        let b = self.midnight(last.tomorrow().ok()?)?;
                        (a <= t && t < b).then_some((a, b))
                    })
                    .next(),
                When::Monthly(nth, weekday) => day
                    .first_of_month()
                    .nth_weekday_of_month(nth, weekday)
                    .ok()
                    .filter(|d| *d == day)
                    .and_then(|d| Some((self.midnight(d)?, self.midnight(d.tomorrow().ok()?)?))),
            };
            if let Some((_, end)) = span.filter(|(a, b)| *a <= t && t < *b) {
                match &mut found {
                    Some((latest, _)) => *latest = (*latest).max(end),
                    None => found = Some((end, f.reason.clone())),
                }
            }
        }
        found
    }

    /// `None` when `t` is inside a window (or there are none); else the next window's start
    /// (or, none found, a later time to look again from: never `None`, which is open).
    fn next_window(&self, t: Timestamp) -> Option<Timestamp> {
        if self.windows.is_empty() {
            return None;
        }
        let today = t.to_zoned_datetime(self.zone.clone()).date();
        let mut next: Option<Timestamp> = None;
        // A window ends by midnight: only today's can hold `t`. Every window comes round
        // within a week, unless the clocks skip it (a window inside the skipped hour):
        // two weeks, and past them, closed still (looked at again from then on).
        const DAYS_AHEAD: i64 = 14;
        for k in 0..=DAYS_AHEAD {
            let Ok(day) = today.checked_add(jiff::Span::new().days(k)) else {
                continue;
            };
            let index = day.weekday().to_monday_zero_offset() as usize;
            for w in self.windows.iter().filter(|w| w.days[index]) {
                let Some(start) = self.at(day, w.from) else {
                    continue;
                };
                let end = match w.to {
                    Some(to) => self.at(day, to),
                    None => day.tomorrow().ok().and_then(|d| self.midnight(d)),
                };
                if k == 0 && start <= t && end.is_some_and(|e| t < e) {
                    return None;
                }
                if start > t && end.is_some_and(|e| start < e) {
                    next = Some(next.map_or(start, |n| n.min(start)));
                }
            }
            if next.is_some() {
                return next;
            }
        }
        today
            .checked_add(jiff::Span::new().days(DAYS_AHEAD + 1))
            .ok()
            .and_then(|d| self.midnight(d))
            .filter(|later| *later > t)
            .or(Some(Timestamp::MAX))
    }

    fn midnight(&self, day: Date) -> Option<Timestamp> {
        self.at(day, Time::midnight())
    }

    /// The instant of a local time: in a gap (clocks put forward), read with the offset
    /// before the gap (02:30 in a skipped hour is 03:30 after it), as RFC 5545 does; when
    /// a time comes twice (clocks put back), the first.
    fn at(&self, day: Date, time: Time) -> Option<Timestamp> {
        Civil::from_parts(day, time)
            .to_zoned_datetime(self.zone.clone())
            .ok()
            .map(|z| z.timestamp())
    }
}

fn day_name(d: Weekday) -> &'static str {
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"][d.to_monday_zero_offset() as usize]
}

fn hhmm(t: Time) -> String {
    format!("{:02}:{:02}", t.hour(), t.minute())
}

fn parse_day(s: &str) -> Result<Weekday, String> {
    const FULL: [&str; 7] = [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
    ];
    let lower = s.trim().to_ascii_lowercase();
    (0..7)
        .find(|&i| lower == DAYS[i].0 || lower == FULL[i])
        .map(|i| DAYS[i].1)
        .ok_or_else(|| format!("{s:?} is not a day (Mon, Tue, … Sun)"))
}

/// `HH:MM`, 00:00 to 23:59.
fn parse_time(s: &str) -> Result<Time, String> {
    let bad = || format!("{s:?} is not a time (HH:MM)");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (i8, i8) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

fn parse_window(s: &str) -> Result<Window, String> {
    let (days_text, hours) = s
        .trim()
        .split_once(' ')
        .ok_or("days, a space, then hours")?;
    let mut days = [false; 7];
    for part in days_text.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (parse_day(a)?, parse_day(b)?),
            None => {
                let d = parse_day(part)?;
                (d, d)
            }
        };
        // A range may wrap the week: Fri-Mon.
        let (mut i, j) = (
            a.to_monday_zero_offset() as usize,
            b.to_monday_zero_offset() as usize,
        );
        loop {
            days[i] = true;
            if i == j {
                break;
            }
            i = (i + 1) % 7;
        }
    }
    let (from, to) = hours.trim().split_once('-').ok_or("hours as HH:MM-HH:MM")?;
    let from = parse_time(from.trim())?;
    // 24:00: to the end of the day.
    let to = match to.trim() {
        "24:00" => None,
        to => Some(parse_time(to)?),
    };
    if to.is_some_and(|to| to <= from) {
        return Err(
            "the window ends before it starts; split one past midnight in two (\"Fri 22:00-24:00\", \"Sat 00:00-02:00\")"
                .into(),
        );
    }
    Ok(Window { days, from, to })
}

/// `from`/`until`: whole days (`2026-12-24`, through `until`'s end), or local times
/// (`2026-12-24T18:00`, up to `until`).
fn parse_once(tz: &TimeZone, from: &str, until: &str) -> Result<When, String> {
    let instant = |s: &str, is_until: bool| -> Result<Timestamp, String> {
        let bad = || format!("{s:?} is not a date (2026-12-24) or a local time (2026-12-24T18:00)");
        // A date parses out of a date and time too: which one is meant is told by the `T`.
        let civil = match s.contains(['T', 't', ' ']) {
            true => s.parse::<Civil>().map_err(|_| bad())?,
            false => {
                let d = s.parse::<Date>().map_err(|_| bad())?;
                let d = match is_until {
                    true => d.tomorrow().map_err(|e| e.to_string())?,
                    false => d,
                };
                Civil::from_parts(d, Time::midnight())
            }
        };
        civil
            .to_zoned_datetime(tz.clone())
            .map(|z| z.timestamp())
            .map_err(|e| e.to_string())
    };
    let (a, b) = (instant(from, false)?, instant(until, true)?);
    if b <= a {
        return Err(format!("until ({until}) is not after from ({from})"));
    }
    Ok(When::Once(a, b))
}

fn parse_month_day(s: &str) -> Result<(i8, i8), String> {
    let bad = || format!("{s:?} is not a month and day (MM-DD)");
    let (m, d) = s.trim().split_once('-').ok_or_else(bad)?;
    let (m, d): (i8, i8) = (m.parse().map_err(|_| bad())?, d.parse().map_err(|_| bad())?);
    if (m, d) == (2, 29) {
        return Err("Feb 29 comes only in leap years: use 02-28 or 03-01".into());
    }
    // Any non-leap year tells whether the day exists.
    Date::new(2025, m, d).map_err(|_| bad())?;
    Ok((m, d))
}

fn parse_yearly(s: &str) -> Result<When, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or("two days as MM-DD..MM-DD, both included")?;
    Ok(When::Yearly(parse_month_day(a)?, parse_month_day(b)?))
}

fn parse_monthly(s: &str) -> Result<When, String> {
    let (nth, day) = s
        .trim()
        .split_once(' ')
        .ok_or("which, then the day: \"third Saturday\", \"last Friday\"")?;
    let nth = match nth.to_ascii_lowercase().as_str() {
        "first" => 1,
        "second" => 2,
        "third" => 3,
        "fourth" => 4,
        "fifth" => 5,
        "last" => -1,
        _ => {
            return Err(format!(
                "{nth:?} is not first, second, third, fourth, fifth or last"
            ))
        }
    };
    Ok(When::Monthly(nth, parse_day(day)?))
}

/// What holds `job` back from an environment with `calendar` now: nothing for a rollback
/// (putting things back is never blocked), a sync (it changes no version), or an override
/// by one of `overriders`.
pub fn holds_back(
    calendar: Option<&Calendar>,
    overriders: &[String],
    job: &DeployJob,
    now: DateTime<Utc>,
) -> Option<Closed> {
    if exempt(overriders, job) {
        return None;
    }
    calendar?.closed(now)
}

/// Whether no calendar holds `job` back: a rollback, a sync, or an override by one of
/// `overriders`.
pub fn exempt(overriders: &[String], job: &DeployJob) -> bool {
    let overridden = job.overridden.is_some()
        && job
            .source
            .person_id()
            .is_some_and(|id| overriders.iter().any(|o| o == id));
    // A sync only brings nodes to what is live already (a node that joined, drift).
    overridden || matches!(job.source, Source::Rollback { .. } | Source::Sync { .. })
}

/// What SSM Change Calendar `name` holds back at `now`, given its state as read (or why
/// it could not be): nothing while it is open. One that cannot be read holds deploys
/// back, as a closed one does: a change window that cannot be seen is not open.
pub fn change_calendar_closed(
    name: &str,
    state: Result<crate::deploy::ports::CalendarState, String>,
    now: DateTime<Utc>,
) -> Option<Closed> {
    // No opening to wait for: looked at again as often as the engine looks at a calendar.
    let later =
        now + chrono::Duration::milliseconds(crate::deploy::engine::CALENDAR_LOOK_MILLIS as i64);
    let (until, why, opens) = match state {
        Ok(s) if s.open => return None,
        Ok(s) => match s.next_change {
            Some(at) => (
                at,
                format!(
                    "the change calendar {name} is closed until {}",
                    at.format("%a %Y-%m-%d %H:%M UTC")
                ),
                true,
            ),
            None => (
                later,
                format!("the change calendar {name} is closed, with no opening scheduled"),
                false,
            ),
        },
        Err(e) => (
            later,
            format!("the change calendar {name} cannot be read ({e})"),
            false,
        ),
    };
    Some(Closed { until, why, opens })
}

/// Whether a person may queue `job` now: an override needs a reason and one of
/// `overriders`; a deploy the calendar holds back is refused with the calendar's words.
/// (Automatic jobs are queued and wait; the deploy checks again before it starts.)
pub fn admit(
    calendar: Option<&Calendar>,
    overriders: &[String],
    job: &DeployJob,
    now: DateTime<Utc>,
) -> Result<(), String> {
    if let Some(o) = &job.overridden {
        if o.reason.trim().is_empty() {
            return Err("--override needs a reason (--override REASON), kept in history".into());
        }
        let allowed = job
            .source
            .person_id()
            .is_some_and(|id| overriders.iter().any(|o| o == id));
        if !allowed {
            return Err(format!(
                "{} may not override the calendar of {}/{}: only its freeze_overriders may",
                job.requested_by, job.app, job.env
            ));
        }
    }
    match holds_back(calendar, overriders, job, now) {
        Some(closed) if !job.source.is_automatic() => Err(refusal(job, &closed)),
        _ => Ok(()),
    }
}

/// A person's deploy refused because of `closed`, in the words chat and the CLI answer.
pub fn refusal(job: &DeployJob, closed: &Closed) -> String {
    format!(
        "{}/{} takes no deploys now: {}; a freeze overrider may deploy with --override REASON",
        job.app, job.env, closed.why
    )
}

#[cfg(test)]
mod tests;
