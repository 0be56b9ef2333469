//! GitHub Deployments for tag jobs: a deployment on the tag's commit, then its statuses.

use serde_json::{json, Value};

use super::*;

impl Round<'_> {
    /// For a tag job: a deployment of the tag's commit to the environment when the deploy
    /// starts (status in_progress), and its final status when it ends.
    pub(super) async fn github(&self, id: &mut Option<u64>) {
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
                    Outcome::Skipped { reason } | Outcome::Cancelled { reason, .. } => {
                        ("inactive", reason.clone())
                    }
                    Outcome::Aborted { reason, .. } => ("failure", reason.clone()),
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
