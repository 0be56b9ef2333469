//! Ingress: turns signed webhooks, package uploads and slash commands into deploy jobs.
//!
//! The handlers are plain async functions over headers and raw bytes, shared by the
//! Lambda functions and `shipit serve`, so both answer every request the same way.

pub mod approve;
pub mod github;
pub mod index;
pub mod interactive;
pub mod package;
pub mod plan;
pub mod slack;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::secrets::{Secret, SecretError, Secrets};
use crate::config::{App, Config};
use crate::deploy::job::{DeployJob, Source};
use crate::deploy::ports::{Cancel, Enqueued, Fleet, Gate, JobQueue, Ledger, Stories};
use crate::deploy::version::Version;

/// An HTTP answer: status and JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
}

impl Reply {
    pub fn new(status: u16, body: Value) -> Reply {
        Reply { status, body }
    }

    /// A refusal: the status and a reason a person can act on.
    pub fn error(status: u16, reason: impl Into<String>) -> Reply {
        Reply::new(
            status,
            json!({ "status": "error", "reason": reason.into() }),
        )
    }

    /// Understood and deliberately not acted on.
    pub fn ignored(status: u16, reason: impl Into<String>) -> Reply {
        Reply::new(
            status,
            json!({ "status": "ignored", "reason": format!("ignored: {}", reason.into()) }),
        )
    }

    pub fn reason(&self) -> &str {
        self.body
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

/// One queued (or already queued) job, as reported back to the sender.
#[derive(Debug, Clone, Serialize)]
pub struct JobReceipt {
    pub job: String,
    pub app: String,
    pub env: String,
    pub version: String,
    pub result: Enqueued,
}

/// A signed webhook an `Ingress` answers. On Lambda each HTTP function answers one and
/// reads only that one's signing secret: its role may read no other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    GitHub,
    Slack,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::GitHub, Hook::Slack];

    /// The config key of its signing secret.
    pub fn secret_key(self) -> &'static str {
        match self {
            Hook::GitHub => "github.webhook_secret",
            Hook::Slack => "slack.signing_secret",
        }
    }
}

/// A hook's signing secret that cannot be read, named by its config key.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {source}")]
pub struct HookSecretError {
    pub key: &'static str,
    #[source]
    pub source: SecretError,
}

/// What the handlers share: the config, the queue, the ledger and the resolved secrets.
pub struct Ingress {
    pub config: Arc<Config>,
    pub queue: Arc<dyn JobQueue>,
    pub ledger: Arc<dyn Ledger>,
    /// Asked by a dry run (`/deploy … --dry-run`); without one its plan says the deploy
    /// asks when it runs.
    pub gate: Option<Arc<dyn Gate>>,
    /// Lists the nodes of environments found by tags, for a dry run; without one its
    /// plan says they are found when the deploy runs.
    pub fleet: Option<Arc<dyn Fleet>>,
    /// Where `/deploy show JOB` reads a job's story.
    pub stories: Option<Arc<dyn Stories>>,
    /// Where `/deploy cancel JOB` takes a queued job off the queue.
    pub cancel: Option<Arc<dyn Cancel>>,
    /// Where a person's deploy reads its environment's change calendar before it is
    /// queued; without one it is read when the deploy starts.
    pub calendars: Option<Arc<dyn crate::deploy::ports::ChangeCalendars>>,
    github_secret: Option<String>,
    slack_secret: Option<String>,
}

impl Ingress {
    /// Resolves the signing secrets of `hooks` once; a configured secret that cannot be
    /// read is an error at start-up, not a 401 for every request later.
    pub async fn new(
        config: Arc<Config>,
        queue: Arc<dyn JobQueue>,
        ledger: Arc<dyn Ledger>,
        secrets: &Secrets,
        hooks: &[Hook],
    ) -> Result<Ingress, HookSecretError> {
        let resolve = |hook: Hook, secret: &Option<Secret>| {
            let wanted = secret.clone().filter(|_| hooks.contains(&hook));
            async move {
                match wanted {
                    Some(s) => secrets
                        .resolve(&s)
                        .await
                        .map(Some)
                        .map_err(|source| HookSecretError {
                            key: hook.secret_key(),
                            source,
                        }),
                    None => Ok(None),
                }
            }
        };
        let github_secret = resolve(Hook::GitHub, &config.github_secret).await?;
        let slack_secret = resolve(Hook::Slack, &config.slack_secret).await?;
        Ok(Ingress {
            config,
            queue,
            ledger,
            gate: None,
            fleet: None,
            stories: None,
            cancel: None,
            calendars: None,
            github_secret,
            slack_secret,
        })
    }

    pub fn with_gate(self, gate: Arc<dyn Gate>) -> Ingress {
        Ingress {
            gate: Some(gate),
            ..self
        }
    }

    pub fn with_fleet(self, fleet: Arc<dyn Fleet>) -> Ingress {
        Ingress {
            fleet: Some(fleet),
            ..self
        }
    }

    pub fn with_cancel(self, cancel: Arc<dyn Cancel>) -> Ingress {
        Ingress {
            cancel: Some(cancel),
            ..self
        }
    }

    pub fn with_calendars(
        self,
        calendars: Arc<dyn crate::deploy::ports::ChangeCalendars>,
    ) -> Ingress {
        Ingress {
            calendars: Some(calendars),
            ..self
        }
    }

    pub fn with_stories(self, stories: Arc<dyn Stories>) -> Ingress {
        Ingress {
            stories: Some(stories),
            ..self
        }
    }

    /// Jobs for every environment the app deploys to automatically.
    fn auto_jobs(
        app: &App,
        version: &Version,
        source: &Source,
        now: DateTime<Utc>,
    ) -> Vec<DeployJob> {
        app.auto_deploy
            .iter()
            .map(|env| {
                DeployJob::new(
                    &app.name,
                    env,
                    app.package.clone(),
                    version.clone(),
                    source.clone(),
                    now,
                )
            })
            .collect()
    }

    /// Queues the jobs and answers 202 with receipts, or 503 if the queue is down (the
    /// sender should retry; the job ids make that safe).
    async fn enqueue(&self, jobs: Vec<DeployJob>) -> Result<Vec<JobReceipt>, Reply> {
        match self.queue.enqueue(&jobs).await {
            Ok(results) => Ok(jobs
                .iter()
                .zip(results)
                .map(|(j, result)| {
                    tracing::info!(job_id = %j.id, app = %j.app, env = %j.env, version = %j.version, ?result, "job queued");
                    JobReceipt {
                        job: j.id.to_string(),
                        app: j.app.clone(),
                        env: j.env.clone(),
                        version: j.version.to_string(),
                        result,
                    }
                })
                .collect()),
            Err(e) => {
                tracing::error!(error = %e, "queue unavailable");
                Err(Reply::error(503, format!("queue unavailable, nothing was queued; retry: {e}")))
            }
        }
    }

    async fn enqueue_reply(&self, jobs: Vec<DeployJob>) -> Reply {
        match self.enqueue(jobs).await {
            Ok(receipts) => Reply::new(202, json!({ "status": "queued", "jobs": receipts })),
            Err(reply) => reply,
        }
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Option<HmacSha256> {
    use hmac::Mac;
    // HMAC takes keys of any length, so this is always Some.
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    for p in parts {
        mac.update(p);
    }
    Some(mac)
}

/// Checks `presented_hex` against the HMAC-SHA256 of `parts` under `key`, in constant
/// time (`verify_slice` compares with `subtle`).
pub(crate) fn verify_hmac_sha256(key: &[u8], parts: &[&[u8]], presented_hex: &str) -> bool {
    use hmac::Mac;
    match (hex::decode(presented_hex), hmac_sha256(key, parts)) {
        (Ok(presented), Some(mac)) => mac.verify_slice(&presented).is_ok(),
        _ => false,
    }
}

/// Hex HMAC-SHA256, as GitHub and Slack sign: for test requests and sample events.
pub fn sign_hex(key: &[u8], parts: &[&[u8]]) -> String {
    use hmac::Mac;
    hmac_sha256(key, parts)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default()
}
