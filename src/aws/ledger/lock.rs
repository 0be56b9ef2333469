//! The lock on Parameter Store, one parameter per generation under
//! `{prefix}/lock/{app}/{env}/`: `g{generation}` holds the lock taken with that generation
//! (`free` once released, followed by what its holders wrote: see [`Written`]),
//! `g{generation}-abort` who asked its deploy to stop.
//!
//! Parameter Store has no compare-and-swap or compare-and-delete, but creating a parameter
//! without overwrite succeeds for exactly one caller. So taking a free or lapsed lock is
//! creating the next generation's parameter: of two contenders exactly one wins, and the
//! other reads the winner. Only the newest generation counts; the taker deletes older
//! ones. A holder renews by rewriting its own generation and then checking that no newer
//! one appeared: a holder whose lease lapsed and was taken over learns it at its next
//! heartbeat at the latest, and its commands carry its generation for the nodes to refuse.

use chrono::{DateTime, Utc};

use super::SsmLedger;
use crate::aws::params;
use crate::deploy::job::JobId;
use crate::deploy::lock::take;
use crate::deploy::ports::{LockInfo, PortError, Renewal, Unlocked, Written};

const FREE: &str = "free";
const ABORT: &str = "-abort";

/// What Parameter Store holds for one app+env's lock.
#[derive(Debug, Default)]
pub(super) struct Slots {
    /// The newest generation and its lock (`None`: released).
    newest: Option<(u64, Option<LockInfo>)>,
    /// What the newest generation's holders wrote, released or not.
    written: Written,
    abort: Option<String>,
    /// Parameters of older generations, to delete.
    stale: Vec<String>,
}

impl Slots {
    /// The lock that stands, with any abort asked of it.
    pub(super) fn current(&self) -> Option<LockInfo> {
        let (_, lock) = self.newest.as_ref()?;
        lock.clone().map(|l| LockInfo {
            abort: self.abort.clone().or(l.abort),
            ..l
        })
    }

    fn generation(&self) -> u64 {
        self.newest.as_ref().map_or(0, |(g, _)| *g)
    }
}

impl SsmLedger {
    fn lock_path(&self, app: &str, env: &str) -> String {
        format!("{}/lock/{app}/{env}", self.prefix)
    }

    fn slot(&self, app: &str, env: &str, generation: u64) -> String {
        // Zero-padded so that names sort as generations do.
        format!("{}/g{generation:020}", self.lock_path(app, env))
    }

    /// Every lock parameter of app+env, read in one paginated call.
    pub(super) async fn slots(&self, app: &str, env: &str) -> Result<Slots, PortError> {
        let mut locks: Vec<(u64, String, String)> = vec![];
        let mut aborts: Vec<(u64, String, String)> = vec![];
        for (name, value) in params::under(&self.client, &self.lock_path(app, env)).await? {
            let leaf = name.rsplit('/').next().unwrap_or_default();
            let Some(rest) = leaf.strip_prefix('g') else {
                continue;
            };
            match rest.strip_suffix(ABORT) {
                Some(g) => {
                    if let Ok(g) = g.parse() {
                        aborts.push((g, name, value));
                    }
                }
                None => {
                    if let Ok(g) = rest.parse() {
                        locks.push((g, name, value));
                    }
                }
            }
        }
        locks.sort_by_key(|(g, _, _)| *g);
        let mut slots = Slots::default();
        if let Some((g, _, value)) = locks.pop() {
            let lock = match value.strip_prefix(FREE) {
                Some(written) => {
                    slots.written = match written.trim() {
                        "" => Written::default(),
                        w => serde_json::from_str(w)?,
                    };
                    None
                }
                None => Some(serde_json::from_str::<LockInfo>(&value)?),
            };
            slots.written = slots
                .written
                .max(lock.as_ref().map_or(Written::default(), |l| l.written));
            slots.newest = Some((g, lock));
        }
        let newest = slots.generation();
        slots.stale = locks.into_iter().map(|(_, name, _)| name).collect();
        for (g, name, who) in aborts {
            if g == newest {
                slots.abort = Some(who);
            } else {
                slots.stale.push(name);
            }
        }
        Ok(slots)
    }

    /// Creates parameter `name` unless it exists: `false` if it did.
    async fn create(&self, name: &str, value: &str) -> Result<bool, PortError> {
        Ok(params::put(&self.client, name, value, false)
            .await?
            .is_some())
    }

    async fn overwrite(&self, name: &str, value: &str) -> Result<(), PortError> {
        params::put(&self.client, name, value, true).await.map(drop)
    }

    /// Deletes what older generations left; best effort, the next taker tries again.
    async fn sweep(&self, stale: &[String]) {
        if let Err(e) = params::delete(&self.client, stale).await {
            tracing::warn!(error = %e, "old lock parameters stay until the next lock");
        }
    }

    pub(super) async fn take_lock(
        &self,
        app: &str,
        env: &str,
        asked: &LockInfo,
        now: DateTime<Utc>,
    ) -> Result<Result<LockInfo, LockInfo>, PortError> {
        let slots = self.slots(app, env).await?;
        let current = slots.current();
        let taken = match take(current.as_ref(), slots.generation(), asked, now) {
            Ok(t) if t.generation == slots.generation() => return Ok(Ok(t)),
            // What was written under the lock so far goes on with it.
            Ok(t) => LockInfo {
                written: slots.written,
                ..t
            },
            Err(held) => return Ok(Err(held)),
        };
        let name = self.slot(app, env, taken.generation);
        if self.create(&name, &serde_json::to_string(&taken)?).await? {
            let before = self.slot(app, env, slots.generation());
            let mut stale = slots.stale;
            if slots.newest.is_some() {
                stale.push(format!("{before}{ABORT}"));
                stale.push(before);
            }
            self.sweep(&stale).await;
            return Ok(Ok(taken));
        }
        // Another contender created this generation first, and holds the lock; or this
        // caller did, and the SDK made the create again after its answer was lost: the
        // parameter holds exactly what it wrote (another's differs in job or time).
        let winner = self.slots(app, env).await?.current();
        Ok(match winner {
            Some(w) if w == taken => Ok(w),
            w => Err(w.unwrap_or(taken)),
        })
    }

    pub(super) async fn renew_lock(
        &self,
        app: &str,
        env: &str,
        job: &JobId,
        generation: u64,
        until: DateTime<Utc>,
    ) -> Result<Renewal, PortError> {
        let slots = self.slots(app, env).await?;
        let ours = slots.generation() == generation
            && slots.current().is_some_and(|l| l.held_by(job, generation));
        if !ours {
            return Ok(Renewal::Lost {
                holder: slots.current(),
            });
        }
        let mut lock = slots.current().expect("ours, so held");
        let abort = lock.abort.take();
        lock.expires = Some(until);
        self.overwrite(
            &self.slot(app, env, generation),
            &serde_json::to_string(&lock)?,
        )
        .await?;
        // A contender that read the lease as lapsed just before this write may have taken
        // the next generation meanwhile.
        let after = self.slots(app, env).await?;
        Ok(if after.generation() == generation {
            Renewal::Held {
                abort: after.abort.or(abort),
            }
        } else {
            Renewal::Lost {
                holder: after.current(),
            }
        })
    }

    pub(super) async fn release_lock(
        &self,
        app: &str,
        env: &str,
        job: &JobId,
        written: Written,
    ) -> Result<(), PortError> {
        let slots = self.slots(app, env).await?;
        if slots.current().is_some_and(|l| l.job.as_ref() == Some(job)) {
            self.free(app, env, slots.generation(), written.max(slots.written))
                .await?;
        }
        Ok(())
    }

    /// Marks `generation` released, with what its holders wrote for the next one; its
    /// parameter stays so that generations keep counting.
    async fn free(
        &self,
        app: &str,
        env: &str,
        generation: u64,
        written: Written,
    ) -> Result<(), PortError> {
        let name = self.slot(app, env, generation);
        let value = match written.is_none() {
            true => FREE.to_string(),
            false => format!("{FREE} {}", serde_json::to_string(&written)?),
        };
        self.overwrite(&name, &value).await?;
        self.sweep(&[format!("{name}{ABORT}")]).await;
        Ok(())
    }

    pub(super) async fn unlock_chat(
        &self,
        app: &str,
        env: &str,
        now: DateTime<Utc>,
    ) -> Result<Unlocked, PortError> {
        let slots = self.slots(app, env).await?;
        Ok(match slots.current() {
            None => Unlocked::NotLocked,
            Some(l) if l.is_running_deploy(now) => Unlocked::Deploying(l),
            Some(l) => {
                self.free(app, env, slots.generation(), slots.written)
                    .await?;
                Unlocked::Released(l)
            }
        })
    }

    pub(super) async fn abort_deploy(
        &self,
        app: &str,
        env: &str,
        by: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<LockInfo>, PortError> {
        let slots = self.slots(app, env).await?;
        match slots.current() {
            Some(l) if l.is_running_deploy(now) => {
                // Its own parameter, so that the holder's renewals cannot write over it;
                // the first to ask is the one the deploy names.
                let name = format!("{}{ABORT}", self.slot(app, env, slots.generation()));
                self.create(&name, by).await?;
                Ok(self.slots(app, env).await?.current())
            }
            _ => Ok(None),
        }
    }
}
