use chrono::{DateTime, Utc};

use super::*;

fn utc(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn calendar(zone: &str, windows: &[&str], freezes: &[RawFreeze]) -> Calendar {
    let windows: Vec<String> = windows.iter().map(|w| w.to_string()).collect();
    Calendar::parse(zone, &windows, freezes).unwrap()
}

fn freeze(toml_line: &str) -> RawFreeze {
    toml::from_str(toml_line).unwrap()
}

#[test]
fn inside_a_window_and_no_freeze_is_open() {
    let c = calendar("Europe/Berlin", &["Mon-Thu 09:00-16:00"], &[]);
    // Tue 2026-12-08 10:00 in Berlin (UTC+1).
    assert_eq!(c.closed(utc("2026-12-08T09:00:00Z")), None);
    // The end is not in it.
    let closed = c.closed(utc("2026-12-08T15:00:00Z")).unwrap();
    assert_eq!(closed.until, utc("2026-12-09T08:00:00Z"));
    assert_eq!(
        closed.why,
        "outside the deploy windows; the next opens Wed 2026-12-09 09:00 Europe/Berlin"
    );
    // After Thursday's, the next is Monday's.
    let closed = c.closed(utc("2026-12-10T17:00:00Z")).unwrap();
    assert_eq!(closed.until, utc("2026-12-14T08:00:00Z"));
    // No windows: always open but for freezes.
    assert_eq!(
        calendar("UTC", &[], &[]).closed(utc("2026-12-08T03:00:00Z")),
        None
    );
}

/// Europe changes its clocks on the last Sunday of March, the US on the second: a
/// window at 09:00 local moves by an hour in UTC across each, on its own date.
#[test]
fn windows_keep_local_hours_across_each_zone_s_daylight_saving_change() {
    let berlin = calendar("Europe/Berlin", &["Mon-Fri 09:00-16:00"], &[]);
    // Fri 2027-03-26 17:00 CET (UTC+1): the next window is Mon 2027-03-29 09:00 CEST (UTC+2).
    let closed = berlin.closed(utc("2027-03-26T16:00:00Z")).unwrap();
    assert_eq!(closed.until, utc("2027-03-29T07:00:00Z"));
    assert_eq!(
        closed.why,
        "outside the deploy windows; the next opens Mon 2027-03-29 09:00 Europe/Berlin"
    );
    // Before the change, 09:00 was 08:00 UTC.
    let closed = berlin.closed(utc("2027-03-25T16:00:00Z")).unwrap();
    assert_eq!(closed.until, utc("2027-03-26T08:00:00Z"));
    // 15:30 UTC on Monday is 17:30 CEST: closed, though it was inside before the change.
    assert!(berlin.closed(utc("2027-03-29T14:30:00Z")).is_some());
    assert_eq!(berlin.closed(utc("2027-03-26T14:30:00Z")), None);

    let new_york = calendar("America/New_York", &["Mon-Fri 09:00-16:00"], &[]);
    // Fri 2027-03-12 17:00 EST (UTC-5): the next is Mon 2027-03-15 09:00 EDT (UTC-4).
    let closed = new_york.closed(utc("2027-03-12T22:00:00Z")).unwrap();
    assert_eq!(closed.until, utc("2027-03-15T13:00:00Z"));
    assert_eq!(
        closed.why,
        "outside the deploy windows; the next opens Mon 2027-03-15 09:00 America/New_York"
    );
    // Berlin has not changed yet that Monday: 09:00 there is still 08:00 UTC.
    assert_eq!(
        berlin.closed(utc("2027-03-15T07:30:00Z")).unwrap().until,
        utc("2027-03-15T08:00:00Z")
    );
    // And back in autumn (New York: first Sunday of November).
    let closed = new_york.closed(utc("2027-11-05T22:00:00Z")).unwrap();
    assert_eq!(closed.until, utc("2027-11-08T14:00:00Z"));
}

/// A window whose start the clocks skip opens when the day reaches it; one hour long
/// that night.
#[test]
fn a_window_in_the_skipped_hour_opens_after_it() {
    let c = calendar("Europe/Berlin", &["Sun 02:00-04:00"], &[]);
    // Sun 2027-03-28: 02:00 CET does not exist; 03:00 CEST (01:00 UTC) is the first.
    let closed = c.closed(utc("2027-03-27T12:00:00Z")).unwrap();
    assert_eq!(closed.until, utc("2027-03-28T01:00:00Z"));
    assert_eq!(c.closed(utc("2027-03-28T01:30:00Z")), None);
    assert!(
        c.closed(utc("2027-03-28T02:00:00Z")).is_some(),
        "04:00 CEST ends it"
    );
    // A time inside the skipped hour keeps the offset before it: 02:30 CET is 03:30 CEST.
    let half = calendar("Europe/Berlin", &["Sun 02:30-04:00"], &[]);
    assert_eq!(
        half.closed(utc("2027-03-27T12:00:00Z")).unwrap().until,
        utc("2027-03-28T01:30:00Z")
    );
    // A window the clocks skip whole is not there that day: the next is a week on, and
    // until then it is closed (it was read as open, finding nothing within a week).
    let skipped = calendar("Europe/Berlin", &["Sun 02:00-03:00"], &[]);
    let closed = skipped.closed(utc("2027-03-21T02:30:00Z")).unwrap();
    assert_eq!(closed.until, utc("2027-04-04T00:00:00Z"));
    assert!(closed.opens);
}

#[test]
fn a_calendar_that_never_opens_says_so() {
    let c = calendar(
        "UTC",
        &["Mon 09:00-10:00"],
        &[freeze(
            r#"yearly = "01-01..12-31"
reason = "never""#,
        )],
    );
    let closed = c.closed(utc("2026-12-07T09:30:00Z")).unwrap();
    assert!(!closed.opens, "{closed:?}");
    assert_eq!(closed.why, "frozen (never), no opening within 400 days");
    assert_eq!(closed.until, utc("2028-01-11T09:30:00Z"));
}

#[test]
fn a_freeze_of_whole_days_ends_at_the_midnight_after_its_last_day() {
    let c = calendar(
        "Europe/Berlin",
        &[],
        &[freeze(
            r#"from = "2026-12-24"
until = "2026-12-26"
reason = "christmas""#,
        )],
    );
    assert_eq!(c.closed(utc("2026-12-23T22:59:59Z")), None);
    let closed = c.closed(utc("2026-12-23T23:00:00Z")).unwrap();
    assert_eq!(closed.until, utc("2026-12-26T23:00:00Z"));
    assert_eq!(
        closed.why,
        "frozen (christmas) until Sun 2026-12-27 00:00 Europe/Berlin"
    );
    assert_eq!(c.closed(utc("2026-12-26T23:00:00Z")), None);
    // Local times: up to, not through.
    let c = calendar(
        "UTC",
        &[],
        &[freeze(
            r#"from = "2026-12-07T15:00"
until = "2026-12-07T15:00:20"
reason = "test""#,
        )],
    );
    assert_eq!(
        c.closed(utc("2026-12-07T15:00:10Z")).unwrap().until,
        utc("2026-12-07T15:00:20Z")
    );
}

/// The classic failure: a holiday freeze read in UTC lets a deploy through in the
/// hours its own zone is already (or still) frozen.
#[test]
fn a_yearly_freeze_wraps_the_new_year_in_its_own_zone() {
    let f = freeze(
        r#"yearly = "12-20..01-03"
reason = "holidays""#,
    );
    let c = calendar("Pacific/Auckland", &[], std::slice::from_ref(&f));
    // Dec 19 11:30 UTC is Dec 20 00:30 in Auckland (UTC+13): frozen already.
    let closed = c.closed(utc("2026-12-19T11:30:00Z")).unwrap();
    // Through Jan 3: open at Jan 4 00:00 NZDT = Jan 3 11:00 UTC.
    assert_eq!(closed.until, utc("2027-01-03T11:00:00Z"));
    // In the new year too (last year's freeze).
    assert_eq!(
        c.closed(utc("2027-01-02T12:00:00Z")).unwrap().until,
        utc("2027-01-03T11:00:00Z")
    );
    assert_eq!(c.closed(utc("2027-01-03T11:00:00Z")), None);
    assert_eq!(c.closed(utc("2026-12-19T10:30:00Z")), None);
}

#[test]
fn a_monthly_freeze_is_that_whole_day_and_a_window_after_it_waits_for_both() {
    let c = calendar(
        "America/New_York",
        &["Sat,Sun 10:00-12:00"],
        &[freeze(
            r#"monthly = "third Saturday"
reason = "maintenance""#,
        )],
    );
    // Sat 2026-12-19 is the third Saturday of December: frozen all day, then Sunday's window.
    let closed = c.closed(utc("2026-12-19T15:30:00Z")).unwrap();
    assert_eq!(closed.until, utc("2026-12-20T15:00:00Z"));
    assert_eq!(
        closed.why,
        "frozen (maintenance); deploys resume Sun 2026-12-20 10:00 America/New_York"
    );
    // The second Saturday's window is open.
    assert_eq!(c.closed(utc("2026-12-12T15:30:00Z")), None);
    let last = calendar(
        "UTC",
        &[],
        &[freeze(
            r#"monthly = "last Friday"
reason = "payroll""#,
        )],
    );
    assert!(last.closed(utc("2026-12-25T12:00:00Z")).is_some());
    assert_eq!(last.closed(utc("2026-12-18T12:00:00Z")), None);
}

#[test]
fn every_problem_is_named_with_where_it_is() {
    let windows: Vec<String> = [
        "Mon-Thu 9-16",
        "Fri 16:00-09:00",
        "Funday 09:00-10:00",
        "Sat 00:00-24:00",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let freezes = [
        freeze(
            r#"yearly = "02-29..03-01"
reason = "x""#,
        ),
        freeze(
            r#"monthly = "sixth Monday"
reason = "x""#,
        ),
        freeze(
            r#"from = "2026-12-26"
until = "2026-12-24"
reason = "x""#,
        ),
        freeze(
            r#"yearly = "12-20..01-03"
reason = " ""#,
        ),
        freeze(
            r#"from = "2026-12-26"
reason = "x""#,
        ),
    ];
    let problems = Calendar::parse("Mars/Olympus", &windows, &freezes).unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|p| p.0.as_str()).collect();
    assert_eq!(
        keys,
        [
            "time_zone",
            "windows[0]",
            "windows[1]",
            "windows[2]",
            "freezes[0].yearly",
            "freezes[1].monthly",
            "freezes[3].reason",
            "freezes[4]",
        ],
        "{problems:?}"
    );
    // With a zone, a range is checked too.
    let problems = Calendar::parse("UTC", &[], &freezes[2..3]).unwrap_err();
    assert!(problems[0].1.contains("is not after"), "{problems:?}");
    assert!(Calendar::parse("UTC", &windows[3..], &[]).is_ok());
}

/// An SSM Change Calendar holds deploys back while closed, until its next change; one
/// closed for good, or that cannot be read, holds them back too (looked at again later).
#[test]
fn a_change_calendar_holds_back_while_closed_or_unread() {
    use crate::deploy::ports::CalendarState;
    let now = utc("2026-12-07T20:00:00Z");
    let state = |open: bool, next: Option<&str>| {
        Ok(CalendarState {
            open,
            next_change: next.map(utc),
        })
    };
    assert_eq!(
        change_calendar_closed(
            "prod-changes",
            state(true, Some("2026-12-07T21:00:00Z")),
            now
        ),
        None
    );
    let closed = change_calendar_closed(
        "prod-changes",
        state(false, Some("2026-12-07T21:30:00Z")),
        now,
    )
    .unwrap();
    assert_eq!(closed.until, utc("2026-12-07T21:30:00Z"));
    assert_eq!(
        closed.why,
        "the change calendar prod-changes is closed until Mon 2026-12-07 21:30 UTC"
    );
    assert!(closed.opens);
    let shut = change_calendar_closed("prod-changes", state(false, None), now).unwrap();
    assert_eq!(
        shut.why,
        "the change calendar prod-changes is closed, with no opening scheduled"
    );
    assert!(!shut.opens && shut.until > now);
    let unread =
        change_calendar_closed("prod-changes", Err("InvalidDocument".into()), now).unwrap();
    assert_eq!(
        unread.why,
        "the change calendar prod-changes cannot be read (InvalidDocument)"
    );
    assert!(!unread.opens && unread.until > now);
    // Looked at again within the engine's calendar look.
    assert!(unread.until - now <= chrono::Duration::minutes(15));
}

/// No calendar (the config's or a change calendar) holds back a rollback, a sync, or an
/// override by a freeze overrider; anything else it does.
#[test]
fn rollbacks_syncs_and_overriders_overrides_are_exempt() {
    use crate::deploy::job::{DeployJob, Source};
    let now = utc("2026-12-07T20:00:00Z");
    let chat = |user: &str| Source::Chat {
        user_id: user.into(),
        user_name: "ann".into(),
        channel_id: "C1".into(),
        channel_name: "deploys".into(),
        trigger_id: "t".into(),
        response_url: None,
    };
    let job = |source: Source| {
        DeployJob::new(
            "hello",
            "production",
            "hello-app".parse().unwrap(),
            crate::deploy::version::Version::parse("1.2.0").unwrap(),
            source,
            now,
        )
    };
    let overriders = ["U1".to_string()];
    let upload = job(Source::Upload {
        location: "s3://p/hello_app-1.2.0-py3-none-any.whl".into(),
    });
    assert!(!exempt(&overriders, &upload));
    assert!(!exempt(&overriders, &job(chat("U1"))));
    assert!(exempt(&overriders, &job(chat("U1")).overriding("hotfix")));
    assert!(!exempt(&overriders, &job(chat("U2")).overriding("hotfix")));
    assert!(exempt(&overriders, &upload.rollback(None, chat("U2"), now)));
    let sync = job(Source::Sync {
        nodes: vec!["n1".into()],
        by: "node-joined".into(),
        nonce: "j".into(),
    });
    assert!(exempt(&overriders, &sync));
}
