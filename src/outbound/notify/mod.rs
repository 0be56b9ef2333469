//! Deploy results to chat and APM: a log line per notice (always), one Slack message per
//! deploy kept up to date (thread replies for failures), a New Relic change-tracking
//! marker and a Datadog event when a version goes live, GitHub Deployments for tag jobs.
//!
//! Best effort by design: a notifier that fails is retried on 429 (`Retry-After`) and 5xx
//! within a short budget, then logged with the job id; the deploy never waits longer than
//! `NOTIFY_BUDGET` per step for all of them together. What a notifier must remember
//! between steps (the Slack message's `ts`, the GitHub deployment id) is in
//! [`NotifyState`], which drivers keep with the deploy's own state, so a resumed deploy
//! goes on updating the same message.

use std::sync::Arc;
use std::time::Duration;

use backoff::ExponentialBackoff;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::secrets::Secrets;
use crate::config::{App, Config, DatadogTarget, GitHubTarget, NewRelicTarget, SlackTarget};
use crate::deploy::engine::{Deploy, NodeState, Notice, Outcome, Phase};
use crate::deploy::job::Source;
use crate::deploy::status::describe;

/// The longest one step's notifications may hold up the deploy, all notifiers together.
pub const NOTIFY_BUDGET: Duration = Duration::from_secs(10);
/// One HTTP request's limit; retries of it share the budget.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Intermediate Slack updates closer together than this are folded into the next one:
/// `chat.update` allows about one call a second per channel, and a 1,000-node deploy
/// would otherwise spend its time in 429s.
const SLACK_UPDATE_EVERY_SECONDS: i64 = 3;
/// Per-node lines in the Slack message up to this many nodes; counts per state beyond.
const SLACK_NODE_LINES: usize = 12;

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
    http: reqwest::Client,
}

impl Notifier {
    pub fn new(config: Arc<Config>, secrets: Arc<Secrets>) -> Notifier {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("shipit/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("an HTTP client with default TLS settings");
        Notifier {
            config,
            secrets,
            http,
        }
    }

    /// Tells everyone configured for the deploy's app what `notices` say. Never fails and
    /// returns within `NOTIFY_BUDGET`.
    pub async fn notify(
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

    /// Sends the request `make` builds, retrying 429 (after its `Retry-After`), 5xx and
    /// connection errors with exponential back-off until the round's deadline. Returns
    /// the response body as JSON (`null` if it is not JSON).
    async fn send(&self, make: impl Fn() -> reqwest::RequestBuilder) -> Result<Value, String> {
        let policy = ExponentialBackoff {
            initial_interval: Duration::from_millis(250),
            max_interval: Duration::from_secs(2),
            max_elapsed_time: Some(self.deadline - tokio::time::Instant::now()),
            ..ExponentialBackoff::default()
        };
        backoff::future::retry(policy, || async {
            let transient = |err: String, after: Option<Duration>| {
                let left = self.deadline - tokio::time::Instant::now();
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
            let short: String = body.chars().take(300).collect();
            if status.is_success() {
                Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
            } else if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
                Err(transient(format!("{status}: {short}"), retry_after))
            } else if status.is_server_error() {
                Err(transient(format!("{status}: {short}"), None))
            } else {
                Err(backoff::Error::permanent(format!("{status}: {short}")))
            }
        })
        .await
    }

    // --- Slack -------------------------------------------------------------------------

    async fn slack(&self, memo: &NotifyState, msg: &mut Option<SlackMessage>) {
        let Some(target) = &self.app.notify.slack else {
            return;
        };
        let result = match (&target.token, &target.webhook_url) {
            (Some(token), _) => self.slack_bot(target, token, memo, msg).await,
            (None, Some(url)) => self.slack_webhook(url, memo).await,
            (None, None) => Ok(()),
        };
        if let Err(e) = result {
            self.warn("slack", &e);
        }
    }

    async fn slack_api(
        &self,
        target: &SlackTarget,
        token: &str,
        method: &str,
        body: Value,
    ) -> Result<Value, String> {
        let url = format!("{}/{method}", target.api_url.trim_end_matches('/'));
        let reply = self
            .send(|| self.notifier.http.post(&url).bearer_auth(token).json(&body))
            .await?;
        // The Web API answers 200 with ok=false for its own errors.
        if reply["ok"].as_bool() == Some(true) {
            Ok(reply)
        } else {
            Err(format!(
                "{method}: {}",
                reply["error"].as_str().unwrap_or("no ok in the answer")
            ))
        }
    }

    async fn slack_bot(
        &self,
        target: &SlackTarget,
        token: &crate::config::secrets::Secret,
        memo: &NotifyState,
        msg: &mut Option<SlackMessage>,
    ) -> Result<(), String> {
        let token = self.secret(token).await?;
        let (text, blocks) = render(self.deploy, memo, self.now);
        let urgent = self.notices.iter().any(|n| {
            matches!(
                n,
                Notice::Finished { .. }
                    | Notice::InstallFailed { .. }
                    | Notice::Unhealthy { .. }
                    | Notice::RollingBack { .. }
            )
        });
        match msg {
            None => {
                let channel = target.channel.clone().unwrap_or_default();
                let reply = self
                    .slack_api(
                        target,
                        &token,
                        "chat.postMessage",
                        json!({"channel": channel, "text": text, "blocks": blocks}),
                    )
                    .await?;
                *msg = Some(SlackMessage {
                    channel: reply["channel"].as_str().unwrap_or(&channel).to_string(),
                    ts: reply["ts"]
                        .as_str()
                        .ok_or("chat.postMessage: no ts in the answer")?
                        .to_string(),
                    updated_at: self.now,
                });
            }
            Some(m)
                if urgent
                    || (self.now - m.updated_at).num_seconds() >= SLACK_UPDATE_EVERY_SECONDS =>
            {
                self.slack_api(
                    target,
                    &token,
                    "chat.update",
                    json!({"channel": m.channel, "ts": m.ts, "text": text, "blocks": blocks}),
                )
                .await?;
                m.updated_at = self.now;
            }
            Some(_) => {}
        }
        let Some(m) = msg.as_ref() else { return Ok(()) };
        for n in self.notices {
            let reply = match n {
                Notice::InstallFailed { node, detail } => {
                    format!(":x: install failed on `{node}`:\n```{detail}```")
                }
                Notice::Unhealthy { node, detail } => {
                    format!(":x: `{node}` is unhealthy:\n```{detail}```")
                }
                Notice::RollingBack { to, nodes, reason } => format!(
                    ":leftwards_arrow_with_hook: rolling back to {to}{}: {reason}",
                    if nodes.is_empty() {
                        String::new()
                    } else {
                        format!(" and restarting {}", nodes.join(", "))
                    }
                ),
                _ => continue,
            };
            self.slack_api(
                target,
                &token,
                "chat.postMessage",
                json!({"channel": m.channel, "thread_ts": m.ts, "text": reply}),
            )
            .await?;
        }
        Ok(())
    }

    /// With only an incoming webhook there is no message to update: one at the start, one
    /// at the end.
    async fn slack_webhook(
        &self,
        url: &crate::config::secrets::Secret,
        memo: &NotifyState,
    ) -> Result<(), String> {
        let start = self
            .notices
            .iter()
            .any(|n| matches!(n, Notice::Started { .. }));
        if !start && finished(self.notices).is_none() {
            return Ok(());
        }
        let url = self.secret(url).await?;
        let (text, blocks) = render(self.deploy, memo, self.now);
        self.send(|| {
            self.notifier
                .http
                .post(&url)
                .json(&json!({"text": text, "blocks": blocks}))
        })
        .await
        .map(drop)
    }

    /// A deploy asked for with `/deploy` ends with a reply in the channel it was asked in,
    /// through the command's `response_url`: whether or not a Slack target is configured,
    /// the person who typed the command hears how it went.
    async fn slash_reply(&self, memo: &NotifyState) {
        let Some(url) = response_url(&self.deploy.job.source) else {
            return;
        };
        if finished(self.notices).is_none() {
            return;
        }
        let (text, blocks) = render(self.deploy, memo, self.now);
        let body = json!({
            "response_type": "in_channel",
            "replace_original": false,
            "text": text,
            "blocks": blocks,
        });
        if let Err(e) = self.send(|| self.notifier.http.post(url).json(&body)).await {
            self.warn("slack response_url", &e);
        }
    }

    // --- APM -----------------------------------------------------------------------------

    /// A change-tracking deployment when a version goes live.
    async fn newrelic(&self, memo: &NotifyState) {
        let Some(NewRelicTarget {
            entity_guid,
            api_key,
            endpoint,
        }) = &self.app.notify.newrelic
        else {
            return;
        };
        let Some(Outcome::Succeeded { .. }) = finished(self.notices) else {
            return;
        };
        let job = &self.deploy.job;
        let mut deployment = json!({
            "entityGuid": entity_guid,
            "version": job.version.as_str(),
            "user": job.requested_by,
            "timestamp": memo.started_at.unwrap_or(self.now).timestamp_millis(),
            "deploymentType": "ROLLING",
            "groupId": job.id.as_str(),
            "description": format!("{} {} → {} by shipit ({})", job.app, change(self.deploy), job.env, trigger(&job.source)),
            "changelog": format!("{} → {}", self.deploy.previous.as_ref().map_or("nothing", |v| v.as_str()), job.version),
        });
        if let Some(commit) = commit(&job.source) {
            deployment["commit"] = json!(commit);
        }
        let query = "mutation($deployment: ChangeTrackingDeploymentInput!) { changeTrackingCreateDeployment(deployment: $deployment) { deploymentId entityGuid } }";
        let body = json!({"query": query, "variables": {"deployment": deployment}});
        let result = async {
            let key = self.secret(api_key).await?;
            let reply = self
                .send(|| {
                    self.notifier
                        .http
                        .post(endpoint)
                        .header("API-Key", &key)
                        .json(&body)
                })
                .await?;
            // GraphQL reports its errors in a 200.
            match reply.get("errors") {
                Some(errors) => Err(format!("NerdGraph: {errors}")),
                None => Ok(()),
            }
        };
        if let Err(e) = result.await {
            self.warn("newrelic", &e);
        }
    }

    /// An event for every deploy that ran (succeeded or failed), and a DORA deployment
    /// when a version goes live, if asked for.
    async fn datadog(&self, memo: &NotifyState) {
        let Some(DatadogTarget {
            api_key,
            api_url,
            service,
            dora,
        }) = &self.app.notify.datadog
        else {
            return;
        };
        let Some(outcome) = finished(self.notices) else {
            return;
        };
        if matches!(outcome, Outcome::Skipped { .. }) {
            return;
        }
        let job = &self.deploy.job;
        let (headline, _) = status_line(self.deploy);
        let event = json!({
            "title": format!("{} {} {}: {headline}", job.app, job.version, job.env),
            "text": format!("{} on {} ({}); job {}", change(self.deploy), job.env, trigger(&job.source), job.id),
            "tags": [format!("service:{service}"), format!("env:{}", job.env), format!("version:{}", job.version), format!("shipit_job:{}", job.id)],
            "alert_type": if matches!(outcome, Outcome::Succeeded { .. }) { "success" } else { "error" },
            "aggregation_key": job.id.as_str(),
            "source_type_name": "shipit",
            "date_happened": self.now.timestamp(),
        });
        let result = async {
            let key = self.secret(api_key).await?;
            let post = |path: &str, body: &Value| {
                let url = format!("{api_url}{path}");
                let body = body.clone();
                let key = key.clone();
                async move {
                    self.send(|| {
                        self.notifier
                            .http
                            .post(&url)
                            .header("DD-API-KEY", &key)
                            .json(&body)
                    })
                    .await
                }
            };
            post("/api/v1/events", &event).await?;
            if *dora && matches!(outcome, Outcome::Succeeded { .. }) {
                let nanos = |t: DateTime<Utc>| t.timestamp_nanos_opt().unwrap_or_default();
                let mut attributes = json!({
                    "service": service, "env": job.env, "version": job.version.as_str(),
                    "started_at": nanos(memo.started_at.unwrap_or(self.now)), "finished_at": nanos(self.now),
                });
                if let (Some(sha), Some(repo)) = (commit(&job.source), &self.app.repo) {
                    attributes["git"] = json!({"commit_sha": sha, "repository_url": format!("https://github.com/{repo}")});
                }
                post(
                    "/api/v2/dora/deployment",
                    &json!({"data": {"attributes": attributes}}),
                )
                .await?;
            }
            Ok::<_, String>(())
        };
        if let Err(e) = result.await {
            self.warn("datadog", &e);
        }
    }

    // --- GitHub Deployments ----------------------------------------------------------------

    /// For a tag job: a deployment of the tag's commit to the environment when the deploy
    /// starts (status in_progress), and its final status when it ends.
    async fn github(&self, id: &mut Option<u64>) {
        let (Some(GitHubTarget { token, api_url }), Some(repo)) =
            (&self.app.notify.github, &self.app.repo)
        else {
            return;
        };
        let job = &self.deploy.job;
        let Source::Tag { tag, commit, .. } = &job.source else {
            return;
        };
        let result = async {
            let token = self.secret(token).await?;
            let post = |path: String, body: Value| {
                let url = format!("{api_url}/repos/{repo}{path}");
                let token = token.clone();
                async move {
                    self.send(|| {
                        self.notifier
                            .http
                            .post(&url)
                            .bearer_auth(&token)
                            .header("Accept", "application/vnd.github+json")
                            .header("X-GitHub-Api-Version", "2022-11-28")
                            .json(&body)
                    })
                    .await
                }
            };
            if id.is_none()
                && self
                    .notices
                    .iter()
                    .any(|n| matches!(n, Notice::Started { .. }))
            {
                let created = post(
                    "/deployments".into(),
                    json!({
                        "ref": commit.as_deref().unwrap_or(tag),
                        "environment": job.env,
                        "description": format!("shipit: {} {}", job.app, job.version),
                        "auto_merge": false,
                        // The deploy is already under way; statuses were checked (or not) before.
                        "required_contexts": [],
                        "payload": {"job_id": job.id.as_str(), "version": job.version.as_str()},
                        "production_environment": job.env == "production",
                    }),
                )
                .await?;
                let new = created["id"]
                    .as_u64()
                    .ok_or("POST /deployments: no id in the answer")?;
                *id = Some(new);
                post(
                    format!("/deployments/{new}/statuses"),
                    json!({"state": "in_progress", "description": "installing"}),
                )
                .await?;
            }
            if let (Some(id), Some(outcome)) = (*id, finished(self.notices)) {
                let (state, description) = match outcome {
                    Outcome::Succeeded { .. } => {
                        ("success", format!("{} live on every node", job.version))
                    }
                    Outcome::Failed { reason, .. } => ("failure", reason.clone()),
                    Outcome::RollbackFailed { reason } => ("error", reason.clone()),
                    Outcome::Skipped { reason } => ("inactive", reason.clone()),
                };
                // GitHub keeps descriptions to 140 characters.
                let description: String = description.chars().take(140).collect();
                post(
                    format!("/deployments/{id}/statuses"),
                    json!({"state": state, "description": description}),
                )
                .await?;
            }
            Ok::<_, String>(())
        };
        if let Err(e) = result.await {
            self.warn("github", &e);
        }
    }
}

fn response_url(source: &Source) -> Option<&str> {
    match source {
        Source::Chat { response_url, .. } => response_url.as_deref(),
        Source::Rollback { requested_via, .. } => response_url(requested_via),
        _ => None,
    }
}

fn commit(source: &Source) -> Option<&str> {
    match source {
        Source::Tag { commit, .. } => commit.as_deref(),
        _ => None,
    }
}

/// `1.4.1 → 1.4.2`, or `1.4.2 (first deploy)`.
fn change(d: &Deploy) -> String {
    if let Source::Sync { .. } = d.job.source {
        return format!("{} (sync)", d.job.version);
    }
    match &d.previous {
        Some(p) => format!("{p} → {}", d.job.version),
        None => format!("{} (first deploy)", d.job.version),
    }
}

/// Who or what asked for the deploy, in a few words.
pub fn trigger(source: &Source) -> String {
    match source {
        Source::Tag {
            tag, pusher, event, ..
        } => match pusher {
            Some(p) => format!("{event} of tag {tag} by {p}"),
            None => format!("{event} of tag {tag}"),
        },
        Source::Upload { location } => format!("upload of {location}"),
        Source::Chat { user_name, .. } => format!("/deploy by @{user_name}"),
        Source::Cli { user, .. } => format!("shipit deploy by {user}"),
        Source::Sync { by, .. } => format!("sync by {by}"),
        Source::Rollback { requested_via, .. } => {
            format!("rollback, {}", trigger(requested_via))
        }
    }
}

fn seconds(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} min {} s", s / 60, s % 60)
    }
}

/// The deploy's state in a few words, and its emoji.
fn status_line(d: &Deploy) -> (String, &'static str) {
    // A sync of named nodes is a node joining (node-joined); of none, every node.
    let synced = match &d.job.source {
        Source::Sync { nodes, .. } if nodes.is_empty() => {
            Some("every node on the live version".to_string())
        }
        Source::Sync { nodes, .. } => {
            Some(format!("{} joined, on the live version", nodes.join(", ")))
        }
        _ => None,
    };
    match &d.outcome {
        Some(Outcome::Succeeded { failed_installs }) if failed_installs.is_empty() => {
            match synced {
                Some(line) => (line, ":white_check_mark:"),
                None => ("deployed".into(), ":white_check_mark:"),
            }
        }
        Some(Outcome::Succeeded { failed_installs }) => (
            format!("deployed, except on {}", failed_installs.join(", ")),
            ":warning:",
        ),
        Some(Outcome::Failed {
            rolled_back: true, ..
        }) => (
            "failed and rolled back".into(),
            ":leftwards_arrow_with_hook:",
        ),
        Some(Outcome::Failed { .. }) => ("failed".into(), ":x:"),
        Some(Outcome::RollbackFailed { .. }) => (
            "failed, and so did the rollback: look now".into(),
            ":rotating_light:",
        ),
        Some(Outcome::Skipped { reason }) => (format!("skipped: {reason}"), ":fast_forward:"),
        None => match &d.phase {
            Phase::Verify { since: Some(_), .. } => (
                "waiting for required checks".into(),
                ":hourglass_flowing_sand:",
            ),
            Phase::Lock if d.lock_waiting_since.is_some() => {
                ("waiting for the lock".into(), ":lock:")
            }
            Phase::Verify { .. } | Phase::Lock | Phase::Inspect | Phase::Resolve => {
                ("starting".into(), ":hourglass_flowing_sand:")
            }
            Phase::Probe => ("reading the nodes' versions".into(), ":mag:"),
            Phase::Install => ("installing".into(), ":package:"),
            Phase::Restart { .. } | Phase::Health { .. } | Phase::Bake => (
                "restarting one node at a time".into(),
                ":arrows_counterclockwise:",
            ),
            Phase::Revert { .. } | Phase::RevertRestart { .. } | Phase::RevertHealth { .. } => {
                ("rolling back".into(), ":leftwards_arrow_with_hook:")
            }
            Phase::Record | Phase::Unlock | Phase::Done => {
                ("finishing".into(), ":hourglass_flowing_sand:")
            }
        },
    }
}

fn node_word(s: NodeState) -> (&'static str, &'static str) {
    match s {
        NodeState::Pending => (":white_circle:", "waiting"),
        NodeState::Installed => (":package:", "installed"),
        NodeState::InstallFailed => (":x:", "install failed"),
        NodeState::Restarted => (":arrows_counterclockwise:", "restarted, checking health"),
        NodeState::Healthy => (":white_check_mark:", "healthy"),
        NodeState::Unhealthy => (":x:", "unhealthy"),
        NodeState::Reverted => (
            ":leftwards_arrow_with_hook:",
            "back on the previous version",
        ),
    }
}

/// The Slack message for the deploy as it stands: Block Kit, and the plain text that
/// notifications and screen readers show.
pub fn render(d: &Deploy, memo: &NotifyState, now: DateTime<Utc>) -> (String, Value) {
    let job = &d.job;
    let (headline, emoji) = status_line(d);
    let elapsed = memo.started_at.map(|t| seconds(now - t));
    let text = format!(
        "{} {} on {}: {headline}{}",
        job.app,
        change(d),
        job.env,
        elapsed
            .as_ref()
            .map_or(String::new(), |e| format!(" ({e})"))
    );
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!(
            "{emoji} *{}* {} on *{}*: {headline}", job.app, change(d), job.env)}}),
        json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
            "{}{} · job `{}`{}", trigger(&job.source),
            job.forced_by.as_ref().map_or(String::new(), |w| format!(", forced past the gate by {w}")),
            job.id,
            elapsed.map_or(String::new(), |e| format!(" · {e}")))}]}),
    ];
    if !d.nodes.is_empty() {
        let body = if d.nodes.len() <= SLACK_NODE_LINES {
            d.nodes
                .iter()
                .map(|n| {
                    let (e, w) = node_word(n.state);
                    format!("{e} `{}` {w}", n.name)
                })
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            let mut counts: Vec<(NodeState, usize)> = vec![];
            for n in &d.nodes {
                match counts.iter_mut().find(|(s, _)| *s == n.state) {
                    Some((_, c)) => *c += 1,
                    None => counts.push((n.state, 1)),
                }
            }
            counts
                .iter()
                .map(|(s, c)| {
                    let (e, w) = node_word(*s);
                    format!("{e} {c} {w}")
                })
                .collect::<Vec<_>>()
                .join(" · ")
        };
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*{} node(s)*\n{body}", d.nodes.len())}}));
    }
    if let Some(f) = &memo.failure {
        blocks.push(
            json!({"type": "section", "text": {"type": "mrkdwn", "text": format!(
            "*Failed on `{}`*\n```{}```", f.node, f.detail)}}),
        );
    }
    match &d.outcome {
        Some(Outcome::Failed { reason, .. }) | Some(Outcome::RollbackFailed { reason }) => {
            blocks
                .push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": reason}]}));
        }
        _ => {}
    }
    (text, Value::Array(blocks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::job::DeployJob;
    use crate::deploy::rollout::Rollout;
    use crate::deploy::version::Version;

    fn synced(nodes: &[&str]) -> String {
        let job = DeployJob::new(
            "hello",
            "production",
            "hello-app".parse().unwrap(),
            Version::parse("1.4.2").unwrap(),
            Source::Sync {
                nodes: nodes.iter().map(|n| n.to_string()).collect(),
                by: "node-joined".into(),
                nonce: "1".into(),
            },
            Utc::now(),
        );
        let mut d = Deploy::new(job, Rollout::default());
        d.outcome = Some(Outcome::Succeeded {
            failed_installs: vec![],
        });
        render(&d, &NotifyState::default(), Utc::now()).0
    }

    #[test]
    fn a_joined_node_is_named_and_a_full_sync_speaks_of_every_node() {
        assert_eq!(
            synced(&["i-0abc"]),
            "hello 1.4.2 (sync) on production: i-0abc joined, on the live version"
        );
        assert_eq!(
            synced(&[]),
            "hello 1.4.2 (sync) on production: every node on the live version"
        );
    }
}
