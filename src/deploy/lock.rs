//! Who holds an app+env: a deploy, or a person from chat.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::job::JobId;

/// How often a deploy renews its lock (and so how soon it learns of an abort or of a
/// lost lock while nothing restarts): well inside the lease, so that a slow step or a
/// retried API call does not let it lapse.
pub const LEASE_RENEW_SECONDS: i64 = 30;
/// How long a fleet may take to deliver a command to a node before the command is
/// dropped (SSM SendCommand's `TimeoutSeconds`; local nodes start at once).
pub const DELIVERY_TIMEOUT_SECONDS: i64 = 120;

/// How long a deploy's lock outlives its last heartbeat, for commands that may run
/// `command_seconds` (a restart's, with its health timeout, the longest). A driver that
/// stopped renewing may have sent a command up to `LEASE_RENEW_SECONDS` after its last
/// renewal, which a node may start up to `DELIVERY_TIMEOUT_SECONDS` later and run for
/// that long: only once that has surely ended (plus a minute for clocks) may another
/// deploy take over, or the two would run commands on one app+env at once (the
/// simulation found this with a lease of three minutes and commands delivered late).
pub const fn lease_seconds(command_seconds: u64) -> i64 {
    LEASE_RENEW_SECONDS + DELIVERY_TIMEOUT_SECONDS + command_seconds as i64 + 60
}

/// The lease of a deploy whose commands run up to 600 s: 13.5 minutes.
pub const LEASE_SECONDS: i64 = lease_seconds(600);

/// A hold on an app+env. Deploys take one as a lease they renew; people take one from chat
/// (no job, no expiry) to stop deploys for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    pub holder: String,
    pub reason: String,
    pub since: DateTime<Utc>,
    pub expires: Option<DateTime<Utc>>,
    pub job: Option<JobId>,
    /// Counts every taking of this app+env's lock, never reused: the fencing token a
    /// deploy's commands carry, so a node refuses a holder that was taken over.
    #[serde(default)]
    pub generation: u64,
    /// Who asked the deploy holding the lock to stop (`/deploy abort`, `shipit abort`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<String>,
    /// What the lock's holders wrote to the ledger so far, handed from each holder to the
    /// next: a ledger whose reads may lag its writes answers no older (see [`Written`]).
    #[serde(default, skip_serializing_if = "Written::is_none")]
    pub written: Written,
}

/// The versions of an app+env's live entry and faulty list that the lock's holders last
/// wrote (0: not written yet). Parameter Store's reads are not promised to see a write
/// just made: a new holder reading the live version before the last deploy's record
/// shows would let an automatic job lower it. Writes happen only under the lock, so the
/// lock carries what was written to the next holder, whose reads then wait until they
/// answer at least these versions. Ledgers that read what they wrote leave it at 0.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    #[serde(default)]
    pub live: u64,
    #[serde(default)]
    pub faulty: u64,
}

impl Written {
    pub fn is_none(&self) -> bool {
        *self == Written::default()
    }

    /// The newer of two, field by field.
    pub fn max(self, other: Written) -> Written {
        Written {
            live: self.live.max(other.live),
            faulty: self.faulty.max(other.faulty),
        }
    }
}

impl LockInfo {
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }

    /// A deploy's lock whose lease runs: what `unlock` leaves and `abort` stops. A
    /// person's lock, or a lapsed lease, is neither.
    pub fn is_running_deploy(&self, now: DateTime<Utc>) -> bool {
        self.job.is_some() && !self.is_expired(now)
    }

    /// Whether `job` holds this lock as taken with `generation`: what a renewal asks.
    pub fn held_by(&self, job: &JobId, generation: u64) -> bool {
        self.job.as_ref() == Some(job) && self.generation == generation
    }

    /// A lock a person takes (from chat or the CLI): no job, no expiry, until unlocked.
    pub fn by_person(holder: String, reason: &str, now: DateTime<Utc>) -> LockInfo {
        LockInfo {
            holder,
            reason: reason.to_string(),
            since: now,
            expires: None,
            job: None,
            generation: 0,
            abort: None,
            written: Written::default(),
        }
    }

    /// The end of a lease of `seconds` renewed at `now`.
    pub fn lease_from(now: DateTime<Utc>, seconds: i64) -> DateTime<Utc> {
        now + Duration::seconds(seconds)
    }
}

/// What a deploy learns when it renews its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "renewal", rename_all = "snake_case")]
pub enum Renewal {
    /// Still ours, lease extended; `abort` if someone asked it to stop.
    Held { abort: Option<String> },
    /// Someone took it over (the lease lapsed) or removed it: `holder` has it now.
    Lost { holder: Option<LockInfo> },
}

/// What `unlock` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unlocked {
    /// A lock taken from chat, removed.
    Released(LockInfo),
    NotLocked,
    /// A running deploy holds it; it stays (`abort` stops the deploy instead).
    Deploying(LockInfo),
}

/// The decision `take` makes in every ledger, on the lock found (or not) and the one asked
/// for: the lock that now stands (`Ok`, with its generation) or who holds it (`Err`).
/// A deploy asking again for its own lock (a replayed step) gets it back as it stands.
// Both sides are a lock, of one size: boxing the refusal would only add an allocation.
#[allow(clippy::result_large_err)]
pub fn take(
    current: Option<&LockInfo>,
    last_generation: u64,
    asked: &LockInfo,
    now: DateTime<Utc>,
) -> Result<LockInfo, LockInfo> {
    match current {
        Some(held) if asked.job.is_some() && held.job == asked.job => Ok(held.clone()),
        Some(held) if !held.is_expired(now) => Err(held.clone()),
        _ => Ok(LockInfo {
            generation: last_generation.max(current.map_or(0, |c| c.generation)) + 1,
            abort: None,
            ..asked.clone()
        }),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::deploy::version::Version;

    fn at(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + s, 0).unwrap()
    }

    fn deploy(job: &str, since: i64) -> LockInfo {
        LockInfo {
            holder: format!("job {job}"),
            reason: "deploying".into(),
            since: at(since),
            expires: Some(LockInfo::lease_from(at(since), LEASE_SECONDS)),
            job: Some(JobId::derive("a", "e", &Version::parse("1").unwrap(), job)),
            generation: 0,
            abort: None,
            written: Written::default(),
        }
    }

    #[test]
    fn a_free_lock_is_taken_with_the_next_generation() {
        let taken = take(None, 6, &deploy("a", 0), at(0)).unwrap();
        assert_eq!(taken.generation, 7);
    }

    #[test]
    fn a_held_lock_is_refused_until_its_lease_lapses() {
        let held = LockInfo {
            generation: 3,
            ..deploy("a", 0)
        };
        assert_eq!(
            take(Some(&held), 3, &deploy("b", 10), at(10)),
            Err(held.clone())
        );
        let after = at(LEASE_SECONDS);
        let taken = take(Some(&held), 3, &deploy("b", LEASE_SECONDS), after).unwrap();
        assert_eq!((taken.generation, taken.holder.as_str()), (4, "job b"));
    }

    #[test]
    fn asking_again_for_ones_own_lock_keeps_it_as_it_stands() {
        let held = LockInfo {
            generation: 3,
            abort: Some("@ann".into()),
            ..deploy("a", 0)
        };
        // Even past its lease: nobody took it over, so it is still this deploy's.
        assert_eq!(
            take(Some(&held), 3, &deploy("a", 0), at(LEASE_SECONDS * 2)),
            Ok(held)
        );
    }

    #[test]
    fn a_chat_lock_never_lapses() {
        let chat = LockInfo {
            expires: None,
            job: None,
            generation: 1,
            ..deploy("x", 0)
        };
        assert!(take(Some(&chat), 1, &deploy("b", 0), at(1_000_000)).is_err());
    }
}
