//! S3 `ObjectCreated` or CodeArtifact package-version events → one deploy job per app
//! using the package. An error makes Lambda retry; job ids make the retry harmless.

use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), Error> {
    shipit::wiring::init_tracing(true);
    let ingress = shipit::wiring::aws_ingress_from_env().await?;
    let ingress = &ingress;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        shipit::lambda::handle_package_event(ingress, event.payload, chrono::Utc::now())
            .await
            .map_err(Error::from)
    }))
    .await
}
