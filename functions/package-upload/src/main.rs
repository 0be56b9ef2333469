//! S3 `ObjectCreated` or CodeArtifact package-version events → one deploy job per app
//! (and auto-deploy environment) using the package, on the SQS FIFO queue.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shipit::run::lambda::run_package_function().await
}
