//! Glue between Lambda events and the ingress handlers, shared by `functions/*` and by
//! `shipit ingest` (which replays the same sample events locally).

use aws_lambda_events::encodings::Body;
use aws_lambda_events::event::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::event::s3::S3Event;
use base64::Engine;
use chrono::{DateTime, Utc};
use http::header::{HeaderValue, CONTENT_TYPE};
use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::{json, Value};

use crate::ingress::package::{eventbridge_detail, CodeArtifactDetail};
use crate::ingress::{Hook, Ingress, Reply};
use crate::run::fresh::{max_age_from_env, Fresh};

/// The raw body bytes: API Gateway base64-encodes bodies it does not take for text.
pub fn apigw_body(req: &ApiGatewayV2httpRequest) -> Result<Vec<u8>, Reply> {
    let body = req.body.as_deref().unwrap_or_default();
    if req.is_base64_encoded {
        base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| Reply::error(400, "body is marked base64 but does not decode"))
    } else {
        Ok(body.as_bytes().to_vec())
    }
}

pub fn apigw_response(reply: Reply) -> ApiGatewayV2httpResponse {
    let mut resp = ApiGatewayV2httpResponse::default();
    resp.status_code = i64::from(reply.status);
    resp.headers
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.body = Some(Body::Text(reply.body.to_string()));
    resp
}

pub async fn handle_apigw(
    ingress: &Ingress,
    hook: Hook,
    req: &ApiGatewayV2httpRequest,
    now: DateTime<Utc>,
) -> ApiGatewayV2httpResponse {
    let reply = match apigw_body(req) {
        Ok(body) => match hook {
            Hook::GitHub => ingress.github(&req.headers, &body, now).await,
            Hook::Slack => ingress.slack(&req.headers, &body, now).await,
        },
        Err(reply) => reply,
    };
    apigw_response(reply)
}

/// The package-upload function's input: an S3 notification or a CodeArtifact event.
/// An `Err` makes Lambda retry the event (queueing is idempotent by job id).
pub async fn handle_package_event(
    ingress: &Ingress,
    event: Value,
    now: DateTime<Utc>,
) -> Result<Value, String> {
    if event.get("Records").is_some() {
        let s3: S3Event =
            serde_json::from_value(event).map_err(|e| format!("malformed S3 event: {e}"))?;
        Ok(json!(ingress.s3_event(&s3, now).await?))
    } else if event.get("detail-type").and_then(Value::as_str)
        == Some("CodeArtifact Package Version State Change")
    {
        let detail: CodeArtifactDetail = eventbridge_detail(&event)?;
        Ok(json!([ingress.codeartifact_event(&detail, now).await?]))
    } else {
        // Retrying would not help: say what arrived and drop it.
        tracing::warn!(event = %event, "package-upload got an event it does not handle");
        Ok(
            json!([{ "status": "ignored", "reason": "neither an S3 notification nor a CodeArtifact event" }]),
        )
    }
}

/// The function AWS delivers an event of this shape to, when it is not one of the
/// ingress functions (API Gateway, S3, CodeArtifact).
pub fn other_function(event: &Value) -> Option<&'static str> {
    let records = event.get("Records").and_then(Value::as_array);
    let source = records
        .and_then(|r| r.first())
        .and_then(|r| r.get("eventSource"))
        .and_then(Value::as_str);
    if source == Some("aws:sqs") {
        Some("deploy-dispatch")
    } else if event.get("detail-type").and_then(Value::as_str)
        == Some("EC2 Instance State-change Notification")
    {
        Some("node-joined")
    } else if event.get("job").is_some() {
        Some("deploy-step")
    } else if event.pointer("/requestContext/http/method").and_then(Value::as_str) == Some("GET")
    {
        // Ingress only takes posts; a GET is the page's.
        Some("page")
    } else {
        None
    }
}

/// Any sample event from `events/`, routed as AWS would route it. An event for a function
/// that is not ingress is answered `ignored`, naming that function.
pub async fn handle_any(
    ingress: &Ingress,
    event: Value,
    now: DateTime<Utc>,
) -> Result<Value, String> {
    if let Some(function) = other_function(&event) {
        return Ok(json!({
            "status": "ignored",
            "reason": format!("not an ingress event: it is {function}'s (`cargo lambda invoke {function}`)")
        }));
    }
    if event.get("requestContext").is_some() {
        let req: ApiGatewayV2httpRequest = serde_json::from_value(event)
            .map_err(|e| format!("malformed API Gateway event: {e}"))?;
        let path = req.raw_path.clone().unwrap_or_default();
        let hook = if path.ends_with("/github") {
            Hook::GitHub
        } else if path.ends_with("/slack") {
            Hook::Slack
        } else {
            return Err(format!(
                "no route for {path:?}: expected …/hooks/github or …/hooks/slack"
            ));
        };
        let resp = handle_apigw(ingress, hook, &req, now).await;
        let body = match resp.body {
            Some(Body::Text(t)) => serde_json::from_str(&t).unwrap_or(Value::String(t)),
            _ => Value::Null,
        };
        Ok(json!({ "statusCode": resp.status_code, "body": body }))
    } else {
        handle_package_event(ingress, event, now).await
    }
}

/// The whole of an HTTP API function: the ingress from the environment, then every API
/// Gateway event answered by `hook`'s handler.
pub async fn run_http_function(hook: Hook) -> Result<(), lambda_runtime::Error> {
    crate::run::telemetry::init_tracing(true, "info");
    let ingress = Fresh::new(max_age_from_env()?, move || async move {
        crate::run::aws::ingress_from_env(&[hook]).await
    })
    .await?;
    let ingress = &ingress;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayV2httpRequest>| async move {
            let ingress = ingress.get().await?;
            Ok::<_, lambda_runtime::Error>(
                handle_apigw(&ingress, hook, &event.payload, Utc::now()).await,
            )
        },
    ))
    .await
}

/// The whole of the page function: every API Gateway event it gets (already past the
/// HTTP API's JWT authorizer) answered with the page.
#[cfg(feature = "page")]
pub async fn run_page_function() -> Result<(), lambda_runtime::Error> {
    crate::run::telemetry::init_tracing(true, "info");
    let page = Fresh::new(max_age_from_env()?, crate::run::aws::page_from_env).await?;
    let page = &page;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<ApiGatewayV2httpRequest>| async move {
            let page = page.get().await?;
            Ok::<_, lambda_runtime::Error>(page.answer(&event.payload, Utc::now()).await)
        },
    ))
    .await
}

/// The whole of the package-upload function. An error makes Lambda retry the event;
/// job ids make the retry harmless.
pub async fn run_package_function() -> Result<(), lambda_runtime::Error> {
    crate::run::telemetry::init_tracing(true, "info");
    // Uploads are not signed: this function reads no secret.
    let ingress = Fresh::new(max_age_from_env()?, || {
        crate::run::aws::ingress_from_env(&[])
    })
    .await?;
    let ingress = &ingress;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let ingress = ingress.get().await?;
        handle_package_event(&ingress, event.payload, Utc::now())
            .await
            .map_err(lambda_runtime::Error::from)
    }))
    .await
}

/// How long the node-joined function waits for a new instance's SSM agent to register;
/// the function's timeout must be longer (infra: 300 s).
const REGISTRATION_WAIT: std::time::Duration = std::time::Duration::from_secs(240);

/// The whole of the node-joined function: EC2 state changes in, sync jobs queued.
pub async fn run_node_joined_function() -> Result<(), lambda_runtime::Error> {
    crate::run::telemetry::init_tracing(true, "info");
    let n = Fresh::new(max_age_from_env()?, crate::run::aws::node_joined_from_env).await?;
    let n = &n;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let n = n.get().await?;
        crate::aws::joined::node_joined(
            &n.config,
            &n.queue,
            &n.ledger,
            &n.ssm,
            &event.payload,
            Utc::now(),
            REGISTRATION_WAIT,
        )
        .await
        .map_err(lambda_runtime::Error::from)
    }))
    .await
}

/// What the dispatcher did with one queued job.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dispatched {
    Started,
    /// An execution with this job's id exists: a redelivered or duplicate message.
    AlreadyStarted,
}

/// Starts the deploy execution for one queued job, named by the job id so that a message
/// delivered twice cannot start a second deploy, and leaves its ticket in the app+env's
/// queue at `sequence` (the message's SQS sequence number) so that it waits for the jobs
/// queued before it.
pub async fn start_deploy(
    sfn: &aws_sdk_sfn::Client,
    turn: &crate::aws::turn::SsmTurn,
    state_machine: &str,
    body: &str,
    sequence: Option<&str>,
) -> Result<Dispatched, String> {
    let job = crate::deploy::job::DeployJob::from_json(body).map_err(|e| e.to_string())?;
    // The ticket first: an execution that starts before its ticket exists finds no place
    // in the queue and would take the lock ahead of older jobs. A ticket whose execution
    // never starts is stale to whoever finds it (`SsmTurn::ahead`).
    match sequence {
        Some(seq) => turn.enter(&job, seq).await.map_err(|e| e.to_string())?,
        None => {
            tracing::warn!(job_id = %job.id, "message has no SQS sequence number; this job keeps no queue order")
        }
    }
    let dispatched = start_execution(sfn, state_machine, &job).await?;
    if dispatched == Dispatched::AlreadyStarted {
        // A message delivered again after its deploy ended must not leave a ticket behind:
        // a ticket is also a newer version queued (`Backlog`).
        turn.leave_if_ended(&job).await.map_err(|e| e.to_string())?;
    }
    Ok(dispatched)
}

async fn start_execution(
    sfn: &aws_sdk_sfn::Client,
    state_machine: &str,
    job: &crate::deploy::job::DeployJob,
) -> Result<Dispatched, String> {
    let input = serde_json::to_string(&crate::drive::step::StepState::start(job.clone()))
        .map_err(|e| e.to_string())?;
    match sfn
        .start_execution()
        .state_machine_arn(state_machine)
        .name(job.id.as_str())
        .input(input)
        .send()
        .await
    {
        Ok(_) => {
            tracing::info!(job_id = %job.id, app = %job.app, env = %job.env, version = %job.version, "deploy started");
            Ok(Dispatched::Started)
        }
        Err(e)
            if e.as_service_error()
                .is_some_and(|s| s.is_execution_already_exists()) =>
        {
            tracing::info!(job_id = %job.id, "deploy already started; duplicate message dropped");
            Ok(Dispatched::AlreadyStarted)
        }
        Err(e) => Err(crate::aws::sdk_err("StartExecution", e).to_string()),
    }
}

/// The deploy-dispatch function: an SQS FIFO batch → one execution per job. A message
/// that fails is reported, and so is every message after it, so that SQS redelivers them
/// in order (a FIFO group must not skip ahead); a message that can never start lands in
/// the queue's dead-letter queue after its redrive count.
pub async fn dispatch(
    sfn: &aws_sdk_sfn::Client,
    turn: &crate::aws::turn::SsmTurn,
    state_machine: &str,
    event: &aws_lambda_events::event::sqs::SqsEvent,
) -> aws_lambda_events::event::sqs::SqsBatchResponse {
    let mut response = aws_lambda_events::event::sqs::SqsBatchResponse::default();
    let mut failed = false;
    for record in &event.records {
        let id = record.message_id.clone().unwrap_or_default();
        if !failed {
            let sequence = record.attributes.get("SequenceNumber").map(String::as_str);
            let body = record.body.as_deref().unwrap_or("");
            match start_deploy(sfn, turn, state_machine, body, sequence).await {
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(message_id = %id, error = %e, "cannot start the deploy; SQS will deliver it again");
                    failed = true;
                }
            }
        }
        let mut failure = aws_lambda_events::event::sqs::BatchItemFailure::default();
        failure.item_identifier = id;
        response.batch_item_failures.push(failure);
    }
    response
}

/// The whole of the deploy-dispatch function (`SHIPIT_STATE_MACHINE_ARN`).
pub async fn run_dispatch_function() -> Result<(), lambda_runtime::Error> {
    crate::run::telemetry::init_tracing(true, "info");
    let sdk = crate::aws::sdk_config().await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let machine = std::env::var("SHIPIT_STATE_MACHINE_ARN")
        .map_err(|_| "SHIPIT_STATE_MACHINE_ARN is not set")?;
    let turn = crate::run::aws::turn(&sdk, &machine);
    let (sfn, turn, machine) = (&sfn, &turn, machine.as_str());
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<aws_lambda_events::event::sqs::SqsEvent>| async move {
            Ok::<_, lambda_runtime::Error>(dispatch(sfn, turn, machine, &event.payload).await)
        },
    ))
    .await
}

/// The whole of the deploy-step function: the state machine's state in, the next out.
/// An error makes the state machine retry the step with the same input.
pub async fn run_step_function() -> Result<(), lambda_runtime::Error> {
    crate::run::telemetry::init_tracing(true, "info");
    let stepper = Fresh::new(max_age_from_env()?, crate::run::aws::stepper_from_env).await?;
    let stepper = &stepper;
    lambda_runtime::run(service_fn(
        move |event: LambdaEvent<crate::drive::step::StepInput>| async move {
            let stepper = stepper.get().await?;
            let mut state = stepper.step(event.payload).await?;
            if let Err(e) = crate::drive::step::fits(&state) {
                if !state.done {
                    return Err(e);
                }
                // Ended already (its lock released, chat told): the state machine needs
                // only its status and reason.
                tracing::warn!(error = %e, "the ended deploy's state is returned without its nodes");
                state.deploy = None;
                state.sent = None;
            }
            Ok::<_, crate::deploy::ports::PortError>(state)
        },
    ))
    .await
}
