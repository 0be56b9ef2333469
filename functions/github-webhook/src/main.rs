//! API Gateway (HTTP API v2) `POST /hooks/github` → verified tag pushes and releases →
//! deploy jobs on the SQS FIFO queue.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shipit::run::lambda::run_http_function(shipit::ingress::Hook::GitHub).await
}
