//! `[apps.X]`: what it is (package, repo, tags), where it goes (environments, defaults),
//! how a node runs it (command templates) and rolls it out.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use super::environment::check_environment;
use super::notify::{check_gate, check_notify};
use super::{valid_name, valid_repo, Checker, Scope, TEMPLATE_VARS};
use crate::config::raw::{RawApp, RawIndex};
use crate::config::template::Template;
use crate::config::{App, Environment, PackageIndex, TagPattern};
use crate::deploy::rollout::{Rollout, Share};
use crate::deploy::version::PackageName;

pub(super) fn check_app(c: &mut Checker, base: &Path, name: String, a: RawApp) -> Option<App> {
    let k = format!("apps.{name}");
    if !valid_name(&name) {
        c.error(
            &k,
            "app names must be lower-case letters, digits, '-' or '_' (at most 40)",
            "rename the table, e.g. [apps.hello]",
        );
    }
    let package = check_package(c, &k, &a.package);
    let repo = check_repo(c, &k, a.repo);
    let tag_pattern = check_tag_pattern(c, &k, a.tag_pattern.as_deref());
    let mut scope = Scope {
        app: &name,
        key: &k,
        base,
        known: TEMPLATE_VARS.iter().map(|s| s.to_string()).collect(),
        dirless: vec![],
    };
    if a.environments.is_empty() {
        c.error(
            format!("{k}.environments"),
            "no environments",
            format!("add [apps.{name}.environments.production] with nodes or ssm_tags"),
        );
    }
    let mut environments = BTreeMap::new();
    for (env_name, e) in a.environments {
        if let Some(env) = check_environment(c, &mut scope, env_name, e) {
            environments.insert(env.name.clone(), env);
        }
    }
    check_promotions(c, &k, &environments);
    let default_env = check_default_env(c, &k, a.default_env, &environments);
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
    // Known even when the index is wrong: one problem, reported once.
    if a.index.is_some() {
        scope.known.insert("index".into());
    }
    let index = a.index.and_then(|i| check_index(c, &k, i));
    let commands = Commands {
        install: &a.install,
        restart: &a.restart,
        health: a.health.as_deref(),
        version: a.version.as_deref(),
    };
    let commands = check_commands(c, &scope, commands);
    let mut rollout = a.rollout;
    let hooks = check_hooks(c, &scope, &mut rollout, (a.pre_restart, a.post_restart));
    check_rollout(c, &k, &rollout);
    check_dir_use(c, &scope, &commands, &hooks);
    let checks = super::checks::check_checks(c, &k, a.checks, &scope.known);
    let datadog = |ch: &&crate::config::Check| {
        matches!(ch.source, crate::config::CheckSource::Datadog { .. })
    };
    let reads_datadog = checks.iter().any(|ch| datadog(&ch))
        || environments
            .values()
            .any(|e| e.checks.iter().any(|ch| datadog(&ch)));
    if reads_datadog && a.notify.datadog.is_none() {
        c.error(
            format!("{k}.checks"),
            "a Datadog check reads through notify.datadog's API key and site, and the app has none",
            "add [apps.NAME.notify.datadog] with api_key (and site)",
        );
    }
    // Per environment, its checks as it has them: a node check runs where the other
    // commands do, an analysis compares once, and on SSM nodes needs a route to them.
    for env in environments.values() {
        let its = crate::config::checks_in(&checks, &env.checks);
        let ek = format!("{k}.environments.{}", env.name);
        for ch in &its {
            let crate::config::CheckSource::Node { command } = &ch.source else {
                continue;
            };
            if scope.dirless.contains(&ek) && command.placeholders().any(|p| p == "dir") {
                c.error(
                    format!("{ek}.dir"),
                    format!(
                        "check {} uses {{dir}} but this environment has no dir",
                        ch.name
                    ),
                    "set dir = \"/srv/...\" to the app's directory on its nodes",
                );
            }
        }
        let analysis = |ch: &&&crate::config::Check| {
            matches!(ch.source, crate::config::CheckSource::Analysis { .. })
        };
        let count = its.iter().filter(analysis).count();
        if count > 1 {
            c.error(
                format!("{k}.environments.{}", env.name),
                format!("{count} analyses with the app's: a deploy compares its canary with its baseline once"),
                "keep one check with analysis = \"…\" (one of the environment's replaces the app's of its name)",
            );
        }
        if count > 0 && matches!(env.nodes, crate::config::Nodes::Ssm { .. }) {
            c.warning(
                format!("{k}.environments.{}", env.name),
                "the analysis scrapes each node at the address its SSM agent reports: on AWS, deploy-step must reach them (run it in the nodes' VPC, with endpoints for SSM, SQS, Step Functions and CloudWatch); the template does not set that up",
                "read the comparison from Prometheus instead (a check with prometheus and query), or give deploy-step a VpcConfig",
            );
        }
    }
    let notify = check_notify(c, &k, a.notify, &name, repo.is_some());
    let gate = a.gate.and_then(|g| check_gate(c, &k, g, repo.is_some()));
    if gate.is_none() && repo.is_some() && !auto_deploy.is_empty() {
        c.warning(
            format!("{k}.gate"),
            "any tag pushed to the repo deploys, from any branch, whatever its checks say",
            "add [apps.NAME.gate] (checks = [...]) to deploy only merged, green tags",
        );
    }
    let (install, restart, health, version) = commands;
    let (package, tag_pattern) = (package?, tag_pattern?);
    let (install, restart, health, version) = (install?, restart?, health?, version?);
    let (pre_restart, post_restart) = (hooks.0?, hooks.1?);
    Some(App {
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
        pre_restart,
        post_restart,
        version,
        rollout,
        notify,
        gate,
        index,
        checks,
    })
}

/// `[apps.X.index]`: an http(s) URL of a simple API root, polled every so often.
fn check_index(c: &mut Checker, k: &str, raw: RawIndex) -> Option<PackageIndex> {
    let k = format!("{k}.index");
    let scheme_ok = ["http://", "https://"]
        .iter()
        .any(|s| raw.url.starts_with(s) && raw.url.len() > s.len());
    if !scheme_ok || raw.url.contains(char::is_whitespace) {
        c.error(
            format!("{k}.url"),
            format!("{:?} is not an http(s) URL", raw.url),
            "the index's simple API root, e.g. \"http://pypi.internal/simple/\"",
        );
    }
    c.seconds(
        format!("{k}.poll_seconds"),
        raw.poll_seconds,
        1,
        super::MAX_WAIT_SECONDS,
        "how often the index is asked for new releases",
    );
    let password = raw
        .password
        .and_then(|p| c.secret(&format!("{k}.password"), &p));
    if password.is_some() != raw.username.is_some() {
        c.error(
            &k,
            "username and password go together",
            "set both (HTTP basic auth), or neither for an index anyone may read",
        );
    }
    let url = match raw.url.ends_with('/') {
        true => raw.url,
        false => format!("{}/", raw.url),
    };
    scheme_ok.then_some(PackageIndex {
        url,
        poll_seconds: raw.poll_seconds,
        username: raw.username,
        password,
    })
}

fn check_package(c: &mut Checker, k: &str, raw: &str) -> Option<PackageName> {
    match PackageName::from_str(raw) {
        Ok(p) => Some(p),
        Err(_) => {
            c.error(
                format!("{k}.package"),
                format!("{raw:?} is not a valid PEP 508 package name"),
                "letters, digits, '-', '_' and '.', starting and ending with a letter or digit",
            );
            None
        }
    }
}

fn check_repo(c: &mut Checker, k: &str, raw: Option<String>) -> Option<String> {
    match raw {
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
    }
}

fn check_tag_pattern(c: &mut Checker, k: &str, raw: Option<&str>) -> Option<TagPattern> {
    match TagPattern::parse(raw.unwrap_or("v{version}")) {
        Ok(p) => Some(p),
        Err(e) => {
            c.error(
                format!("{k}.tag_pattern"),
                e,
                "e.g. \"v{version}\" or \"hello-{version}\"",
            );
            None
        }
    }
}

/// Each `promote.to` names another environment of the app, and following them never
/// comes back (a promotion would go round for ever).
fn check_promotions(c: &mut Checker, k: &str, environments: &BTreeMap<String, Environment>) {
    for (name, env) in environments {
        let Some(p) = &env.promote else { continue };
        let key = format!("{k}.environments.{name}.promote.to");
        if !environments.contains_key(&p.to) || p.to == *name {
            c.error(
                key,
                format!("{:?} is not another environment of this app", p.to),
                format!(
                    "one of {}",
                    environments
                        .keys()
                        .filter(|e| *e != name)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            continue;
        }
        let mut seen = vec![name.as_str()];
        let mut next = Some(p.to.as_str());
        while let Some(to) = next {
            if seen.contains(&to) {
                c.error(
                    &key,
                    format!("promotions go round: {} → {to}", seen.join(" → ")),
                    "end the chain at the last environment (production promotes nowhere)",
                );
                break;
            }
            seen.push(to);
            next = environments
                .get(to)
                .and_then(|e| e.promote.as_ref())
                .map(|p| p.to.as_str());
        }
    }
}

/// Where chat and CLI deploys go when they name no environment; empty if nowhere.
fn check_default_env(
    c: &mut Checker,
    k: &str,
    raw: Option<String>,
    environments: &BTreeMap<String, Environment>,
) -> String {
    let default_env = match raw {
        Some(d) => d,
        None if environments.len() == 1 => environments.keys().next().cloned().unwrap_or_default(),
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
    default_env
}

/// The raw command templates of an app.
struct Commands<'a> {
    install: &'a str,
    restart: &'a str,
    health: Option<&'a str>,
    version: Option<&'a str>,
}

/// Each checked template, `None` where it has a problem (health and version are
/// optional: `Some(None)` when the app has none).
type Checked = (
    Option<Template>,
    Option<Template>,
    Option<Option<Template>>,
    Option<Option<Template>>,
);

/// Install, restart, health and version templates, each using only placeholders it will
/// have on every node.
fn check_commands(c: &mut Checker, scope: &Scope, raw: Commands) -> Checked {
    let k = scope.key;
    let install = c.template(&format!("{k}.install"), raw.install, &scope.known);
    let restart = c.template(&format!("{k}.restart"), raw.restart, &scope.known);
    let health = match raw.health {
        Some(h) => c
            .template(&format!("{k}.health"), h, &scope.known)
            .map(Some),
        None => {
            c.warning(
                format!("{k}.health"),
                "no health check: a restart that exits 0 counts as healthy",
                "add a command that fails unless the new version serves, e.g. a curl of /version",
            );
            Some(None)
        }
    };
    let version = match raw.version {
        Some(v) => c
            .template(&format!("{k}.version"), v, &scope.known)
            .map(Some),
        None => Some(None),
    };
    (install, restart, health, version)
}

/// The checked `pre_restart` and `post_restart`: `None` where one has a problem,
/// `Some(None)` when the app has none.
type Hooks = (Option<Option<Template>>, Option<Option<Template>>);

/// The drain hooks, each with its timeout (60 s unless given; a timeout without its hook
/// is a mistake).
fn check_hooks(
    c: &mut Checker,
    scope: &Scope,
    rollout: &mut Rollout,
    (pre, post): (Option<String>, Option<String>),
) -> Hooks {
    let k = scope.key;
    let mut hook = |name: &str, raw: Option<String>, timeout: &mut Option<u64>| {
        let key = format!("{k}.rollout.{name}_timeout_seconds");
        match (raw, *timeout) {
            (None, None) => Some(None),
            (None, Some(_)) => {
                c.error(
                    key,
                    format!("{name}_timeout_seconds is set but {name} is not"),
                    format!("set {k}.{name} to the command, or remove the timeout"),
                );
                Some(None)
            }
            (Some(raw), t) => {
                let seconds = t.unwrap_or(crate::deploy::rollout::DEFAULT_HOOK_SECONDS);
                c.seconds(
                    key,
                    seconds,
                    1,
                    super::MAX_COMMAND_SECONDS,
                    &format!("seconds {name} may run on a node before it counts as failed"),
                );
                *timeout = Some(seconds);
                c.template(&format!("{k}.{name}"), &raw, &scope.known)
                    .map(Some)
            }
        }
    };
    let pre = hook("pre_restart", pre, &mut rollout.pre_restart_timeout_seconds);
    let post = hook(
        "post_restart",
        post,
        &mut rollout.post_restart_timeout_seconds,
    );
    // SSM runs no command longer than 48 h, the restart with its checks and hooks included.
    let restart = rollout.command_seconds(crate::deploy::command::CommandKind::Restart);
    let most = super::MAX_COMMAND_SECONDS;
    if restart > most
        && (rollout.pre_restart_timeout_seconds.is_some()
            || rollout.post_restart_timeout_seconds.is_some())
    {
        c.error(
            format!("{k}.rollout"),
            format!("a restart may take {restart} s with its checks and hooks, past {most} s"),
            "shorten command_timeout_seconds, health_timeout_seconds or the hooks' timeouts",
        );
    }
    (pre, post)
}

/// `{dir}` is there only where every environment of the app has a `dir`.
fn check_dir_use(
    c: &mut Checker,
    scope: &Scope,
    (install, restart, health, version): &Checked,
    (pre, post): &Hooks,
) {
    let Some(env) = scope.dirless.first() else {
        return;
    };
    let templates = [
        ("install", install.as_ref()),
        ("restart", restart.as_ref()),
        ("health", health.as_ref().and_then(Option::as_ref)),
        ("version", version.as_ref().and_then(Option::as_ref)),
        ("pre_restart", pre.as_ref().and_then(Option::as_ref)),
        ("post_restart", post.as_ref().and_then(Option::as_ref)),
    ];
    for (what, t) in templates {
        if t.is_some_and(|t| t.placeholders().any(|p| p == "dir")) {
            c.error(
                format!("{env}.dir"),
                format!(
                    "{}.{what} uses {{dir}} but this environment has no dir",
                    scope.key
                ),
                "set dir = \"/srv/...\" to the app's directory on its nodes",
            );
        }
    }
}

fn check_rollout(c: &mut Checker, k: &str, rollout: &Rollout) {
    let r = rollout;
    let k = format!("{k}.rollout");
    let waits = [
        (
            "bake_seconds",
            r.bake_seconds,
            0,
            "seconds to watch the canary",
        ),
        (
            "health_timeout_seconds",
            r.health_timeout_seconds,
            0,
            "seconds a restarted node has to pass its health check",
        ),
        (
            "health_interval_seconds",
            r.health_interval_seconds,
            1,
            "the longest pause between two health checks of a node",
        ),
        (
            "lock_wait_seconds",
            r.lock_wait_seconds,
            0,
            "how long a deploy waits for a held lock",
        ),
        (
            "watch_seconds",
            r.watch_seconds,
            0,
            "how long checks are read after the last node",
        ),
        (
            "check_interval_seconds",
            r.check_interval_seconds,
            1,
            "how often checks are read",
        ),
        (
            "check_wait_seconds",
            r.check_wait_seconds,
            0,
            "how long a check without data is read again",
        ),
    ];
    for (name, value, min, hint) in waits {
        c.seconds(
            format!("{k}.{name}"),
            value,
            min,
            super::MAX_WAIT_SECONDS,
            hint,
        );
    }
    c.seconds(
        format!("{k}.command_timeout_seconds"),
        r.command_timeout_seconds,
        1,
        super::MAX_COMMAND_SECONDS,
        "seconds one command may run on one node (SSM allows up to 48 h)",
    );
    if let Some(i) = r.batches.iter().position(|b| *b == Share::None) {
        c.error(
            format!("{k}.batches[{i}]"),
            "a batch of no nodes restarts nothing",
            "give each batch a number of nodes (5) or a share of them (\"20%\")",
        );
    }
}
