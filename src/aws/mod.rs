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

use aws_runtime::retries::classifiers::THROTTLING_ERRORS;
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
        .load()
        .await
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

/// Whether an AWS error code is one the SDK itself retries as throttling: the service
/// refused the call before doing anything.
pub(crate) fn throttling(code: Option<&str>) -> bool {
    code.is_some_and(|c| THROTTLING_ERRORS.contains(&c))
}
