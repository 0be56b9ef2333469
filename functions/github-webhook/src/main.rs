//! API Gateway (HTTP API v2) → GitHub webhook handler → SQS FIFO deploy queue.

use aws_lambda_events::event::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use shipit::lambda::{handle_apigw, Hook};

#[tokio::main]
async fn main() -> Result<(), Error> {
    shipit::wiring::init_tracing(true);
    let ingress = shipit::wiring::aws_ingress_from_env().await?;
    let ingress = &ingress;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayV2httpRequest>| async move {
            Ok::<ApiGatewayV2httpResponse, Error>(
                handle_apigw(ingress, Hook::GitHub, &event.payload, chrono::Utc::now()).await,
            )
        },
    ))
    .await
}
