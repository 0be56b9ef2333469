//! `--dry-run`: what a deploy or a rollback would do, asked of the same ports the deploy
//! would use (the gate for real, read-only), with nothing queued.

use std::sync::Arc;

use anyhow::anyhow;
use chrono::Utc;

use crate::config::command::Site;
use crate::config::{Config, Nodes};
use crate::deploy::command::{Command, CommandKind};
use crate::deploy::engine::Verdict;
use crate::deploy::history::faulty_mark;
use crate::deploy::job::DeployJob;
use crate::deploy::ports::{Fleet, Ledger};
use crate::deploy::report::{faulty_phrase, forced_note, history_line, lock_line};
use crate::local::fleet::LocalFleet;
use crate::local::store::Store;

/// The plan of `job`, a line each.
pub async fn plan(
    config: &Arc<Config>,
    store: &Store,
    job: &DeployJob,
) -> anyhow::Result<Vec<String>> {
    let (app, env) = config.target(job).map_err(|e| anyhow!("{e}"))?;
    let port = |e: crate::deploy::ports::PortError| anyhow!("{e}");
    let mut out = vec![
        "Dry run: nothing was queued.".to_string(),
        format!(
            "{} {} to {}, asked by {}{}",
            app.name,
            job.version,
            env.name,
            job.requested_by,
            forced_note(job)
        ),
    ];

    let history = store.history(&app.name, &env.name, 1).await.map_err(port)?;
    let faulty = store.faulty(&app.name, &env.name).await.map_err(port)?;
    out.push(match history.first() {
        Some(live) => format!(
            "Live: {}",
            history_line(live, faulty_mark(&faulty, &live.job.version))
        ),
        None => "Live: nothing yet (first deploy)".into(),
    });
    if let Some(mark) = faulty_mark(&faulty, &job.version) {
        out.push(format!(
            "Warning: {} is {}",
            job.version,
            faulty_phrase(mark)
        ));
    }
    out.push(
        match store
            .lock_state(&app.name, &env.name, Utc::now())
            .await
            .map_err(port)?
        {
            Some(lock) => format!(
                "Lock: {}; the deploy would wait for it up to {} s",
                lock_line(&app.name, &env.name, &lock),
                app.rollout.lock_wait_seconds
            ),
            None => "Lock: free".into(),
        },
    );

    out.push(match (&job.forced_by, &app.gate) {
        (Some(who), _) => format!("Gate: not asked (forced by {who})"),
        (None, None) => "Gate: none configured".into(),
        (None, Some(_)) => {
            let gate = crate::run::local::outbound(config.clone()).await.gate;
            match gate.verify(job).await.map_err(port)? {
                Verdict::Pass => "Gate: passes".into(),
                Verdict::Refuse { reason } => {
                    format!("Gate: refuses, the job would be skipped: {reason}")
                }
                Verdict::Pending {
                    reason,
                    wait_seconds,
                } => {
                    format!(
                        "Gate: not yet ({reason}); the deploy would wait up to {wait_seconds} s"
                    )
                }
            }
        }
    });

    let nodes = match &env.nodes {
        Nodes::Local(_) => LocalFleet::new(store.clone(), config.clone())
            .resolve(job)
            .await
            .map_err(port)?,
        Nodes::Ssm { tags, .. } => {
            out.push(format!(
                "Nodes: the SSM managed nodes tagged {tags:?}, found when it runs"
            ));
            return Ok(out);
        }
    };
    let r = &app.rollout;
    out.push(format!("Nodes, in restart order: {}", nodes.join(", ")));
    out.push(format!(
        "Install on {}, then restart one node at a time{}{}, each health-checked within {} s",
        match r.install_concurrency {
            0 => "every node at once".to_string(),
            n => format!("at most {n} nodes at once"),
        },
        if r.canary {
            ", the first as a canary"
        } else {
            ""
        },
        match r.bake_seconds {
            0 => String::new(),
            s => format!(" watched for {s} s"),
        },
        r.health_timeout_seconds
    ));
    if let (Some(first), Nodes::Local(locals)) = (nodes.first(), &env.nodes) {
        let node = locals
            .iter()
            .find(|n| &n.name == first)
            .ok_or_else(|| anyhow!("node {first} is not in the config"))?;
        let dir = node.dir.display().to_string();
        let site = Site {
            node: &node.name,
            dir: Some(&dir),
            vars: &node.vars,
        };
        out.push(format!("Commands on {first} (in {dir}):"));
        for kind in [
            CommandKind::Install,
            CommandKind::Restart,
            CommandKind::Health,
        ] {
            let cmd = Command {
                key: String::new(),
                kind,
                version: job.version.clone(),
                nodes: vec![first.clone()],
                concurrency: 0,
                fence: 0,
            };
            let script = app.script(env, &cmd, &site).map_err(|e| anyhow!("{e}"))?;
            out.push(format!(
                "  {kind:?}: {}",
                script.as_deref().unwrap_or("(none)")
            ));
        }
    }
    Ok(out)
}
