//! Where every app+env stands on one machine (`deploy::overview`, completed with the
//! store's jobs and node versions): what `shipit status` prints and the page shows.

use chrono::{DateTime, Utc};

use crate::config::{Config, Nodes};
use crate::deploy::dora::Figures;
use crate::deploy::overview::{ActiveJob, EnvStatus, NodeStatus};
use crate::deploy::ports::PortError;
use crate::deploy::status::JobStatus;
use crate::local::store::jobs::QueuedJob;
use crate::local::store::Store;

fn port(e: PortError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// What is live on every app+env, what is queued or running there (of `jobs`, the
/// store's), and who holds it.
pub async fn status(
    config: &Config,
    store: &Store,
    jobs: &[QueuedJob],
) -> anyhow::Result<Vec<EnvStatus>> {
    let now = Utc::now();
    let mut out = vec![];
    for app in config.apps.values() {
        for env in app.environments.keys() {
            let mut status = EnvStatus::read(store, &app.name, env, now)
                .await
                .map_err(port)?;
            let group = format!("{}/{env}", app.name);
            let seen = store.node_versions(&app.name, env).await.map_err(port)?;
            if let Nodes::Listed(nodes) = &app.environments[env].nodes {
                status.nodes = nodes
                    .iter()
                    .map(|n| {
                        let s = seen.iter().find(|s| s.node == n.name);
                        NodeStatus {
                            node: n.name.clone(),
                            version: s.map(|s| s.version.clone()),
                            seen_at: s.map(|s| s.seen_at),
                        }
                    })
                    .collect();
            }
            let holder = status.lock.as_ref().and_then(|l| l.job.clone());
            for q in jobs
                .iter()
                .filter(|q| q.job.group() == group && q.status.is_pending())
            {
                let saved = match q.status {
                    JobStatus::Running => store.load_deploy(&q.job.id).await.map_err(port)?,
                    _ => None,
                };
                let env = &app.environments[env];
                status.jobs.push(ActiveJob {
                    job: q.job.id.clone(),
                    version: q.job.version.clone(),
                    status: q.status,
                    held: env.waiting_why(&q.job, holder.as_ref(), saved.as_ref(), now),
                });
            }
            out.push(status);
        }
    }
    Ok(out)
}

/// The DORA figures of every app+env over the `days` before `now` (see `deploy::dora`).
/// `jobs`: the store's.
pub async fn dora(
    config: &Config,
    store: &Store,
    jobs: &[QueuedJob],
    days: u32,
    now: DateTime<Utc>,
) -> anyhow::Result<Vec<Figures>> {
    let mut out = vec![];
    for app in config.apps.values() {
        for env in app.environments.keys() {
            out.push(
                store
                    .figures(&app.name, env, jobs, days, now)
                    .await
                    .map_err(port)?,
            );
        }
    }
    Ok(out)
}
