//! AWS adapters: the SQS FIFO deploy queue, the Parameter Store ledger, SSM Run Command
//! as the fleet, and what the node-joined function does.

pub mod fleet;
outside_input! {
    pub mod joined;
}
pub mod ledger;
mod params;
pub mod queue;
pub mod turn;

use aws_sdk_ssm::error::DisplayErrorContext;

use crate::deploy::ports::PortError;

/// Loads the SDK config from the environment (region, credentials, `AWS_ENDPOINT_URL`).
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

pub(crate) fn sdk_err<E: std::error::Error + Send + Sync + 'static>(what: &str, e: E) -> PortError {
    format!("{what}: {}", DisplayErrorContext(e)).into()
}
