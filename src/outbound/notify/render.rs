//! What a deploy looks like in chat: the headline, node lines and Block Kit message.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::NotifyState;

use crate::deploy::approval::{APPROVE_ACTION, REJECT_ACTION};
use crate::deploy::engine::{Deploy, NodeState, Outcome, Phase};
use crate::deploy::job::Source;
use crate::deploy::report::{job_notes, node_phrase};

/// Per-node lines in the Slack message up to this many nodes; counts per state beyond.
const SLACK_NODE_LINES: usize = 12;

pub(super) fn response_url(source: &Source) -> Option<&str> {
    match source {
        Source::Chat { response_url, .. } => response_url.as_deref(),
        Source::Rollback { requested_via, .. } => response_url(requested_via),
        _ => None,
    }
}

pub(super) fn commit(source: &Source) -> Option<&str> {
    match source {
        Source::Tag { commit, .. } => commit.as_deref(),
        _ => None,
    }
}

/// `1.4.1 → 1.4.2`, or `1.4.2 (first deploy)`.
pub(super) fn change(d: &Deploy) -> String {
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
        Source::Chat { .. } => format!("/deploy by {}", source.requester()),
        Source::Cli { user, .. } => format!("shipit deploy by {user}"),
        Source::Sync { by, .. } => format!("sync by {by}"),
        Source::Promotion { from_env, .. } => format!("promotion from {from_env}"),
        Source::Rollback { requested_via, .. } => {
            format!("rollback, {}", trigger(requested_via))
        }
    }
}

pub(super) fn seconds(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    if s < 60 {
        format!("{s} s")
    } else {
        format!("{} min {} s", s / 60, s % 60)
    }
}

/// The deploy's state in a few words, and its emoji.
pub(super) fn status_line(d: &Deploy) -> (String, &'static str) {
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
        Some(o @ Outcome::Succeeded { .. }) => match (o.left_behind(), synced) {
            (None, Some(line)) => (line, ":white_check_mark:"),
            (None, None) => ("deployed".into(), ":white_check_mark:"),
            (Some(left), _) => (format!("deployed, except {left}"), ":warning:"),
        },
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
        Some(Outcome::Cancelled { reason, .. }) => (reason.clone(), ":wastebasket:"),
        Some(Outcome::Aborted {
            by, rolled_back, ..
        }) => (
            if *rolled_back {
                format!("aborted by {by}, nodes put back")
            } else {
                format!("aborted by {by}")
            },
            ":octagonal_sign:",
        ),
        None => match &d.phase {
            _ if d.abort_asked.is_some() => (
                format!(
                    "aborting (asked by {}): stopping after the command in flight",
                    d.abort_asked.as_deref().unwrap_or_default()
                ),
                ":octagonal_sign:",
            ),
            Phase::Verify { since: Some(_), .. } => (
                "waiting for required checks".into(),
                ":hourglass_flowing_sand:",
            ),
            Phase::Lock if d.waits_for_approval() => {
                (d.closed.clone().unwrap_or_default(), ":raising_hand:")
            }
            Phase::Lock if d.closed.is_some() => (
                format!("waiting: {}", d.closed.as_deref().unwrap_or_default()),
                ":calendar:",
            ),
            Phase::Lock if d.lock_waiting_since.is_some() => {
                ("waiting for the lock".into(), ":lock:")
            }
            Phase::Verify { .. } | Phase::Lock | Phase::Inspect | Phase::Resolve => {
                ("starting".into(), ":hourglass_flowing_sand:")
            }
            Phase::Probe => ("reading the nodes' versions".into(), ":mag:"),
            Phase::Install => ("installing".into(), ":package:"),
            Phase::Restart { .. } | Phase::Bake { .. } => (
                "restarting one node at a time".into(),
                ":arrows_counterclockwise:",
            ),
            Phase::Checks { stage, .. } => (
                format!("reading its checks {stage}"),
                ":chart_with_upwards_trend:",
            ),
            Phase::Revert { .. } | Phase::RevertRestart { .. } => {
                ("rolling back".into(), ":leftwards_arrow_with_hook:")
            }
            Phase::Record | Phase::Unlock | Phase::Done => {
                ("finishing".into(), ":hourglass_flowing_sand:")
            }
        },
    }
}

pub(super) fn node_word(s: NodeState) -> (&'static str, &'static str) {
    let emoji = match s {
        NodeState::Pending => ":white_circle:",
        NodeState::Installed => ":package:",
        NodeState::InstallFailed | NodeState::Unhealthy => ":x:",
        NodeState::Healthy => ":white_check_mark:",
        NodeState::Reverted => ":leftwards_arrow_with_hook:",
        NodeState::Gone => ":ghost:",
    };
    (emoji, node_phrase(s))
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
            job_notes(job),
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
    if d.waits_for_approval() {
        let id = job.id.to_string();
        blocks.push(
            json!({"type": "actions", "block_id": "shipit_approval", "elements": [
                {"type": "button", "action_id": APPROVE_ACTION, "style": "primary", "value": id,
                 "text": {"type": "plain_text", "text": "Approve"}},
                {"type": "button", "action_id": REJECT_ACTION, "style": "danger", "value": id,
                 "text": {"type": "plain_text", "text": "Reject"}},
            ]}),
        );
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
            unhealthy: vec![],
            gone: vec![],
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
