//! `shipit.toml`: parsed in two steps. Serde reads the raw shape; `validate` then turns
//! it into typed values, collecting every problem (key path, message, hint) instead of
//! stopping at the first, so `shipit check` can report them all at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod check;
pub mod command;
pub mod layout;
mod raw;
outside_input! {
    pub mod secrets;
}
pub mod ssh;
pub mod template;

use crate::deploy::job::DeployJob;
use crate::deploy::rollout::Rollout;
use crate::deploy::version::PackageName;
use layout::Layout;
use secrets::Secret;
use template::Template;

pub const DEFAULT_CONFIG: &str = "shipit.toml";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    pub key: String,
    pub message: String,
    pub hint: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}: {}", self.key, self.message)?;
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// All problems found in one config file.
#[derive(Debug, Clone)]
pub struct Report {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn has_errors(&self) -> bool {
        self.problems.iter().any(|p| p.severity == Severity::Error)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            writeln!(f, "{}: {p}", self.file.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for Report {}

// ---------------------------------------------------------------------------------------
// The validated configuration.

#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub server: Server,
    pub github_secret: Option<Secret>,
    pub slack_secret: Option<Secret>,
    /// Where a slash command's `response_url` must point for shipit to post to it.
    pub slack_response_url_prefix: String,
    /// The Slack workspace (and org, and app) whose commands count; any if unset.
    pub slack_workspace: SlackWorkspace,
    pub apps: BTreeMap<String, App>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    /// The SQLite file holding jobs, history and locks.
    pub state: PathBuf,
    /// Where uploaded wheels and sdists land; a new file there is an upload event.
    pub package_dir: Option<PathBuf>,
    /// The bearer token the read endpoints (`/api/deploys`) ask for. Without one they
    /// answer only on a loopback listener.
    pub api_token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct App {
    pub name: String,
    pub package: PackageName,
    /// `owner/name`, lower-cased: GitHub compares repository names case-insensitively.
    pub repo: Option<String>,
    pub tag_pattern: TagPattern,
    pub default_env: String,
    /// Environments that tag pushes and uploads deploy to.
    pub auto_deploy: Vec<String>,
    pub environments: BTreeMap<String, Environment>,
    pub install: Template,
    pub restart: Template,
    pub health: Option<Template>,
    /// Run on a node just before its restart (take it out of the load balancer), and
    /// after its health check passes (put it back): see `App::script`.
    pub pre_restart: Option<Template>,
    pub post_restart: Option<Template>,
    /// Prints the version installed on a node (`pip show {package}` will do): what sync
    /// compares with the live version.
    pub version: Option<Template>,
    pub rollout: Rollout,
    pub notify: Notify,
    pub gate: Option<Gate>,
    /// The package index the app follows: a new release of its package there deploys.
    pub index: Option<PackageIndex>,
    /// Metric checks of every environment's deploys (see `Config::checks_for`).
    pub checks: Vec<Check>,
}

/// A metric check (see [`checks`](crate::deploy::checks)): read during the canary's bake,
/// after each batch and while watching.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub no_data: crate::deploy::checks::NoData,
    pub source: CheckSource,
}

#[derive(Debug, Clone)]
pub enum CheckSource {
    /// An instant query through Prometheus's HTTP API (`/api/v1/query`): every sample it
    /// returns must meet `condition`. `{version}`, `{app}` and `{env}` in the query
    /// become PromQL strings.
    Prometheus {
        url: String,
        query: String,
        condition: crate::deploy::checks::Condition,
        token: Option<Secret>,
    },
    /// Canary versus baseline (see [`analysis`](crate::deploy::analysis)): each node's
    /// Prometheus text at `metrics_url` (`{node_host}`, `{node}` and the node's vars
    /// filled in), `requests` a counter labelled `code` (5xx are errors), `latency` a
    /// histogram in seconds.
    Analysis {
        metrics_url: Template,
        requests: String,
        latency: Option<String>,
        settings: crate::deploy::analysis::Settings,
    },
    /// Datadog monitors, by id, or every one carrying all `tags` (`{app}` and `{env}`
    /// filled in), read through the app's `notify.datadog` (its API key and site) with
    /// `app_key`: one alerting fails the check. Fleet-wide: no verdict on the version.
    Datadog {
        monitors: Vec<u64>,
        tags: Vec<String>,
        app_key: Secret,
    },
    /// CloudWatch alarms by name (`{app}` and `{env}` filled in), read through
    /// DescribeAlarms with the runtime's AWS credentials: one in ALARM fails the check.
    /// Fleet-wide, as Datadog's.
    CloudWatch { alarms: Vec<String> },
    /// A command run on every node the deploy restarted (through the fleet, as `health`
    /// is, with the same placeholders): exit 0 on each that answers passes, another
    /// exit fails. Read on the nodes of the version, so a failure marks it.
    Node { command: template::Template },
}

/// An environment's checks: the app's, each replaced by the environment's of its name,
/// then the environment's own others.
pub fn checks_in<'a>(app: &'a [Check], env: &'a [Check]) -> Vec<&'a Check> {
    let mut checks: Vec<&Check> = app
        .iter()
        .map(|c| env.iter().find(|e| e.name == c.name).unwrap_or(c))
        .collect();
    checks.extend(env.iter().filter(|e| !app.iter().any(|c| c.name == e.name)));
    checks
}

impl App {
    /// The check `name` as `env` has it: its own of that name, or else the app's.
    pub fn check_named<'a>(&'a self, env: &'a Environment, name: &str) -> Option<&'a Check> {
        env.checks
            .iter()
            .chain(&self.checks)
            .find(|c| c.name == name)
    }
}

impl Check {
    /// What a deploy carries of it.
    pub fn rule(&self) -> crate::deploy::checks::Rule {
        crate::deploy::checks::Rule {
            name: self.name.clone(),
            no_data: self.no_data,
            analysis: match &self.source {
                CheckSource::Analysis { settings, .. } => Some(*settings),
                CheckSource::Prometheus { .. }
                | CheckSource::Datadog { .. }
                | CheckSource::CloudWatch { .. }
                | CheckSource::Node { .. } => None,
            },
            per_version: match &self.source {
                CheckSource::Analysis { .. } | CheckSource::Node { .. } => true,
                CheckSource::Prometheus { query, .. } => query.contains("{version}"),
                CheckSource::Datadog { .. } | CheckSource::CloudWatch { .. } => false,
            },
            on_nodes: matches!(self.source, CheckSource::Node { .. }),
        }
    }
}

/// A PyPI-style index (PEP 503 / PEP 691 simple API): pypiserver, devpi, Artifactory,
/// Nexus, CodeArtifact's PyPI endpoint.
#[derive(Debug, Clone)]
pub struct PackageIndex {
    /// The simple API's root, ending in `/` (`http://pypi.internal/simple/`); also
    /// `{index}` in the command templates.
    pub url: String,
    pub poll_seconds: u64,
    /// HTTP basic auth for reading the index.
    pub username: Option<String>,
    pub password: Option<Secret>,
}

/// What a version must show on GitHub before it deploys, unless someone forces it.
#[derive(Debug, Clone)]
pub struct Gate {
    /// The branch the tag's commit must be on; the repo's default branch if unset.
    pub branch: Option<String>,
    /// Commit statuses (by context) or check runs (by name) that must have succeeded.
    pub checks: Vec<String>,
    /// How long a pending required check is waited for before the job is skipped.
    pub wait_seconds: u64,
    /// Needed for private repos; public ones are read anonymously (60 requests an hour).
    pub token: Option<Secret>,
    /// `https://api.github.com`, or GitHub Enterprise Server's `https://HOST/api/v3`.
    pub api_url: String,
}

#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    pub nodes: Nodes,
    /// How its nodes keep the app's versions: in place, or side by side in `releases/`.
    pub layout: Layout,
    /// Slack user ids (`U…`, `W…`) or `*`; nobody may deploy from chat otherwise.
    pub chat_deployers: Vec<String>,
    /// Who may use `--force` from chat; nobody unless named.
    pub chat_forcers: Vec<String>,
    /// Who may lock, unlock and abort from chat; the deployers unless set.
    pub chat_lockers: Vec<String>,
    /// When it takes deploys (rollbacks always); none: any time.
    pub calendar: Option<crate::deploy::calendar::Calendar>,
    /// Who may deploy outside the calendar with a reason (`--override`): Slack user ids,
    /// or the accounts of CLI users.
    pub freeze_overriders: Vec<String>,
    /// Who must approve a deploy to it before it starts; none: nobody.
    pub approvals: Option<crate::deploy::approval::Approvals>,
    /// Where a version that went live here goes next, and after how long.
    pub promote: Option<crate::deploy::promotion::Promote>,
    /// An SSM Change Calendar (its document's name or ARN), read before each deploy
    /// takes its lock: closed, it holds deploys back as `calendar` does (AWS only).
    pub change_calendar: Option<String>,
    /// Checks of its deploys besides the app's (replacing those of the same name).
    pub checks: Vec<Check>,
}

impl Environment {
    /// What keeps `job` from changing this environment's nodes now (see
    /// [`calendar::holds_back`](crate::deploy::calendar::holds_back)).
    pub fn held_back(
        &self,
        job: &crate::deploy::job::DeployJob,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<crate::deploy::calendar::Closed> {
        let (calendar, overriders) = (self.calendar.as_ref(), &self.freeze_overriders);
        crate::deploy::calendar::holds_back(calendar, overriders, job, now)
    }

    /// Whether no calendar of this environment (its own, its change calendar) holds `job`
    /// back (see [`calendar::exempt`](crate::deploy::calendar::exempt)).
    pub fn exempt(&self, job: &crate::deploy::job::DeployJob) -> bool {
        crate::deploy::calendar::exempt(&self.freeze_overriders, job)
    }

    /// Whether a person may queue `job` now (see
    /// [`calendar::admit`](crate::deploy::calendar::admit)).
    pub fn admit(
        &self,
        job: &crate::deploy::job::DeployJob,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), String> {
        let (calendar, overriders) = (self.calendar.as_ref(), &self.freeze_overriders);
        crate::deploy::calendar::admit(calendar, overriders, job, now)
    }

    /// Why `job` waits to start now, as status and the page say it: as its last step
    /// (`saved`) said it, waiting for its calendar, its approval or its promotion's time;
    /// for a job not started, what its calendar would say. Not of the job holding the lock
    /// (`holder`), under way when the calendar closed.
    pub fn waiting_why(
        &self,
        job: &crate::deploy::job::DeployJob,
        holder: Option<&crate::deploy::job::JobId>,
        saved: Option<&crate::deploy::engine::Deploy>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<String> {
        if holder == Some(&job.id) {
            return None;
        }
        if let Some(d) = saved.filter(|d| d.waits_to_start()) {
            return d.closed.clone();
        }
        self.held_back(job, now).map(|c| c.why)
    }
}

/// What pins slash commands to one Slack workspace: a command signed with the app's
/// secret but sent from another workspace it is installed in does not count.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlackWorkspace {
    pub team_id: Option<String>,
    pub enterprise_id: Option<String>,
    pub api_app_id: Option<String>,
}

impl SlackWorkspace {
    /// Why a request signed by this app comes from a workspace (or app) other than this
    /// pin, if it does.
    pub fn unpinned(
        &self,
        team_id: &Option<String>,
        enterprise_id: &Option<String>,
        api_app_id: &Option<String>,
    ) -> Option<String> {
        let checks = [
            ("team_id", &self.team_id, team_id),
            ("enterprise_id", &self.enterprise_id, enterprise_id),
            ("api_app_id", &self.api_app_id, api_app_id),
        ];
        checks.into_iter().find_map(|(what, want, got)| match want {
            Some(w) if got.as_ref() != Some(w) => Some(format!(
                "{what} {} is not {w}",
                got.as_deref().unwrap_or("(none)")
            )),
            _ => None,
        })
    }
}

#[derive(Debug, Clone)]
pub enum Nodes {
    /// Managed nodes found through SSM by their tags.
    Ssm {
        tags: BTreeMap<String, String>,
        /// The app's directory on every node: where commands run, and `{dir}`.
        dir: Option<String>,
        /// Values for the environment's own template placeholders.
        vars: BTreeMap<String, String>,
    },
    /// Nodes listed in the config, each a directory on this machine or reached over SSH.
    Listed(Vec<ListedNode>),
}

#[derive(Debug, Clone)]
pub struct ListedNode {
    pub name: String,
    /// The app's directory: on this machine, or on the node when it is reached over SSH.
    pub dir: PathBuf,
    /// Values for the node's own template placeholders (e.g. `{port}`).
    pub vars: BTreeMap<String, String>,
    pub ssh: Option<ssh::Ssh>,
}

#[derive(Debug, Clone, Default)]
pub struct Notify {
    pub slack: Option<SlackTarget>,
    pub newrelic: Option<NewRelicTarget>,
    pub datadog: Option<DatadogTarget>,
    pub github: Option<GitHubTarget>,
}

#[derive(Debug, Clone)]
pub struct SlackTarget {
    pub channel: Option<String>,
    pub token: Option<Secret>,
    pub webhook_url: Option<Secret>,
    /// Web API base, `https://slack.com/api` unless a proxy stands in front of it.
    pub api_url: String,
}

#[derive(Debug, Clone)]
pub struct NewRelicTarget {
    pub entity_guid: String,
    pub api_key: Secret,
    /// The NerdGraph endpoint: the region's, or `endpoint` from the config.
    pub endpoint: String,
}

#[derive(Debug, Clone)]
pub struct DatadogTarget {
    pub api_key: Secret,
    /// `https://api.{site}`, or the site itself when it is a URL (a proxy).
    pub api_url: String,
    pub service: String,
    /// Also record a DORA deployment (`/api/v2/dora/deployment`).
    pub dora: bool,
}

/// GitHub Deployments for tag-triggered jobs of the app's repo.
#[derive(Debug, Clone)]
pub struct GitHubTarget {
    pub token: Secret,
    /// `https://api.github.com`, or GitHub Enterprise Server's `https://HOST/api/v3`.
    pub api_url: String,
}

/// A tag pattern such as `v{version}` or `hello-{version}`: fixed text around exactly one
/// `{version}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagPattern {
    prefix: String,
    suffix: String,
}

impl TagPattern {
    pub fn parse(s: &str) -> Result<TagPattern, String> {
        let Some((prefix, suffix)) = s.split_once("{version}") else {
            return Err(format!("{s:?} has no {{version}} placeholder"));
        };
        if [prefix, suffix]
            .iter()
            .any(|p| p.contains('{') || p.contains('}'))
        {
            return Err(format!(
                "{s:?} must hold exactly one {{version}} and no other braces"
            ));
        }
        Ok(TagPattern {
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        })
    }

    /// The tag that names `version`.
    pub fn tag(&self, version: &crate::deploy::version::Version) -> String {
        format!("{}{version}{}", self.prefix, self.suffix)
    }

    /// The raw version text of a tag that fits the pattern; not yet validated.
    pub fn extract<'t>(&self, tag: &'t str) -> Option<&'t str> {
        tag.strip_prefix(&self.prefix)?.strip_suffix(&self.suffix)
    }
}

impl fmt::Display for TagPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{{version}}{}", self.prefix, self.suffix)
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, Report> {
        let text = std::fs::read_to_string(path).map_err(|e| unreadable(path, e))?;
        Config::parse(&text, path)
    }

    /// Parses and validates; warnings alone still give a config (see `check` for them).
    pub fn parse(text: &str, path: &Path) -> Result<Config, Report> {
        let (config, problems) = check::check_text(text, path);
        match config {
            Some(c) if !problems.iter().any(|p| p.severity == Severity::Error) => Ok(c),
            _ => Err(Report {
                file: path.to_path_buf(),
                problems,
            }),
        }
    }

    /// A job's app and environment, or why the config has no such thing.
    /// What keeps `job` from changing its environment's nodes now (see
    /// [`Environment::held_back`]); nothing for a job of an app or environment no longer
    /// configured (it ends at its next step).
    pub fn held_back(
        &self,
        job: &DeployJob,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<crate::deploy::calendar::Closed> {
        self.target(job).ok()?.1.held_back(job, now)
    }

    /// The approvals `job` needs before it starts, if its environment asks for them and
    /// it has none yet (see [`approval::needed`](crate::deploy::approval::needed)).
    pub fn approvals_for(&self, job: &DeployJob) -> Option<&crate::deploy::approval::Approvals> {
        let rules = self.target(job).ok()?.1.approvals.as_ref();
        crate::deploy::approval::needed(rules, job)
            .then_some(rules)
            .flatten()
    }

    /// The checks of `job`'s app+env: the app's, each replaced by the environment's of
    /// the same name, then the environment's others.
    pub fn checks_for(&self, job: &DeployJob) -> Vec<&Check> {
        let Ok((app, env)) = self.target(job) else {
            return vec![];
        };
        checks_in(&app.checks, &env.checks)
    }

    pub fn target(&self, job: &DeployJob) -> Result<(&App, &Environment), String> {
        let app = self
            .app(&job.app)
            .ok_or_else(|| format!("app {} is not in the config", job.app))?;
        let env = app
            .environments
            .get(&job.env)
            .ok_or_else(|| format!("{} has no environment {}", job.app, job.env))?;
        Ok((app, env))
    }

    pub fn app(&self, name: &str) -> Option<&App> {
        self.apps.get(name)
    }

    /// Apps whose tags come from this repository.
    pub fn apps_for_repo<'a>(&'a self, repo: &'a str) -> impl Iterator<Item = &'a App> + 'a {
        let repo = repo.to_ascii_lowercase();
        self.apps
            .values()
            .filter(move |a| a.repo.as_deref() == Some(repo.as_str()))
    }

    pub fn apps_for_package<'a>(
        &'a self,
        package: &'a PackageName,
    ) -> impl Iterator<Item = &'a App> + 'a {
        self.apps.values().filter(move |a| &a.package == package)
    }
}

/// Reads a config file and reports every problem in it (for `shipit check`).
pub fn check(path: &Path) -> Report {
    match std::fs::read_to_string(path) {
        Ok(text) => Report {
            file: path.to_path_buf(),
            problems: check::check_here(&text, path),
        },
        Err(e) => unreadable(path, e),
    }
}

fn unreadable(path: &Path, e: std::io::Error) -> Report {
    Report {
        file: path.to_path_buf(),
        problems: vec![Problem {
            severity: Severity::Error,
            key: "(file)".into(),
            message: format!("cannot read: {e}"),
            hint: "create it or pass --config; examples/local/shipit.toml is a start".into(),
        }],
    }
}

#[cfg(test)]
mod tests;
