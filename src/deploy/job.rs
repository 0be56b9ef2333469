//! The deploy job: the one thing every trigger turns into.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::deploy::version::{PackageName, Version};

/// Bumped on any change a reader of older jobs could misread; readers refuse versions
/// they do not know rather than guessing.
pub const JOB_SCHEMA: u32 = 1;

/// Deterministic from (app, env, version, source identity): the same event delivered
/// twice yields the same id, which the queues use to drop the second copy. Only hex
/// digits, so it is valid as an SQS deduplication id and a Step Functions execution name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(transparent)]
pub struct JobId(String);

impl JobId {
    pub fn derive(app: &str, env: &str, version: &Version, source_identity: &str) -> JobId {
        let mut h = Sha256::new();
        for part in [app, env, version.as_str(), source_identity] {
            // Length-prefix each part so ("ab","c") and ("a","bc") cannot collide.
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        JobId(hex::encode(h.finalize().get(..10).unwrap_or_default()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An id as `derive` makes them (20 lowercase hex digits), typed by a person: `None`
    /// for anything else, which then reaches no store or API.
    pub fn parse(text: &str) -> Option<JobId> {
        (text.len() == 20 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .then(|| JobId(text.to_string()))
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

/// What caused the job. Everything needed to explain the deploy later is kept here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Source {
    /// A tag push or a published release on GitHub.
    Tag {
        event: String,
        repo: String,
        tag: String,
        commit: Option<String>,
        delivery: Option<String>,
        pusher: Option<String>,
        /// The tagged commit's time, as the push event says (for the lead time).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        committed_at: Option<DateTime<Utc>>,
    },
    /// A package file appeared in the package index.
    Upload { location: String },
    /// A `/deploy` slash command.
    Chat {
        user_id: String,
        user_name: String,
        channel_id: String,
        channel_name: String,
        trigger_id: String,
        /// Where Slack takes the delayed reply (30 minutes, 5 posts); checked at ingress
        /// against `slack.response_url_prefix`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response_url: Option<String>,
    },
    /// `shipit deploy` on the command line.
    Cli { user: String, nonce: String },
    /// Bring nodes that do not run the live version to it (`nodes`; empty: every node):
    /// a node that joined, or drift. The job's version is what was live when it was
    /// queued; the deploy follows whatever is live when it runs.
    Sync {
        nodes: Vec<String>,
        by: String,
        nonce: String,
    },
    /// A version that went live on `from_env` with job `from_job`, sent on to this
    /// environment (its `promote`): it goes at `due_at` if it is still live there, not
    /// marked faulty.
    Promotion {
        from_env: String,
        from_job: JobId,
        due_at: DateTime<Utc>,
    },
    /// A re-send of `restores`, the job that was live before `replaces`.
    Rollback {
        restores: JobId,
        replaces: Option<JobId>,
        requested_via: Box<Source>,
    },
}

/// A chat user as shipit records them (requester, lock holder, who forced or aborted): the
/// Slack user id, which is who they are, with the name only to be read by people.
pub fn chat_person(user_id: &str, user_name: &str) -> String {
    if user_name.is_empty() {
        user_id.to_string()
    } else {
        format!("@{user_name} ({user_id})")
    }
}

/// Whether `d` is a Slack user id (`U…`, or `W…` in an Enterprise Grid), as opposed to a
/// name or a CLI user's account.
pub fn is_slack_id(d: &str) -> bool {
    d.starts_with(['U', 'W'])
        && d.len() > 1
        && d.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// A person as Slack shows them: a user id as a mention, anyone else by name.
pub fn mention(who: &str) -> String {
    if is_slack_id(who) {
        format!("<@{who}>")
    } else {
        who.to_string()
    }
}

impl Source {
    /// Forgets Slack's reply address, here and in the command a rollback came from:
    /// whoever holds it may post as shipit for 30 minutes, so no copy a view shows or a
    /// ticket keeps carries it.
    pub fn forget_reply_address(&mut self) {
        match self {
            Source::Chat { response_url, .. } => *response_url = None,
            Source::Rollback { requested_via, .. } => requested_via.forget_reply_address(),
            _ => {}
        }
    }

    /// What makes two deliveries of this source "the same event".
    pub fn identity(&self) -> String {
        match self {
            // Keyed on repo and tag, not on event or delivery: a tag push and the release
            // published for the same tag are one deploy, not two.
            Source::Tag { repo, tag, .. } => format!("tag:{repo}:{tag}"),
            Source::Upload { location } => format!("upload:{location}"),
            Source::Chat { trigger_id, .. } => format!("chat:{trigger_id}"),
            Source::Cli { user, nonce } => format!("cli:{user}:{nonce}"),
            Source::Sync { nonce, .. } => format!("sync:{nonce}"),
            Source::Promotion { from_job, .. } => format!("promote:{from_job}"),
            Source::Rollback {
                restores,
                requested_via,
                ..
            } => format!("rollback:{restores}:{}", requested_via.identity()),
        }
    }

    /// Who to name in chat and APM as having asked for this deploy.
    pub fn requester(&self) -> String {
        match self {
            Source::Tag { pusher, repo, .. } => {
                pusher.clone().unwrap_or_else(|| format!("github:{repo}"))
            }
            Source::Upload { .. } => "package upload".to_string(),
            Source::Chat {
                user_id, user_name, ..
            } => chat_person(user_id, user_name),
            Source::Cli { user, .. } => user.clone(),
            Source::Sync { by, .. } => by.clone(),
            Source::Promotion { from_env, .. } => format!("promotion from {from_env}"),
            Source::Rollback { requested_via, .. } => requested_via.requester(),
        }
    }

    /// The person who asked, as `freeze_overriders` names them: a Slack user id, or a
    /// CLI user's account.
    pub fn person_id(&self) -> Option<&str> {
        match self {
            Source::Chat { user_id, .. } => Some(user_id),
            Source::Cli { user, .. } => Some(user),
            _ => None,
        }
    }

    /// Automatic triggers may be superseded by a newer version; human requests never are.
    /// (The local store's claim names these kinds too.)
    pub fn is_automatic(&self) -> bool {
        matches!(
            self,
            Source::Tag { .. } | Source::Upload { .. } | Source::Promotion { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployJob {
    pub schema: u32,
    pub id: JobId,
    pub app: String,
    pub env: String,
    pub version: Version,
    pub package: PackageName,
    pub source: Source,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    /// Who sent this version out past the gate (`--force`); kept in history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forced_by: Option<String>,
    /// Sent out while its environment's calendar was closed, by whom and why
    /// (`--override`); kept in history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overridden: Option<Override>,
    /// Who approved it, where its environment needs approvals (see
    /// [`approval`](crate::deploy::approval)); kept in history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approved_by: Vec<String>,
}

/// A deploy outside the environment's windows or inside a freeze, asked for by a freeze
/// overrider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    pub by: String,
    pub reason: String,
}

#[derive(Debug, thiserror::Error)]
pub enum JobDecodeError {
    #[error("job is not valid JSON for a deploy job: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("job schema {0} is newer than this shipit understands ({JOB_SCHEMA})")]
    UnknownSchema(u32),
}

impl DeployJob {
    pub fn new(
        app: &str,
        env: &str,
        package: PackageName,
        version: Version,
        source: Source,
        now: DateTime<Utc>,
    ) -> DeployJob {
        DeployJob {
            schema: JOB_SCHEMA,
            id: JobId::derive(app, env, &version, &source.identity()),
            app: app.to_string(),
            env: env.to_string(),
            requested_by: source.requester(),
            version,
            package,
            source,
            requested_at: now,
            forced_by: None,
            overridden: None,
            approved_by: vec![],
        }
    }

    /// The same job, let past its environment's calendar by whoever asked for it.
    pub fn overriding(self, reason: &str) -> DeployJob {
        DeployJob {
            overridden: Some(Override {
                by: self.requested_by.clone(),
                reason: reason.to_string(),
            }),
            ..self
        }
    }

    /// The same job, let past the gate by whoever asked for it.
    pub fn forced(self) -> DeployJob {
        DeployJob {
            forced_by: Some(self.requested_by.clone()),
            ..self
        }
    }

    /// Whether the gate (tag merged, checks green) decides if this job deploys.
    pub fn is_gated(&self) -> bool {
        self.forced_by.is_none()
            && !matches!(self.source, Source::Rollback { .. } | Source::Sync { .. })
    }

    /// The job that puts `self` back in place of `replaces`: same app, env, package and
    /// version, a new id, and a source saying what it restores.
    pub fn rollback(
        &self,
        replaces: Option<&JobId>,
        requested_via: Source,
        now: DateTime<Utc>,
    ) -> DeployJob {
        DeployJob::new(
            &self.app,
            &self.env,
            self.package.clone(),
            self.version.clone(),
            Source::Rollback {
                restores: self.id.clone(),
                replaces: replaces.cloned(),
                requested_via: Box::new(requested_via),
            },
            now,
        )
    }

    /// The span every log line of this job's deploy carries.
    pub fn span(&self) -> tracing::Span {
        tracing::info_span!("deploy", job_id = %self.id, app = %self.app, env = %self.env, version = %self.version)
    }

    /// The FIFO group: deploys of one app+env are strictly ordered, others run freely.
    pub fn group(&self) -> String {
        format!("{}/{}", self.app, self.env)
    }

    pub fn to_json(&self) -> String {
        // Serializing this type cannot fail: every field is a string, number or map.
        serde_json::to_string(self).unwrap_or_default()
    }

    pub fn from_json(s: &str) -> Result<DeployJob, JobDecodeError> {
        #[derive(Deserialize)]
        struct Probe {
            schema: u32,
        }
        let probe: Probe = serde_json::from_str(s)?;
        if probe.schema > JOB_SCHEMA {
            return Err(JobDecodeError::UnknownSchema(probe.schema));
        }
        Ok(serde_json::from_str(s)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn the_reply_address_is_forgotten_in_a_rollback_asked_for_from_chat_too() {
        let chat = Source::Chat {
            user_id: "U1".into(),
            user_name: "ann".into(),
            channel_id: "C1".into(),
            channel_name: "deploys".into(),
            trigger_id: "t".into(),
            response_url: Some("https://hooks.slack.com/commands/T/1/x".into()),
        };
        let mut rollback = Source::Rollback {
            restores: JobId("a".repeat(20)),
            replaces: None,
            requested_via: Box::new(chat.clone()),
        };
        rollback.forget_reply_address();
        let text = serde_json::to_string(&rollback).unwrap();
        assert!(!text.contains("hooks.slack.com"), "{text}");
        let mut direct = chat;
        direct.forget_reply_address();
        assert!(!serde_json::to_string(&direct).unwrap().contains("hooks.slack.com"));
    }

    fn tag_source(delivery: &str) -> Source {
        Source::Tag {
            event: "push".into(),
            repo: "acme/hello".into(),
            tag: "v1.4.2".into(),
            commit: Some("abc".into()),
            delivery: Some(delivery.into()),
            pusher: Some("octocat".into()),
            committed_at: None,
        }
    }

    fn job(source: Source) -> DeployJob {
        DeployJob::new(
            "hello",
            "production",
            PackageName::from_str("hello-app").unwrap(),
            Version::parse("1.4.2").unwrap(),
            source,
            Utc::now(),
        )
    }

    #[test]
    fn same_event_same_id_other_event_other_id() {
        assert_eq!(job(tag_source("d1")).id, job(tag_source("d2")).id);
        let other = JobId::derive(
            "hello",
            "staging",
            &Version::parse("1.4.2").unwrap(),
            "tag:acme/hello:v1.4.2",
        );
        assert_ne!(job(tag_source("d1")).id, other);
        assert_ne!(
            JobId::derive("ab", "c", &Version::parse("1").unwrap(), "x"),
            JobId::derive("a", "bc", &Version::parse("1").unwrap(), "x")
        );
    }

    #[test]
    fn json_round_trip_and_schema_guard() {
        let j = job(tag_source("d1"));
        let back = DeployJob::from_json(&j.to_json()).unwrap();
        assert_eq!(back, j);
        let newer = j.to_json().replace("\"schema\":1", "\"schema\":2");
        assert!(matches!(
            DeployJob::from_json(&newer),
            Err(JobDecodeError::UnknownSchema(2))
        ));
        let hostile = j.to_json().replace("\"1.4.2\"", "\"1.4.2;id\"");
        assert!(DeployJob::from_json(&hostile).is_err());
    }

    #[test]
    fn rollback_restores_version_with_new_id() {
        let live = job(tag_source("d1"));
        let chat = Source::Chat {
            user_id: "U1".into(),
            user_name: "ann".into(),
            channel_id: "C1".into(),
            channel_name: "ops".into(),
            trigger_id: "t1".into(),
            response_url: None,
        };
        let rb = live.rollback(None, chat, Utc::now());
        assert_eq!(rb.version, live.version);
        assert_ne!(rb.id, live.id);
        assert_eq!(rb.requested_by, "@ann (U1)");
        assert!(matches!(rb.source, Source::Rollback { ref restores, .. } if *restores == live.id));
    }
}
