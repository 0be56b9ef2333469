//! Turns the raw shape into typed values, collecting every problem (key path, message,
//! hint) instead of stopping at the first, so `shipit check` can report them all.
//! One function per section: the server and chat ingress here, an app in `app`, an
//! environment in `environment`, the gate and notifiers in `notify`.

mod app;
mod checks;
mod environment;
mod notify;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use super::raw::{RawConfig, RawServer, RawSlackIngress};
use super::secrets::Secret;
use super::template::Template;
use super::{Config, Problem, Server, Severity, SlackWorkspace};

/// What the checks of one app share as they go.
pub(super) struct Scope<'a> {
    pub(super) app: &'a str,
    /// `apps.NAME`, the prefix of every key.
    pub(super) key: &'a str,
    /// The config file's directory: relative node directories are relative to it.
    pub(super) base: &'a Path,
    /// Placeholders the app's templates may use: the common ones and every `vars` key.
    pub(super) known: BTreeSet<String>,
    /// SSM environments without a `dir`: their templates cannot use `{dir}`.
    pub(super) dirless: Vec<String>,
}

/// Placeholders every template may use; nodes add their own `vars`.
const TEMPLATE_VARS: [&str; 7] = ["app", "env", "package", "version", "node", "dir", "venv"];

/// The typed config, if the file could be read as TOML at all, and every problem in it.
pub(super) fn check_text(text: &str, path: &Path) -> (Option<Config>, Vec<Problem>) {
    let (config, c) = check_all(text, path);
    (config, c.problems)
}

/// `shipit check`: every problem of the file, and what a deploy would trip on where it
/// runs: `env:` secrets whose variable is not set, node directories that do not exist.
/// Not when loading: each Lambda function has only its own secrets' variables, and a
/// node's directory may be made after the config.
pub(super) fn check_here(text: &str, path: &Path) -> Vec<Problem> {
    let (config, mut c) = check_all(text, path);
    for (key, var) in std::mem::take(&mut c.env) {
        if std::env::var_os(&var).is_none_or(|v| v.is_empty()) {
            c.error(
                key,
                format!("environment variable {var} is not set here"),
                "set it where shipit runs: serve reads it as it starts",
            );
        }
    }
    for app in config.iter().flat_map(|c| c.apps.values()) {
        for (name, env) in &app.environments {
            let super::Nodes::Listed(nodes) = &env.nodes else {
                continue;
            };
            for (i, n) in nodes.iter().enumerate() {
                if n.ssh.is_none() && !n.dir.is_dir() {
                    c.error(
                        format!("apps.{}.environments.{name}.nodes[{i}].dir", app.name),
                        format!("{} is not a directory", n.dir.display()),
                        "make it (with the app's virtualenv), or fix the path: it is relative to this file",
                    );
                }
            }
        }
    }
    c.problems
}

fn check_all(text: &str, path: &Path) -> (Option<Config>, Checker) {
    let mut c = Checker {
        problems: vec![],
        env: vec![],
    };
    let Some(raw) = parse(&mut c, text) else {
        return (None, c);
    };
    let base = path.parent().unwrap_or(Path::new("."));
    let server = check_server(&mut c, raw.server, base);
    let github_secret = raw
        .github
        .webhook_secret
        .as_deref()
        .and_then(|s| c.secret("github.webhook_secret", s));
    let (slack_secret, slack_response_url_prefix, slack_workspace) = check_slack(&mut c, raw.slack);
    if raw.apps.is_empty() {
        c.error(
            "apps",
            "no apps are configured",
            "add an [apps.NAME] table with package, install and restart",
        );
    }
    let mut apps = BTreeMap::new();
    for (name, a) in raw.apps {
        if let Some(app) = app::check_app(&mut c, base, name, a) {
            apps.insert(app.name.clone(), app);
        }
    }
    let config = Config {
        file: path.to_path_buf(),
        server,
        github_secret,
        slack_secret,
        slack_response_url_prefix,
        slack_workspace,
        apps,
    };
    (Some(config), c)
}

/// The TOML, or a problem that points at its line and column; every unknown key with
/// its path and the known key it most looks like.
fn parse(c: &mut Checker, text: &str) -> Option<RawConfig> {
    match toml::from_str(text) {
        Ok(raw) => Some(raw),
        Err(e) if e.message().starts_with("unknown field") => {
            unknown_keys(c, text);
            None
        }
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
            None
        }
    }
}

/// Reports each unknown key (serde stops at the first): read as a plain table, each is
/// found, reported and taken out in turn, until what is left reads or fails otherwise.
fn unknown_keys(c: &mut Checker, text: &str) {
    let Ok(mut table) = toml::from_str::<toml::Table>(text) else {
        return;
    };
    // Each turn takes one key out: as many turns as the file has keys at most.
    for _ in 0..text.len() {
        let e = match serde_path_to_error::deserialize::<_, RawConfig>(table.clone()) {
            Ok(_) => return,
            Err(e) => e,
        };
        let message = e.inner().message().to_string();
        let Some((key, known)) = unknown_field(&message) else {
            // Not an unknown key: said where it is, after the unknown ones.
            c.error(
                e.path().to_string(),
                message,
                "see examples/local/shipit.toml",
            );
            return;
        };
        let mut path: Vec<String> = e
            .path()
            .iter()
            .filter_map(|s| match s {
                serde_path_to_error::Segment::Map { key } => Some(key.clone()),
                serde_path_to_error::Segment::Seq { index } => Some(index.to_string()),
                _ => None,
            })
            .collect();
        // The path ends at the table holding the key, or at the key itself.
        if path.last() != Some(&key) {
            path.push(key.clone());
        }
        let nearest = known
            .iter()
            .map(|k| (strsim::damerau_levenshtein(&key, k), k))
            .filter(|(d, k)| *d <= 2.max(k.len() / 3))
            .min();
        let hint = match nearest {
            Some((_, k)) => format!("did you mean `{k}`?"),
            None if known.is_empty() => "this table takes no keys".to_string(),
            None => format!("known here: {}", known.join(", ")),
        };
        c.error(path.join("."), format!("unknown key `{key}`"), hint);
        if !remove(&mut table, &path) {
            return;
        }
    }
}

/// The key and the known ones from serde's "unknown field `x`, expected one of `a`, `b`"
/// (or "expected `a`", or "there are no fields").
fn unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let known = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((key.to_string(), known))
}

/// Takes the key at `path` out of `table`; whether it was there.
fn remove(table: &mut toml::Table, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut here = table;
    for p in parents {
        here = match here.get_mut(p) {
            Some(toml::Value::Table(t)) => t,
            _ => return false,
        };
    }
    here.remove(last).is_some()
}

fn check_server(c: &mut Checker, raw: RawServer, base: &Path) -> Server {
    let listen = match raw.listen.as_deref().unwrap_or("127.0.0.1:8080").parse() {
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
    let api_token = raw
        .api_token
        .as_deref()
        .and_then(|s| c.secret("server.api_token", s));
    if api_token.is_none() && !listen.ip().is_loopback() {
        c.warning(
            "server.api_token",
            format!("not set, and {listen} is reachable from other machines: /api/deploys refuses every request"),
            "set server.api_token = \"env:SHIPIT_API_TOKEN\" and send it as Authorization: Bearer …",
        );
    }
    Server {
        listen,
        state: base.join(raw.state.unwrap_or_else(|| "shipit.db".into())),
        package_dir: raw.package_dir.map(|d| base.join(d)),
        api_token,
    }
}

/// The signing secret, where a slash command's reply may be posted, and the workspace
/// whose commands count.
fn check_slack(c: &mut Checker, raw: RawSlackIngress) -> (Option<Secret>, String, SlackWorkspace) {
    let secret = raw
        .signing_secret
        .as_deref()
        .and_then(|s| c.secret("slack.signing_secret", s));
    let prefix = raw
        .response_url_prefix
        .unwrap_or_else(|| "https://hooks.slack.com/".into());
    check_url(c, "slack.response_url_prefix", &prefix);
    if !prefix.ends_with('/') {
        // Without it, https://hooks.slack.com would also admit https://hooks.slack.com.evil.
        c.error(
            "slack.response_url_prefix",
            format!("{prefix:?} does not end with /"),
            "end it with / after the host, e.g. https://hooks.slack.com/",
        );
    }
    let mut id = |key: &str, value: Option<String>, first: char, example: &str| {
        value.filter(|v| {
            let ok = v.starts_with(first)
                && v.len() > 1
                && v.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
            if !ok {
                c.error(
                    format!("slack.{key}"),
                    format!("{v:?} is not a Slack {key}"),
                    format!("e.g. {example:?}: it is in every slash command Slack sends"),
                );
            }
            ok
        })
    };
    let workspace = SlackWorkspace {
        team_id: id("team_id", raw.team_id, 'T', "T1DC2JH3J"),
        enterprise_id: id("enterprise_id", raw.enterprise_id, 'E', "E0AB12CD3"),
        api_app_id: id("api_app_id", raw.api_app_id, 'A', "A0KRD7HC3"),
    };
    if secret.is_some() && workspace.team_id.is_none() {
        c.warning(
            "slack.team_id",
            "not set: a command signed by this app counts from any workspace it is installed in",
            "set slack.team_id to your workspace's id (the team_id of any slash command, e.g. \"T1DC2JH3J\")",
        );
    }
    (secret, prefix, workspace)
}

/// AWS-RunShellScript's longest `executionTimeout`.
const MAX_COMMAND_SECONDS: u64 = 172_800;
/// Any other wait: a day.
const MAX_WAIT_SECONDS: u64 = 86_400;

pub(super) struct Checker {
    pub(super) problems: Vec<Problem>,
    /// Each `env:` secret's key and variable, for `check_here`.
    env: Vec<(String, String)>,
}

impl Checker {
    pub(super) fn error(
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

    pub(super) fn warning(
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

    /// A duration in seconds within `min..=max`: the engine turns these into times and
    /// milliseconds, so a huge one must be refused here rather than overflow there.
    pub(super) fn seconds(&mut self, key: String, value: u64, min: u64, max: u64, hint: &str) {
        if !(min..=max).contains(&value) {
            self.error(key, format!("{value} is not within {min}..={max}"), hint);
        }
    }

    pub(super) fn secret(&mut self, key: &str, raw: &str) -> Option<Secret> {
        match Secret::from_str(raw) {
            Ok(s) => {
                if let Secret::Env(var) = &s {
                    self.env.push((key.to_string(), var.clone()));
                }
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

    pub(super) fn template(
        &mut self,
        key: &str,
        raw: &str,
        known: &BTreeSet<String>,
    ) -> Option<Template> {
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
pub(super) fn valid_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.len() <= 40
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

pub(super) fn valid_repo(s: &str) -> bool {
    let ok = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(s.split_once('/'), Some((owner, name)) if ok(owner) && ok(name))
}

/// An endpoint shipit will send a token to: https, or http to this machine only.
pub(super) fn check_url(c: &mut Checker, key: &str, url: &str) {
    let ok = match url.split_once("://") {
        // No user info: `http://127.0.0.1:1@elsewhere` goes elsewhere.
        Some((_, rest)) if rest.split('/').next().is_some_and(|a| a.contains('@')) => false,
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
