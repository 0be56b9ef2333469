//! The yardstick of `bench cold_start`: the smallest `lambda_runtime` function, built the
//! way the functions are (release, same runtime crate and features), answering its input.

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::run(lambda_runtime::service_fn(
        |event: lambda_runtime::LambdaEvent<serde_json::Value>| async move {
            Ok::<_, lambda_runtime::Error>(event.payload)
        },
    ))
    .await
}
