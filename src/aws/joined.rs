//! A node joins: an EC2 instance reaches `running` (EventBridge). For every environment
//! whose `ssm_tags` it carries, a sync job for that node alone goes on the deploy queue in
//! the environment's FIFO group: behind any deploy in flight, so the node ends on the
//! version that deploy leaves live. The sync installs the live version there, restarts
//! and checks that node, and touches no other.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::aws::fleet::SdkRunCommand;
use crate::config::{Config, Nodes};
use crate::deploy::job::{DeployJob, Source};
use crate::deploy::ports::{JobQueue, Ledger};

/// How often to look again for an instance whose SSM agent has not registered yet.
const REGISTRATION_POLL: Duration = Duration::from_secs(5);

/// EC2 instance ids: `i-` and 8 or 17 hex digits.
pub fn is_instance_id(s: &str) -> bool {
    s.strip_prefix("i-").is_some_and(|hex| {
        matches!(hex.len(), 8 | 17) && hex.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// The instance that started running and the event's id, or why the event is not one
/// this function acts on.
pub fn joined(event: &Value) -> Result<(&str, &str), &'static str> {
    if event.get("detail-type").and_then(Value::as_str)
        != Some("EC2 Instance State-change Notification")
    {
        return Err("not an EC2 instance state-change notification");
    }
    let detail = event.get("detail");
    let field = |name: &str| detail.and_then(|d| d.get(name)).and_then(Value::as_str);
    if field("state") != Some("running") {
        return Err("the instance is not running");
    }
    let instance = match field("instance-id") {
        Some(id) if is_instance_id(id) => id,
        _ => return Err("detail.instance-id is not an EC2 instance id"),
    };
    match event.get("id").and_then(Value::as_str) {
        Some(id) if !id.is_empty() => Ok((instance, id)),
        _ => Err("the event has no id"),
    }
}

/// Handles one EventBridge event. `Ok` says what was queued or why nothing was; `Err`
/// (the agent did not register within `registration_wait`, SSM or SQS unavailable) makes
/// Lambda retry the event, and job ids derived from the event's id make that harmless.
pub async fn node_joined(
    config: &Config,
    queue: &dyn JobQueue,
    ledger: &dyn Ledger,
    ssm: &SdkRunCommand,
    event: &Value,
    now: DateTime<Utc>,
    registration_wait: Duration,
) -> Result<Value, String> {
    let ignored = |reason: &str| Ok(json!({ "status": "ignored", "reason": reason }));
    let (instance, event_id) = match joined(event) {
        Ok(joined) => joined,
        Err(reason) => return ignored(reason),
    };

    // EC2 says running well before the node's SSM agent registers.
    let started = tokio::time::Instant::now();
    while !ssm
        .is_online(instance, &BTreeMap::new())
        .await
        .map_err(|e| e.to_string())?
    {
        if started.elapsed() >= registration_wait {
            return Err(format!(
                "{instance} is not an online SSM managed node after {} s",
                registration_wait.as_secs()
            ));
        }
        tokio::time::sleep(REGISTRATION_POLL).await;
    }

    let mut jobs = vec![];
    let mut skipped = vec![];
    for app in config.apps.values() {
        for env in app.environments.values() {
            let Nodes::Ssm { tags, .. } = &env.nodes else {
                continue;
            };
            if !ssm
                .is_online(instance, tags)
                .await
                .map_err(|e| e.to_string())?
            {
                continue;
            }
            let live = ledger
                .history(&app.name, &env.name, 1)
                .await
                .map_err(|e| e.to_string())?
                .pop();
            let Some(live) = live else {
                skipped.push(json!({ "app": app.name, "env": env.name,
                    "reason": "nothing is live yet; the first deploy will include it" }));
                continue;
            };
            jobs.push(DeployJob::new(
                &app.name,
                &env.name,
                app.package.clone(),
                live.job.version,
                Source::Sync {
                    nodes: vec![instance.to_string()],
                    by: "node-joined".into(),
                    nonce: format!("{event_id}:{instance}"),
                },
                now,
            ));
        }
    }
    if jobs.is_empty() && skipped.is_empty() {
        return ignored("the instance carries no environment's ssm_tags");
    }
    queue.enqueue(&jobs).await.map_err(|e| e.to_string())?;
    let queued: Vec<Value> = jobs
        .iter()
        .map(|j| json!({ "app": j.app, "env": j.env, "version": j.version, "job": j.id }))
        .collect();
    tracing::info!(%instance, queued = queued.len(), "node joined");
    Ok(json!({ "status": "queued", "instance": instance, "jobs": queued, "skipped": skipped }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids() {
        assert!(is_instance_id("i-0123456789abcdef0"));
        assert!(is_instance_id("i-12345678"));
        for bad in [
            "i-123",
            "i-0123456789abcdefg",
            "0123456789abcdef0",
            "i-1234567;reboot",
        ] {
            assert!(!is_instance_id(bad), "{bad}");
        }
    }

    #[test]
    fn only_a_running_instance_with_an_event_id_joins() {
        let text = std::fs::read_to_string("events/ec2-instance-running.json").unwrap();
        let sample: Value = serde_json::from_str(&text).unwrap();
        let (instance, id) = joined(&sample).unwrap();
        assert!(is_instance_id(instance) && !id.is_empty());
        let broken = |pointer: &str, value: Value| {
            let mut e = sample.clone();
            *e.pointer_mut(pointer).unwrap() = value;
            joined(&e).unwrap_err()
        };
        assert!(broken("/detail-type", json!(1)).starts_with("not an EC2"));
        assert!(broken("/detail", json!([])).contains("not running"));
        assert!(broken("/detail/state", json!("stopped")).contains("not running"));
        assert!(broken("/detail/instance-id", json!("i-1;reboot")).contains("instance id"));
        assert!(broken("/id", json!("")).contains("no id"));
        assert!(joined(&json!("not an object")).is_err());
    }
}
