//! API Gateway (HTTP API v2) `POST /hooks/slack` → the `/deploy` slash command: deploy
//! jobs on the SQS FIFO queue; status, history and locks in Parameter Store.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shipit::run::lambda::run_http_function(shipit::ingress::Hook::Slack).await
}
