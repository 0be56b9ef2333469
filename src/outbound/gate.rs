//! The gate: a version deploys only if its tag's commit is on the app's deploy branch
//! and the app's required checks passed on it, as GitHub tells. Everything but a rollback
//! or a forced job asks it (`Action::Verify`); apps without `[apps.NAME.gate]` pass.
//!
//! Anything GitHub answers that is not a clear yes is a no with its reason (the job is
//! skipped and chat says why); only what may pass on retry (5xx, 429, no connection) is
//! an error, which the driver retries like any step.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{StatusCode, Url};
use serde_json::Value;

use async_trait::async_trait;

use crate::config::secrets::Secrets;
use crate::config::{App, Config, Gate};
use crate::deploy::engine::Verdict;
use crate::deploy::job::{DeployJob, Source};
use crate::deploy::ports::{self, PortError, Refused};
use crate::outbound::http;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Gatekeeper {
    config: Arc<Config>,
    secrets: Arc<Secrets>,
    http: http::Client,
}

/// How one required check stands on the commit.
#[derive(Debug, PartialEq, Eq)]
enum Check {
    Passed,
    Failed(String),
    Pending(String),
    Missing,
}

struct Asker<'a> {
    gate: &'a Gate,
    repo: &'a str,
    token: Option<String>,
    http: &'a reqwest::Client,
}

impl Gatekeeper {
    pub fn new(config: Arc<Config>, secrets: Arc<Secrets>) -> Gatekeeper {
        Gatekeeper {
            config,
            secrets,
            http: http::Client::new(REQUEST_TIMEOUT),
        }
    }

    async fn verify_app(&self, app: &App, job: &DeployJob) -> Result<Verdict, PortError> {
        let (Some(gate), Some(repo)) = (&app.gate, &app.repo) else {
            return Ok(Verdict::Pass);
        };
        let token = match &gate.token {
            Some(t) => Some(self.secrets.resolve(t).await?),
            None => None,
        };
        let ask = Asker {
            gate,
            repo,
            token,
            http: &self.http,
        };
        // A tag job asks about the tag that was pushed: rebuilt from the normalized
        // version, `v1.0.0-RC1` would be looked up as `v1.0.0rc1` (another tag, or none).
        let tag = match &job.source {
            Source::Tag { tag, .. } => tag.clone(),
            _ => app.tag_pattern.tag(&job.version),
        };
        let verdict = ask.verdict(&tag).await?;
        tracing::info!(?verdict, "gate");
        Ok(verdict)
    }
}

#[async_trait]
impl ports::Gate for Gatekeeper {
    async fn verify(&self, job: &DeployJob) -> Result<Verdict, PortError> {
        let (app, _) = self.config.target(job).map_err(Refused::error)?;
        self.verify_app(app, job).await
    }
}

fn refuse(reason: String) -> Result<Verdict, PortError> {
    Ok(Verdict::Refuse { reason })
}

impl Asker<'_> {
    async fn verdict(&self, tag: &str) -> Result<Verdict, PortError> {
        let repo = self.repo;
        let (status, commit) = self.get(&["commits", tag], &[]).await?;
        let sha = match (status, commit.get("sha").and_then(Value::as_str)) {
            (StatusCode::OK, Some(sha)) => sha.to_string(),
            (StatusCode::NOT_FOUND | StatusCode::UNPROCESSABLE_ENTITY, _) => {
                return refuse(format!("tag {tag} is not in {repo} on GitHub"))
            }
            (s, _) => return refuse(self.refused(s, &commit)),
        };
        // get(): an answer that is not hex must not split a character.
        let short = sha.get(..7).unwrap_or(&sha);
        let branch = match &self.gate.branch {
            Some(b) => b.clone(),
            None => {
                let (status, about) = self.get(&[], &[]).await?;
                match about.get("default_branch").and_then(Value::as_str) {
                    Some(b) if status == StatusCode::OK => b.to_string(),
                    _ => return refuse(self.refused(status, &about)),
                }
            }
        };
        // base...head is "behind" or "identical" exactly when head is in base's history.
        let basehead = format!("{branch}...{sha}");
        let (status, cmp) = self
            .get(&["compare", &basehead], &[("per_page", "1")])
            .await?;
        match (status, cmp.get("status").and_then(Value::as_str)) {
            (StatusCode::OK, Some("behind" | "identical")) => {}
            (StatusCode::OK, Some(_)) => {
                return refuse(format!(
                "tag {tag} ({short}) is not on {branch}: merge it first, or deploy it with --force"
            ))
            }
            (StatusCode::NOT_FOUND, _) => {
                return refuse(format!("branch {branch} is not in {repo} on GitHub"))
            }
            (s, _) => return refuse(self.refused(s, &cmp)),
        }
        if self.gate.checks.is_empty() {
            return Ok(Verdict::Pass);
        }
        let status_path = ["commits", &sha, "status"];
        let (s1, statuses) = self.get(&status_path, &[("per_page", "100")]).await?;
        let runs_path = ["commits", &sha, "check-runs"];
        let (s2, runs) = self.get(&runs_path, &[("per_page", "100")]).await?;
        for (s, body) in [(s1, &statuses), (s2, &runs)] {
            if s != StatusCode::OK {
                return refuse(self.refused(s, body));
            }
        }
        let mut pending = vec![];
        for name in &self.gate.checks {
            match check(name, &statuses, &runs) {
                Check::Passed => {}
                Check::Failed(how) => {
                    return refuse(format!(
                        "required check {name} {how} on {short} (tag {tag})"
                    ))
                }
                Check::Pending(how) => pending.push(format!("{name} is {how}")),
                Check::Missing => pending.push(format!("{name} has not reported")),
            }
        }
        if pending.is_empty() {
            return Ok(Verdict::Pass);
        }
        Ok(Verdict::Pending {
            reason: format!(
                "required check {} on {short} (tag {tag})",
                pending.join(", ")
            ),
            wait_seconds: self.gate.wait_seconds,
        })
    }

    /// Why an answer that is neither yes nor no counts as no.
    fn refused(&self, status: StatusCode, body: &Value) -> String {
        let msg = body["message"].as_str().unwrap_or("");
        let hint = match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
                "; check the gate's token and its access to the repo"
            }
            _ => "",
        };
        format!(
            "GitHub answered {status} about {}{}{hint}",
            self.repo,
            if msg.is_empty() {
                String::new()
            } else {
                format!(" ({msg})")
            }
        )
    }

    /// GETs `repos/{repo}/{path…}`; each path part is percent-encoded on its own.
    async fn get(
        &self,
        path: &[&str],
        query: &[(&str, &str)],
    ) -> Result<(StatusCode, Value), PortError> {
        let mut url = Url::parse(&format!("{}/repos/{}", self.gate.api_url, self.repo))?;
        url.path_segments_mut()
            .map_err(|_| format!("{} cannot take a path", self.gate.api_url))?
            .extend(path.iter().flat_map(|p| p.split('/')));
        let mut req = self
            .http
            .get(url.clone())
            .query(query)
            .header("Accept", "application/vnd.github+json")
            .header("X-GitHub-Api-Version", "2022-11-28");
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if http::is_transient(status) {
            let short = http::excerpt(&body, 200);
            return Err(format!("GET {url}: {status} {short}").into());
        }
        Ok((status, serde_json::from_str(&body).unwrap_or(Value::Null)))
    }
}

/// A required check by name: a check run (the newest of that name wins, so a re-run
/// counts) or else a commit status context.
fn check(name: &str, statuses: &Value, runs: &Value) -> Check {
    let newest_run = runs["check_runs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["name"].as_str() == Some(name))
        .max_by_key(|r| r["id"].as_u64().unwrap_or(0));
    if let Some(run) = newest_run {
        return match (run["status"].as_str(), run["conclusion"].as_str()) {
            (Some("completed"), Some("success" | "neutral" | "skipped")) => Check::Passed,
            (Some("completed"), c) => {
                Check::Failed(format!("ended {}", c.unwrap_or("without a conclusion")))
            }
            (s, _) => Check::Pending(s.unwrap_or("pending").replace('_', " ")),
        };
    }
    let status = statuses["statuses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["context"].as_str() == Some(name));
    match status.and_then(|s| s["state"].as_str()) {
        Some("success") => Check::Passed,
        Some("pending") => Check::Pending("pending".into()),
        Some(other) => Check::Failed(format!("is {other}")),
        None => Check::Missing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_newest_run_of_a_check_decides() {
        let runs = json!({"check_runs": [
            {"id": 2, "name": "test", "status": "completed", "conclusion": "success"},
            {"id": 1, "name": "test", "status": "completed", "conclusion": "failure"},
            {"id": 3, "name": "lint", "status": "in_progress", "conclusion": null},
        ]});
        let statuses = json!({"statuses": [
            {"context": "ci/build", "state": "failure"},
            {"context": "test", "state": "failure"},
        ]});
        assert_eq!(check("test", &statuses, &runs), Check::Passed);
        assert_eq!(
            check("lint", &statuses, &runs),
            Check::Pending("in progress".into())
        );
        assert_eq!(
            check("ci/build", &statuses, &runs),
            Check::Failed("is failure".into())
        );
        assert_eq!(check("deploy", &statuses, &runs), Check::Missing);
    }
}
