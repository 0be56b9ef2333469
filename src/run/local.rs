//! Builds the ports of one machine from its config file: the SQLite store is both
//! queue and ledger; SSM is reached only if a secret lives there.

use std::sync::Arc;

use anyhow::anyhow;

use crate::aws::sdk_config;
use crate::config::secrets::{Secret, Secrets};
use crate::config::Config;
use crate::drive::worker::Worker;
use crate::drive::Outbound;
use crate::ingress::{Hook, Ingress};
use crate::local::store::Store;

/// One machine, put together once from its config: the SQLite store (queue, ledger and
/// every job's story), the secrets (one cache, SSM only if a secret lives there), and the
/// gate and notifiers that both the ingress and the worker use.
pub struct Runtime {
    pub config: Arc<Config>,
    pub store: Store,
    pub secrets: Arc<Secrets>,
    pub out: Outbound,
}

impl Runtime {
    pub async fn new(config: Config) -> anyhow::Result<Runtime> {
        let store = open_store(&config)?;
        let secrets = Arc::new(secrets(&config).await);
        let config = Arc::new(config);
        let out = Outbound::new(config.clone(), secrets.clone());
        Ok(Runtime {
            config,
            store,
            secrets,
            out,
        })
    }

    /// The webhooks and chat, on the store, with the runtime's gate.
    pub async fn ingress(&self) -> anyhow::Result<Ingress> {
        let ports = Arc::new(self.store.clone());
        let file = self.config.file.display().to_string();
        Ok(Ingress::new(
            self.config.clone(),
            ports.clone(),
            ports.clone(),
            &self.secrets,
            &Hook::ALL,
        )
        .await
        .map_err(|e| anyhow!("{file}: {e} (`shipit check` lists every such problem)"))?
        .with_gate(self.out.gate.clone())
        .with_stories(ports.clone())
        .with_cancel(ports))
    }

    /// The deploy worker, on the store and the runtime's gate and notifiers.
    pub fn worker(&self) -> Worker {
        Worker::new(self.config.clone(), self.store.clone(), self.out.clone())
    }

    /// The bearer token `serve`'s read endpoints ask for, if the config sets one.
    pub async fn api_token(&self) -> anyhow::Result<Option<String>> {
        let Some(secret) = &self.config.server.api_token else {
            return Ok(None);
        };
        Ok(Some(self.secrets.resolve(secret).await.map_err(|e| {
            anyhow!("{}: server.api_token: {e}", self.config.file.display())
        })?))
    }
}

/// The ingress of a one-machine config, and its store.
pub async fn ingress(config: Config) -> anyhow::Result<(Ingress, Store)> {
    let runtime = Runtime::new(config).await?;
    Ok((runtime.ingress().await?, runtime.store))
}

pub fn open_store(config: &Config) -> anyhow::Result<Store> {
    Store::open(&config.server.state)
        .map_err(|e| anyhow!("opening the store {}: {e}", config.server.state.display()))
}

/// The config's secrets, with an SSM client only if one of them lives there (a one-machine
/// setup needs no AWS credentials otherwise).
pub(crate) async fn secrets(config: &Config) -> Secrets {
    let ssm = if config_uses_ssm(config) {
        Some(aws_sdk_ssm::Client::new(&sdk_config().await))
    } else {
        None
    };
    Secrets::new(ssm)
}

fn config_uses_ssm(c: &Config) -> bool {
    let notify = c.apps.values().flat_map(|a| {
        let n = &a.notify;
        let slack = n.slack.iter().flat_map(|s| [&s.token, &s.webhook_url]);
        slack.flatten().chain(
            [
                n.newrelic.as_ref().map(|r| &r.api_key),
                n.datadog.as_ref().map(|d| &d.api_key),
                n.github.as_ref().map(|g| &g.token),
                a.gate.as_ref().and_then(|g| g.token.as_ref()),
                a.index.as_ref().and_then(|i| i.password.as_ref()),
            ]
            .into_iter()
            .flatten(),
        )
    });
    let checks = c.apps.values().flat_map(|a| {
        let env = a.environments.values().flat_map(|e| &e.checks);
        a.checks
            .iter()
            .chain(env)
            .filter_map(|check| match &check.source {
                crate::config::CheckSource::Prometheus { token, .. } => token.as_ref(),
                crate::config::CheckSource::Datadog { app_key, .. } => Some(app_key),
                crate::config::CheckSource::Analysis { .. }
                | crate::config::CheckSource::CloudWatch { .. }
                | crate::config::CheckSource::Node { .. } => None,
            })
    });
    [&c.github_secret, &c.slack_secret, &c.server.api_token]
        .into_iter()
        .flatten()
        .chain(notify)
        .chain(checks)
        .any(|s| matches!(s, Secret::Ssm(_)))
}

/// The gate and notifiers of a one-machine config (SSM only if a secret lives there).
pub async fn outbound(config: Arc<Config>) -> Outbound {
    let secrets = Arc::new(secrets(&config).await);
    Outbound::new(config, secrets)
}
