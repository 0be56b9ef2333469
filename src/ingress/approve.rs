//! A person's word on a deploy waiting for approval, from chat (`/deploy approve|reject`,
//! the message's buttons) or the CLI (`shipit approve|reject`): the same checks and words
//! on every path.

use chrono::{DateTime, Utc};

use crate::config::Config;
use crate::deploy::approval::{self, Approval, Standing};
use crate::deploy::job::JobId;
use crate::deploy::ports::{Ledger, Stories};

/// Someone's word on a job: `by` approves it, or rejects it (with a reason, perhaps).
pub struct Word<'a> {
    pub job: &'a JobId,
    pub by: &'a str,
    pub approved: bool,
    pub reason: Option<&'a str>,
}

/// Keeps `word`: what to tell whoever gave it, or why nothing was kept. The deploy reads
/// it at its next look (seconds to a minute).
pub async fn give(
    config: &Config,
    ledger: &dyn Ledger,
    stories: &dyn Stories,
    word: Word<'_>,
    now: DateTime<Utc>,
) -> Result<String, String> {
    let Word {
        job: id,
        by: who,
        approved,
        reason,
    } = word;
    let verb = if approved { "approve" } else { "reject" };
    let story = match stories.story(id).await {
        Ok(Some(story)) => story,
        Ok(None) => return Err(format!("No job {id} is known (or it is no longer kept).")),
        Err(e) => return Err(format!("Could not read job {id}: {e}; nothing was done.")),
    };
    let job = &story.job;
    let what = format!("job {id} ({} {} to {})", job.app, job.version, job.env);
    if !story.status.is_pending() {
        return Err(format!("{what} is {}: there is nothing to {verb}.", story.status));
    }
    let rules = config
        .target(job)
        .map_err(|e| format!("{what}: {e}"))?
        .1
        .approvals
        .as_ref()
        .ok_or_else(|| format!("{}/{} needs no approvals: {what} does not wait for any.", job.app, job.env))?;
    if !approval::needed(Some(rules), job) {
        return Err(format!("{what} needs no approval (rollbacks and syncs never wait for one)."));
    }
    rules.may(job, who, approved)?;
    // Too late for a word once the deploy went past its approval (or was turned down):
    // it would be kept, and change nothing.
    let words = ledger
        .approvals(&job.app, &job.env, rules.words_since(now))
        .await
        .map_err(|e| format!("Could not read the approvals of {what}: {e}; nothing was done."))?;
    let went_on = story.events.iter().any(|e| e.text.starts_with("approved by "));
    match rules.standing(job, &words, now) {
        Standing::Rejected { by, .. } => {
            return Err(format!("{what} was rejected by {by} already: it will not run."))
        }
        Standing::Approved { by } if approved => {
            return Ok(format!("{what} is approved already (by {}).", by.join(", ")))
        }
        Standing::Approved { .. } => {
            return Err(format!(
                "{what} is approved already: it goes ahead; `/deploy abort {} {}` stops it once it runs.",
                job.app, job.env
            ))
        }
        Standing::Waiting { .. } if went_on => {
            return Err(format!("{what} was approved and went on: nothing to {verb}."))
        }
        Standing::Waiting { .. } => {}
    }
    // Kept whole in a 4 KB parameter on AWS.
    let reason = reason
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| crate::deploy::lists::clip(r, 500));
    let word = Approval {
        job: id.clone(),
        version: job.version.clone(),
        by: who.to_string(),
        approved,
        reason,
        at: now,
    };
    match ledger.approve(&job.app, &job.env, &word).await {
        Ok(true) if approved => Ok(format!(
            "Approved {what}: it starts once {} approver(s) have, when it next looks.",
            rules.required.max(1)
        )),
        Ok(true) => Ok(format!("Rejected {what}: it will not run.")),
        Ok(false) => Err(format!(
            "{who} has already approved or rejected {what}: the first word stands."
        )),
        Err(e) => Err(format!("Could not keep the word on {what}: {e}; try again.")),
    }
}
