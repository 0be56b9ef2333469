//! Slack: one message per deploy (bot token: posted, then updated in place, failures
//! in its thread; webhook: start and end), and the reply to the `/deploy` that asked.

use serde_json::{json, Value};

use super::render::*;
use super::*;
use crate::deploy::job::mention;

impl Round<'_> {
    pub(super) async fn slack(&self, memo: &NotifyState, msg: &mut Option<SlackMessage>) {
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

    pub(super) async fn slack_api(
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

    pub(super) async fn slack_bot(
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
                    | Notice::AwaitingApproval { .. }
                    | Notice::Approved { .. }
                    | Notice::InstallFailed { .. }
                    | Notice::Unhealthy { .. }
                    | Notice::CheckFailed { .. }
                    | Notice::RollingBack { .. }
                    | Notice::MarkedFaulty { .. }
                    | Notice::DeployingFaulty { .. }
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
                Notice::CheckFailed {
                    check,
                    stage,
                    detail,
                } => format!(":x: check `{check}` failed {stage}:\n```{detail}```"),
                Notice::RollingBack { to, nodes, reason } => format!(
                    ":leftwards_arrow_with_hook: rolling back to {to}{}: {reason}",
                    if nodes.is_empty() {
                        String::new()
                    } else {
                        format!(" and restarting {}", nodes.join(", "))
                    }
                ),
                Notice::MarkedFaulty { version, reason } => format!(
                    ":no_entry: {version} is marked faulty ({reason}): no rollback or automatic deploy sends it out again"
                ),
                Notice::DeployingFaulty { mark } => format!(
                    ":warning: {} was marked faulty ({}); deploying it because it was asked for by name",
                    mark.version, mark.why()
                ),
                Notice::WaitingForWindow { why } => format!(":calendar: waiting: {why}"),
                Notice::AwaitingApproval { need, approvers, .. } => format!(
                    ":raising_hand: waits for {need} approval(s) from {}: the buttons above, or `/deploy approve {id}`",
                    approvers.iter().map(|a| mention(a)).collect::<Vec<_>>().join(", "),
                    id = self.deploy.job.id
                ),
                Notice::Promoting { .. } => {
                    format!(":arrow_forward: {}", crate::deploy::status::describe(n))
                }
                Notice::Approved { by } => format!(
                    ":white_check_mark: approved by {}",
                    by.iter().map(|a| mention(a)).collect::<Vec<_>>().join(", ")
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
    pub(super) async fn slack_webhook(
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
    pub(super) async fn slash_reply(&self, memo: &NotifyState) {
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
}
