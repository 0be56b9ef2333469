//! `POST /hooks/github`: tag pushes and published releases become deploy jobs.

use chrono::{DateTime, Utc};
use http::HeaderMap;
use serde::Deserialize;
use serde_json::json;

use super::{verify_hmac_sha256, Ingress, Reply};
use crate::deploy::job::Source;
use crate::deploy::version::Version;

/// GitHub caps webhook payloads at 25 MB.
pub const MAX_BODY: usize = 25 * 1024 * 1024;

#[derive(Deserialize)]
struct Repository {
    full_name: String,
}

#[derive(Deserialize)]
struct Account {
    #[serde(alias = "login")]
    name: Option<String>,
}

#[derive(Deserialize)]
struct PushEvent {
    #[serde(rename = "ref")]
    git_ref: String,
    #[serde(default)]
    created: bool,
    #[serde(default)]
    deleted: bool,
    after: Option<String>,
    repository: Repository,
    pusher: Option<Account>,
    head_commit: Option<HeadCommit>,
}

#[derive(Deserialize)]
struct HeadCommit {
    /// RFC 3339; one that is not reads as unknown rather than refusing the push.
    timestamp: Option<String>,
}

#[derive(Deserialize)]
struct Release {
    tag_name: String,
    #[serde(default)]
    draft: bool,
}

#[derive(Deserialize)]
struct ReleaseEvent {
    action: String,
    release: Release,
    repository: Repository,
    sender: Option<Account>,
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn malformed(e: serde_json::Error) -> Reply {
    Reply::error(400, format!("malformed JSON payload: {e}"))
}

impl Ingress {
    pub async fn github(&self, headers: &HeaderMap, body: &[u8], now: DateTime<Utc>) -> Reply {
        if body.len() > MAX_BODY {
            return Reply::error(
                413,
                format!(
                    "payload of {} bytes is over GitHub's 25 MB limit",
                    body.len()
                ),
            );
        }
        let Some(secret) = &self.github_secret else {
            return Reply::error(
                503,
                "no github.webhook_secret is configured; refusing unsigned webhooks",
            );
        };
        let Some(signature) = header(headers, "x-hub-signature-256") else {
            return Reply::error(401, "missing X-Hub-Signature-256 header");
        };
        let valid = signature
            .strip_prefix("sha256=")
            .is_some_and(|hex| verify_hmac_sha256(secret.as_bytes(), &[body], hex));
        if !valid {
            return Reply::error(401, "X-Hub-Signature-256 does not match the payload");
        }
        let Some(event) = header(headers, "x-github-event") else {
            return Reply::error(400, "missing X-GitHub-Event header");
        };
        if std::str::from_utf8(body).is_err() {
            return Reply::error(400, "payload is not UTF-8");
        }
        let delivery = header(headers, "x-github-delivery").map(str::to_string);
        let (repo, tag, source) = match event {
            "ping" => return Reply::new(200, json!({ "status": "pong" })),
            "push" => {
                let push: PushEvent = match serde_json::from_slice(body) {
                    Ok(p) => p,
                    Err(e) => return malformed(e),
                };
                let Some(tag) = push.git_ref.strip_prefix("refs/tags/") else {
                    return Reply::ignored(202, format!("{} is not a tag", push.git_ref));
                };
                if push.deleted {
                    return Reply::ignored(202, format!("tag {tag} was deleted"));
                }
                if !push.created {
                    return Reply::ignored(202, format!("tag {tag} was moved, not created"));
                }
                let source = Source::Tag {
                    event: "push".into(),
                    repo: push.repository.full_name.clone(),
                    tag: tag.to_string(),
                    commit: push.after,
                    delivery,
                    pusher: push.pusher.and_then(|p| p.name),
                    committed_at: push
                        .head_commit
                        .and_then(|c| c.timestamp)
                        .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
                        .map(|t| t.with_timezone(&Utc)),
                };
                (push.repository.full_name, tag.to_string(), source)
            }
            "release" => {
                let rel: ReleaseEvent = match serde_json::from_slice(body) {
                    Ok(r) => r,
                    Err(e) => return malformed(e),
                };
                if rel.action != "published" || rel.release.draft {
                    return Reply::ignored(202, format!("release action {:?}", rel.action));
                }
                let source = Source::Tag {
                    event: "release".into(),
                    repo: rel.repository.full_name.clone(),
                    tag: rel.release.tag_name.clone(),
                    commit: None,
                    delivery,
                    pusher: rel.sender.and_then(|s| s.name),
                    committed_at: None,
                };
                (rel.repository.full_name, rel.release.tag_name, source)
            }
            other => return Reply::ignored(202, format!("event {other:?} does not deploy")),
        };

        let apps: Vec<_> = self.config.apps_for_repo(&repo).collect();
        if apps.is_empty() {
            return Reply::ignored(202, format!("repository {repo} is not configured"));
        }
        let mut jobs = vec![];
        for app in apps {
            let Some(raw) = app.tag_pattern.extract(&tag) else {
                continue;
            };
            let version = match Version::parse(raw) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(%repo, tag, app = %app.name, "refused tag: {e}");
                    return Reply::error(
                        422,
                        format!("tag {tag:?} for app {}: {e}; nothing was queued", app.name),
                    );
                }
            };
            jobs.extend(Ingress::auto_jobs(app, &version, &source, now));
        }
        if jobs.is_empty() {
            return Reply::ignored(
                202,
                format!("tag {tag:?} matches no app's tag pattern or auto_deploy environment"),
            );
        }
        self.enqueue_reply(jobs).await
    }
}
