//! `shipit.toml`: parsed in two steps. Serde reads the raw shape; `validate` then turns
//! it into typed values, collecting every problem (key path, message, hint) instead of
//! stopping at the first, so `shipit check` can report them all at once.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;

pub mod command;
pub mod secrets;
pub mod template;

use crate::deploy::job::DeployJob;
use crate::deploy::rollout::Rollout;
use crate::deploy::version::PackageName;
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
    pub apps: BTreeMap<String, App>,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    /// The SQLite file holding jobs, history and locks.
    pub state: PathBuf,
    /// Where uploaded wheels and sdists land; a new file there is an upload event.
    pub package_dir: Option<PathBuf>,
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
    /// Prints the version installed on a node (`pip show {package}` will do): what sync
    /// compares with the live version.
    pub version: Option<Template>,
    pub rollout: Rollout,
    pub notify: Notify,
    pub gate: Option<Gate>,
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
    /// Slack user ids (`U…`), `@name`s, or `*`; nobody may deploy from chat otherwise.
    pub chat_deployers: Vec<String>,
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
    Local(Vec<LocalNode>),
}

#[derive(Debug, Clone)]
pub struct LocalNode {
    pub name: String,
    pub dir: PathBuf,
    /// Values for the node's own template placeholders (e.g. `{port}`).
    pub vars: BTreeMap<String, String>,
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
        let (config, problems) = check_text(text, path);
        match config {
            Some(c) if !problems.iter().any(|p| p.severity == Severity::Error) => Ok(c),
            _ => Err(Report {
                file: path.to_path_buf(),
                problems,
            }),
        }
    }

    /// A job's app and environment, or why the config has no such thing.
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
            problems: check_text(&text, path).1,
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

// ---------------------------------------------------------------------------------------
// The raw shape, as serde reads it.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    github: RawSecretHolder,
    #[serde(default)]
    slack: RawSlackIngress,
    #[serde(default)]
    apps: BTreeMap<String, RawApp>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    state: Option<PathBuf>,
    package_dir: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSecretHolder {
    webhook_secret: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSlackIngress {
    signing_secret: Option<String>,
    response_url_prefix: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    package: String,
    repo: Option<String>,
    tag_pattern: Option<String>,
    default_env: Option<String>,
    auto_deploy: Option<Vec<String>>,
    #[serde(default)]
    environments: BTreeMap<String, RawEnvironment>,
    install: String,
    restart: String,
    health: Option<String>,
    version: Option<String>,
    #[serde(default)]
    rollout: Rollout,
    #[serde(default)]
    notify: RawNotify,
    gate: Option<RawGate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGate {
    branch: Option<String>,
    #[serde(default)]
    checks: Vec<String>,
    #[serde(default)]
    wait_seconds: u64,
    token: Option<String>,
    api_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    ssm_tags: Option<BTreeMap<String, String>>,
    /// With `ssm_tags`: the app's directory on the nodes, and placeholder values.
    dir: Option<String>,
    #[serde(default)]
    vars: BTreeMap<String, String>,
    nodes: Option<Vec<RawLocalNode>>,
    #[serde(default)]
    chat_deployers: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLocalNode {
    name: String,
    dir: PathBuf,
    #[serde(default)]
    vars: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNotify {
    slack: Option<RawSlackTarget>,
    newrelic: Option<RawNewRelic>,
    datadog: Option<RawDatadog>,
    github: Option<RawGitHubTarget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGitHubTarget {
    token: String,
    api_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSlackTarget {
    channel: Option<String>,
    token: Option<String>,
    webhook_url: Option<String>,
    api_url: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNewRelic {
    entity_guid: String,
    api_key: String,
    #[serde(default = "us")]
    region: String,
    endpoint: Option<String>,
}

fn us() -> String {
    "us".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatadog {
    api_key: String,
    #[serde(default = "datadog_site")]
    site: String,
    service: Option<String>,
    #[serde(default)]
    dora: bool,
}

fn datadog_site() -> String {
    "datadoghq.com".into()
}

// ---------------------------------------------------------------------------------------
// Validation.

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn error(
        &mut self,
        key: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.problems.push(Problem {
            severity: Severity::Error,
            key: key.into(),
            message: message.into(),
            hint: hint.into(),
        });
    }

    fn warning(
        &mut self,
        key: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.problems.push(Problem {
            severity: Severity::Warning,
            key: key.into(),
            message: message.into(),
            hint: hint.into(),
        });
    }

    fn secret(&mut self, key: &str, raw: &str) -> Option<Secret> {
        match Secret::from_str(raw) {
            Ok(s) => {
                if matches!(s, Secret::Literal(_)) {
                    self.warning(
                        key,
                        "secret is written in the config file itself",
                        "use env:NAME or ssm:/path so the file can be shared safely",
                    );
                }
                Some(s)
            }
            Err(e) => {
                self.error(
                    key,
                    e,
                    "write a literal, env:NAME, or ssm:/path/to/SecureString",
                );
                None
            }
        }
    }

    fn template(&mut self, key: &str, raw: &str, known: &BTreeSet<String>) -> Option<Template> {
        match Template::parse(raw) {
            Ok(t) => {
                let unknown: Vec<&str> = t.placeholders().filter(|p| !known.contains(*p)).collect();
                if unknown.is_empty() {
                    Some(t)
                } else {
                    self.error(
                        key,
                        format!("unknown placeholder(s): {}", unknown.join(", ")),
                        format!(
                            "known here: {}; a node's own `vars` add more",
                            known
                                .iter()
                                .map(|k| format!("{{{k}}}"))
                                .collect::<Vec<_>>()
                                .join(" ")
                        ),
                    );
                    None
                }
            }
            Err(e) => {
                self.error(
                    key,
                    e.to_string(),
                    "placeholders look like {version}; write {{ or }} for a literal brace",
                );
                None
            }
        }
    }
}

/// A name that travels into queue groups, parameter paths and execution names.
fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.len() <= 40
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn valid_repo(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(s.split_once('/'), Some((owner, name)) if ok(owner) && ok(name))
}

/// Placeholders every template may use; nodes add their own `vars`.
pub const TEMPLATE_VARS: [&str; 6] = ["app", "env", "package", "version", "node", "dir"];

fn check_text(text: &str, path: &Path) -> (Option<Config>, Vec<Problem>) {
    let mut c = Checker { problems: vec![] };
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let at = e
                .span()
                .map(|s| {
                    let before = &text[..s.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
                    format!("line {line}, column {col}")
                })
                .unwrap_or_else(|| "(file)".into());
            c.error(
                at,
                e.message().to_string(),
                "see examples/local/shipit.toml for every key shipit understands",
            );
            return (None, c.problems);
        }
    };
    let base = path.parent().unwrap_or(Path::new("."));

    let listen = match raw
        .server
        .listen
        .as_deref()
        .unwrap_or("127.0.0.1:8080")
        .parse()
    {
        Ok(a) => a,
        Err(_) => {
            c.error(
                "server.listen",
                "not an address:port",
                "e.g. \"127.0.0.1:8080\"",
            );
            SocketAddr::from(([127, 0, 0, 1], 8080))
        }
    };
    let server = Server {
        listen,
        state: base.join(raw.server.state.unwrap_or_else(|| "shipit.db".into())),
        package_dir: raw.server.package_dir.map(|d| base.join(d)),
    };
    let github_secret = raw
        .github
        .webhook_secret
        .as_deref()
        .and_then(|s| c.secret("github.webhook_secret", s));
    let slack_secret = raw
        .slack
        .signing_secret
        .as_deref()
        .and_then(|s| c.secret("slack.signing_secret", s));
    let slack_response_url_prefix = raw
        .slack
        .response_url_prefix
        .unwrap_or_else(|| "https://hooks.slack.com/".into());
    check_url(
        &mut c,
        "slack.response_url_prefix",
        &slack_response_url_prefix,
    );
    if !slack_response_url_prefix.ends_with('/') {
        // Without it, https://hooks.slack.com would also admit https://hooks.slack.com.evil.
        c.error(
            "slack.response_url_prefix",
            format!("{slack_response_url_prefix:?} does not end with /"),
            "end it with / after the host, e.g. https://hooks.slack.com/",
        );
    }

    if raw.apps.is_empty() {
        c.error(
            "apps",
            "no apps are configured",
            "add an [apps.NAME] table with package, install and restart",
        );
    }
    let mut apps = BTreeMap::new();
    for (name, a) in raw.apps {
        let k = format!("apps.{name}");
        if !valid_name(&name) {
            c.error(
                &k,
                "app names must be lower-case letters, digits, '-' or '_' (at most 40)",
                "rename the table, e.g. [apps.hello]",
            );
        }
        let package = match PackageName::from_str(&a.package) {
            Ok(p) => Some(p),
            Err(_) => {
                c.error(
                    format!("{k}.package"),
                    format!("{:?} is not a valid PEP 508 package name", a.package),
                    "letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
                );
                None
            }
        };
        let repo = match a.repo {
            Some(r) if valid_repo(&r) => Some(r.to_ascii_lowercase()),
            Some(r) => {
                c.error(
                    format!("{k}.repo"),
                    format!("{r:?} is not owner/name"),
                    "e.g. \"acme/hello\"",
                );
                None
            }
            None => None,
        };
        let tag_pattern = match TagPattern::parse(a.tag_pattern.as_deref().unwrap_or("v{version}"))
        {
            Ok(p) => Some(p),
            Err(e) => {
                c.error(
                    format!("{k}.tag_pattern"),
                    e,
                    "e.g. \"v{version}\" or \"hello-{version}\"",
                );
                None
            }
        };

        let mut known: BTreeSet<String> = TEMPLATE_VARS.iter().map(|s| s.to_string()).collect();
        let mut environments = BTreeMap::new();
        // SSM environments without a `dir`: their templates cannot use `{dir}`.
        let mut dirless = vec![];
        if a.environments.is_empty() {
            c.error(
                format!("{k}.environments"),
                "no environments",
                format!("add [apps.{name}.environments.production] with nodes or ssm_tags"),
            );
        }
        for (env_name, e) in a.environments {
            let ek = format!("{k}.environments.{env_name}");
            if !valid_name(&env_name) {
                c.error(
                    &ek,
                    "environment names must be lower-case letters, digits, '-' or '_' (at most 40)",
                    "e.g. production, staging",
                );
            }
            let nodes = match (e.ssm_tags, e.nodes) {
                (Some(tags), None) if !tags.is_empty() => {
                    if let Some(d) = e.dir.as_deref().filter(|d| !d.starts_with('/')) {
                        c.error(
                            format!("{ek}.dir"),
                            format!("{d:?} is not an absolute path"),
                            "the app's directory on every node, e.g. \"/srv/hello\"",
                        );
                    }
                    // IAM condition keys cannot be stack parameters, so the template fixes them.
                    let missing: Vec<&str> = ["shipit:app", "shipit:env"]
                        .into_iter()
                        .filter(|t| !tags.contains_key(*t))
                        .collect();
                    if !missing.is_empty() {
                        c.warning(
                            format!("{ek}.ssm_tags"),
                            format!(
                                "no {} tag: infra/template.yaml lets deploy-step send commands only to nodes tagged shipit:app and shipit:env",
                                missing.join(" or ")
                            ),
                            format!("tag the nodes and select them by both, e.g. ssm_tags = {{ \"shipit:app\" = \"{name}\", \"shipit:env\" = \"{env_name}\" }}"),
                        );
                    }
                    known.extend(e.vars.keys().cloned());
                    if e.dir.is_none() {
                        dirless.push(ek.clone());
                    }
                    Some(Nodes::Ssm {
                        tags,
                        dir: e.dir,
                        vars: e.vars,
                    })
                }
                (None, Some(nodes)) if !nodes.is_empty() => {
                    if e.dir.is_some() || !e.vars.is_empty() {
                        c.error(
                            &ek,
                            "dir and vars belong to ssm_tags environments",
                            "give each local node its own dir and vars",
                        );
                    }
                    let mut seen = BTreeSet::new();
                    for (i, n) in nodes.iter().enumerate() {
                        if !valid_name(&n.name) {
                            c.error(
                                format!("{ek}.nodes[{i}].name"),
                                format!("{:?} is not a valid node name", n.name),
                                "lower-case letters, digits, '-' or '_'",
                            );
                        }
                        if !seen.insert(n.name.clone()) {
                            c.error(
                                format!("{ek}.nodes[{i}].name"),
                                format!("node {:?} is listed twice", n.name),
                                "node names must be unique within an environment",
                            );
                        }
                        known.extend(n.vars.keys().cloned());
                    }
                    Some(Nodes::Local(
                        nodes
                            .into_iter()
                            .map(|n| LocalNode {
                                name: n.name,
                                dir: base.join(n.dir),
                                vars: n.vars,
                            })
                            .collect(),
                    ))
                }
                (Some(_), Some(_)) => {
                    c.error(
                        &ek,
                        "both ssm_tags and nodes are set",
                        "use ssm_tags on AWS, nodes for the embedded runtime",
                    );
                    None
                }
                _ => {
                    c.error(&ek, "no nodes: neither ssm_tags nor nodes is set (or it is empty)", "ssm_tags = { \"shipit:app\" = \"hello\", \"shipit:env\" = \"production\" } on AWS; nodes = [{ name = \"node1\", dir = \"nodes/node1\" }] locally");
                    None
                }
            };
            for (i, d) in e.chat_deployers.iter().enumerate() {
                let ok = d == "*"
                    || (d.starts_with('@') && d.len() > 1)
                    || (d.starts_with('U') || d.starts_with('W'))
                        && d.chars().all(|c| c.is_ascii_alphanumeric());
                if !ok {
                    c.error(
                        format!("{ek}.chat_deployers[{i}]"),
                        format!("{d:?} is not a Slack user id, @name or *"),
                        "e.g. \"U2CERLKJA\" or \"@roadrunner\"",
                    );
                }
            }
            if let Some(nodes) = nodes {
                environments.insert(
                    env_name.clone(),
                    Environment {
                        name: env_name,
                        nodes,
                        chat_deployers: e.chat_deployers,
                    },
                );
            }
        }

        let default_env = match a.default_env {
            Some(d) => d,
            None if environments.len() == 1 => {
                environments.keys().next().cloned().unwrap_or_default()
            }
            None => {
                if environments.len() > 1 {
                    c.error(
                        format!("{k}.default_env"),
                        "several environments and no default_env",
                        "name the environment chat and CLI deploys go to when none is given",
                    );
                }
                String::new()
            }
        };
        if !default_env.is_empty() && !environments.contains_key(&default_env) {
            c.error(
                format!("{k}.default_env"),
                format!("no environment named {default_env:?}"),
                format!(
                    "one of: {}",
                    environments.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        let auto_deploy = a.auto_deploy.unwrap_or_else(|| vec![default_env.clone()]);
        for (i, env) in auto_deploy.iter().enumerate() {
            if !env.is_empty() && !environments.contains_key(env) {
                c.error(
                    format!("{k}.auto_deploy[{i}]"),
                    format!("no environment named {env:?}"),
                    "list environments that tag pushes and uploads deploy to, or [] for none",
                );
            }
        }

        let install = c.template(&format!("{k}.install"), &a.install, &known);
        let restart = c.template(&format!("{k}.restart"), &a.restart, &known);
        let health = match a.health.as_deref() {
            Some(h) => c.template(&format!("{k}.health"), h, &known).map(Some),
            None => {
                c.warning(format!("{k}.health"), "no health check: a restart that exits 0 counts as healthy", "add a command that fails unless the new version serves, e.g. a curl of /version");
                Some(None)
            }
        };
        let version = match a.version.as_deref() {
            Some(v) => c.template(&format!("{k}.version"), v, &known).map(Some),
            None => Some(None),
        };
        if a.rollout.health_interval_seconds == 0 {
            c.error(
                format!("{k}.rollout.health_interval_seconds"),
                "must be at least 1",
                "the longest pause between two health checks of a node",
            );
        }
        if a.rollout.command_timeout_seconds == 0 {
            c.error(
                format!("{k}.rollout.command_timeout_seconds"),
                "must be at least 1",
                "seconds one command may run on one node",
            );
        }
        let templates = [
            ("install", install.as_ref()),
            ("restart", restart.as_ref()),
            ("health", health.as_ref().and_then(Option::as_ref)),
            ("version", version.as_ref().and_then(Option::as_ref)),
        ];
        for (what, t) in templates {
            if let (Some(t), Some(env)) = (t, dirless.first()) {
                if t.placeholders().any(|p| p == "dir") {
                    c.error(
                        format!("{env}.dir"),
                        format!("{k}.{what} uses {{dir}} but this environment has no dir"),
                        "set dir = \"/srv/...\" to the app's directory on its nodes",
                    );
                }
            }
        }
        let notify = check_notify(&mut c, &k, a.notify, &name, repo.is_some());
        let gate = a
            .gate
            .and_then(|g| check_gate(&mut c, &k, g, repo.is_some()));
        if gate.is_none() && repo.is_some() && !auto_deploy.is_empty() {
            c.warning(
                format!("{k}.gate"),
                "any tag pushed to the repo deploys, from any branch, whatever its checks say",
                "add [apps.NAME.gate] (checks = [...]) to deploy only merged, green tags",
            );
        }

        if let (
            Some(package),
            Some(tag_pattern),
            Some(install),
            Some(restart),
            Some(health),
            Some(version),
        ) = (package, tag_pattern, install, restart, health, version)
        {
            apps.insert(
                name.clone(),
                App {
                    name,
                    package,
                    repo,
                    tag_pattern,
                    default_env,
                    auto_deploy,
                    environments,
                    install,
                    restart,
                    health,
                    version,
                    rollout: a.rollout,
                    notify,
                    gate,
                },
            );
        }
    }

    let config = Config {
        file: path.to_path_buf(),
        server,
        github_secret,
        slack_secret,
        slack_response_url_prefix,
        apps,
    };
    (Some(config), c.problems)
}

fn check_gate(c: &mut Checker, k: &str, g: RawGate, has_repo: bool) -> Option<Gate> {
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

fn check_notify(c: &mut Checker, k: &str, n: RawNotify, app: &str, has_repo: bool) -> Notify {
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

/// An endpoint shipit will send a token to: https, or http to this machine only.
fn check_url(c: &mut Checker, key: &str, url: &str) {
    let ok = match url.split_once("://") {
        Some(("https", rest)) => !rest.is_empty(),
        Some(("http", rest)) => ["127.0.0.1", "localhost", "[::1]"].iter().any(|h| {
            rest.strip_prefix(h)
                .is_some_and(|r| r.is_empty() || r.starts_with([':', '/']))
        }),
        _ => false,
    };
    if !ok {
        c.error(
            key,
            format!("{url:?} is not an https URL"),
            "tokens travel only over https (plain http only to 127.0.0.1 or localhost)",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [github]
        webhook_secret = "env:GH"
        [apps.hello]
        package = "Hello_App"
        repo = "Acme/Hello"
        install = "{dir}/venv/bin/pip install -U {package}=={version}"
        restart = "kill -HUP $(cat {dir}/pid)"
        health = "curl -fsS localhost:{port}/version"
        [apps.hello.environments.production]
        nodes = [{ name = "node1", dir = "n1", vars = { port = "8001" } }]
        chat_deployers = ["U2CERLKJA", "@ann"]
    "#;

    #[test]
    fn good_config_gets_defaults() {
        let c = Config::parse(GOOD, Path::new("/etc/shipit/shipit.toml")).unwrap();
        let app = c.app("hello").unwrap();
        assert_eq!(app.package.to_string(), "hello-app");
        assert_eq!(app.repo.as_deref(), Some("acme/hello"));
        assert_eq!(app.tag_pattern.to_string(), "v{version}");
        assert_eq!(app.default_env, "production");
        assert_eq!(app.auto_deploy, vec!["production".to_string()]);
        assert!(app.rollout.canary && app.rollout.auto_rollback);
        assert_eq!(c.server.state, Path::new("/etc/shipit/shipit.db"));
        assert_eq!(c.apps_for_repo("ACME/hello").count(), 1);
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let bad = r#"
            [slack]
            response_url_prefix = "https://hooks.slack.com"
            [apps.Hello]
            package = "hello app"
            repo = "nope"
            tag_pattern = "v{ver}"
            install = "pip install {package}=={versoin}"
            restart = "kill {"
            [apps.Hello.environments.prod]
            chat_deployers = ["roadrunner"]
        "#;
        let err = Config::parse(bad, Path::new("shipit.toml")).unwrap_err();
        let keys: Vec<&str> = err
            .problems
            .iter()
            .filter(|p| p.severity == Severity::Error)
            .map(|p| p.key.as_str())
            .collect();
        for k in [
            "slack.response_url_prefix",
            "apps.Hello",
            "apps.Hello.package",
            "apps.Hello.repo",
            "apps.Hello.tag_pattern",
            "apps.Hello.install",
            "apps.Hello.restart",
            "apps.Hello.environments.prod",
            "apps.Hello.environments.prod.chat_deployers[0]",
        ] {
            assert!(keys.contains(&k), "{k} missing from {keys:?}");
        }
        assert!(err.problems.iter().all(|p| !p.hint.is_empty()));
        let text = err.to_string();
        assert!(
            text.contains(
                "shipit.toml: error: apps.Hello.install: unknown placeholder(s): versoin"
            ),
            "{text}"
        );
    }

    /// An app on SSM nodes selected by `tags`, with `env` added to its environment.
    fn ssm_app(tags: &str, env: &str) -> String {
        format!(
            r#"
            [apps.hello]
            package = "hello-app"
            install = "{{dir}}/venv/bin/pip install {{package}}=={{version}}"
            restart = "systemctl restart hello@{{port}}"
            health = "true"
            [apps.hello.environments.production]
            ssm_tags = {{ {tags} }}
            vars = {{ port = "8080" }}
            {env}
            "#
        )
    }

    #[test]
    fn ssm_environments_name_their_directory_for_dir() {
        let text = |dir: &str| {
            ssm_app(
                r#""shipit:app" = "hello", "shipit:env" = "production""#,
                dir,
            )
        };
        let ok = Config::parse(&text("dir = \"/srv/hello\""), Path::new("x.toml")).unwrap();
        let env = &ok.app("hello").unwrap().environments["production"];
        assert!(matches!(&env.nodes, Nodes::Ssm { dir: Some(d), vars, .. }
            if d == "/srv/hello" && vars["port"] == "8080"));
        for (dir, wrong) in [
            (
                "",
                "apps.hello.install uses {dir} but this environment has no dir",
            ),
            (
                "dir = \"srv/hello\"",
                "\"srv/hello\" is not an absolute path",
            ),
        ] {
            let err = Config::parse(&text(dir), Path::new("x.toml")).unwrap_err();
            assert!(err.to_string().contains(wrong), "{err}");
            assert_eq!(
                err.problems[0].key,
                "apps.hello.environments.production.dir"
            );
        }
    }

    #[test]
    fn ssm_tags_without_the_template_s_tag_keys_are_warned_about() {
        let text = |tags: &str| ssm_app(tags, "dir = \"/srv/hello\"");
        let warned = |tags: &str| -> Vec<String> {
            let (config, problems) = check_text(&text(tags), Path::new("x.toml"));
            assert!(config.is_some());
            problems
                .into_iter()
                .filter(|p| p.key == "apps.hello.environments.production.ssm_tags")
                .map(|p| {
                    assert_eq!(p.severity, Severity::Warning);
                    p.message
                })
                .collect()
        };
        assert!(warned(r#""shipit:app" = "hello", "shipit:env" = "production""#).is_empty());
        let w = warned(r#""shipit:app" = "hello", "role" = "web""#);
        assert_eq!(w.len(), 1);
        assert!(w[0].starts_with("no shipit:env tag:"), "{}", w[0]);
        assert!(warned(r#"app = "hello""#)[0].starts_with("no shipit:app or shipit:env tag:"));
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let err = Config::parse("[apps.hello]\npakage = 1\n", Path::new("x.toml")).unwrap_err();
        assert_eq!(err.problems[0].key, "line 2, column 1");
        assert!(err.problems[0].message.contains("pakage"));
    }

    #[test]
    fn tag_patterns() {
        let p = TagPattern::parse("hello-v{version}").unwrap();
        assert_eq!(p.extract("hello-v1.2"), Some("1.2"));
        assert_eq!(p.extract("v1.2"), None);
        assert!(TagPattern::parse("v").is_err());
        assert!(TagPattern::parse("{version}-{version}").is_err());
    }
}
