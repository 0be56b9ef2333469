//! The emulator itself, rule by rule: what it adds to moto must refuse what SSM and
//! CloudWatch refuse (each rule from the service's API reference, named in
//! tests/emulator/server.py), or a wrong client would look right against it.

use aws_sdk_ssm::types::{CommandFilter, CommandFilterKey};
use chrono::{Duration, SecondsFormat, Utc};

use crate::deploy::{control, launch, terminate, CONTROL};
use crate::helpers::{sdk, unique};

async fn ssm() -> aws_sdk_ssm::Client {
    aws_sdk_ssm::Client::new(&sdk().await)
}

fn send(
    ssm: &aws_sdk_ssm::Client,
    ids: &[String],
) -> aws_sdk_ssm::operation::send_command::builders::SendCommandFluentBuilder {
    ssm.send_command()
        .document_name("AWS-RunShellScript")
        .set_instance_ids(Some(ids.to_vec()))
        .parameters("commands", vec!["true".to_string()])
}

/// The error code of a refused call.
fn code<E, R>(result: Result<R, aws_sdk_ssm::error::SdkError<E>>) -> String
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata + std::fmt::Debug,
    R: std::fmt::Debug,
{
    let err = result.expect_err("refused");
    err.as_service_error()
        .and_then(|e| e.code())
        .unwrap_or_else(|| panic!("not a service error: {err:?}"))
        .to_string()
}

#[tokio::test]
async fn send_command_takes_at_most_50_instance_ids() {
    let ssm = ssm().await;
    let ids = launch(51, &[("t", "fifty")]).await;
    assert_eq!(code(send(&ssm, &ids).send().await), "ValidationException");
    send(&ssm, &ids[..50]).send().await.expect("50 are fine");
}

#[tokio::test]
async fn a_comment_has_at_most_100_characters() {
    let ssm = ssm().await;
    let ids = launch(1, &[("t", "comment")]).await;
    let long = "x".repeat(101);
    assert_eq!(
        code(send(&ssm, &ids).comment(&long).send().await),
        "ValidationException"
    );
    send(&ssm, &ids).comment(&long[..100]).send().await.unwrap();
}

#[tokio::test]
async fn concurrency_errors_and_timeout_follow_their_documented_forms() {
    let ssm = ssm().await;
    let ids = launch(1, &[("t", "forms")]).await;
    for bad in ["0", "101%", "0%", "-1", "ten"] {
        let r = send(&ssm, &ids).max_concurrency(bad).send().await;
        assert_eq!(code(r), "ValidationException", "MaxConcurrency {bad}");
    }
    for bad in ["-1", "101%", "x"] {
        let r = send(&ssm, &ids).max_errors(bad).send().await;
        assert_eq!(code(r), "ValidationException", "MaxErrors {bad}");
    }
    for bad in [29, 2_592_001] {
        let r = send(&ssm, &ids).timeout_seconds(bad).send().await;
        assert_eq!(code(r), "ValidationException", "TimeoutSeconds {bad}");
    }
    send(&ssm, &ids)
        .max_concurrency("100%")
        .max_errors("0")
        .timeout_seconds(30)
        .send()
        .await
        .expect("documented forms pass");
}

#[tokio::test]
async fn an_instance_that_is_not_there_is_an_invalid_instance_id() {
    let ssm = ssm().await;
    let mut ids = launch(1, &[("t", "unknown")]).await;
    ids.push("i-0123456789abcdef0".into());
    assert_eq!(code(send(&ssm, &ids).send().await), "InvalidInstanceId");
}

#[tokio::test]
async fn an_instance_terminated_mid_command_ends_undelivered_and_takes_no_more() {
    let _turn = CONTROL.lock().await;
    let ssm = ssm().await;
    let ids = launch(2, &[("t", "terminated")]).await;
    control(serde_json::json!({ "pending_reads": 2, "invisible_reads": 0 })).await;
    let id = send(&ssm, &ids)
        .send()
        .await
        .unwrap()
        .command
        .and_then(|c| c.command_id)
        .unwrap();
    let status = |node: &str| {
        let (ssm, id, node) = (ssm.clone(), id.clone(), node.to_string());
        async move {
            let inv = ssm
                .list_command_invocations()
                .command_id(id)
                .instance_id(node)
                .send()
                .await
                .unwrap();
            let inv = &inv.command_invocations.unwrap()[0];
            (
                inv.status.as_ref().map(|s| s.as_str().to_string()),
                inv.status_details.clone(),
            )
        }
    };
    assert_eq!(status(&ids[0]).await.0.as_deref(), Some("InProgress"));
    terminate(&ids[0]).await;
    assert_eq!(
        status(&ids[0]).await,
        (Some("TimedOut".into()), Some("DeliveryTimedOut".into()))
    );
    // The other runs on to its end.
    assert_eq!(status(&ids[1]).await.0.as_deref(), Some("InProgress"));
    assert_eq!(status(&ids[1]).await.0.as_deref(), Some("InProgress"));
    assert_eq!(status(&ids[1]).await.0.as_deref(), Some("Success"));
    // And no new command goes to it.
    assert_eq!(code(send(&ssm, &ids).send().await), "InvalidInstanceId");
    control(serde_json::json!({})).await;
}

#[tokio::test]
async fn an_offline_node_times_out_undelivered_instead_of_succeeding() {
    let _turn = CONTROL.lock().await;
    let ssm = ssm().await;
    let ids = launch(2, &[("t", "offline")]).await;
    control(serde_json::json!({ "offline": [ids[0]], "pending_reads": 0, "invisible_reads": 0 }))
        .await;
    let id = send(&ssm, &ids)
        .send()
        .await
        .unwrap()
        .command
        .and_then(|c| c.command_id)
        .unwrap();
    let status = |node: &str| {
        let (ssm, id, node) = (ssm.clone(), id.clone(), node.to_string());
        async move {
            let inv = ssm
                .get_command_invocation()
                .command_id(id)
                .instance_id(node)
                .send()
                .await
                .unwrap();
            (
                inv.status.map(|s| s.as_str().to_string()),
                inv.status_details,
            )
        }
    };
    let offline = status(&ids[0]).await;
    assert_eq!(
        offline,
        (Some("TimedOut".into()), Some("DeliveryTimedOut".into()))
    );
    assert_eq!(status(&ids[1]).await.0.as_deref(), Some("Success"));
    control(serde_json::json!({})).await;
}

#[tokio::test]
async fn list_commands_pages_by_at_most_50() {
    let ssm = ssm().await;
    let ids = launch(1, &[("t", "paging")]).await;
    for bad in [0, 51] {
        let r = ssm.list_commands().max_results(bad).send().await;
        assert_eq!(code(r), "ValidationException", "MaxResults {bad}");
    }
    for _ in 0..3 {
        send(&ssm, &ids).send().await.unwrap();
    }
    let first = ssm
        .list_commands()
        .instance_id(&ids[0])
        .max_results(2)
        .send()
        .await
        .unwrap();
    assert_eq!(first.commands.unwrap_or_default().len(), 2);
    let rest = ssm
        .list_commands()
        .instance_id(&ids[0])
        .max_results(2)
        .set_next_token(first.next_token)
        .send()
        .await
        .unwrap();
    assert_eq!(rest.commands.unwrap_or_default().len(), 1);
    assert!(rest.next_token.is_none());
}

#[tokio::test]
async fn list_commands_can_leave_out_a_command_just_sent() {
    let _turn = CONTROL.lock().await;
    let ssm = ssm().await;
    let ids = launch(1, &[("t", "lagging")]).await;
    let comment = unique("lagging");
    control(serde_json::json!({ "list_lag": { "reads": 2, "contains": comment } })).await;
    let sent = send(&ssm, &ids).comment(&comment).send().await.unwrap();
    let id = sent.command.and_then(|c| c.command_id).unwrap();
    let listed = || async {
        ssm.list_commands()
            .instance_id(&ids[0])
            .send()
            .await
            .unwrap()
            .commands
            .unwrap_or_default()
            .iter()
            .any(|c| c.command_id.as_deref() == Some(id.as_str()))
    };
    assert!(!listed().await, "left out of the first listing");
    assert!(!listed().await, "and of the second");
    assert!(listed().await, "then listed");
    control(serde_json::json!({})).await;
}

#[tokio::test]
async fn get_parameter_can_answer_from_before_a_write() {
    let _turn = CONTROL.lock().await;
    let ssm = ssm().await;
    let name = format!("/{}/live/x", unique("lag"));
    let put = |value: &'static str| {
        let (ssm, name) = (ssm.clone(), name.clone());
        async move {
            ssm.put_parameter()
                .name(name)
                .value(value)
                .r#type(aws_sdk_ssm::types::ParameterType::String)
                .overwrite(true)
                .send()
                .await
                .unwrap()
                .version
        }
    };
    let get = || async {
        match ssm.get_parameter().name(&name).send().await {
            Ok(out) => out.parameter.map(|p| (p.value.unwrap(), p.version)),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_parameter_not_found()) =>
            {
                None
            }
            Err(e) => panic!("{e:?}"),
        }
    };
    control(serde_json::json!({ "param_lag": { "reads": 2, "contains": name } })).await;
    assert_eq!(put("one").await, 1);
    assert_eq!(get().await, None, "a new parameter is not found at first");
    assert_eq!(get().await, None);
    assert_eq!(get().await, Some(("one".into(), 1)));
    assert_eq!(put("two").await, 2);
    assert_eq!(
        get().await,
        Some(("one".into(), 1)),
        "then the version before"
    );
    assert_eq!(get().await, Some(("one".into(), 1)));
    assert_eq!(get().await, Some(("two".into(), 2)), "then the write");
    control(serde_json::json!({})).await;
}

#[tokio::test]
async fn list_commands_honours_its_filters_and_refuses_bad_ones() {
    let ssm = ssm().await;
    let ids = launch(1, &[("t", "filters")]).await;
    let comment = unique("filtered");
    send(&ssm, &ids).comment(&comment).send().await.unwrap();
    let listed = |key: CommandFilterKey, value: String| {
        let (ssm, node) = (ssm.clone(), ids[0].clone());
        async move {
            ssm.list_commands()
                .instance_id(node)
                .filters(
                    CommandFilter::builder()
                        .key(key)
                        .value(value)
                        .build()
                        .unwrap(),
                )
                .send()
                .await
        }
    };
    let at = |d: Duration| (Utc::now() + d).to_rfc3339_opts(SecondsFormat::Secs, true);
    let count = |r: aws_sdk_ssm::operation::list_commands::ListCommandsOutput| {
        r.commands.unwrap_or_default().len()
    };
    let ok = |r: Result<_, _>| count(r.expect("a valid filter"));
    assert_eq!(
        ok(listed(CommandFilterKey::InvokedAfter, at(-Duration::hours(1))).await),
        1
    );
    assert_eq!(
        ok(listed(CommandFilterKey::InvokedAfter, at(Duration::days(1))).await),
        0
    );
    assert_eq!(
        ok(listed(CommandFilterKey::InvokedBefore, at(-Duration::hours(1))).await),
        0
    );
    assert_eq!(
        ok(listed(CommandFilterKey::InvokedBefore, at(Duration::days(1))).await),
        1
    );
    assert_eq!(
        ok(listed(CommandFilterKey::Status, "Success".into()).await),
        1
    );
    assert_eq!(
        ok(listed(CommandFilterKey::Status, "Failed".into()).await),
        0
    );
    assert_eq!(
        code(listed(CommandFilterKey::InvokedAfter, "not-a-date".into()).await),
        "ValidationException"
    );
    assert_eq!(
        code(listed(CommandFilterKey::Status, "Sucess".into()).await),
        "ValidationException"
    );
    assert_eq!(
        code(listed(CommandFilterKey::from("Colour"), "red".into()).await),
        "InvalidFilterKey"
    );
}

#[tokio::test]
async fn invocation_and_node_listings_bound_their_page_size() {
    let ssm = ssm().await;
    for bad in [0, 51] {
        let r = ssm.list_command_invocations().max_results(bad).send().await;
        assert_eq!(
            code(r),
            "ValidationException",
            "invocations MaxResults {bad}"
        );
    }
    for bad in [4, 51] {
        let r = ssm
            .describe_instance_information()
            .max_results(bad)
            .send()
            .await;
        assert_eq!(code(r), "ValidationException", "nodes MaxResults {bad}");
    }
}

/// The statuses of a command's invocations, one ListCommandInvocations read.
async fn statuses(ssm: &aws_sdk_ssm::Client, id: &str) -> Vec<String> {
    let out = ssm
        .list_command_invocations()
        .command_id(id)
        .send()
        .await
        .unwrap();
    let mut rows: Vec<_> = out
        .command_invocations
        .unwrap_or_default()
        .into_iter()
        .map(|i| {
            (
                i.instance_id.unwrap_or_default(),
                i.status.unwrap().as_str().to_string(),
            )
        })
        .collect();
    rows.sort();
    rows.into_iter().map(|(_, s)| s).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn command_id(
    b: aws_sdk_ssm::operation::send_command::builders::SendCommandFluentBuilder,
) -> String {
    b.send()
        .await
        .unwrap()
        .command
        .and_then(|c| c.command_id)
        .unwrap()
}

#[tokio::test]
async fn max_concurrency_limits_how_many_invocations_run_at_once() {
    let _turn = CONTROL.lock().await;
    control(serde_json::json!({ "pending_reads": 1, "invisible_reads": 0 })).await;
    let ssm = ssm().await;
    let ids = launch(3, &[("t", "concurrency")]).await;
    let id = command_id(send(&ssm, &ids).max_concurrency("1")).await;
    // One runs, two wait; each read of a running one is its last InProgress.
    assert_eq!(
        sorted(statuses(&ssm, &id).await),
        ["InProgress", "Pending", "Pending"]
    );
    assert_eq!(
        sorted(statuses(&ssm, &id).await),
        ["InProgress", "Pending", "Success"]
    );
    assert_eq!(
        sorted(statuses(&ssm, &id).await),
        ["InProgress", "Success", "Success"]
    );
    assert_eq!(statuses(&ssm, &id).await, ["Success"; 3]);
    let percent = command_id(send(&ssm, &ids).max_concurrency("67%")).await;
    assert_eq!(
        sorted(statuses(&ssm, &percent).await),
        ["InProgress", "InProgress", "Pending"]
    );
    control(serde_json::json!({})).await;
}

#[tokio::test]
async fn past_max_errors_the_targets_not_yet_sent_to_are_cancelled() {
    let _turn = CONTROL.lock().await;
    let ssm = ssm().await;
    let ids = launch(3, &[("t", "max-errors")]).await;
    control(
        serde_json::json!({ "pending_reads": 0, "invisible_reads": 0, "rules": [
            { "instance": ids[0], "status": "Failed", "exit_code": 2 }
        ]}),
    )
    .await;
    // In order of instance id: the first fails, so with MaxErrors 0 nothing more is sent.
    let one_at_a_time = |errors: &str| send(&ssm, &ids).max_concurrency("1").max_errors(errors);
    let id = command_id(one_at_a_time("0")).await;
    let all = sorted(statuses(&ssm, &id).await);
    assert_eq!(all.iter().filter(|s| *s == "Failed").count(), 1, "{all:?}");
    assert_eq!(
        all.iter().filter(|s| *s == "Cancelled").count(),
        2,
        "{all:?}"
    );
    // With one error allowed, every target runs.
    let id = command_id(one_at_a_time("1")).await;
    let all = sorted(statuses(&ssm, &id).await);
    assert_eq!(all, ["Failed", "Success", "Success"]);
    control(serde_json::json!({})).await;
}

#[tokio::test]
async fn an_invocation_runs_for_its_seconds_and_is_not_visible_at_once() {
    let _turn = CONTROL.lock().await;
    control(serde_json::json!({ "pending_reads": 0, "seconds": 0.3, "invisible_reads": 1 })).await;
    let ssm = ssm().await;
    let ids = launch(1, &[("t", "seconds")]).await;
    let id = command_id(send(&ssm, &ids)).await;
    let get = || {
        ssm.get_command_invocation()
            .command_id(&id)
            .instance_id(&ids[0])
            .send()
    };
    let first = get().await;
    assert!(
        first
            .as_ref()
            .err()
            .and_then(|e| e.as_service_error())
            .is_some_and(|e| e.is_invocation_does_not_exist()),
        "{first:?}"
    );
    let status = |r: aws_sdk_ssm::operation::get_command_invocation::GetCommandInvocationOutput| {
        r.status.unwrap().as_str().to_string()
    };
    assert_eq!(status(get().await.unwrap()), "InProgress");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert_eq!(status(get().await.unwrap()), "Success");
    control(serde_json::json!({})).await;
}

#[tokio::test]
async fn output_is_cut_at_24000_characters() {
    let _turn = CONTROL.lock().await;
    let ssm = ssm().await;
    let ids = launch(1, &[("t", "output")]).await;
    control(
        serde_json::json!({ "pending_reads": 0, "invisible_reads": 0, "rules": [
            { "instance": ids[0], "status": "Success", "stdout": "y".repeat(30_000) }
        ]}),
    )
    .await;
    let id = command_id(send(&ssm, &ids)).await;
    let inv = ssm
        .get_command_invocation()
        .command_id(&id)
        .instance_id(&ids[0])
        .send()
        .await
        .unwrap();
    assert_eq!(inv.standard_output_content.unwrap().len(), 24_000);
    control(serde_json::json!({})).await;
}

#[tokio::test]
async fn a_rate_rule_throttles_calls_past_its_bucket_until_tokens_come_back() {
    let _turn = CONTROL.lock().await;
    // One token every 2 s: slow enough that no token comes back between the calls below,
    // however slowly a loaded machine answers them (a listing of many instances is slow).
    control(serde_json::json!({
        "rates": { "DescribeInstanceInformation": { "per_second": 0.5, "burst": 2 } }
    }))
    .await;
    // Without the SDK's retries, to see each answer.
    let conf = aws_sdk_ssm::config::Builder::from(&sdk().await)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build();
    let ssm = aws_sdk_ssm::Client::from_conf(conf);
    let call = || ssm.describe_instance_information().send();
    call().await.expect("a token");
    call().await.expect("the burst's second");
    assert_eq!(code(call().await), "ThrottlingException");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    call().await.expect("a token came back");
    control(serde_json::json!({})).await;
}

#[tokio::test]
async fn a_lost_answer_is_a_500_for_a_call_that_was_done() {
    let _turn = CONTROL.lock().await;
    let ids = launch(1, &[("t", "lost")]).await;
    control(serde_json::json!({ "lost_answers": { "SendCommand": 1 } })).await;
    // Without the SDK's retries, to see the one answer.
    let conf = aws_sdk_ssm::config::Builder::from(&sdk().await)
        .retry_config(aws_config::retry::RetryConfig::disabled())
        .build();
    let ssm = aws_sdk_ssm::Client::from_conf(conf);
    let comment = unique("lost");
    let err = send(&ssm, &ids).comment(&comment).send().await.unwrap_err();
    let raw = err.raw_response().expect("an answer");
    assert_eq!(raw.status().as_u16(), 500);
    let listed = ssm
        .list_commands()
        .instance_id(&ids[0])
        .send()
        .await
        .unwrap();
    let sent = listed.commands().iter();
    assert_eq!(sent.filter(|c| c.comment() == Some(&comment)).count(), 1);
    // Only the one call: the next is answered.
    send(&ssm, &ids)
        .comment(unique("next"))
        .send()
        .await
        .unwrap();
    // With "contains", only a call whose request holds the text.
    let marked = unique("marked");
    let rule = serde_json::json!({ "SendCommand": { "count": 1, "contains": marked } });
    control(serde_json::json!({ "lost_answers": rule })).await;
    send(&ssm, &ids)
        .comment(unique("other"))
        .send()
        .await
        .unwrap();
    let err = send(&ssm, &ids).comment(&marked).send().await.unwrap_err();
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(500));
    send(&ssm, &ids).comment(&marked).send().await.unwrap();
    control(serde_json::json!({})).await;
}

#[tokio::test]
async fn a_parameter_value_over_4_kb_is_refused_unless_advanced() {
    let ssm = ssm().await;
    let name = format!("/{}/value", unique("limits"));
    let put = |value: String, tier: Option<aws_sdk_ssm::types::ParameterTier>| {
        ssm.put_parameter()
            .name(&name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .set_tier(tier)
    };
    put("x".repeat(4096), None).send().await.expect("4 KB fits");
    // Bytes, not characters.
    assert_eq!(
        code(put("é".repeat(2049), None).send().await),
        "ValidationException"
    );
    assert_eq!(
        code(put("x".repeat(4097), None).send().await),
        "ValidationException"
    );
    let advanced = Some(aws_sdk_ssm::types::ParameterTier::Advanced);
    put("x".repeat(8192), advanced.clone())
        .send()
        .await
        .expect("8 KB fits the advanced tier");
    assert_eq!(
        code(put("x".repeat(8193), advanced).send().await),
        "ValidationException"
    );
}

/// ListCommandInvocations without a command id lists every command's invocations, the
/// InvokedAfter / InvokedBefore filters keep those of commands sent in that window, and
/// with Details each plugin says when it started and finished (the API reference's
/// CommandPlugin.ResponseStartDateTime / ResponseFinishDateTime).
#[tokio::test]
async fn invocations_are_listed_by_when_their_command_was_sent_with_their_times() {
    let _turn = CONTROL.lock().await;
    control(serde_json::json!({ "invisible_reads": 0 })).await;
    let ssm = ssm().await;
    let ids = launch(1, &[("t", "window")]).await;
    let first = command_id(send(&ssm, &ids).comment("window one")).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    // Whole seconds: the first command was sent a second before, the second after.
    let after = Utc::now();
    let second = command_id(send(&ssm, &ids).comment("window two")).await;
    let at = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    let filter = |key: CommandFilterKey, t| {
        CommandFilter::builder()
            .key(key)
            .value(at(t))
            .build()
            .unwrap()
    };
    let node = ids[0].clone();
    let listed = |filters: Vec<CommandFilter>| {
        let (ssm, node) = (ssm.clone(), node.clone());
        async move {
            let mut ask = ssm.list_command_invocations().details(true).max_results(50);
            for f in filters {
                ask = ask.filters(f);
            }
            let pages: Vec<_> = ask
                .into_paginator()
                .send()
                .collect::<Result<_, _>>()
                .await
                .unwrap();
            pages
                .into_iter()
                .flat_map(|p| p.command_invocations.unwrap_or_default())
                .filter(|i| i.instance_id.as_deref() == Some(node.as_str()))
                .collect::<Vec<_>>()
        }
    };
    let all: Vec<String> = listed(vec![])
        .await
        .into_iter()
        .filter_map(|i| i.command_id)
        .collect();
    assert!(all.contains(&first) && all.contains(&second), "{all:?}");
    let since = listed(vec![filter(CommandFilterKey::InvokedAfter, after)]).await;
    let since: Vec<_> = since.iter().filter_map(|i| i.command_id.clone()).collect();
    assert_eq!(since, vec![second.clone()]);
    let before = listed(vec![filter(CommandFilterKey::InvokedBefore, after)]).await;
    let before: Vec<_> = before.iter().filter_map(|i| i.command_id.clone()).collect();
    assert_eq!(before, vec![first.clone()]);
    let done = listed(vec![]).await;
    let plugin = done
        .iter()
        .find(|i| i.command_id.as_deref() == Some(first.as_str()))
        .and_then(|i| i.command_plugins.clone())
        .unwrap()
        .remove(0);
    let (start, end) = (
        plugin.response_start_date_time.expect("a start"),
        plugin.response_finish_date_time.expect("an end"),
    );
    assert!(start.secs() <= end.secs());
    let bad = ssm
        .list_command_invocations()
        .filters(
            CommandFilter::builder()
                .key(CommandFilterKey::InvokedAfter)
                .value("yesterday")
                .build()
                .unwrap(),
        )
        .send()
        .await;
    assert_eq!(code(bad), "ValidationException");
    control(serde_json::json!({})).await;
}

/// Creates SSM Change Calendar `name`: open by default (`open`), each event (UTC, or
/// `TZID=…:local` as written) turning it the other way.
pub async fn change_calendar(
    ssm: &aws_sdk_ssm::Client,
    name: &str,
    open: bool,
    events: &[(String, String)],
) {
    let mut lines = vec![
        "BEGIN:VCALENDAR".to_string(),
        "PRODID:-//AWS//Change Calendar 1.0//EN".into(),
        "VERSION:2.0".into(),
        format!(
            "X-CALENDAR-TYPE:{}",
            if open {
                "DEFAULT_OPEN"
            } else {
                "DEFAULT_CLOSED"
            }
        ),
    ];
    for (i, (start, end)) in events.iter().enumerate() {
        let at = |prop: &str, t: &str| match t.split_once(':') {
            Some((zone, local)) => format!("{prop};{zone}:{local}"),
            None => format!("{prop}:{t}"),
        };
        lines.extend([
            "BEGIN:VEVENT".to_string(),
            format!("UID:{name}-{i}"),
            at("DTSTART", start),
            at("DTEND", end),
            "SUMMARY:shipit test".into(),
            "END:VEVENT".into(),
        ]);
    }
    lines.push("END:VCALENDAR".into());
    ssm.create_document()
        .name(name)
        .content(lines.join("\r\n") + "\r\n")
        .document_type(aws_sdk_ssm::types::DocumentType::ChangeCalendar)
        .document_format(aws_sdk_ssm::types::DocumentFormat::Text)
        .send()
        .await
        .unwrap();
}

/// An iCalendar time (UTC).
pub fn ical(t: chrono::DateTime<Utc>) -> String {
    t.format("%Y%m%dT%H%M%SZ").to_string()
}

/// GetCalendarState: OPEN only if every calendar named is open at the time asked, with
/// the next time that changes; an event closes a calendar open by default and opens one
/// closed by default, in UTC or its own time zone (Berlin's 10:00 in winter is 09:00 UTC).
#[tokio::test]
async fn a_change_calendar_is_open_or_closed_by_its_events_with_the_next_change() {
    let ssm = ssm().await;
    let now = Utc::now();
    let (freeze, windows) = (unique("freeze-cal"), unique("window-cal"));
    let (from, until) = (now - Duration::hours(1), now + Duration::hours(1));
    change_calendar(&ssm, &freeze, true, &[(ical(from), ical(until))]).await;
    change_calendar(
        &ssm,
        &windows,
        false,
        &[(
            "TZID=Europe/Berlin:20270112T100000".into(),
            "TZID=Europe/Berlin:20270112T120000".into(),
        )],
    )
    .await;
    let state = |names: Vec<&String>, at: String| {
        let ssm = ssm.clone();
        let names: Vec<String> = names.into_iter().cloned().collect();
        async move {
            let out = ssm
                .get_calendar_state()
                .set_calendar_names(Some(names))
                .at_time(at)
                .send()
                .await
                .unwrap();
            (
                out.state().unwrap().as_str().to_string(),
                out.next_transition_time().map(str::to_string),
            )
        }
    };
    let iso = |t: chrono::DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Secs, true);
    assert_eq!(
        state(vec![&freeze], iso(now)).await,
        ("CLOSED".into(), Some(iso(until)))
    );
    assert_eq!(
        state(vec![&freeze], iso(now + Duration::hours(2))).await,
        ("OPEN".into(), None)
    );
    assert_eq!(
        state(vec![&windows], "2027-01-12T09:30:00Z".into()).await,
        ("OPEN".into(), Some("2027-01-12T11:00:00Z".into()))
    );
    assert_eq!(
        state(vec![&windows], "2027-01-12T08:30:00Z".into()).await,
        ("CLOSED".into(), Some("2027-01-12T09:00:00Z".into()))
    );
    // Both: closed if either is.
    assert_eq!(
        state(vec![&windows, &freeze], iso(now + Duration::hours(2)))
            .await
            .0,
        "CLOSED"
    );
    // By ARN too.
    let arn = format!("arn:aws:ssm:us-east-1:123456789012:document/{freeze}");
    assert_eq!(state(vec![&arn], iso(now)).await.0, "CLOSED");
}

/// What GetCalendarState and CreateDocument refuse: a calendar that is not there
/// (InvalidDocument), a document of another type (InvalidDocumentType), no names
/// (ValidationException); a ChangeCalendar document that is not an iCalendar with its
/// X-CALENDAR-TYPE or with a time that is not one (InvalidDocumentContent), a name taken
/// (DocumentAlreadyExists); and one with an RRULE or RDATE, which the emulator does not
/// expand (UnsupportedCalendarException).
#[tokio::test]
async fn get_calendar_state_refuses_what_is_not_a_change_calendar() {
    let ssm = ssm().await;
    let get = |names: Vec<String>| {
        ssm.get_calendar_state()
            .set_calendar_names(Some(names))
            .send()
    };
    assert_eq!(code(get(vec![unique("nowhere")]).await), "InvalidDocument");
    let command = unique("a-command");
    ssm.create_document()
        .name(&command)
        .content(r#"{"schemaVersion": "2.2", "description": "x", "mainSteps": [{"action": "aws:runShellScript", "name": "run", "inputs": {"runCommand": ["true"]}}]}"#)
        .document_type(aws_sdk_ssm::types::DocumentType::Command)
        .send()
        .await
        .unwrap();
    assert_eq!(code(get(vec![command]).await), "InvalidDocumentType");
    assert_eq!(code(get(vec![]).await), "ValidationException");
    let create = |name: &str, content: &str| {
        ssm.create_document()
            .name(name)
            .content(content)
            .document_type(aws_sdk_ssm::types::DocumentType::ChangeCalendar)
            .document_format(aws_sdk_ssm::types::DocumentFormat::Text)
            .send()
    };
    let name = unique("typeless-cal");
    assert_eq!(
        code(create(&name, "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nEND:VCALENDAR\r\n").await),
        "InvalidDocumentContent"
    );
    assert_eq!(
        code(create(&name, "not a calendar").await),
        "InvalidDocumentContent"
    );
    let event = |lines: &str| {
        format!("BEGIN:VCALENDAR\r\nX-CALENDAR-TYPE:DEFAULT_OPEN\r\nBEGIN:VEVENT\r\n{lines}END:VEVENT\r\nEND:VCALENDAR\r\n")
    };
    let bad_time = event("DTSTART:20271312T100000Z\r\nDTEND:20270112T120000Z\r\n");
    assert_eq!(
        code(create(&name, &bad_time).await),
        "InvalidDocumentContent"
    );
    // A recurring event AWS reads; the emulator does not expand it, and says so.
    let weekly = unique("weekly-cal");
    let rule = "DTSTART:20270111T090000Z\r\nDTEND:20270111T170000Z\r\nRRULE:FREQ=WEEKLY\r\n";
    create(&weekly, &event(rule)).await.unwrap();
    assert_eq!(
        code(get(vec![weekly]).await),
        "UnsupportedCalendarException"
    );
    let extra = unique("rdate-cal");
    let rdate = "DTSTART:20270111T090000Z\r\nDTEND:20270111T170000Z\r\nRDATE:20270118T090000Z\r\n";
    create(&extra, &event(rdate)).await.unwrap();
    assert_eq!(code(get(vec![extra]).await), "UnsupportedCalendarException");
    let taken = unique("taken-cal");
    change_calendar(&ssm, &taken, true, &[]).await;
    assert_eq!(
        code(
            create(
                &taken,
                "BEGIN:VCALENDAR\r\nX-CALENDAR-TYPE:DEFAULT_OPEN\r\nEND:VCALENDAR\r\n"
            )
            .await
        ),
        "DocumentAlreadyExists"
    );
    let open = get(vec![taken]).await.unwrap();
    assert_eq!(open.state().map(|s| s.as_str()), Some("OPEN"));
}

/// CloudWatch through the SDK for Rust, which speaks Smithy RPC v2 CBOR to it (the
/// emulator bridges it to moto): a metric alarm named `name` in `state`.
pub async fn alarm(cw: &aws_sdk_cloudwatch::Client, name: &str, state: &str) {
    use aws_sdk_cloudwatch::types::{ComparisonOperator, StateValue, Statistic};
    cw.put_metric_alarm()
        .alarm_name(name)
        .namespace("shipit/test")
        .metric_name("errors")
        .statistic(Statistic::Sum)
        .period(60)
        .evaluation_periods(1)
        .threshold(1.0)
        .comparison_operator(ComparisonOperator::GreaterThanThreshold)
        .send()
        .await
        .expect("PutMetricAlarm");
    cw.set_alarm_state()
        .alarm_name(name)
        .state_value(StateValue::from(state))
        .state_reason(format!("{name} set {state} by the test"))
        .send()
        .await
        .expect("SetAlarmState");
}

/// DescribeAlarms (CloudWatch API reference): AlarmNames holds at most 100 names of 1 to
/// 255 characters and MaxRecords is within 1..100; pages of MaxRecords follow NextToken,
/// and a token it did not hand out is InvalidNextToken.
#[tokio::test]
async fn describe_alarms_takes_100_names_and_pages_by_max_records() {
    let cw = aws_sdk_cloudwatch::Client::new(&sdk().await);
    let prefix = unique("paged");
    let names: Vec<String> = (0..3).map(|i| format!("{prefix}-{i}")).collect();
    for name in &names {
        alarm(&cw, name, "OK").await;
    }
    let describe = || cw.describe_alarms().set_alarm_names(Some(names.clone()));
    let first = describe().max_records(2).send().await.unwrap();
    assert_eq!(first.metric_alarms().len(), 2);
    let token = first.next_token().expect("a second page").to_string();
    let second = describe()
        .max_records(2)
        .next_token(token)
        .send()
        .await
        .unwrap();
    assert_eq!(second.metric_alarms().len(), 1);
    assert_eq!(second.next_token(), None);
    let all = describe().send().await.unwrap();
    assert_eq!(all.metric_alarms().len(), 3, "50 a page unless asked");
    let many: Vec<String> = (0..101).map(|i| format!("{prefix}-{i}")).collect();
    let refused = cw
        .describe_alarms()
        .set_alarm_names(Some(many))
        .send()
        .await;
    assert_eq!(code(refused), "ValidationError");
    for size in [0, 101] {
        assert_eq!(
            code(describe().max_records(size).send().await),
            "ValidationError"
        );
    }
    let long = cw
        .describe_alarms()
        .alarm_names("x".repeat(256))
        .send()
        .await;
    assert_eq!(code(long), "ValidationError");
    for token in ["not-a-token", "2"] {
        assert_eq!(
            code(describe().next_token(token).send().await),
            "InvalidNextToken"
        );
    }
}

/// DescribeAlarms without AlarmTypes answers metric alarms only, "even if composite
/// alarms exist" (CloudWatch API reference): a reader that does not ask for both misses
/// a composite alarm.
#[tokio::test]
async fn describe_alarms_leaves_composite_alarms_out_unless_asked() {
    use aws_sdk_cloudwatch::types::{AlarmType, StateValue};
    let cw = aws_sdk_cloudwatch::Client::new(&sdk().await);
    let (metric, composite) = (unique("metric"), unique("composite"));
    alarm(&cw, &metric, "OK").await;
    cw.put_composite_alarm()
        .alarm_name(&composite)
        .alarm_rule(format!("ALARM(\"{metric}\")"))
        .send()
        .await
        .expect("PutCompositeAlarm");
    cw.set_alarm_state()
        .alarm_name(&composite)
        .state_value(StateValue::Alarm)
        .state_reason("set by the test")
        .send()
        .await
        .unwrap();
    let names = Some(vec![metric.clone(), composite.clone()]);
    let default = cw
        .describe_alarms()
        .set_alarm_names(names.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(default.metric_alarms().len(), 1);
    assert!(default.composite_alarms().is_empty());
    let both = cw
        .describe_alarms()
        .set_alarm_names(names)
        .alarm_types(AlarmType::MetricAlarm)
        .alarm_types(AlarmType::CompositeAlarm)
        .send()
        .await
        .unwrap();
    let states: Vec<_> = both
        .composite_alarms()
        .iter()
        .map(|a| (a.alarm_name(), a.state_value().map(|s| s.as_str())))
        .collect();
    assert_eq!(states, [(Some(composite.as_str()), Some("ALARM"))]);
}
