//! Slack's interactive requests: a click on a deploy message's Approve or Reject button.
//! Slack posts them to the app's one Request URL (shipit's is the slash command's,
//! `/hooks/slack`), signed the same way, as a form holding one `payload` of JSON (see
//! api.slack.com/interactivity/handling).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::approve::{self, Word};
use super::{Ingress, Reply};
use crate::deploy::approval::{APPROVE_ACTION, REJECT_ACTION};
use crate::deploy::job::JobId;

/// The form Slack posts for an interaction.
#[derive(Deserialize)]
pub(super) struct Form {
    pub(super) payload: String,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    user: Id,
    team: Option<Id>,
    enterprise: Option<Id>,
    api_app_id: Option<String>,
    #[serde(default)]
    actions: Vec<Action>,
    response_url: Option<String>,
}

#[derive(Deserialize)]
struct Id {
    id: String,
}

#[derive(Deserialize)]
struct Action {
    action_id: String,
    value: Option<String>,
}

impl Ingress {
    /// A signed interaction (the signature checked already): a button's word on the job
    /// it names, kept as `/deploy approve|reject` keeps it. Slack wants 200 within 3 s;
    /// what happened goes to the person who clicked, through the interaction's
    /// `response_url`, as a message only they see. The deploy's own message changes when
    /// the deploy reads the word.
    pub(super) async fn interaction(&self, form: Form, now: DateTime<Utc>) -> Reply {
        let p: Payload = match serde_json::from_str(&form.payload) {
            Ok(p) => p,
            Err(e) => return Reply::error(400, format!("malformed interaction payload: {e}")),
        };
        if p.kind != "block_actions" {
            return Reply::ignored(200, format!("{} interactions are not shipit's", p.kind));
        }
        let (team, enterprise) = (p.team.map(|t| t.id), p.enterprise.map(|e| e.id));
        if let Some(why) = self
            .config
            .slack_workspace
            .unpinned(&team, &enterprise, &p.api_app_id) {
            tracing::warn!(user_id = %p.user.id, %why, "interaction from another workspace refused");
            return Reply::ignored(200, "from a workspace shipit does not serve; nothing was done");
        }
        let Some((action, value)) = p.actions.iter().find_map(|a| {
            let approved = match a.action_id.as_str() {
                APPROVE_ACTION => true,
                REJECT_ACTION => false,
                _ => return None,
            };
            Some((approved, a.value.as_deref().unwrap_or_default()))
        }) else {
            return Reply::ignored(200, "no shipit button in this interaction");
        };
        let Some(job) = JobId::parse(value) else {
            return Reply::error(400, format!("{value:?} is not a job id"));
        };
        let said = match &self.stories {
            None => "Approvals are not available where this shipit runs.".to_string(),
            Some(stories) => {
                let word = Word {
                    job: &job,
                    by: &p.user.id,
                    approved: action,
                    reason: (!action).then_some("rejected in Slack"),
                };
                let (config, ledger) = (&self.config, &*self.ledger);
                match approve::give(config, ledger, &**stories, word, now).await {
                    Ok(said) | Err(said) => said,
                }
            }
        };
        self.tell_clicker(p.response_url.as_deref(), &said).await;
        Reply::new(200, json!({ "text": said }))
    }

    /// Best effort, briefly (Slack waits 3 s for the answer): the person hears why if
    /// their click did nothing. Only to where Slack would send it.
    async fn tell_clicker(&self, url: Option<&str>, text: &str) {
        let prefix = &self.config.slack_response_url_prefix;
        let Some(url) = url.filter(|u| u.starts_with(prefix.as_str())) else {
            return;
        };
        let body = json!({
            "response_type": "ephemeral",
            "replace_original": false,
            "text": text,
        });
        let sent = reqwest::Client::new()
            .post(url)
            .timeout(Duration::from_secs(2))
            .json(&body)
            .send()
            .await;
        if let Err(e) = sent.and_then(|r| r.error_for_status()) {
            tracing::warn!(error = %e.without_url(), "could not answer the click through its response_url");
        }
    }
}
