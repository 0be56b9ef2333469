//! A dry run: what a deploy or a rollback would do, asked of the ports the deploy would
//! use (history and lock from the ledger; the gate for real, read-only), with nothing
//! queued. `shipit deploy|rollback --dry-run` and `/deploy … --dry-run` show it.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::command::Site;
use crate::config::{App, Config, Environment, Nodes};
use crate::deploy::command::{Command, CommandKind};
use crate::deploy::engine::Verdict;
use crate::deploy::history::faulty_mark;
use crate::deploy::job::{DeployJob, Source};
use crate::deploy::ports::{Fleet, Gate, Ledger, PortError};
use crate::deploy::report::{faulty_phrase, forced_by_note, history_line, lock_line};
use crate::deploy::rollout::Rollout;
use crate::deploy::version::Version;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub app: String,
    pub env: String,
    pub version: Version,
    pub requested_by: String,
    /// Where the version comes from, in words.
    pub source: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forced_by: Option<String>,
    /// What is live now, as history shows it (with its faulty mark if it has one).
    pub live: Option<String>,
    /// The mark on the version to deploy, if a deploy rolled back from it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub faulty: Option<String>,
    /// Who holds the app+env, if anyone.
    pub lock: Option<String>,
    pub lock_wait_seconds: u64,
    /// The environment's windows and freezes, and what they do to this job now.
    pub calendar: String,
    /// Who must approve the deploy before it starts, if anyone.
    pub approvals: String,
    /// Where the version goes next once this deploy succeeds, if anywhere.
    pub promotion: String,
    /// The metric checks the deploy would read, and when.
    pub checks: String,
    pub gate: GateAnswer,
    /// The nodes in restart order, in their batches; `None` where they are found only when
    /// the deploy runs (SSM tags).
    pub batches: Option<Vec<Vec<String>>>,
    /// Why the nodes are not listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes_unknown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssm_tags: Option<std::collections::BTreeMap<String, String>>,
    pub rollout: Rollout,
    /// The commands as the first node would run them.
    pub commands: Commands,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum GateAnswer {
    None,
    Forced { by: String },
    /// There is no gate to ask here; the deploy asks it when it runs.
    NotAsked,
    Pass,
    /// The job would be skipped.
    Refuse { reason: String },
    Pending { reason: String, wait_seconds: u64 },
    Unreachable { error: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Commands {
    pub node: String,
    pub dir: Option<String>,
    pub install: String,
    pub restart: String,
    pub health: Option<String>,
}

/// What a plan asks, read-only: the ledger always; the gate and the fleet where there is
/// one at hand (without, the plan says the deploy asks them when it runs).
#[derive(Clone, Copy)]
pub struct Asks<'a> {
    pub ledger: &'a dyn Ledger,
    pub gate: Option<&'a dyn Gate>,
    pub fleet: Option<&'a dyn Fleet>,
}

/// The plan of `job`. Reads only.
pub async fn plan(
    config: &Config,
    asks: Asks<'_>,
    job: &DeployJob,
    now: DateTime<Utc>,
) -> Result<Plan, PlanError> {
    let Asks {
        ledger,
        gate,
        fleet,
    } = asks;
    let (app, env) = config.target(job).map_err(PlanError::Target)?;
    let history = ledger.history(&app.name, &env.name, 1).await?;
    let faulty = ledger.faulty(&app.name, &env.name).await?;
    let live = history
        .first()
        .map(|l| history_line(l, faulty_mark(&faulty, &l.job.version)));
    let lock = ledger
        .lock_state(&app.name, &env.name, now)
        .await?
        .map(|l| lock_line(&app.name, &env.name, &l));
    let gate = match (&job.forced_by, &app.gate, gate) {
        (Some(by), _, _) => GateAnswer::Forced { by: by.clone() },
        (None, None, _) => GateAnswer::None,
        (None, Some(_), None) => GateAnswer::NotAsked,
        (None, Some(_), Some(gate)) => match gate.verify(job).await {
            Ok(Verdict::Pass) => GateAnswer::Pass,
            Ok(Verdict::Refuse { reason }) => GateAnswer::Refuse { reason },
            Ok(Verdict::Pending {
                reason,
                wait_seconds,
            }) => GateAnswer::Pending {
                reason,
                wait_seconds,
            },
            Err(e) => GateAnswer::Unreachable {
                error: e.to_string(),
            },
        },
    };
    let (nodes, ssm_tags) = match (&env.nodes, fleet) {
        (Nodes::Listed(nodes), _) => (Ok(nodes.iter().map(|n| n.name.clone()).collect()), None),
        (Nodes::Ssm { tags, .. }, Some(fleet)) => (
            fleet.resolve(job).await.map_err(|e| e.to_string()),
            Some(tags.clone()),
        ),
        (Nodes::Ssm { tags, .. }, None) => (
            Err("found when the deploy runs".to_string()),
            Some(tags.clone()),
        ),
    };
    let (batches, nodes_unknown) = match nodes {
        Ok(names) => (Some(batches(&app.rollout, &names)), None),
        Err(why) => (None, Some(why)),
    };
    Ok(Plan {
        app: app.name.clone(),
        env: env.name.clone(),
        version: job.version.clone(),
        requested_by: job.requested_by.clone(),
        source: source(job),
        forced_by: job.forced_by.clone(),
        live,
        faulty: faulty_mark(&faulty, &job.version).map(faulty_phrase),
        lock,
        lock_wait_seconds: app.rollout.lock_wait_seconds,
        calendar: calendar_line(env, job, now),
        approvals: approvals_line(env, job),
        promotion: match &env.promote {
            Some(p) if !matches!(job.source, Source::Rollback { .. } | Source::Sync { .. }) => {
                format!(
                    "to {} {} after this deploy succeeds, if {} is still live here and not marked faulty then",
                    p.to,
                    crate::deploy::dora::human(p.after_seconds as i64),
                    job.version
                )
            }
            _ => "none".into(),
        },
        checks: checks_line(config, app, job),
        gate,
        batches,
        nodes_unknown,
        ssm_tags,
        rollout: app.rollout.clone(),
        commands: commands(app, env, job)?,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}")]
    Target(String),
    #[error("{0}")]
    Port(#[from] PortError),
    #[error("{0}")]
    Script(#[from] crate::config::command::ScriptError),
}

fn calendar_line(env: &Environment, job: &DeployJob, now: DateTime<Utc>) -> String {
    let line = config_calendar_line(env, job, now);
    let Some(name) = &env.change_calendar else {
        return line;
    };
    let change = match env.exempt(job) {
        true => format!("the SSM change calendar {name}, which this deploy passes"),
        false => format!("the SSM change calendar {name}, read as the deploy starts"),
    };
    match &env.calendar {
        None => change,
        Some(_) => format!("{line}; and {change}"),
    }
}

fn config_calendar_line(env: &Environment, job: &DeployJob, now: DateTime<Utc>) -> String {
    let Some(c) = &env.calendar else {
        return "none: deploys at any time".into();
    };
    let now_says = if matches!(job.source, Source::Rollback { .. }) {
        "a rollback is never held back".to_string()
    } else if let Err(refused) = env.admit(job, now) {
        format!("refused: {refused}")
    } else if let Some(o) = &job.overridden {
        format!("overridden by {}: {}", o.by, o.reason)
    } else {
        match env.held_back(job, now) {
            Some(closed) => format!("closed, the deploy would wait: {}", closed.why),
            None => "open now".into(),
        }
    };
    format!("{}; {now_says}", c.summary)
}

fn approvals_line(env: &Environment, job: &DeployJob) -> String {
    let Some(rules) = &env.approvals else {
        return "none needed".into();
    };
    if !crate::deploy::approval::needed(Some(rules), job) {
        return "none needed (rollbacks and syncs never wait for one)".into();
    }
    format!(
        "the deploy would wait for {} of {}{} (an approval of {} within {} counts; skipped after {} without)",
        rules.required,
        rules.approvers.join(", "),
        match job.source.person_id() {
            Some(me) if !rules.requester_may_approve => format!(", not {me}"),
            _ => String::new(),
        },
        job.version,
        crate::deploy::dora::human(rules.grace_seconds as i64),
        crate::deploy::dora::human(rules.timeout_seconds as i64),
    )
}

fn checks_line(config: &Config, app: &App, job: &DeployJob) -> String {
    let checks = config.checks_for(job);
    if checks.is_empty() {
        return "none".into();
    }
    if matches!(job.source, Source::Rollback { .. } | Source::Sync { .. }) {
        return "none read (a rollback or a sync never waits for a check)".into();
    }
    let names: Vec<String> = checks
        .iter()
        .map(|c| {
            let what = match &c.source {
                crate::config::CheckSource::Prometheus { condition, .. } => {
                    format!("Prometheus, {condition}")
                }
                crate::config::CheckSource::Datadog { monitors, tags, .. } => {
                    match monitors.is_empty() {
                        false => format!(
                            "Datadog monitor{} {}",
                            if monitors.len() == 1 { "" } else { "s" },
                            monitors
                                .iter()
                                .map(u64::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        true => format!("Datadog monitors tagged {}", tags.join(", ")),
                    }
                }
                crate::config::CheckSource::Node { command } => {
                    format!("on the nodes: {command}")
                }
                crate::config::CheckSource::CloudWatch { alarms } => format!(
                    "CloudWatch alarm{} {}",
                    if alarms.len() == 1 { "" } else { "s" },
                    alarms.join(", ")
                ),
                crate::config::CheckSource::Analysis { settings, .. } => format!(
                    "canary versus baseline, alpha {}, at least {} requests a side",
                    settings.alpha(),
                    settings.min_requests
                ),
            };
            format!("{} ({what}, no data: {})", c.name, c.no_data)
        })
        .collect();
    let r = &app.rollout;
    let mut when = vec![];
    if r.canary && r.bake_seconds > 0 {
        when.push(format!("through the canary's {} s bake", r.bake_seconds));
    }
    // An analysis is read only while some node still runs the old version.
    let only_analysis = checks
        .iter()
        .all(|c| matches!(c.source, crate::config::CheckSource::Analysis { .. }));
    match r.watch_seconds {
        _ if only_analysis => when.push("after each batch but the last".to_string()),
        0 => when.push("after each batch".to_string()),
        w => {
            when.push("after each batch but the last".to_string());
            when.push(format!("for {w} s after the last node"));
        }
    }
    format!(
        "{}; read every {} s {}, each waited for up to {} s without data",
        names.join(", "),
        r.check_interval_seconds,
        when.join(", "),
        r.check_wait_seconds
    )
}

/// `nodes` in the rollout's batches, as a deploy that installs everywhere restarts them.
fn batches(rollout: &Rollout, nodes: &[String]) -> Vec<Vec<String>> {
    let mut out = vec![];
    let mut rest = nodes;
    while !rest.is_empty() {
        let size = rollout.batch_size(out.len(), nodes.len()).min(rest.len());
        let (batch, after) = rest.split_at(size);
        out.push(batch.to_vec());
        rest = after;
    }
    out
}

fn source(job: &DeployJob) -> String {
    match &job.source {
        Source::Rollback {
            restores, replaces, ..
        } => match replaces {
            Some(r) => format!("a rollback: job {restores} sent again, undoing job {r}"),
            None => format!("a rollback: job {restores} sent again"),
        },
        Source::Cli { .. } | Source::Chat { .. } => "asked for by name".into(),
        Source::Tag { repo, tag, .. } => format!("tag {tag} of {repo}"),
        Source::Upload { location } => format!("the upload {location}"),
        Source::Sync { .. } => "a sync to the live version".into(),
        Source::Promotion {
            from_env,
            from_job,
            due_at,
        } => format!(
            "a promotion from {from_env} (job {from_job}), due at {}",
            due_at.format("%Y-%m-%d %H:%M:%S UTC")
        ),
    }
}

/// The install, restart and health commands as the first node would run them (on SSM,
/// where nodes are found when the deploy runs: as every node would, `{node}` aside).
fn commands(app: &App, env: &Environment, job: &DeployJob) -> Result<Commands, PlanError> {
    let (node, dir, vars) = match &env.nodes {
        Nodes::Listed(nodes) => match nodes.first() {
            Some(n) => (n.name.clone(), Some(n.dir.display().to_string()), &n.vars),
            None => return Err(PlanError::Target(format!("{} has no nodes", env.name))),
        },
        Nodes::Ssm { dir, vars, .. } => ("NODE".to_string(), dir.clone(), vars),
    };
    let site = Site {
        node: &node,
        dir: dir.as_deref(),
        vars,
    };
    let script = |kind| {
        let cmd = Command {
            key: String::new(),
            kind,
            version: job.version.clone(),
            nodes: vec![node.clone()],
            concurrency: 0,
            fence: 0,
            not_after: None,
            check: None,
        };
        app.script(env, &cmd, &site)
    };
    let required = |kind| script(kind).map(Option::unwrap_or_default);
    Ok(Commands {
        install: required(CommandKind::Install)?,
        restart: required(CommandKind::Restart)?,
        health: script(CommandKind::Health)?,
        node: node.clone(),
        dir: dir.clone(),
    })
}

impl Plan {
    /// The plan in words, a line each.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![
            "Dry run: nothing was queued.".to_string(),
            format!(
                "{} {} to {}, asked by {}{}; {}",
                self.app,
                self.version,
                self.env,
                self.requested_by,
                forced_by_note(self.forced_by.as_deref()),
                self.source
            ),
            match &self.live {
                Some(l) => format!("Live: {l}"),
                None => "Live: nothing yet (first deploy)".into(),
            },
        ];
        if let Some(mark) = &self.faulty {
            out.push(format!("Warning: {} is {mark}", self.version));
        }
        out.push(match &self.lock {
            Some(l) => format!(
                "Lock: {l}; the deploy would wait for it up to {} s",
                self.lock_wait_seconds
            ),
            None => "Lock: free".into(),
        });
        out.push(format!("Calendar: {}", self.calendar));
        out.push(format!("Approvals: {}", self.approvals));
        out.push(format!("Promotion: {}", self.promotion));
        out.push(format!("Checks: {}", self.checks));
        out.push(match &self.gate {
            GateAnswer::None => "Gate: none configured".into(),
            GateAnswer::Forced { by } => format!("Gate: not asked (forced by {by})"),
            GateAnswer::NotAsked => "Gate: asked when the deploy runs".into(),
            GateAnswer::Pass => "Gate: passes".into(),
            GateAnswer::Refuse { reason } => {
                format!("Gate: refuses, the job would be skipped: {reason}")
            }
            GateAnswer::Pending {
                reason,
                wait_seconds,
            } => format!("Gate: not yet ({reason}); the deploy would wait up to {wait_seconds} s"),
            GateAnswer::Unreachable { error } => {
                format!("Gate: could not be asked ({error}); the deploy asks again when it runs")
            }
        });
        let r = &self.rollout;
        if let Some(tags) = &self.ssm_tags {
            out.push(format!("Nodes: the SSM managed nodes tagged {tags:?}"));
        }
        match (&self.batches, &self.nodes_unknown) {
            (Some(batches), _) if batches.is_empty() => {
                out.push("Nodes, in restart order: none (the deploy would fail)".into())
            }
            (Some(batches), _) => {
                let all: Vec<&str> = batches.iter().flatten().map(String::as_str).collect();
                out.push(format!("Nodes, in restart order: {}", all.join(", ")));
                if batches.iter().any(|b| b.len() > 1) {
                    let groups: Vec<String> = batches.iter().map(|b| b.join(", ")).collect();
                    out.push(format!("Batches: [{}]", groups.join("] [")));
                }
            }
            (None, why) => out.push(format!(
                "Nodes, in restart order: {}",
                why.as_deref().unwrap_or("unknown")
            )),
        }
        let together = if r.batches.is_empty() {
            "one node at a time".to_string()
        } else {
            let sizes: Vec<String> = r.batches.iter().map(ToString::to_string).collect();
            format!("in batches of [{}] (the last repeats)", sizes.join(", "))
        };
        out.push(format!(
            "Install on {}, then restart {together}{}{}, each health-checked within {} s; {}",
            match r.install_concurrency {
                0 => "every node at once".to_string(),
                n => format!("at most {n} nodes at once"),
            },
            if r.canary { ", the first as a canary" } else { "" },
            match r.bake_seconds {
                0 => String::new(),
                s => format!(" watched for {s} s"),
            },
            r.health_timeout_seconds,
            match r.max_failed.of(100) {
                0 => "any failure rolls back".to_string(),
                _ => format!("up to {} failed nodes are left behind", r.max_failed),
            }
        ));
        let c = &self.commands;
        out.push(match &c.dir {
            Some(dir) => format!("Commands on {} (in {dir}):", c.node),
            None => format!("Commands on {}:", c.node),
        });
        out.push(format!("  Install: {}", c.install));
        out.push(format!("  Restart: {}", c.restart));
        out.push(format!(
            "  Health: {}",
            c.health.as_deref().unwrap_or("(none)")
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::rollout::Share;

    #[test]
    fn nodes_are_grouped_in_the_rollout_s_batches() {
        let nodes: Vec<String> = (1..=8).map(|i| format!("n{i}")).collect();
        let rollout = Rollout {
            batches: vec![Share::Nodes(1), Share::Nodes(2), Share::Percent(50)],
            ..Rollout::default()
        };
        let sizes: Vec<usize> = batches(&rollout, &nodes).iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 2, 4, 1]);
        let one: Vec<usize> = batches(&Rollout::default(), &nodes[..3])
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(one, [1, 1, 1]);
    }

    /// --dry-run names an environment's change calendar, beside its own calendar.
    #[test]
    fn the_calendar_line_names_the_change_calendar() {
        let text = |extra: &str| {
            format!(
                "[apps.hello]\npackage = \"hello-app\"\ninstall = \"true\"\nrestart = \"true\"\nhealth = \"true\"\n\
                 [apps.hello.environments.production]\nssm_tags = {{ \"shipit:app\" = \"hello\" }}\n{extra}"
            )
        };
        let line = |extra: &str| {
            let config = crate::config::Config::parse(&text(extra), std::path::Path::new("t.toml"))
                .unwrap_or_else(|e| panic!("{e}"));
            let env = &config.apps["hello"].environments["production"];
            let job = DeployJob::new(
                "hello",
                "production",
                "hello-app".parse().unwrap(),
                crate::deploy::version::Version::parse("1.2.0").unwrap(),
                Source::Upload {
                    location: "s3://p/hello_app-1.2.0-py3-none-any.whl".into(),
                },
                Utc::now(),
            );
            calendar_line(env, &job, Utc::now())
        };
        assert_eq!(line(""), "none: deploys at any time");
        assert_eq!(
            line("change_calendar = \"prod-changes\"\n"),
            "the SSM change calendar prod-changes, read as the deploy starts"
        );
        let both = line("change_calendar = \"prod-changes\"\ntime_zone = \"UTC\"\nwindows = [\"Mon-Sun 00:00-24:00\"]\n");
        assert!(
            both.ends_with("open now; and the SSM change calendar prod-changes, read as the deploy starts"),
            "{both}"
        );
    }
}
