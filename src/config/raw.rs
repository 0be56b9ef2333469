//! The config file's raw shape, as serde reads it; `check` turns it into typed values.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::deploy::rollout::Rollout;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) github: RawSecretHolder,
    #[serde(default)]
    pub(super) slack: RawSlackIngress,
    #[serde(default)]
    pub(super) apps: BTreeMap<String, RawApp>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) state: Option<PathBuf>,
    pub(super) package_dir: Option<PathBuf>,
    pub(super) api_token: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSecretHolder {
    pub(super) webhook_secret: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSlackIngress {
    pub(super) signing_secret: Option<String>,
    pub(super) response_url_prefix: Option<String>,
    pub(super) team_id: Option<String>,
    pub(super) enterprise_id: Option<String>,
    pub(super) api_app_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) package: String,
    pub(super) repo: Option<String>,
    pub(super) tag_pattern: Option<String>,
    pub(super) default_env: Option<String>,
    pub(super) auto_deploy: Option<Vec<String>>,
    #[serde(default)]
    pub(super) environments: BTreeMap<String, RawEnvironment>,
    pub(super) install: String,
    pub(super) restart: String,
    pub(super) health: Option<String>,
    pub(super) pre_restart: Option<String>,
    pub(super) post_restart: Option<String>,
    pub(super) index: Option<RawIndex>,
    pub(super) version: Option<String>,
    #[serde(default)]
    pub(super) rollout: Rollout,
    #[serde(default)]
    pub(super) notify: RawNotify,
    pub(super) gate: Option<RawGate>,
    /// Metric checks of every environment's deploys (`[[apps.X.checks]]`).
    #[serde(default)]
    pub(super) checks: Vec<RawCheck>,
}

/// A metric check: a Prometheus query held to a condition.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheck {
    pub(super) name: String,
    /// The Prometheus server's URL (`http://prometheus:9090`).
    pub(super) prometheus: Option<String>,
    pub(super) query: Option<String>,
    pub(super) condition: Option<String>,
    /// A bearer token for the Prometheus API (a secret reference).
    pub(super) token: Option<String>,
    pub(super) no_data: Option<String>,
    /// Canary versus baseline: each node's metrics URL (`http://{node_host}:{port}/metrics`),
    /// its request counter and latency histogram, the false-alarm rate and the requests
    /// each side needs.
    pub(super) analysis: Option<String>,
    pub(super) requests: Option<String>,
    pub(super) latency: Option<String>,
    pub(super) alpha: Option<f64>,
    pub(super) min_requests: Option<u64>,
    /// Datadog monitors, by id or by tags (all of them), read through `notify.datadog`'s
    /// API key and site, with this application key.
    pub(super) datadog_monitors: Option<Vec<u64>>,
    pub(super) datadog_tags: Option<Vec<String>>,
    pub(super) app_key: Option<String>,
    /// CloudWatch alarms by name (`{app}` and `{env}` filled in).
    pub(super) cloudwatch_alarms: Option<Vec<String>>,
    /// A node check: a command template run on the nodes the deploy restarted.
    pub(super) check: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGate {
    pub(super) branch: Option<String>,
    #[serde(default)]
    pub(super) checks: Vec<String>,
    #[serde(default)]
    pub(super) wait_seconds: u64,
    pub(super) token: Option<String>,
    pub(super) api_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEnvironment {
    pub(super) ssm_tags: Option<BTreeMap<String, String>>,
    /// With `ssm_tags`: the app's directory on the nodes, and placeholder values.
    pub(super) dir: Option<String>,
    #[serde(default)]
    pub(super) vars: BTreeMap<String, String>,
    pub(super) nodes: Option<Vec<RawListedNode>>,
    /// With `nodes` reached over SSH: defaults for all of them.
    pub(super) ssh: Option<RawSshDefaults>,
    pub(super) layout: Option<String>,
    pub(super) keep_releases: Option<u32>,
    #[serde(default)]
    pub(super) chat_deployers: Vec<String>,
    #[serde(default)]
    pub(super) chat_forcers: Vec<String>,
    pub(super) chat_lockers: Option<Vec<String>>,
    /// The IANA zone `windows` and `freezes` are written in.
    pub(super) time_zone: Option<String>,
    #[serde(default)]
    pub(super) windows: Vec<String>,
    #[serde(default)]
    pub(super) freezes: Vec<crate::deploy::calendar::RawFreeze>,
    /// Slack user ids, or the accounts of CLI users, who may deploy with `--override`.
    #[serde(default)]
    pub(super) freeze_overriders: Vec<String>,
    pub(super) approvals: Option<RawApprovals>,
    pub(super) promote: Option<RawPromote>,
    /// An SSM Change Calendar (document name or ARN) that holds deploys back too (AWS).
    pub(super) change_calendar: Option<String>,
    /// Checks of this environment's deploys besides the app's (replacing one of the same
    /// name).
    #[serde(default)]
    pub(super) checks: Vec<RawCheck>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPromote {
    pub(super) to: String,
    pub(super) after_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApprovals {
    pub(super) required: Option<u32>,
    #[serde(default)]
    pub(super) approvers: Vec<String>,
    #[serde(default)]
    pub(super) requester_may_approve: bool,
    pub(super) grace_seconds: Option<u64>,
    pub(super) timeout_seconds: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListedNode {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    #[serde(default)]
    pub(super) vars: BTreeMap<String, String>,
    /// `[user@]host[:port]`: the node is reached over SSH, and `dir` is on it.
    pub(super) ssh: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSshDefaults {
    pub(super) user: Option<String>,
    pub(super) identity_file: Option<String>,
    pub(super) known_hosts: Option<String>,
    #[serde(default)]
    pub(super) accept_new_host_keys: bool,
    pub(super) connect_timeout_seconds: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNotify {
    pub(super) slack: Option<RawSlackTarget>,
    pub(super) newrelic: Option<RawNewRelic>,
    pub(super) datadog: Option<RawDatadog>,
    pub(super) github: Option<RawGitHubTarget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGitHubTarget {
    pub(super) token: String,
    pub(super) api_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSlackTarget {
    pub(super) channel: Option<String>,
    pub(super) token: Option<String>,
    pub(super) webhook_url: Option<String>,
    pub(super) api_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNewRelic {
    pub(super) entity_guid: String,
    pub(super) api_key: String,
    #[serde(default = "us")]
    pub(super) region: String,
    pub(super) endpoint: Option<String>,
}

fn us() -> String {
    "us".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatadog {
    pub(super) api_key: String,
    #[serde(default = "datadog_site")]
    pub(super) site: String,
    pub(super) service: Option<String>,
    #[serde(default)]
    pub(super) dora: bool,
}

fn datadog_site() -> String {
    "datadoghq.com".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIndex {
    pub(super) url: String,
    #[serde(default = "thirty")]
    pub(super) poll_seconds: u64,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
}

fn thirty() -> u64 {
    30
}
