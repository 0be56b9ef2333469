//! SQS FIFO deploy queue → one Step Functions execution per job, named by the job id.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shipit::run::lambda::run_dispatch_function().await
}
