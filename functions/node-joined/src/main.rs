//! EventBridge EC2 "running" state changes → for each environment whose `ssm_tags` the
//! instance carries, a sync job for that node alone on the SQS FIFO queue.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shipit::run::lambda::run_node_joined_function().await
}
