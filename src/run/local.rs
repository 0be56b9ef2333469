//! Builds the ports of one machine from its config file: the SQLite store is both
//! queue and ledger; SSM is reached only if a secret lives there.

use std::sync::Arc;

use anyhow::anyhow;

use crate::aws::sdk_config;
use crate::config::secrets::{Secret, Secrets};
use crate::config::Config;
use crate::drive::Outbound;
use crate::ingress::{Hook, Ingress};
use crate::local::store::Store;
use crate::outbound::gate::Gatekeeper;

/// One machine: the SQLite store named by the config is both queue and ledger.
pub async fn ingress(config: Config) -> anyhow::Result<(Ingress, Store)> {
    let store = open_store(&config)?;
    let secrets = Arc::new(secrets(&config).await);
    let store_ports = Arc::new(store.clone());
    let file = config.file.display().to_string();
    let config = Arc::new(config);
    let gate = Arc::new(Gatekeeper::new(config.clone(), secrets.clone()));
    let ingress = Ingress::new(
        config,
        store_ports.clone(),
        store_ports.clone(),
        &secrets,
        &Hook::ALL,
    )
    .await
    .map_err(|e| anyhow!("{file}: {e} (`shipit check` lists every such problem)"))?
    .with_gate(gate)
    .with_stories(store_ports);
    Ok((ingress, store))
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
    [&c.github_secret, &c.slack_secret, &c.server.api_token]
        .into_iter()
        .flatten()
        .chain(notify)
        .any(|s| matches!(s, Secret::Ssm(_)))
}

/// The bearer token `serve`'s read endpoints ask for, if the config sets one.
pub async fn api_token(config: &Config) -> anyhow::Result<Option<String>> {
    let Some(secret) = &config.server.api_token else {
        return Ok(None);
    };
    Ok(Some(secrets(config).await.resolve(secret).await.map_err(
        |e| anyhow!("{}: server.api_token: {e}", config.file.display()),
    )?))
}

/// The gate and notifiers of a one-machine config (SSM only if a secret lives there).
pub async fn outbound(config: Arc<Config>) -> Outbound {
    let secrets = Arc::new(secrets(&config).await);
    Outbound::new(config, secrets)
}
