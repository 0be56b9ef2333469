//! `[apps.X.environments.Y]`: its nodes (SSM tags or local directories) and who may
//! deploy to it from chat.

use std::collections::{BTreeMap, BTreeSet};

use super::{valid_name, Checker, Scope};
use crate::config::layout::{Layout, DEFAULT_KEEP_RELEASES};
use crate::config::raw::{RawApprovals, RawEnvironment, RawListedNode, RawSshDefaults};
use crate::config::ssh::{self, Ssh, DEFAULT_CONNECT_TIMEOUT_SECONDS};
use crate::config::{Environment, ListedNode, Nodes, Severity};
use crate::deploy::approval::{
    Approvals, DEFAULT_GRACE_SECONDS, DEFAULT_TIMEOUT_SECONDS, MAX_GRACE_SECONDS,
    MAX_TIMEOUT_SECONDS,
};
use crate::deploy::calendar::{Calendar, RawFreeze};
use crate::deploy::job::is_slack_id;
use crate::deploy::promotion::{Promote, DEFAULT_AFTER_SECONDS, MAX_AFTER_SECONDS};

pub(super) fn check_environment(
    c: &mut Checker,
    scope: &mut Scope,
    name: String,
    e: RawEnvironment,
) -> Option<Environment> {
    let ek = format!("{}.environments.{name}", scope.key);
    if !valid_name(&name) {
        c.error(
            &ek,
            "environment names must be lower-case letters, digits, '-' or '_' (at most 40)",
            "e.g. production, staging",
        );
    }
    let nodes = match (e.ssm_tags, e.nodes) {
        (Some(tags), None) if !tags.is_empty() => {
            if e.ssh.is_some() {
                c.error(
                    format!("{ek}.ssh"),
                    "ssh is for listed nodes, not ssm_tags",
                    "SSM reaches its nodes itself; remove ssh",
                );
            }
            let ssm = SsmEnvironment {
                tags,
                dir: e.dir,
                vars: e.vars,
            };
            Some(check_ssm(c, scope, &ek, &name, ssm))
        }
        (None, Some(nodes)) if !nodes.is_empty() => {
            if e.dir.is_some() || !e.vars.is_empty() {
                c.error(
                    &ek,
                    "dir and vars belong to ssm_tags environments",
                    "give each listed node its own dir and vars",
                );
            }
            Some(check_listed(c, scope, &ek, nodes, e.ssh))
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
            c.error(
                &ek,
                "no nodes: neither ssm_tags nor nodes is set (or it is empty)",
                concat!(
                    "ssm_tags = { \"shipit:app\" = \"hello\", \"shipit:env\" = \"production\" }",
                    " on AWS; nodes = [{ name = \"node1\", dir = \"nodes/node1\" }] locally"
                ),
            );
            None
        }
    };
    let layout = check_layout(c, &ek, e.layout.as_deref(), e.keep_releases);
    check_user_ids(c, &format!("{ek}.chat_deployers"), &e.chat_deployers);
    check_user_ids(c, &format!("{ek}.chat_forcers"), &e.chat_forcers);
    if let Some(lockers) = &e.chat_lockers {
        check_user_ids(c, &format!("{ek}.chat_lockers"), lockers);
    }
    let calendar = check_calendar(c, &ek, e.time_zone, &e.windows, &e.freezes);
    check_people(c, &format!("{ek}.freeze_overriders"), &e.freeze_overriders);
    let approvals = e.approvals.and_then(|a| check_approvals(c, &ek, a));
    let promote = e.promote.and_then(|p| {
        let after_seconds = p.after_seconds.unwrap_or(DEFAULT_AFTER_SECONDS);
        if after_seconds > MAX_AFTER_SECONDS {
            c.error(
                format!("{ek}.promote.after_seconds"),
                format!("{after_seconds} s is longer than a day"),
                "e.g. after_seconds = 3600: live here an hour, then on",
            );
            return None;
        }
        // Whether `to` is another environment of the app: see `check_app`.
        Some(Promote {
            to: p.to,
            after_seconds,
        })
    });
    let change_calendar = e.change_calendar.filter(|name| {
        let key = format!("{ek}.change_calendar");
        if matches!(nodes, Some(Nodes::Listed(_))) {
            c.error(
                &key,
                "a change calendar is read from SSM, for ssm_tags environments on AWS",
                "use windows and freezes for listed nodes",
            );
            return false;
        }
        let valid = is_calendar_document(name);
        if !valid {
            c.error(
                &key,
                format!("{name:?} is not an SSM document name or ARN"),
                "the Change Calendar's name, e.g. change_calendar = \"production-changes\"",
            );
        }
        valid
    });
    let checks = super::checks::check_checks(c, &ek, e.checks, &scope.known);
    nodes.map(|nodes| Environment {
        name,
        checks,
        nodes,
        layout,
        calendar: calendar.flatten(),
        freeze_overriders: e.freeze_overriders,
        approvals,
        promote,
        change_calendar,
        chat_lockers: e.chat_lockers.unwrap_or_else(|| e.chat_deployers.clone()),
        chat_deployers: e.chat_deployers,
        chat_forcers: e.chat_forcers,
    })
}

/// Whether a change calendar names a document: by its name (SSM: 3 to 128 letters,
/// digits, `_`, `-`, `.`), or by its ARN (`arn:PARTITION:ssm:REGION:ACCOUNT:document/NAME`).
fn is_calendar_document(name: &str) -> bool {
    let document = match name.strip_prefix("arn:") {
        Some(rest) => match rest.splitn(5, ':').collect::<Vec<_>>()[..] {
            [partition, "ssm", region, account, resource]
                if !partition.is_empty()
                    && !region.is_empty()
                    && account.len() == 12
                    && account.bytes().all(|b| b.is_ascii_digit()) =>
            {
                match resource.strip_prefix("document/") {
                    Some(document) => document,
                    None => return false,
                }
            }
            _ => return false,
        },
        None => name,
    };
    (3..=128).contains(&document.len())
        && document
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "_-.".contains(ch))
}

/// `None` where it has a problem; `Some(None)`: deploys at any time.
fn check_calendar(
    c: &mut Checker,
    ek: &str,
    zone: Option<String>,
    windows: &[String],
    freezes: &[RawFreeze],
) -> Option<Option<Calendar>> {
    let Some(zone) = zone else {
        if !windows.is_empty() || !freezes.is_empty() {
            c.error(
                format!("{ek}.time_zone"),
                "windows and freezes need the time zone they are written in",
                "time_zone = \"Europe/Berlin\" (an IANA name; \"UTC\" if you mean it)",
            );
            return None;
        }
        return Some(None);
    };
    match Calendar::parse(&zone, windows, freezes) {
        Ok(calendar) => {
            // Automatic jobs would wait for ever, and people could deploy only by override.
            if calendar
                .closed(chrono::Utc::now())
                .is_some_and(|c| !c.opens)
            {
                let key = if freezes.is_empty() {
                    "windows"
                } else {
                    "freezes"
                };
                c.error(
                    format!("{ek}.{key}"),
                    "no window outside the freezes for more than a year: nothing would deploy",
                    "shorten the freezes, or widen the windows",
                );
                return None;
            }
            Some(Some(calendar))
        }
        Err(problems) => {
            for (key, problem, hint) in problems {
                c.error(format!("{ek}.{key}"), problem, hint);
            }
            None
        }
    }
}

fn check_layout(c: &mut Checker, ek: &str, layout: Option<&str>, keep: Option<u32>) -> Layout {
    match (layout.unwrap_or("in-place"), keep) {
        ("in-place", None) => Layout::InPlace,
        ("in-place", Some(_)) => {
            c.error(
                format!("{ek}.keep_releases"),
                "keep_releases is for layout = \"releases\"",
                "set layout = \"releases\", or remove keep_releases",
            );
            Layout::InPlace
        }
        ("releases", Some(k)) if k < 2 => {
            c.error(
                format!("{ek}.keep_releases"),
                format!("{k} would not keep the release before the live one"),
                "at least 2: the live release and the one a rollback goes back to",
            );
            Layout::Releases { keep: 2 }
        }
        ("releases", keep) => Layout::Releases {
            keep: keep.unwrap_or(DEFAULT_KEEP_RELEASES),
        },
        (other, _) => {
            c.error(
                format!("{ek}.layout"),
                format!("{other:?} is not a layout"),
                "\"in-place\" (one virtualenv, pip install -U) or \"releases\" (one per version, side by side)",
            );
            Layout::InPlace
        }
    }
}

struct SsmEnvironment {
    tags: BTreeMap<String, String>,
    dir: Option<String>,
    vars: BTreeMap<String, String>,
}

fn check_ssm(c: &mut Checker, scope: &mut Scope, ek: &str, env: &str, e: SsmEnvironment) -> Nodes {
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
        .filter(|t| !e.tags.contains_key(*t))
        .collect();
    if !missing.is_empty() {
        c.warning(
            format!("{ek}.ssm_tags"),
            format!(
                "no {} tag: infra/template.yaml lets deploy-step send commands only to nodes \
                 tagged shipit:app and shipit:env",
                missing.join(" or ")
            ),
            format!(
                "tag the nodes and select them by both, e.g. ssm_tags = \
                 {{ \"shipit:app\" = \"{}\", \"shipit:env\" = \"{env}\" }}",
                scope.app
            ),
        );
    }
    scope.known.extend(e.vars.keys().cloned());
    if e.dir.is_none() {
        scope.dirless.push(ek.to_string());
    }
    Nodes::Ssm {
        tags: e.tags,
        dir: e.dir,
        vars: e.vars,
    }
}

fn check_listed(
    c: &mut Checker,
    scope: &mut Scope,
    ek: &str,
    nodes: Vec<RawListedNode>,
    defaults: Option<RawSshDefaults>,
) -> Nodes {
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
        scope.known.extend(n.vars.keys().cloned());
    }
    if defaults.is_some() && nodes.iter().all(|n| n.ssh.is_none()) {
        c.error(
            format!("{ek}.ssh"),
            "no node is reached over SSH",
            "give the nodes an address, e.g. { name = \"web1\", ssh = \"deploy@10.0.0.5\", dir = \"/srv/hello\" }",
        );
    }
    let defaults = defaults.map(|d| ssh_defaults(c, scope, ek, d));
    let nodes = nodes
        .into_iter()
        .enumerate()
        .map(|(i, n)| {
            let ssh = n.ssh.as_deref().and_then(|a| {
                ssh_node(c, &format!("{ek}.nodes[{i}]"), a, &n.dir, defaults.as_ref())
            });
            ListedNode {
                name: n.name,
                // A node reached over SSH keeps its directory as written: it is on the node.
                // A local one is made absolute: its commands run inside it, where `{dir}`
                // relative to the config's directory would point elsewhere.
                dir: match n.ssh {
                    Some(_) => n.dir,
                    None => {
                        let dir = scope.base.join(n.dir);
                        std::path::absolute(&dir).unwrap_or(dir)
                    }
                },
                vars: n.vars,
                ssh,
            }
        })
        .collect();
    Nodes::Listed(nodes)
}

/// The environment's `ssh = { … }`, files resolved against the config's directory; the
/// host and port are each node's own.
fn ssh_defaults(c: &mut Checker, scope: &Scope, ek: &str, d: RawSshDefaults) -> Ssh {
    if let Some(Err(e)) = d.user.as_deref().map(ssh::check_user) {
        c.error(
            format!("{ek}.ssh.user"),
            e,
            "the login name on the nodes, e.g. \"deploy\"",
        );
    }
    let mut file = |key: &str, path: Option<String>| {
        let path = path?;
        if let Err(e) = ssh::check_path(&path) {
            c.error(
                format!("{ek}.ssh.{key}"),
                e,
                "a plain path, absolute or relative to this file",
            );
            return None;
        }
        let path = scope.base.join(path);
        if !path.is_file() {
            c.warning(
                format!("{ek}.ssh.{key}"),
                format!("{} does not exist (yet)", path.display()),
                "every deploy to these nodes fails until it does",
            );
        }
        Some(path)
    };
    let identity_file = file("identity_file", d.identity_file);
    let known_hosts = file("known_hosts", d.known_hosts);
    let connect_timeout_seconds = match d.connect_timeout_seconds {
        Some(0) => {
            c.error(
                format!("{ek}.ssh.connect_timeout_seconds"),
                "0 would never connect",
                format!("at least 1; {DEFAULT_CONNECT_TIMEOUT_SECONDS} unless set"),
            );
            DEFAULT_CONNECT_TIMEOUT_SECONDS
        }
        t => t.unwrap_or(DEFAULT_CONNECT_TIMEOUT_SECONDS),
    };
    Ssh {
        user: d.user,
        identity_file,
        known_hosts,
        accept_new_host_keys: d.accept_new_host_keys,
        connect_timeout_seconds,
        ..Ssh::default()
    }
}

fn ssh_node(
    c: &mut Checker,
    nk: &str,
    address: &str,
    dir: &std::path::Path,
    defaults: Option<&Ssh>,
) -> Option<Ssh> {
    if !dir.is_absolute() {
        c.error(
            format!("{nk}.dir"),
            format!("{:?} is not an absolute path", dir.display().to_string()),
            "the app's directory on the node, e.g. \"/srv/hello\"",
        );
    }
    match ssh::parse_address(address) {
        Ok((user, host, port)) => {
            let base = defaults.cloned().unwrap_or_default();
            Some(Ssh {
                user: user.or(base.user.clone()),
                host,
                port,
                ..base
            })
        }
        Err(e) => {
            c.error(
                format!("{nk}.ssh"),
                e,
                "[user@]host[:port], e.g. \"deploy@10.0.0.5:22\"",
            );
            None
        }
    }
}

/// People who act from chat or the CLI: Slack user ids, or CLI users' accounts.
fn check_people(c: &mut Checker, key: &str, people: &[String]) {
    for (i, who) in people.iter().enumerate() {
        let slack = is_slack_id(who);
        let account = !who.is_empty()
            && who.len() <= 32
            && who
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
        if !slack && !account {
            c.error(
                format!("{key}[{i}]"),
                format!("{who:?} is neither a Slack user id nor an account name"),
                "a member id (\"U2CERLKJA\") for chat, or the login of a CLI user (\"ann\")",
            );
        }
    }
}

fn check_approvals(c: &mut Checker, ek: &str, a: RawApprovals) -> Option<Approvals> {
    let key = format!("{ek}.approvals");
    let before = c.problems.len();
    let required = a.required.unwrap_or(1);
    check_people(c, &format!("{key}.approvers"), &a.approvers);
    let mut people = a.approvers.clone();
    people.sort();
    people.dedup();
    if required == 0 {
        c.error(
            format!("{key}.required"),
            "required = 0 approves nothing",
            "remove approvals, or require 1 or more",
        );
    } else if people.len() < required as usize {
        c.error(
            format!("{key}.approvers"),
            format!(
                "{} approvers for required = {required}: no deploy could be approved",
                people.len()
            ),
            "name more approvers (Slack user ids or CLI accounts), or lower required",
        );
    } else if people.len() == required as usize && !a.requester_may_approve {
        c.warning(
            format!("{key}.approvers"),
            "a deploy one of the approvers asks for can never be approved: the requester does not count",
            "name one more approver, or set requester_may_approve = true",
        );
    }
    let timeout_seconds = a.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    if !(60..=MAX_TIMEOUT_SECONDS).contains(&timeout_seconds) {
        c.error(
            format!("{key}.timeout_seconds"),
            format!("{timeout_seconds} s is not between 60 s and 7 days"),
            "e.g. timeout_seconds = 86400 (a day): a deploy nobody approved by then is skipped",
        );
    }
    let grace_seconds = a.grace_seconds.unwrap_or(DEFAULT_GRACE_SECONDS);
    if grace_seconds > MAX_GRACE_SECONDS {
        c.error(
            format!("{key}.grace_seconds"),
            format!("{grace_seconds} s is longer than 30 days"),
            "e.g. grace_seconds = 14400: an approval of a version counts for another deploy of it for 4 hours",
        );
    }
    let errors = c.problems[before..]
        .iter()
        .filter(|p| p.severity == Severity::Error);
    (errors.count() == 0).then_some(Approvals {
        required,
        approvers: a.approvers,
        requester_may_approve: a.requester_may_approve,
        grace_seconds,
        timeout_seconds,
    })
}

fn check_user_ids(c: &mut Checker, key: &str, ids: &[String]) {
    for (i, d) in ids.iter().enumerate() {
        let id = is_slack_id(d);
        if d.starts_with('@') {
            c.error(
                format!("{key}[{i}]"),
                format!("{d:?} is a user name; only Slack user ids identify a person"),
                "use the member id: in Slack, open the person's profile, ⋮ → Copy member ID (e.g. \"U2CERLKJA\")",
            );
        } else if d != "*" && !id {
            c.error(
                format!("{key}[{i}]"),
                format!("{d:?} is not a Slack user id or *"),
                "e.g. \"U2CERLKJA\": in Slack, the person's profile, ⋮ → Copy member ID",
            );
        }
    }
}
