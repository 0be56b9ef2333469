//! API Gateway (HTTP API v2, behind its JWT authorizer) `GET /`, `GET /jobs/{id}`,
//! `GET /api/jobs/{id}` → the page: where every app+env stands, the newest jobs, each
//! job's story.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shipit::run::lambda::run_page_function().await
}
