//! Ingress against the emulator's real SQS API: every source becomes exactly the jobs it
//! should, and bad input is refused with a reason while the queue stays empty.

use std::sync::Arc;

use crate::helpers::*;
use chrono::{TimeZone, Utc};
use shipit::deploy::history::HistoryEntry;
use shipit::deploy::job::{DeployJob, Source};
use shipit::ingress::Reply;
use shipit::local::store::Store;

async fn sqs_ingress() -> (Fifo, shipit::ingress::Ingress) {
    let fifo = Fifo::new().await;
    let ledger = Arc::new(ssm_ledger(aws_sdk_ssm::Client::new(&sdk().await)));
    let ingress = ingress(Arc::new(fifo.queue()), ledger).await;
    (fifo, ingress)
}

fn jobs(msgs: &[(String, String)]) -> Vec<DeployJob> {
    msgs.iter()
        .map(|(_, b)| DeployJob::from_json(b).expect("queued body is a deploy job"))
        .collect()
}

#[tokio::test]
async fn signed_tag_push_queues_one_job_in_the_app_env_group() {
    let (fifo, ingress) = sqs_ingress().await;
    let body = tag_push("Acme/Hello", "v1.4.2");
    let reply = ingress
        .github(&github_headers("push", "d-1", &body), &body, Utc::now())
        .await;
    assert_eq!(reply.status, 202, "{reply:?}");

    let msgs = fifo.drain().await;
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0].0, "hello/production");
    let job = &jobs(&msgs)[0];
    assert_eq!(
        (job.app.as_str(), job.env.as_str(), job.version.as_str()),
        ("hello", "production", "1.4.2")
    );
    assert_eq!(job.package.to_string(), "hello-app");
    assert_eq!(reply.body["jobs"][0]["job"], job.id.as_str());
    match &job.source {
        Source::Tag {
            repo,
            tag,
            commit,
            delivery,
            pusher,
            committed_at,
            ..
        } => {
            assert_eq!((repo.as_str(), tag.as_str()), ("Acme/Hello", "v1.4.2"));
            // The head commit's time, in UTC: what the lead time counts from.
            assert_eq!(
                committed_at.map(|t| t.to_rfc3339()),
                Some("2026-11-23T18:59:50+00:00".to_string())
            );
            assert_eq!(
                commit.as_deref(),
                Some("6113728f27ae82c7b1a177c8d03f9e96e0adf246")
            );
            assert_eq!(delivery.as_deref(), Some("d-1"));
            assert_eq!(pusher.as_deref(), Some("octocat"));
        }
        other => panic!("wrong source {other:?}"),
    }
}

#[tokio::test]
async fn the_same_delivery_twice_is_one_job() {
    let (fifo, ingress) = sqs_ingress().await;
    let body = tag_push("acme/hello", "v2.0.0");
    let headers = github_headers("push", "d-twice", &body);
    let first = ingress.github(&headers, &body, Utc::now()).await;
    let second = ingress.github(&headers, &body, Utc::now()).await;
    assert_eq!((first.status, second.status), (202, 202));
    assert_eq!(first.body["jobs"][0]["job"], second.body["jobs"][0]["job"]);
    // The release published for the same tag is the same deploy, too.
    let release = serde_json::json!({
        "action": "published",
        "release": { "tag_name": "v2.0.0", "draft": false },
        "repository": { "full_name": "acme/hello" },
        "sender": { "login": "octocat" }
    })
    .to_string();
    let third = ingress
        .github(
            &github_headers("release", "d-rel", release.as_bytes()),
            release.as_bytes(),
            Utc::now(),
        )
        .await;
    assert_eq!(third.status, 202, "{third:?}");
    assert_eq!(first.body["jobs"][0]["job"], third.body["jobs"][0]["job"]);
    assert_eq!(fifo.drain().await.len(), 1);
}

#[tokio::test]
async fn a_package_upload_for_two_apps_queues_two_jobs() {
    let (fifo, ingress) = sqs_ingress().await;
    let event: aws_lambda_events::event::s3::S3Event =
        serde_json::from_str(&std::fs::read_to_string("events/s3-wheel-upload.json").unwrap())
            .unwrap();
    let out = ingress.s3_event(&event, Utc::now()).await.unwrap();
    assert_eq!(out.len(), 1);
    let msgs = fifo.drain().await;
    let mut groups: Vec<&str> = msgs.iter().map(|(g, _)| g.as_str()).collect();
    groups.sort();
    assert_eq!(groups, ["hello-worker/production", "hello/production"]);
    assert!(jobs(&msgs).iter().all(|j| j.version.as_str() == "1.1.0"
        && matches!(&j.source, Source::Upload { location } if location == "s3://acme-pypi/simple/hello-app/hello_app-1.1.0-py3-none-any.whl")));

    // CodeArtifact announces the same kind of event through EventBridge.
    let ca: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string("events/codeartifact-published.json").unwrap(),
    )
    .unwrap();
    shipit::run::lambda::handle_package_event(&ingress, ca, Utc::now())
        .await
        .unwrap();
    assert_eq!(fifo.drain().await.len(), 2);
}

#[tokio::test]
async fn slash_deploy_from_an_allowed_user_queues_one_job() {
    let (fifo, ingress) = sqs_ingress().await;
    let now = Utc::now();
    let body = slack_form("U2CERLKJA", "roadrunner", "hello 1.4.2", "trig-1");
    let reply = ingress.slack(&slack_headers(&body, now), &body, now).await;
    assert_eq!(reply.status, 200);
    let text = reply.body["text"].as_str().unwrap();
    assert!(
        text.starts_with("Queued hello 1.4.2 to production (job "),
        "{text}"
    );
    assert_eq!(reply.body["response_type"], "ephemeral");

    let msgs = fifo.drain().await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0, "hello/production");
    let job = &jobs(&msgs)[0];
    assert_eq!(job.requested_by, "@roadrunner (U2CERLKJA)");
    assert!(text.contains(job.id.as_str()));
    assert!(
        matches!(&job.source, Source::Chat { user_id, channel_name, .. } if user_id == "U2CERLKJA" && channel_name == "deploys")
    );

    // Anyone may deploy to staging; only listed users to production.
    let body = slack_form("U999", "mallory", "hello 1.4.2 staging", "trig-2");
    assert!(ingress
        .slack(&slack_headers(&body, now), &body, now)
        .await
        .body["text"]
        .as_str()
        .unwrap()
        .starts_with("Queued"));
    assert_eq!(fifo.drain().await[0].0, "hello/staging");
}

/// `/deploy … --dry-run` on AWS: the plan comes from Parameter Store's history and lock,
/// with the nodes found by their tags when a deploy runs; nothing reaches the queue.
#[tokio::test]
async fn a_chat_dry_run_plans_from_the_ledger_and_queues_nothing() {
    let fifo = Fifo::new().await;
    let ledger = Arc::new(ssm_ledger(aws_sdk_ssm::Client::new(&sdk().await)));
    for v in ["1.4.1", "1.4.2"] {
        let job = cli_job("ann", v, v);
        shipit::deploy::ports::Ledger::record(
            ledger.as_ref(),
            &HistoryEntry::new(job, Utc::now()),
            shipit::deploy::ports::Written::default(),
        )
        .await
        .unwrap();
    }
    // Without a fleet at hand, the nodes are left to the deploy; with Run Command's, the
    // plan lists those the tags find.
    let ingress = ingress(Arc::new(fifo.queue()), ledger).await;
    let nodes =
        crate::deploy::launch(2, &[("shipit:app", "hello"), ("shipit:env", "production")]).await;
    let ssm = shipit::run::aws::ssm_client(&sdk().await);
    let fleet = shipit::aws::fleet::SsmFleet::new(
        shipit::aws::fleet::SdkRunCommand::new(ssm),
        ingress.config.clone(),
    );
    let without = {
        let body = slack_form(
            "U2CERLKJA",
            "roadrunner",
            "hello 1.5.0 --dry-run",
            "trig-d0",
        );
        let now = Utc::now();
        let reply = ingress.slack(&slack_headers(&body, now), &body, now).await;
        reply.body["text"].as_str().unwrap().to_string()
    };
    assert!(
        without.contains("Nodes, in restart order: found when the deploy runs"),
        "{without}"
    );
    let ingress = ingress.with_fleet(Arc::new(fleet));
    let now = Utc::now();
    let ask = |text: &str| {
        let body = slack_form("U2CERLKJA", "roadrunner", text, "trig-dry");
        let ingress = &ingress;
        async move {
            let reply = ingress.slack(&slack_headers(&body, now), &body, now).await;
            assert_eq!(reply.status, 200);
            assert_eq!(reply.body["response_type"], "ephemeral");
            reply.body["text"].as_str().unwrap().to_string()
        }
    };
    let plan = ask("hello 1.5.0 --dry-run").await;
    for line in [
        "Dry run: nothing was queued.",
        "hello 1.5.0 to production",
        "Live: 1.4.2 — job",
        "Lock: free",
        "Gate: none configured",
        "Nodes: the SSM managed nodes tagged",
        "Install: venv/bin/pip install -U hello-app==1.5.0",
    ] {
        assert!(plan.contains(line), "{line:?} not in:\n{plan}");
    }
    let listed = plan
        .lines()
        .find_map(|l| l.strip_prefix("Nodes, in restart order: "))
        .unwrap_or_default();
    for n in &nodes {
        assert!(listed.contains(n.as_str()), "{n} not in {listed}");
    }
    let plan = ask("rollback hello --dry-run").await;
    assert!(plan.contains("hello 1.4.1 to production"), "{plan}");
    // Who may not deploy there may not plan it either.
    let body = slack_form("U999", "mallory", "hello 1.5.0 --dry-run", "trig-dry2");
    let reply = ingress.slack(&slack_headers(&body, now), &body, now).await;
    assert!(
        reply.body["text"]
            .as_str()
            .unwrap()
            .contains("may not deploy"),
        "{reply:?}"
    );
    assert_eq!(fifo.drain().await, vec![], "a dry run reached the queue");
}

/// One bad request, what it must be answered, and a part of the reason.
struct Case {
    name: &'static str,
    status: u16,
    reason: &'static str,
    reply: Reply,
}

#[tokio::test]
async fn bad_input_is_refused_with_a_reason_and_nothing_is_queued() {
    let (fifo, ingress) = sqs_ingress().await;
    let now = Utc::now();
    let gh = |event: &str, body: &[u8]| (github_headers(event, "d-bad", body), body.to_vec());
    let mut cases = vec![];
    macro_rules! github_case {
        ($name:expr, $status:expr, $reason:expr, $headers:expr, $body:expr) => {{
            let body: Vec<u8> = $body;
            cases.push(Case {
                name: $name,
                status: $status,
                reason: $reason,
                reply: ingress.github(&$headers, &body, now).await,
            });
        }};
    }
    let push = tag_push("acme/hello", "v1.0.0");
    let (h, b) = gh("push", &push);
    let mut tampered = b.clone();
    tampered[10] ^= 1;
    github_case!("tampered body", 401, "does not match", h.clone(), tampered);
    github_case!(
        "missing signature",
        401,
        "missing X-Hub-Signature-256",
        headers(&[("x-github-event", "push")]),
        push.clone()
    );
    github_case!(
        "signature with wrong secret",
        401,
        "does not match",
        headers(&[
            ("x-github-event", "push"),
            (
                "x-hub-signature-256",
                &format!("sha256={}", shipit::ingress::sign_hex(b"wrong", &[&push]))
            )
        ]),
        push.clone()
    );
    github_case!(
        "signature not hex",
        401,
        "does not match",
        headers(&[
            ("x-github-event", "push"),
            ("x-hub-signature-256", "sha256=zz")
        ]),
        push.clone()
    );
    github_case!(
        "sha1 signature",
        401,
        "does not match",
        headers(&[
            ("x-github-event", "push"),
            ("x-hub-signature-256", "sha1=abc")
        ]),
        push.clone()
    );
    let (h, b) = gh("push", b"{\"ref\": ");
    github_case!("malformed JSON", 400, "malformed JSON", h, b);
    let (h, b) = gh("push", b"{\"ref\": \"refs/tags/v1\"}");
    github_case!("push without repository", 400, "malformed JSON", h, b);
    let (h, b) = gh("push", b"\xff\xfe{}");
    github_case!("non-UTF-8 body", 400, "not UTF-8", h, b);
    let (h, b) = gh("", &push);
    let mut h2 = h.clone();
    h2.remove("x-github-event");
    github_case!("missing event header", 400, "missing X-GitHub-Event", h2, b);
    let big = vec![b' '; shipit::ingress::github::MAX_BODY + 1];
    github_case!(
        "body over 25 MB",
        413,
        "25 MB",
        github_headers("push", "d", &big),
        big.clone()
    );
    for (name, tag) in [
        ("tag with shell command", "v1.0;rm -rf /"),
        ("tag with substitution", "v1.0$(id)"),
        ("tag with newline", "v1.0\n"),
        ("tag with backticks", "v1.0`id`"),
        ("tag that is not PEP 440", "vlatest"),
    ] {
        let (h, b) = gh("push", &tag_push("acme/hello", tag));
        github_case!(name, 422, "nothing was queued", h, b);
    }
    // Understood, and deliberately not deployed.
    let (h, b) = gh("push", &serde_json::to_vec(&serde_json::json!({"ref": "refs/heads/main", "created": false, "deleted": false, "repository": {"full_name": "acme/hello"}})).unwrap());
    github_case!(
        "branch push",
        202,
        "ignored: refs/heads/main is not a tag",
        h,
        b
    );
    let (h, b) = gh("push", &serde_json::to_vec(&serde_json::json!({"ref": "refs/tags/v1.0.0", "created": false, "deleted": true, "repository": {"full_name": "acme/hello"}})).unwrap());
    github_case!("tag deletion", 202, "ignored: tag v1.0.0 was deleted", h, b);
    let (h, b) = gh("push", &tag_push("acme/other", "v1.0.0"));
    github_case!(
        "unknown repository",
        202,
        "ignored: repository acme/other is not configured",
        h,
        b
    );
    let (h, b) = gh("push", &tag_push("acme/hello", "release-1.0"));
    github_case!(
        "tag outside every pattern",
        202,
        "matches no app's tag pattern",
        h,
        b
    );
    let (h, b) = gh("issues", b"{}");
    github_case!("other event", 202, "ignored: event \"issues\"", h, b);
    let (h, b) = gh("release", br#"{"action":"created","release":{"tag_name":"v1.0.0"},"repository":{"full_name":"acme/hello"}}"#);
    github_case!(
        "release not published",
        202,
        "ignored: release action",
        h,
        b
    );

    macro_rules! slack_case {
        ($name:expr, $status:expr, $reason:expr, $headers:expr, $body:expr) => {{
            let body: Vec<u8> = $body;
            let reply = ingress.slack(&$headers, &body, now).await;
            cases.push(Case {
                name: $name,
                status: $status,
                reason: $reason,
                reply,
            });
        }};
    }
    let form = slack_form("U2CERLKJA", "roadrunner", "hello 1.4.2", "t");
    let signed = |b: &[u8]| slack_headers(b, now);
    let mut bad_sig = form.clone();
    bad_sig.extend_from_slice(b"&x=1");
    slack_case!(
        "slack: tampered body",
        401,
        "does not match",
        signed(&form),
        bad_sig
    );
    slack_case!(
        "slack: missing signature",
        401,
        "missing X-Slack-Signature",
        headers(&[("x-slack-request-timestamp", &now.timestamp().to_string())]),
        form.clone()
    );
    slack_case!(
        "slack: missing timestamp",
        401,
        "missing X-Slack-Request-Timestamp",
        headers(&[("x-slack-signature", "v0=00")]),
        form.clone()
    );
    slack_case!(
        "slack: timestamp not a number",
        401,
        "not a Unix time",
        headers(&[
            ("x-slack-request-timestamp", "soon"),
            ("x-slack-signature", "v0=00")
        ]),
        form.clone()
    );
    let old = now - chrono::Duration::seconds(301);
    slack_case!(
        "slack: stale timestamp",
        401,
        "stale request",
        slack_headers(&form, old),
        form.clone()
    );
    let future = now + chrono::Duration::seconds(301);
    slack_case!(
        "slack: future timestamp",
        401,
        "stale request",
        slack_headers(&form, future),
        form.clone()
    );
    slack_case!(
        "slack: form without user",
        400,
        "malformed slash command",
        signed(b"command=%2Fdeploy&text=x"),
        b"command=%2Fdeploy&text=x".to_vec()
    );
    // Past the signature, Slack wants 200 and a message: the message carries the reason.
    for (name, user, text, expect) in [
        (
            "slack: bad version",
            "U2CERLKJA",
            "hello 1.0;id",
            "contains characters PEP 440 does not allow",
        ),
        (
            "slack: version not PEP 440",
            "U2CERLKJA",
            "hello latest",
            "is not a valid PEP 440 version",
        ),
        (
            "slack: unknown app",
            "U2CERLKJA",
            "nope 1.0",
            "Unknown app \"nope\"",
        ),
        (
            "slack: unknown env",
            "U2CERLKJA",
            "hello 1.0 moon",
            "has no environment \"moon\"",
        ),
        (
            "slack: user not allowed",
            "U999",
            "hello 1.0",
            "may not deploy hello to production",
        ),
        (
            "slack: gibberish",
            "U2CERLKJA",
            "please ship it now",
            "I did not understand",
        ),
        (
            "slack: rollback with no history",
            "U2CERLKJA",
            "rollback hello",
            "Nothing to roll back to",
        ),
        (
            "slack: lock without reason",
            "U2CERLKJA",
            "lock hello",
            "A reason is needed",
        ),
    ] {
        let body = slack_form(user, "someone", text, "t");
        let reply = ingress.slack(&signed(&body), &body, now).await;
        let got = reply.body["text"].as_str().unwrap_or_default().to_string();
        cases.push(Case {
            name,
            status: 200,
            reason: expect,
            reply: Reply::new(reply.status, serde_json::json!({ "reason": got })),
        });
    }

    let mut failures = vec![];
    for c in &cases {
        if c.reply.status != c.status || !c.reply.reason().contains(c.reason) {
            failures.push(format!(
                "{}: expected {} {:?}, got {} {:?}",
                c.name,
                c.status,
                c.reason,
                c.reply.status,
                c.reply.reason()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!(fifo.drain().await, vec![], "bad input reached the queue");
}

#[tokio::test]
async fn public_test_vectors() {
    let store = Store::open(&tempfile::tempdir().unwrap().path().join("s.db")).unwrap();
    let ports = Arc::new(store);
    let config = shipit::config::Config::parse(
        &common_config_with_secrets(
            "It's a Secret to Everybody",
            "8f742231b10e8888abcd99yyyzzz85a5",
        ),
        std::path::Path::new("v.toml"),
    )
    .unwrap();
    let ingress = shipit::ingress::Ingress::new(
        Arc::new(config),
        ports.clone(),
        ports,
        &shipit::config::secrets::Secrets::new(None),
        &shipit::ingress::Hook::ALL,
    )
    .await
    .unwrap();

    // GitHub's documented example: only the signature matters for a ping.
    let sig = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    let ok = ingress
        .github(
            &headers(&[("x-github-event", "ping"), ("x-hub-signature-256", sig)]),
            b"Hello, World!",
            Utc::now(),
        )
        .await;
    assert_eq!(ok.status, 200, "{ok:?}");
    let off_by_one = sig.replace("e17", "e18");
    let bad = ingress
        .github(
            &headers(&[
                ("x-github-event", "ping"),
                ("x-hub-signature-256", &off_by_one),
            ]),
            b"Hello, World!",
            Utc::now(),
        )
        .await;
    assert_eq!(bad.status, 401);

    // Slack's documented example, checked at the moment it was signed.
    let body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    let sig = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    let h = headers(&[
        ("x-slack-request-timestamp", "1531420618"),
        ("x-slack-signature", sig),
    ]);
    let then = Utc.timestamp_opt(1531420618, 0).unwrap();
    let reply = ingress.slack(&h, body.as_bytes(), then).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body["text"].as_str().unwrap().starts_with("Usage:"));
    // The same request today is a replay.
    assert_eq!(
        ingress.slack(&h, body.as_bytes(), Utc::now()).await.status,
        401
    );
}

fn common_config_with_secrets(github: &str, slack: &str) -> String {
    format!(
        r#"
[github]
webhook_secret = "{github}"
[slack]
signing_secret = "{slack}"
[apps.hello]
package = "hello-app"
install = "true"
restart = "true"
health = "true"
[apps.hello.environments.production]
ssm_tags = {{ app = "hello" }}
"#
    )
}

/// The samples in events/ stay valid: each is answered as AWS would deliver it.
#[tokio::test]
async fn every_sample_event_is_answered_as_documented() {
    let dir = tempfile::tempdir().unwrap();
    let ports = Arc::new(Store::open(&dir.path().join("s.db")).unwrap());
    let config =
        shipit::config::Config::load(std::path::Path::new("examples/local/shipit.toml")).unwrap();
    std::env::set_var("SHIPIT_GITHUB_SECRET", GITHUB_SECRET);
    std::env::set_var("SHIPIT_SLACK_SIGNING_SECRET", SLACK_SECRET);
    let ingress = shipit::ingress::Ingress::new(
        Arc::new(config),
        ports.clone(),
        ports.clone(),
        &shipit::config::secrets::Secrets::new(None),
        &shipit::ingress::Hook::ALL,
    )
    .await
    .unwrap();
    let slack_signed_at = Utc.timestamp_opt(1795460400, 0).unwrap();
    let answer = |file: &str, now| {
        let text = std::fs::read_to_string(format!("events/{file}")).unwrap();
        let event = serde_json::from_str(&text).unwrap();
        let ingress = &ingress;
        async move {
            shipit::run::lambda::handle_any(ingress, event, now)
                .await
                .unwrap()
        }
    };
    for (file, status, now) in [
        ("github-tag-push.json", 202, Utc::now()),
        ("github-release.json", 202, Utc::now()),
        ("github-ping.json", 200, Utc::now()),
        ("github-branch-push.json", 202, Utc::now()),
        ("github-tag-delete.json", 202, Utc::now()),
        ("slack-deploy.json", 200, slack_signed_at),
    ] {
        let out = answer(file, now).await;
        assert_eq!(out["statusCode"], status, "{file}: {out}");
    }
    for file in ["s3-wheel-upload.json", "codeartifact-published.json"] {
        let out = answer(file, Utc::now()).await;
        assert_eq!(out[0]["status"], "queued", "{file}: {out}");
    }
    // The other functions' samples are named, not misread as an upload.
    for (file, function) in [
        ("deploy-dispatch-sqs.json", "deploy-dispatch"),
        ("ec2-instance-running.json", "node-joined"),
        ("deploy-step-start.json", "deploy-step"),
    ] {
        let out = answer(file, Utc::now()).await;
        assert_eq!(out["status"], "ignored", "{file}: {out}");
        let reason = out["reason"].as_str().unwrap();
        assert!(
            reason.contains(&format!("it is {function}'s")),
            "{file}: {reason}"
        );
    }
    let queued: Vec<String> = ports
        .jobs(None)
        .await
        .unwrap()
        .into_iter()
        .map(|q| format!("{} {}", q.job.version, q.job.requested_by))
        .collect();
    assert_eq!(
        queued,
        [
            "1.0.0 octocat",
            "1.1.0 octocat",
            "1.1.0 @roadrunner (U2CERLKJA)",
            "1.1.0 package upload",
            "1.1.0 package upload"
        ]
    );
}

/// Each webhook function reads only its own signing secret from Parameter Store: its role
/// may read no other, so asking for the other one would fail its start.
#[tokio::test]
async fn a_webhook_function_reads_only_its_own_signing_secret() {
    use shipit::config::secrets::Secrets;
    use shipit::ingress::{Hook, Ingress};

    let ssm = aws_sdk_ssm::Client::new(&sdk().await);
    let prefix = format!("/{}", unique("own-secret"));
    let github = format!("{prefix}/secrets/github-webhook");
    ssm.put_parameter()
        .name(&github)
        .value("gh-secret")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();
    // The Slack one is not there, as it is not readable by the GitHub function's role.
    let slack = format!("{prefix}/secrets/slack-signing");
    let config = shipit::config::Config::parse(
        &common_config_with_secrets(&format!("ssm:{github}"), &format!("ssm:{slack}")),
        std::path::Path::new("own.toml"),
    )
    .unwrap();
    let store = Store::open(&tempfile::tempdir().unwrap().path().join("s.db")).unwrap();
    let ports = Arc::new(store);
    let build = |hooks: &'static [Hook]| {
        let (config, ports, ssm) = (config.clone(), ports.clone(), ssm.clone());
        async move {
            Ingress::new(
                Arc::new(config),
                ports.clone(),
                ports,
                &Secrets::new(Some(ssm)),
                hooks,
            )
            .await
        }
    };

    let github_only = build(&[Hook::GitHub]).await.expect("GitHub's secret alone");
    let sig = format!(
        "sha256={}",
        shipit::ingress::sign_hex(b"gh-secret", &[b"{}"])
    );
    let ping = github_only
        .github(
            &headers(&[("x-github-event", "ping"), ("x-hub-signature-256", &sig)]),
            b"{}",
            Utc::now(),
        )
        .await;
    assert_eq!(ping.status, 200, "{ping:?}");
    let err = build(&Hook::ALL)
        .await
        .err()
        .expect("both need the Slack one");
    assert!(err.to_string().contains(&slack), "{err}");
    let none = build(&[]).await.expect("uploads need no secret");
    let refused = none.github(&headers(&[]), b"{}", Utc::now()).await;
    assert_eq!(refused.status, 503, "{refused:?}");
}
