//! One step of a deploy, called by the state machine in a loop: the deploy's state in,
//! the next state and how long to wait out.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    shipit::run::lambda::run_step_function().await
}
