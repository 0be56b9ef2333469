//! AWS adapters: the SQS FIFO deploy queue, the Parameter Store ledger, SSM Run Command
//! as the fleet, and what the node-joined function does.

pub mod calendar;
pub mod fleet;
outside_input! {
    pub mod joined;
}
pub mod ledger;
mod params;
pub mod queue;
pub mod turn;

use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};
use aws_sdk_ssm::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use aws_smithy_runtime_api::client::connector_metadata::ConnectorMetadata;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnectorSettings, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;

use crate::deploy::ports::{PortError, Throttled};

/// Loads the SDK config from the environment (region, credentials, `AWS_ENDPOINT_URL`).
pub async fn sdk_config() -> aws_config::SdkConfig {
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(SharedHttpClient::new(OnFirstRequest(https)))
        .timeout_config(call_timeouts())
        .load()
        .await
}

/// How long one AWS call may take: an attempt, and all of them with their back-off. The
/// SDK sets neither, so a call whose answer never comes would hold a deploy step until
/// its function's timeout killed it, losing what the step did and sent before; bounded,
/// the step fails and hands back its state (a send it made saved as unsure, to be
/// looked up), with time to spare in a 300 s function.
fn call_timeouts() -> aws_config::timeout::TimeoutConfig {
    aws_config::timeout::TimeoutConfig::builder()
        .operation_attempt_timeout(std::time::Duration::from_secs(15))
        .operation_timeout(std::time::Duration::from_secs(60))
        .build()
}

/// The SDK's HTTPS client, without the warm-up it does as each SDK client is made: that
/// loads the system's root certificates, half of a function's cold start when measured
/// (`bench cold_start`), which an event answered without calling AWS (a ping, a refused
/// signature) never needs. The first request loads them instead.
#[derive(Debug)]
struct OnFirstRequest(SharedHttpClient);

impl HttpClient for OnFirstRequest {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        self.0.http_connector(settings, components)
    }

    fn connector_metadata(&self) -> Option<ConnectorMetadata> {
        self.0.connector_metadata()
    }
}

/// An SDK error as a port error: [`Throttled`] when the service said so with one of the
/// codes the SDK itself retries as throttling.
pub(crate) fn sdk_err<E>(what: &str, e: E) -> PortError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let throttled = throttling(e.code());
    let text = format!("{what}: {}", DisplayErrorContext(e));
    match throttled {
        true => Box::new(Throttled(text)),
        false => text.into(),
    }
}

/// The SSM client: Run Command and Parameter Store throttle busy accounts, so it retries
/// more than the default, with the SDK's adaptive back-off.
pub fn ssm_client(sdk: &aws_config::SdkConfig) -> aws_sdk_ssm::Client {
    let conf = aws_sdk_ssm::config::Builder::from(sdk)
        .retry_config(aws_config::retry::RetryConfig::adaptive().with_max_attempts(8))
        .build();
    aws_sdk_ssm::Client::from_conf(conf)
}

/// Whether AWS refused the request itself (a 4xx that is neither throttling nor a
/// request timeout: not there, not allowed, not valid), which asking again does not
/// mend; the others, a 5xx or no answer may pass. Any service's error.
pub(crate) fn refused<E: ProvideErrorMetadata>(
    e: &aws_smithy_runtime_api::client::result::SdkError<
        E,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> bool {
    let status = e.raw_response().map(|r| r.status().as_u16());
    let code = e.as_service_error().and_then(|s| s.code());
    let passing = throttling(code)
        || code.is_some_and(|c| TRANSIENT_ERRORS.contains(&c))
        || status == Some(429);
    status.is_some_and(|s| (400..500).contains(&s)) && !passing
}

/// Whether an AWS error code is one the SDK itself retries as throttling: the service
/// refused the call before doing anything.
pub(crate) fn throttling(code: Option<&str>) -> bool {
    code.is_some_and(|c| THROTTLING_ERRORS.contains(&c))
}
