//! Where every app+env stands, read from the local store: what `shipit status` prints
//! and the page shows.

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{Config, Nodes};
use crate::deploy::dora::Figures;
use crate::deploy::job::JobId;
use crate::deploy::ports::{Ledger, LockInfo, PortError};
use crate::deploy::status::JobStatus;
use crate::deploy::version::Version;
use crate::local::store::jobs::QueuedJob;
use crate::local::store::Store;

fn port(e: PortError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// One app+env in `shipit status`.
#[derive(Debug, Clone, Serialize)]
pub struct EnvStatus {
    pub app: String,
    pub env: String,
    pub live: Option<Live>,
    pub lock: Option<LockInfo>,
    /// Versions rolled back from, newest mark first: no rollback or automatic job sends
    /// them out again.
    pub faulty: Vec<Version>,
    /// Queued and running jobs, oldest first.
    pub jobs: Vec<ActiveJob>,
    /// Each node, in the config's order, with the version it was last seen serving.
    pub nodes: Vec<NodeStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: String,
    /// `None`: no deploy of shipit's has seen it serve yet.
    pub version: Option<Version>,
    pub seen_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Live {
    pub version: Version,
    pub job: JobId,
    pub since: DateTime<Utc>,
    pub by: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ActiveJob {
    pub job: JobId,
    pub version: Version,
    pub status: JobStatus,
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
            let live = store
                .history(&app.name, env, 1)
                .await
                .map_err(port)?
                .into_iter()
                .next();
            let group = format!("{}/{env}", app.name);
            let seen = store.node_versions(&app.name, env).await.map_err(port)?;
            let nodes = match &app.environments[env].nodes {
                Nodes::Listed(nodes) => nodes
                    .iter()
                    .map(|n| {
                        let s = seen.iter().find(|s| s.node == n.name);
                        NodeStatus {
                            node: n.name.clone(),
                            version: s.map(|s| s.version.clone()),
                            seen_at: s.map(|s| s.seen_at),
                        }
                    })
                    .collect(),
                Nodes::Ssm { .. } => vec![],
            };
            out.push(EnvStatus {
                app: app.name.clone(),
                env: env.clone(),
                live: live.map(|e| Live {
                    version: e.job.version,
                    job: e.job.id,
                    since: e.recorded_at,
                    by: e.job.requested_by,
                }),
                lock: store.lock_state(&app.name, env, now).await.map_err(port)?,
                faulty: store
                    .faulty(&app.name, env)
                    .await
                    .map_err(port)?
                    .into_iter()
                    .map(|f| f.version)
                    .collect(),
                jobs: jobs
                    .iter()
                    .filter(|q| q.job.group() == group && q.status.is_pending())
                    .map(|q| ActiveJob {
                        job: q.job.id.clone(),
                        version: q.job.version.clone(),
                        status: q.status,
                    })
                    .collect(),
                nodes,
            });
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
