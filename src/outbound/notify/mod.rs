//! Deploy results to chat and APM: a log line per notice (always), one Slack message per
//! deploy kept up to date (thread replies for failures), a New Relic change-tracking
//! marker and a Datadog event when a version goes live, GitHub Deployments for tag jobs.
//!
//! Best effort by design: a notifier that fails is retried on 429 (`Retry-After`) and 5xx
//! within a short budget, then logged with the job id; the deploy never waits longer than
//! `NOTIFY_BUDGET` per step for all of them together. What a notifier must remember
//! between steps (the Slack message's `ts`, the GitHub deployment id) is in
//! [`NotifyState`], which drivers keep, as an opaque `NotifyMemo`, with the deploy's own
//! state, so a resumed deploy goes on updating the same message.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backoff::ExponentialBackoff;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::secrets::Secrets;
use crate::config::{App, Config, DatadogTarget, GitHubTarget, NewRelicTarget, SlackTarget};
use crate::deploy::dora::Figures;
use crate::deploy::engine::{Deploy, Notice, Outcome};
use crate::deploy::job::Source;
use crate::deploy::ports::{Notify, NotifyMemo};
use crate::deploy::status::describe;
use crate::outbound::http;

mod datadog;
mod github;
mod newrelic;
mod render;
mod slack;

/// The longest one step's notifications may hold up the deploy, all notifiers together.
pub const NOTIFY_BUDGET: Duration = Duration::from_secs(10);
/// One HTTP request's limit; retries of it share the budget.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Intermediate Slack updates closer together than this are folded into the next one:
/// `chat.update` allows about one call a second per channel, and a 1,000-node deploy
/// would otherwise spend its time in 429s.
const SLACK_UPDATE_EVERY_SECONDS: i64 = 3;

/// What notifiers remember between steps of one deploy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotifyState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    /// The first node that failed, and the tail of its output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<NodeFailure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github_deployment: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFailure {
    pub node: String,
    pub detail: String,
}

/// The deploy's Slack message: `channel` is the id Slack answered with (chat.update
/// wants the id, not the `#name` it was posted to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlackMessage {
    pub channel: String,
    pub ts: String,
    pub updated_at: DateTime<Utc>,
}

pub struct Notifier {
    config: Arc<Config>,
    secrets: Arc<Secrets>,
    http: http::Client,
}

impl Notifier {
    pub fn new(config: Arc<Config>, secrets: Arc<Secrets>) -> Notifier {
        Notifier {
            config,
            secrets,
            http: http::Client::new(REQUEST_TIMEOUT),
        }
    }

    /// Tells everyone configured for the deploy's app what `notices` say. Never fails and
    /// returns within `NOTIFY_BUDGET`.
    async fn notify_with(
        &self,
        deploy: &Deploy,
        notices: &[Notice],
        state: &mut NotifyState,
        now: DateTime<Utc>,
    ) {
        for n in notices {
            tracing::info!(notice = ?n, "{}", describe(n));
            match n {
                Notice::Started { .. } => {
                    state.started_at.get_or_insert(now);
                }
                Notice::InstallFailed { node, detail } | Notice::Unhealthy { node, detail }
                    if state.failure.is_none() =>
                {
                    state.failure = Some(NodeFailure {
                        node: node.clone(),
                        detail: detail.clone(),
                    });
                }
                _ => {}
            }
        }
        let Some(app) = self.config.app(&deploy.job.app) else {
            return;
        };
        if notices.is_empty() {
            return;
        }
        let round = Round {
            notifier: self,
            app,
            deploy,
            notices,
            now,
            deadline: tokio::time::Instant::now() + NOTIFY_BUDGET,
        };
        let snapshot = NotifyState {
            slack: None,
            github_deployment: None,
            ..state.clone()
        };
        let NotifyState {
            slack,
            github_deployment,
            ..
        } = state;
        let all = async {
            tokio::join!(
                round.slack(&snapshot, slack),
                round.slash_reply(&snapshot),
                round.newrelic(&snapshot),
                round.datadog(&snapshot),
                round.github(github_deployment),
            )
        };
        if tokio::time::timeout(NOTIFY_BUDGET + REQUEST_TIMEOUT, all)
            .await
            .is_err()
        {
            tracing::warn!(job_id = %deploy.job.id, "notifications cut off after their time budget");
        }
    }
}

#[async_trait]
impl Notify for Notifier {
    async fn notify(
        &self,
        deploy: &Deploy,
        notices: &[Notice],
        memo: &mut NotifyMemo,
        now: DateTime<Utc>,
    ) {
        let mut state = match NotifyState::deserialize(&*memo) {
            Ok(state) => state,
            Err(_) if memo.is_null() => NotifyState::default(),
            Err(e) => {
                // Lost notifier state costs a second Slack message, never the deploy.
                tracing::warn!(job_id = %deploy.job.id, error = %e, "unreadable notifier state; starting afresh");
                NotifyState::default()
            }
        };
        self.notify_with(deploy, notices, &mut state, now).await;
        *memo = if state == NotifyState::default() {
            NotifyMemo::Null
        } else {
            serde_json::to_value(&state).unwrap_or(NotifyMemo::Null)
        };
    }

    fn wants_figures(&self, app: &str) -> bool {
        self.config
            .app(app)
            .and_then(|a| a.notify.datadog.as_ref())
            .is_some_and(|d| d.dora)
    }

    async fn figures(&self, figures: &Figures, now: DateTime<Utc>) {
        if let Some(app) = self.config.app(&figures.app) {
            let send = datadog::figures(self, app, figures, now);
            if tokio::time::timeout(NOTIFY_BUDGET + REQUEST_TIMEOUT, send)
                .await
                .is_err()
            {
                tracing::warn!(app = %figures.app, env = %figures.env, "DORA figures cut off after their time budget");
            }
        }
    }
}

/// One round of notifications.
struct Round<'a> {
    notifier: &'a Notifier,
    app: &'a App,
    deploy: &'a Deploy,
    notices: &'a [Notice],
    now: DateTime<Utc>,
    deadline: tokio::time::Instant,
}

fn finished(notices: &[Notice]) -> Option<&Outcome> {
    notices.iter().find_map(|n| match n {
        Notice::Finished { outcome } => Some(outcome),
        _ => None,
    })
}

impl Round<'_> {
    fn warn(&self, who: &str, error: &str) {
        tracing::warn!(job_id = %self.deploy.job.id, notifier = who, %error, "notification failed; the deploy goes on");
    }

    async fn secret(&self, s: &crate::config::secrets::Secret) -> Result<String, String> {
        self.notifier
            .secrets
            .resolve(s)
            .await
            .map_err(|e| e.to_string())
    }

    /// Sends the request `make` builds within the round's deadline (see [`send_until`]).
    async fn send(&self, make: impl Fn() -> reqwest::RequestBuilder) -> Result<Value, String> {
        send_until(self.deadline, make).await
    }

    // --- Slack -------------------------------------------------------------------------
}

/// Sends the request `make` builds, retrying 429 (after its `Retry-After`), 5xx and
/// connection errors with exponential back-off until `deadline`. Returns the response
/// body as JSON (`null` if it is not JSON).
async fn send_until(
    deadline: tokio::time::Instant,
    make: impl Fn() -> reqwest::RequestBuilder,
) -> Result<Value, String> {
    let policy = ExponentialBackoff {
        initial_interval: Duration::from_millis(250),
        max_interval: Duration::from_secs(2),
        max_elapsed_time: Some(deadline - tokio::time::Instant::now()),
        ..ExponentialBackoff::default()
    };
    backoff::future::retry(policy, || async {
        let transient = |err: String, after: Option<Duration>| {
            let left = deadline - tokio::time::Instant::now();
            match after {
                // Slack may ask for minutes; the deploy does not wait that long.
                Some(d) if d > left => backoff::Error::permanent(format!(
                    "{err}; asked to retry after {} s, beyond the notification budget",
                    d.as_secs()
                )),
                after => backoff::Error::Transient {
                    err,
                    retry_after: after,
                },
            }
        };
        let resp = make().send().await.map_err(|e| {
            if e.is_builder() {
                backoff::Error::permanent(e.to_string())
            } else {
                transient(e.to_string(), None)
            }
        })?;
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = resp.text().await.unwrap_or_default();
        let short = http::excerpt(&body, 300);
        if status.is_success() {
            Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
        } else if http::is_transient(status) {
            let asked = retry_after.filter(|_| status == reqwest::StatusCode::TOO_MANY_REQUESTS);
            Err(transient(format!("{status}: {short}"), asked))
        } else {
            Err(backoff::Error::permanent(format!("{status}: {short}")))
        }
    })
    .await
}
