//! `[apps.X.gate]` and `[apps.X.notify]`.

use super::{check_url, Checker};
use crate::config::raw::{RawGate, RawNotify};
use crate::config::{DatadogTarget, Gate, GitHubTarget, NewRelicTarget, Notify, SlackTarget};

pub(super) fn check_gate(c: &mut Checker, k: &str, g: RawGate, has_repo: bool) -> Option<Gate> {
    if !has_repo {
        c.error(
            format!("{k}.gate"),
            "the gate asks GitHub about the app's repo, and the app has none",
            "set repo = \"owner/name\" on the app",
        );
    }
    // Branch names go into GitHub API paths: keep to what git itself allows there.
    if let Some(b) = &g.branch {
        let ok = !b.is_empty()
            && !b.starts_with(['/', '-', '.'])
            && !b.ends_with(['/', '.'])
            && !b.contains("..")
            && !b.contains("//")
            && b.chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "/._-+".contains(ch));
        if !ok {
            c.error(
                format!("{k}.gate.branch"),
                format!("{b:?} is not a branch name shipit accepts"),
                "letters, digits and / . _ - + (e.g. main, release/2.x)",
            );
        }
    }
    for (i, check) in g.checks.iter().enumerate() {
        if check.trim().is_empty() {
            c.error(
                format!("{k}.gate.checks[{i}]"),
                "is empty",
                "the name of a commit status context or check run, e.g. \"ci/test\"",
            );
        }
    }
    c.seconds(
        format!("{k}.gate.wait_seconds"),
        g.wait_seconds,
        0,
        super::MAX_WAIT_SECONDS,
        "how long a deploy waits for pending checks",
    );
    let api_url = g.api_url.unwrap_or_else(|| "https://api.github.com".into());
    check_url(c, &format!("{k}.gate.api_url"), &api_url);
    let token = match &g.token {
        Some(t) => Some(c.secret(&format!("{k}.gate.token"), t)?),
        None => None,
    };
    Some(Gate {
        branch: g.branch,
        checks: g.checks,
        wait_seconds: g.wait_seconds,
        token,
        api_url: api_url.trim_end_matches('/').to_string(),
    })
}

pub(super) fn check_notify(
    c: &mut Checker,
    k: &str,
    n: RawNotify,
    app: &str,
    has_repo: bool,
) -> Notify {
    let slack = n.slack.and_then(|s| {
        let token = s
            .token
            .as_deref()
            .and_then(|t| c.secret(&format!("{k}.notify.slack.token"), t));
        let webhook_url = s
            .webhook_url
            .as_deref()
            .and_then(|t| c.secret(&format!("{k}.notify.slack.webhook_url"), t));
        if token.is_none() && webhook_url.is_none() {
            c.error(
                format!("{k}.notify.slack"),
                "neither token nor webhook_url is set",
                "a bot token (chat:write) lets shipit update one message per deploy",
            );
            return None;
        }
        if token.is_some() && s.channel.is_none() {
            c.error(
                format!("{k}.notify.slack.channel"),
                "a bot token needs a channel to post to",
                "e.g. \"#deploys\" or a channel id",
            );
        }
        let api_url = s.api_url.unwrap_or_else(|| "https://slack.com/api".into());
        check_url(c, &format!("{k}.notify.slack.api_url"), &api_url);
        Some(SlackTarget {
            channel: s.channel,
            token,
            webhook_url,
            api_url,
        })
    });
    let newrelic = n.newrelic.and_then(|r| {
        let endpoint = match (r.endpoint, r.region.as_str()) {
            (Some(e), _) => {
                check_url(c, &format!("{k}.notify.newrelic.endpoint"), &e);
                e
            }
            (None, "us") => "https://api.newrelic.com/graphql".into(),
            (None, "eu") => "https://api.eu.newrelic.com/graphql".into(),
            (None, other) => {
                c.error(
                    format!("{k}.notify.newrelic.region"),
                    format!("{other:?} is not a New Relic region"),
                    "\"us\" or \"eu\"",
                );
                String::new()
            }
        };
        let api_key = c.secret(&format!("{k}.notify.newrelic.api_key"), &r.api_key)?;
        Some(NewRelicTarget {
            entity_guid: r.entity_guid,
            api_key,
            endpoint,
        })
    });
    let datadog = n.datadog.and_then(|d| {
        let api_key = c.secret(&format!("{k}.notify.datadog.api_key"), &d.api_key)?;
        let api_url = if d.site.contains("://") {
            check_url(c, &format!("{k}.notify.datadog.site"), &d.site);
            d.site.trim_end_matches('/').to_string()
        } else {
            format!("https://api.{}", d.site)
        };
        Some(DatadogTarget {
            api_key,
            api_url,
            service: d.service.unwrap_or_else(|| app.to_string()),
            dora: d.dora,
        })
    });
    let github = n.github.and_then(|g| {
        if !has_repo {
            c.error(
                format!("{k}.notify.github"),
                "GitHub Deployments need the app's repo",
                "set repo = \"owner/name\" on the app",
            );
        }
        let api_url = g.api_url.unwrap_or_else(|| "https://api.github.com".into());
        check_url(c, &format!("{k}.notify.github.api_url"), &api_url);
        let token = c.secret(&format!("{k}.notify.github.token"), &g.token)?;
        Some(GitHubTarget {
            token,
            api_url: api_url.trim_end_matches('/').to_string(),
        })
    });
    Notify {
        slack,
        newrelic,
        datadog,
        github,
    }
}
