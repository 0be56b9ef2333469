//! `--dry-run`: the plan of a deploy or a rollback (see `ingress::plan`), asked of this
//! machine's store and of the gate, with nothing queued.

use std::sync::Arc;

use anyhow::anyhow;
use chrono::Utc;

use crate::config::Config;
use crate::deploy::job::DeployJob;
use crate::ingress::plan::{Asks, Plan};
use crate::local::store::Store;

pub async fn plan(config: &Arc<Config>, store: &Store, job: &DeployJob) -> anyhow::Result<Plan> {
    let gate = crate::run::local::outbound(config.clone()).await.gate;
    let asks = Asks {
        ledger: store,
        gate: Some(gate.as_ref()),
        fleet: None,
    };
    crate::ingress::plan::plan(config, asks, job, Utc::now())
        .await
        .map_err(|e| anyhow!("{e}"))
}
