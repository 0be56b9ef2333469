//! Builds the ports of a Lambda function from its environment.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};

use crate::aws::calendar::SsmCalendars;
use crate::aws::fleet::{SdkRunCommand, SsmFleet};
use crate::aws::ledger::SsmLedger;
use crate::aws::queue::SqsQueue;
use crate::aws::sdk_config;
use crate::aws::turn::SsmTurn;
use crate::config::secrets::{Secret, Secrets};
use crate::config::Config;
use crate::drive::execution::ExecutionStories;
use crate::drive::step::Stepper;
use crate::drive::{Driver, Outbound};
use crate::ingress::{Hook, Ingress};
use crate::outbound::gate::Gatekeeper;

pub use crate::aws::ssm_client;

/// `SHIPIT_CONFIG`: a file path, or `ssm:/path` of a String parameter holding the TOML.
async fn config_from_env(secrets: &Secrets) -> anyhow::Result<Config> {
    let location = std::env::var("SHIPIT_CONFIG").context("SHIPIT_CONFIG is not set")?;
    let text = match location.parse::<Secret>() {
        Ok(s @ Secret::Ssm(_)) => secrets.resolve(&s).await?,
        _ => std::fs::read_to_string(&location)
            .with_context(|| format!("reading SHIPIT_CONFIG {location}"))?,
    };
    Config::parse(&text, Path::new(&location)).map_err(|r| anyhow!("invalid config:\n{r}"))
}

fn ssm_prefix() -> String {
    std::env::var("SHIPIT_SSM_PREFIX").unwrap_or_else(|_| "/shipit".into())
}

/// Lambda ingress for `hooks`: `SHIPIT_CONFIG`, `SHIPIT_QUEUE_URL`, and
/// `SHIPIT_SSM_PREFIX` (default `/shipit`); for chat also `SHIPIT_STATE_MACHINE_ARN`
/// (the deploy state machine, whose executions tell each job's story).
pub async fn ingress_from_env(hooks: &[Hook]) -> anyhow::Result<Ingress> {
    let sdk = sdk_config().await;
    let ssm = ssm_client(&sdk);
    let secrets = Arc::new(Secrets::new(Some(ssm.clone())));
    let config = Arc::new(config_from_env(&secrets).await?);
    let queue = deploy_queue(&sdk)?;
    let ledger = SsmLedger::new(ssm.clone(), &ssm_prefix());
    let ingress = Ingress::new(
        config.clone(),
        Arc::new(queue),
        Arc::new(ledger),
        &secrets,
        hooks,
    )
    .await?;
    // Chat's dry runs ask the gate and list the nodes as the deploy would (read-only).
    if !hooks.contains(&Hook::Slack) {
        return Ok(ingress);
    }
    let machine =
        std::env::var("SHIPIT_STATE_MACHINE_ARN").context("SHIPIT_STATE_MACHINE_ARN is not set")?;
    // Slack wants an answer within 3 s, a cold start and the signature check included.
    let stories = ExecutionStories::new(aws_sdk_sfn::Client::new(&sdk), ssm.clone(), &machine)
        .within(Duration::from_millis(1500));
    Ok(ingress
        .with_gate(Arc::new(Gatekeeper::new(config.clone(), secrets)))
        .with_fleet(Arc::new(SsmFleet::new(
            SdkRunCommand::new(ssm.clone()),
            config,
        )))
        .with_stories(Arc::new(stories))
        .with_calendars(Arc::new(SsmCalendars::new(ssm)))
        .with_cancel(Arc::new(turn(&sdk, &machine))))
}

/// The deploy queue named by `SHIPIT_QUEUE_URL`.
fn deploy_queue(sdk: &aws_config::SdkConfig) -> anyhow::Result<SqsQueue> {
    let url = std::env::var("SHIPIT_QUEUE_URL").context("SHIPIT_QUEUE_URL is not set")?;
    Ok(SqsQueue::new(aws_sdk_sqs::Client::new(sdk), url))
}

/// What the node-joined function needs: config, the deploy queue (`SHIPIT_QUEUE_URL`),
/// history, and SSM to see which environments' tags the node carries.
pub struct NodeJoined {
    pub config: Config,
    pub queue: SqsQueue,
    pub ledger: SsmLedger,
    pub ssm: SdkRunCommand,
}

pub async fn node_joined_from_env() -> anyhow::Result<NodeJoined> {
    let sdk = sdk_config().await;
    let ssm = ssm_client(&sdk);
    let secrets = Secrets::new(Some(ssm.clone()));
    Ok(NodeJoined {
        config: config_from_env(&secrets).await?,
        queue: deploy_queue(&sdk)?,
        ledger: SsmLedger::new(ssm.clone(), &ssm_prefix()),
        ssm: SdkRunCommand::new(ssm),
    })
}

/// How long one deploy step works before handing its state back to the state machine;
/// the function's timeout must be longer (infra sets 60 s against a 300 s timeout).
const DEFAULT_STEP_BUDGET_SECONDS: u64 = 60;

/// The queue order of the deploy state machine `machine` (its ARN).
pub fn turn(sdk: &aws_config::SdkConfig, machine: &str) -> SsmTurn {
    SsmTurn::new(
        ssm_client(sdk),
        aws_sdk_sfn::Client::new(sdk),
        &ssm_prefix(),
        machine,
    )
}

/// The deploy-step function: `SHIPIT_CONFIG`, `SHIPIT_SSM_PREFIX`,
/// `SHIPIT_STATE_MACHINE_ARN` (its own state machine, for queue order),
/// `SHIPIT_QUEUE_URL` (where promotions go), and optionally `SHIPIT_STEP_BUDGET_SECONDS`.
pub async fn stepper_from_env() -> anyhow::Result<Stepper> {
    let sdk = sdk_config().await;
    let ssm = ssm_client(&sdk);
    let secrets = Arc::new(Secrets::new(Some(ssm.clone())));
    let config = Arc::new(config_from_env(&secrets).await?);
    let budget = match std::env::var("SHIPIT_STEP_BUDGET_SECONDS") {
        Ok(s) => s
            .parse()
            .with_context(|| format!("SHIPIT_STEP_BUDGET_SECONDS={s:?} is not a number"))?,
        Err(_) => DEFAULT_STEP_BUDGET_SECONDS,
    };
    let machine =
        std::env::var("SHIPIT_STATE_MACHINE_ARN").context("SHIPIT_STATE_MACHINE_ARN is not set")?;
    let queue = Arc::new(turn(&sdk, &machine));
    let executions = ExecutionStories::new(aws_sdk_sfn::Client::new(&sdk), ssm.clone(), &machine);
    let driver = Driver::new(
        config.clone(),
        Arc::new(SsmLedger::new(ssm.clone(), &ssm_prefix())),
        Arc::new(SsmFleet::new(
            SdkRunCommand::new(ssm.clone()),
            config.clone(),
        )),
        Some(queue.clone()),
        Outbound::new(config, secrets),
    )
    .with_turn(queue)
    .with_queue(Arc::new(deploy_queue(&sdk)?))
    .with_calendars(Arc::new(SsmCalendars::new(ssm)));
    Ok(Stepper::new(driver, Duration::from_secs(budget)).with_figures(Arc::new(executions)))
}

/// The page function: `SHIPIT_CONFIG`, `SHIPIT_SSM_PREFIX` and `SHIPIT_STATE_MACHINE_ARN`
/// (the deploy state machine, whose executions are the jobs).
#[cfg(feature = "page")]
pub async fn page_from_env() -> anyhow::Result<crate::run::aws_page::AwsPage> {
    let sdk = sdk_config().await;
    let ssm = ssm_client(&sdk);
    let secrets = Secrets::new(Some(ssm.clone()));
    let config = Arc::new(config_from_env(&secrets).await?);
    let machine =
        std::env::var("SHIPIT_STATE_MACHINE_ARN").context("SHIPIT_STATE_MACHINE_ARN is not set")?;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    Ok(crate::run::aws_page::AwsPage::new(
        config,
        Arc::new(SsmLedger::new(ssm.clone(), &ssm_prefix())),
        turn(&sdk, &machine),
        Arc::new(ExecutionStories::new(sfn, ssm, &machine)),
    ))
}
