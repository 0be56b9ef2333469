//! The SAM template (`infra/template.yaml`) read as data: every role allows only what its
//! function calls, on shipit's own resources. cfn-lint (in `.ci/run`) checks that the
//! template is valid; this checks that it is narrow.

use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};

fn template() -> Value {
    let text = std::fs::read_to_string("infra/template.yaml").expect("reading the template");
    serde_yaml::from_str(&text).expect("the template is YAML")
}

fn resources(t: &Value) -> BTreeMap<String, Value> {
    t["Resources"]
        .as_mapping()
        .expect("Resources")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_string(), v.clone()))
        .collect()
}

/// A string or intrinsic as text: `"a"`, `!Sub "a"` → `a`, `!Ref X` → `Ref X`,
/// `!GetAtt X.Arn` → `GetAtt X.Arn`.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Tagged(t) if t.tag == "Sub" => text(&t.value),
        Value::Tagged(t) if t.tag == "Ref" || t.tag == "GetAtt" => {
            format!(
                "{} {}",
                t.tag.to_string().trim_start_matches('!'),
                text(&t.value)
            )
        }
        other => panic!("not a string or a Ref/GetAtt/Sub: {other:?}"),
    }
}

/// A string, or a list of them; an item `!If [cond, x, !Ref AWS::NoValue]` is read as `x`
/// (the broader case).
fn texts(v: &Value) -> Vec<String> {
    let item = |v: &Value| match v {
        Value::Tagged(t) if t.tag == "If" => text(&t.value[1]),
        v => text(v),
    };
    match v {
        Value::Sequence(items) => items.iter().map(item).collect(),
        one => vec![item(one)],
    }
}

#[derive(Debug)]
struct Statement {
    role: String,
    actions: Vec<String>,
    resources: Vec<String>,
    condition: Option<Value>,
}

/// Every Allow statement of every role, with `!If [cond, statement, !Ref AWS::NoValue]`
/// read as the statement (the broader case).
fn statements(t: &Value) -> Vec<Statement> {
    let mut out = vec![];
    for (name, r) in resources(t) {
        if r["Type"].as_str() != Some("AWS::IAM::Role") {
            continue;
        }
        for policy in r["Properties"]["Policies"].as_sequence().unwrap() {
            for s in policy["PolicyDocument"]["Statement"].as_sequence().unwrap() {
                let s = match s {
                    Value::Tagged(t) if t.tag == "If" => &t.value[1],
                    s => s,
                };
                assert_eq!(s["Effect"].as_str(), Some("Allow"), "{name}: {s:?}");
                assert!(s.get("NotAction").is_none() && s.get("NotResource").is_none());
                out.push(Statement {
                    role: name.clone(),
                    actions: texts(&s["Action"]),
                    resources: texts(&s["Resource"]),
                    condition: s.get("Condition").cloned(),
                });
            }
        }
    }
    out
}

/// (function logical id, its role's logical id, its binary).
fn functions(t: &Value) -> Vec<(String, String, String)> {
    resources(t)
        .into_iter()
        .filter(|(_, r)| r["Type"].as_str() == Some("AWS::Serverless::Function"))
        .map(|(name, r)| {
            let role = text(&r["Properties"]["Role"]);
            let role = role
                .strip_prefix("GetAtt ")
                .and_then(|r| r.strip_suffix(".Arn"))
                .unwrap_or_else(|| panic!("{name}: Role is not a role of the template"))
                .to_string();
            let binary = r["Metadata"]["BuildProperties"]["Binary"]
                .as_str()
                .unwrap_or_else(|| panic!("{name}: no Binary to build"))
                .to_string();
            (name, role, binary)
        })
        .collect()
}

fn role_of<'a>(fns: &'a [(String, String, String)], binary: &str) -> &'a str {
    &fns.iter().find(|(_, _, b)| b == binary).unwrap().1
}

const PARAMETER: &str =
    "arn:${AWS::Partition}:ssm:${AWS::Region}:${AWS::AccountId}:parameter${SsmPrefix}/";

#[test]
fn no_wildcard_actions_and_star_resources_only_where_aws_allows_nothing_else() {
    let t = template();
    let all = statements(&t);
    assert!(all.len() > 10, "found only {} statements", all.len());
    // These take no resource ARN in IAM: "*" is the only way to allow them.
    let star_ok: BTreeSet<&str> = [
        "ssm:DescribeInstanceInformation",
        "ssm:ListCommands",
        "ssm:ListCommandInvocations",
        "ssm:GetCommandInvocation",
    ]
    .into();
    for s in &all {
        for a in &s.actions {
            let (service, name) = a.split_once(':').unwrap_or_else(|| panic!("{a}"));
            assert!(
                !a.contains('*') && !a.contains('?'),
                "{}: wildcard action {a}",
                s.role
            );
            assert!(!service.is_empty() && !name.is_empty(), "{a}");
        }
        if s.resources
            .iter()
            .any(|r| r.contains('*') && !r.contains(':'))
        {
            for a in &s.actions {
                // DescribeAlarms answers composite alarms only to "*" (with
                // CheckCompositeAlarms), and to deploy-step alone.
                let composite = a == "cloudwatch:DescribeAlarms" && s.role == "DeployStepRole";
                assert!(
                    star_ok.contains(a.as_str()) || composite,
                    "{}: {a} on *",
                    s.role
                );
            }
        }
    }
}

#[test]
fn send_command_only_runs_shell_scripts_on_nodes_tagged_for_shipit() {
    let t = template();
    let sends: Vec<_> = statements(&t)
        .into_iter()
        .filter(|s| s.actions.iter().any(|a| a == "ssm:SendCommand"))
        .collect();
    assert_eq!(sends.len(), 2, "{sends:?}");
    let fns = functions(&t);
    let step_role = role_of(&fns, "deploy-step");
    let (mut document, mut nodes) = (false, false);
    for s in &sends {
        assert_eq!(s.role, step_role, "only deploy-step sends commands");
        assert_eq!(s.actions, ["ssm:SendCommand"], "keep SendCommand alone");
        if s.resources.iter().any(|r| r.contains(":document/")) {
            assert_eq!(
                s.resources,
                ["arn:${AWS::Partition}:ssm:${AWS::Region}::document/AWS-RunShellScript"]
            );
            document = true;
        } else {
            for r in &s.resources {
                assert!(
                    r.ends_with(":${AWS::AccountId}:instance/*")
                        || r.ends_with(":${AWS::AccountId}:managed-instance/*"),
                    "{r}"
                );
            }
            let cond = s.condition.as_ref().expect("a tag condition on the nodes");
            let like = cond["StringLike"].as_mapping().expect("StringLike");
            let keys: BTreeSet<_> = like.keys().map(|k| k.as_str().unwrap()).collect();
            assert_eq!(
                keys,
                ["ssm:resourceTag/shipit:app", "ssm:resourceTag/shipit:env"].into()
            );
            assert_eq!(text(&like["ssm:resourceTag/shipit:app"]), "Ref Apps");
            // Which nodes get root commands is asked at deploy time, never assumed.
            for p in ["Apps", "Environments"] {
                assert!(
                    t["Parameters"][p].get("Default").is_none(),
                    "{p} has a default"
                );
            }
            assert_eq!(
                text(&like["ssm:resourceTag/shipit:env"]),
                "Ref Environments"
            );
            nodes = true;
        }
    }
    assert!(document && nodes);
}

#[test]
fn parameter_store_access_stays_under_the_prefix_and_secrets_are_read_only() {
    let t = template();
    let mut seen = 0;
    for s in statements(&t) {
        let params: Vec<_> = s
            .actions
            .iter()
            .filter(|a| a.starts_with("ssm:") && a.contains("Parameter"))
            .collect();
        if params.is_empty() {
            continue;
        }
        seen += 1;
        assert_eq!(
            params.len(),
            s.actions.len(),
            "{s:?}: mixed with other calls"
        );
        let writes = params.iter().any(|a| !a.starts_with("ssm:GetParameter"));
        for r in &s.resources {
            let path = r
                .strip_prefix(PARAMETER)
                .unwrap_or_else(|| panic!("{}: parameter outside the prefix: {r}", s.role));
            if writes {
                assert!(
                    [
                        "live/*",
                        "lock/*",
                        "faulty/*",
                        "queue/*",
                        "claim/*",
                        "approvals/*"
                    ]
                    .contains(&path),
                    "{}: writes {path}",
                    s.role
                );
            } else {
                assert!(
                    [
                        "config",
                        "live/*",
                        "lock/*",
                        "faulty/*",
                        "queue/*",
                        "claim/*",
                        "approvals/*"
                    ]
                    .contains(&path)
                        || secret_parameter(path).is_some(),
                    "{}: reads {path}",
                    s.role
                );
            }
        }
    }
    assert!(seen >= 6, "every function but dispatch reads its config");
}

/// `secrets/${Name}` → `Name`, the template parameter naming one secret.
fn secret_parameter(path: &str) -> Option<&str> {
    path.strip_prefix("secrets/${")?.strip_suffix('}')
}

#[test]
fn each_function_reads_only_the_secrets_it_uses() {
    let t = template();
    let fns = functions(&t);
    let expected: BTreeMap<&str, BTreeSet<&str>> = [
        ("github-webhook", ["GitHubWebhookSecret"].into()),
        // The gate's token, for dry runs.
        (
            "slash-command",
            ["SlackSigningSecret", "GitHubTokenSecret"].into(),
        ),
        (
            "deploy-step",
            [
                "SlackTokenSecret",
                "GitHubTokenSecret",
                "NewRelicKeySecret",
                "DatadogKeySecret",
                "PrometheusTokenSecret",
                "DatadogAppKeySecret",
            ]
            .into(),
        ),
        ("deploy-dispatch", [].into()),
        ("package-upload", [].into()),
        ("node-joined", [].into()),
        ("page", [].into()),
    ]
    .into();
    assert_eq!(fns.len(), expected.len(), "a function without expectations");
    let all = statements(&t);
    for (binary, secrets) in &expected {
        let role = role_of(&fns, binary);
        let mut read = BTreeSet::new();
        let mut decrypts = false;
        for s in all.iter().filter(|s| s.role == role) {
            decrypts |= s.actions.iter().any(|a| a == "kms:Decrypt");
            for r in &s.resources {
                let Some(path) = r.strip_prefix(PARAMETER) else {
                    continue;
                };
                assert!(
                    !path.starts_with("secrets/*"),
                    "{binary}: reads every secret"
                );
                if path.starts_with("secrets/") {
                    let name = secret_parameter(path)
                        .unwrap_or_else(|| panic!("{binary}: {path} is not one named secret"));
                    read.insert(name);
                }
            }
        }
        assert_eq!(&read, secrets, "{binary}");
        assert_eq!(decrypts, !secrets.is_empty(), "{binary}: kms:Decrypt");
        for name in secrets {
            let p = &t["Parameters"][*name];
            assert_eq!(p["Type"].as_str(), Some("String"), "{name}");
            // A name, not a path or a pattern.
            let pattern = p["AllowedPattern"].as_str().unwrap_or_default();
            assert!(pattern.starts_with("^[A-Za-z0-9_.-]"), "{name}: {pattern}");
        }
    }
}

#[test]
fn a_bucket_policy_allows_only_the_package_writers_when_they_are_given() {
    let t = template();
    let r = resources(&t);
    let policy = &r["PackageBucketPolicy"];
    assert_eq!(policy["Type"].as_str(), Some("AWS::S3::BucketPolicy"));
    assert_eq!(policy["Condition"].as_str(), Some("HasPackageWriters"));
    assert_eq!(text(&policy["Properties"]["Bucket"]), "Ref PackageBucket");
    // Only when writers are named, and only with the bucket.
    let cond = serde_yaml::to_string(&t["Conditions"]["HasPackageWriters"]).unwrap();
    assert!(
        cond.contains("HasPackageBucket") && cond.contains("PackageWriterArns"),
        "{cond}"
    );
    assert_eq!(
        t["Parameters"]["PackageWriterArns"]["Default"].as_str(),
        Some("")
    );
    let statements = policy["Properties"]["PolicyDocument"]["Statement"]
        .as_sequence()
        .unwrap();
    let objects = "arn:${AWS::Partition}:s3:::${PackageBucketName}/*";
    let deny = statements
        .iter()
        .find(|s| s["Effect"].as_str() == Some("Deny"))
        .expect("a Deny for everyone else");
    assert_eq!(deny["Principal"].as_str(), Some("*"));
    assert_eq!(texts(&deny["Action"]), ["s3:PutObject"]);
    assert_eq!(texts(&deny["Resource"]), [objects]);
    assert_eq!(
        text(&deny["Condition"]["ArnNotEquals"]["aws:PrincipalArn"]),
        "Ref PackageWriterArns"
    );
    let allow = statements
        .iter()
        .find(|s| s["Effect"].as_str() == Some("Allow"))
        .expect("an Allow for the writers");
    assert_eq!(text(&allow["Principal"]["AWS"]), "Ref PackageWriterArns");
    assert_eq!(texts(&allow["Action"]), ["s3:PutObject"]);
    assert_eq!(statements.len(), 2);
}

#[test]
fn each_function_has_its_own_role_and_only_the_calls_it_makes() {
    let t = template();
    let fns = functions(&t);
    let mut dirs: Vec<String> = std::fs::read_dir("functions")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    dirs.sort();
    let mut binaries: Vec<String> = fns.iter().map(|f| f.2.clone()).collect();
    binaries.sort();
    assert_eq!(binaries, dirs, "one function per crate in functions/");
    let roles: BTreeSet<_> = fns.iter().map(|f| &f.1).collect();
    assert_eq!(roles.len(), fns.len(), "roles are not shared");

    let all = statements(&t);
    let grants = |binary: &str| -> BTreeMap<String, BTreeSet<String>> {
        let role = role_of(&fns, binary);
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in all.iter().filter(|s| s.role == role) {
            for a in &s.actions {
                m.entry(a.clone())
                    .or_default()
                    .extend(s.resources.iter().cloned());
            }
        }
        m
    };
    let queue: BTreeSet<String> = ["GetAtt DeployQueue.Arn".to_string()].into();
    for ingress in [
        "github-webhook",
        "slash-command",
        "package-upload",
        "node-joined",
    ] {
        let g = grants(ingress);
        assert_eq!(g["sqs:SendMessage"], queue, "{ingress}");
        // Chat reads a job's execution for `/deploy show`; no ingress starts or stops one.
        let reads = ["states:DescribeExecution", "states:GetExecutionHistory"];
        for a in g.keys() {
            let read = ingress == "slash-command" && reads.contains(&a.as_str());
            assert!(
                (read || !a.starts_with("states:"))
                    && a != "ssm:SendCommand"
                    && !a.starts_with("sqs:Receive"),
                "{ingress} may {a}"
            );
        }
    }
    let executions: BTreeSet<String> = [
        "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}:execution:${Name}-deploy:*"
            .to_string(),
    ]
    .into();
    for read in ["states:DescribeExecution", "states:GetExecutionHistory"] {
        assert_eq!(grants("slash-command")[read], executions, "{read}");
    }
    // Chat writes no parameter but the lock's, a job's claim (`/deploy cancel`) and
    // people's words on jobs (`/deploy approve|reject`, the buttons).
    let claims = format!("{PARAMETER}claim/*");
    for write in ["ssm:PutParameter", "ssm:DeleteParameters"] {
        let on: BTreeSet<String> = [
            format!("{PARAMETER}lock/*"),
            claims.clone(),
            format!("{PARAMETER}approvals/*"),
        ]
        .into();
        assert_eq!(grants("slash-command")[write], on, "{write}");
    }
    for call in [
        "ssm:GetParameter",
        "ssm:PutParameter",
        "ssm:GetParametersByPath",
        "ssm:DeleteParameters",
    ] {
        assert!(grants("deploy-step")[call].contains(&claims), "{call}");
    }
    let joined = grants("node-joined");
    assert!(
        joined.keys().all(|a| !a.starts_with("ssm:")
            || [
                "ssm:GetParameter",
                "ssm:GetParameterHistory",
                "ssm:DescribeInstanceInformation"
            ]
            .contains(&a.as_str())),
        "node-joined only reads SSM: {joined:?}"
    );
    let dispatch = grants("deploy-dispatch");
    assert_eq!(
        dispatch["states:StartExecution"],
        ["Ref DeployStateMachine".to_string()].into()
    );
    assert_eq!(dispatch["sqs:ReceiveMessage"], queue);
    // Its only Parameter Store call: each job's queue ticket.
    assert!(dispatch
        .keys()
        .all(|a| !a.starts_with("ssm:") || a == "ssm:PutParameter"));
    assert_eq!(
        dispatch["ssm:PutParameter"],
        [format!("{PARAMETER}queue/*")].into()
    );
    assert!(!dispatch.contains_key("sqs:SendMessage"));
    let step = grants("deploy-step");
    // It sends one kind of message, a promotion, to the deploy queue only.
    assert_eq!(step["sqs:SendMessage"], queue);
    // The checks' alarms only, as the template's CheckAlarmNames names them, or (for
    // composite alarms, with CheckCompositeAlarms) every one.
    assert_eq!(
        step["cloudwatch:DescribeAlarms"],
        [
            "arn:${AWS::Partition}:cloudwatch:${AWS::Region}:${AWS::AccountId}:alarm:${CheckAlarmNames}".to_string(),
            "*".to_string()
        ]
        .into()
    );
    assert!(step.keys().all(|a| a.starts_with("ssm:")
        || a == "sqs:SendMessage"
        || a.starts_with("logs:")
        || a == "kms:Decrypt"
        || a == "cloudwatch:DescribeAlarms"
        || [
            "states:DescribeExecution",
            "states:GetExecutionHistory",
            "states:ListExecutions"
        ]
        .contains(&a.as_str())));

    // Only the state machine may invoke deploy-step.
    let invokers: Vec<_> = all
        .iter()
        .filter(|s| s.actions.iter().any(|a| a.starts_with("lambda:")))
        .collect();
    assert_eq!(invokers.len(), 1);
    assert_eq!(invokers[0].role, "DeployStateMachineRole");
    assert_eq!(invokers[0].actions, ["lambda:InvokeFunction"]);
    for r in &invokers[0].resources {
        assert!(r.contains("DeployStepFunction.Arn"), "{r}");
    }

    // Logs go to the function's own group, nowhere else.
    for s in all.iter().filter(|s| s.actions[0].starts_with("logs:")) {
        assert_eq!(s.actions, ["logs:CreateLogStream", "logs:PutLogEvents"]);
        assert_eq!(s.resources.len(), 1);
        assert!(s.resources[0].starts_with("GetAtt "), "{:?}", s.resources);
    }
}

#[test]
fn functions_get_the_environment_their_code_reads() {
    let t = template();
    let r = resources(&t);
    let global = t["Globals"]["Function"]["Environment"]["Variables"]
        .as_mapping()
        .unwrap();
    assert_eq!(text(&global["SHIPIT_CONFIG"]), "ssm:${SsmPrefix}/config");
    assert_eq!(text(&global["SHIPIT_SSM_PREFIX"]), "Ref SsmPrefix");
    for (name, _, binary) in functions(&t) {
        let vars = &r[&name]["Properties"]["Environment"]["Variables"];
        let want = match binary.as_str() {
            "deploy-dispatch" | "page" => ("SHIPIT_STATE_MACHINE_ARN", "Ref DeployStateMachine"),
            "deploy-step" => ("SHIPIT_STEP_BUDGET_SECONDS", "Ref StepBudgetSeconds"),
            _ => ("SHIPIT_QUEUE_URL", "Ref DeployQueue"),
        };
        assert_eq!(text(&vars[want.0]), want.1, "{name}");
        if binary == "slash-command" {
            // `/deploy show JOB` reads the job's execution.
            let machine = text(&vars["SHIPIT_STATE_MACHINE_ARN"]);
            assert_eq!(machine, "Ref DeployStateMachine", "{name}");
        }
    }
    // deploy-step finds the executions queued before its own by the state machine's ARN,
    // spelled out (a !Ref would be a cycle): it must name the machine the template makes.
    let machine_name = text(&r["DeployStateMachine"]["Properties"]["Name"]);
    let step_env = &r["DeployStepFunction"]["Properties"]["Environment"]["Variables"];
    assert_eq!(
        text(&step_env["SHIPIT_STATE_MACHINE_ARN"]),
        format!("arn:${{AWS::Partition}}:states:${{AWS::Region}}:${{AWS::AccountId}}:stateMachine:{machine_name}")
    );
}

#[test]
fn the_state_machine_is_the_definition_the_emulator_test_executes() {
    let t = template();
    let machine = &resources(&t)["DeployStateMachine"]["Properties"];
    // Relative to the template; tests/aws/deploy.rs runs infra/statemachine/deploy.asl.json.
    assert_eq!(
        machine["DefinitionUri"].as_str(),
        Some("statemachine/deploy.asl.json")
    );
    let definition = std::fs::read_to_string("infra/statemachine/deploy.asl.json").unwrap();
    let subs = machine["DefinitionSubstitutions"].as_mapping().unwrap();
    let mut placeholders = BTreeSet::new();
    for part in definition.split("${").skip(1) {
        placeholders.insert(part.split('}').next().unwrap().to_string());
    }
    let given: BTreeSet<String> = subs.keys().map(|k| k.as_str().unwrap().into()).collect();
    assert_eq!(placeholders, given);
    assert_eq!(
        text(&subs["DeployStepFunctionArn"]),
        "GetAtt DeployStepFunction.Arn"
    );
}

#[test]
fn the_readme_shows_how_to_invoke_every_function_with_a_sample_event() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    for (name, _, binary) in functions(&template()) {
        for (tool, id) in [
            ("cargo lambda invoke", &binary),
            ("sam local invoke", &name),
        ] {
            let line = readme
                .lines()
                .find(|l| l.starts_with(&format!("{tool} {id} ")))
                .unwrap_or_else(|| panic!("README: no `{tool} {id}` line"));
            let event = line
                .split_whitespace()
                .find(|w| w.starts_with("events/") || w.starts_with(".lambda-watch/"))
                .unwrap_or_else(|| panic!("{line}: no sample event"));
            match event.strip_prefix(".lambda-watch/") {
                // Written by scripts/lambda-watch, for the emulator's own instance.
                Some(file) => assert!(
                    std::fs::read_to_string("scripts/lambda-watch")
                        .unwrap()
                        .contains(&format!("out / \"{file}\"")),
                    "{line}: scripts/lambda-watch does not write it"
                ),
                None => assert!(std::path::Path::new(event).is_file(), "{line}"),
            }
        }
    }
}

#[test]
fn the_aws_example_selects_nodes_the_deploy_role_may_reach() {
    let path = std::path::Path::new("examples/aws/shipit.toml");
    let config = shipit::config::Config::parse(&std::fs::read_to_string(path).unwrap(), path)
        .unwrap_or_else(|r| panic!("{r}"));
    for (app, a) in &config.apps {
        for (env, e) in &a.environments {
            let shipit::config::Nodes::Ssm { tags, .. } = &e.nodes else {
                panic!("{app}/{env}: not SSM nodes");
            };
            assert_eq!(tags.get("shipit:app"), Some(app), "{app}/{env}");
            assert_eq!(tags.get("shipit:env"), Some(env), "{app}/{env}");
        }
    }
    // Its secrets are the ones the roles may read, with the template's defaults.
    let t = template();
    let secret = |parameter: &str| {
        let name = t["Parameters"][parameter]["Default"].as_str().unwrap();
        Some(shipit::config::secrets::Secret::Ssm(format!(
            "/shipit/secrets/{name}"
        )))
    };
    assert_eq!(config.github_secret, secret("GitHubWebhookSecret"));
    assert_eq!(config.slack_secret, secret("SlackSigningSecret"));
    for a in config.apps.values() {
        let gate = a.gate.as_ref().and_then(|g| g.token.clone());
        assert_eq!(gate, secret("GitHubTokenSecret"));
    }
}

/// The AWS calls each function's code makes (through the library's adapters), as IAM
/// actions. Lambda's own calls for an event source are not the code's: listed apart.
fn calls(binary: &str) -> BTreeSet<&'static str> {
    let ingress = ["sqs:SendMessage", "ssm:GetParameter"];
    let calls: &[&str] = match binary {
        "github-webhook" | "package-upload" => &ingress,
        // status, history, rollback, lock, unlock and abort: the ledger and its locks; a
        // dry run also lists the nodes; show reads the job's execution and commands;
        // cancel makes the job's claim; approve and reject keep a person's word; a
        // person's deploy reads its environment's change calendar.
        "slash-command" => &[
            "sqs:SendMessage",
            "ssm:GetParameter",
            "ssm:GetParameterHistory",
            "ssm:GetParametersByPath",
            "ssm:PutParameter",
            "ssm:DeleteParameters",
            "ssm:DescribeInstanceInformation",
            "ssm:ListCommandInvocations",
            "ssm:GetCalendarState",
            "states:DescribeExecution",
            "states:GetExecutionHistory",
        ],
        // Reads only: what is live, locks, marks, queue tickets, the jobs' executions and
        // their commands' invocations.
        "page" => &[
            "ssm:GetParameter",
            "ssm:GetParameterHistory",
            "ssm:GetParametersByPath",
            "ssm:ListCommandInvocations",
            "states:ListExecutions",
            "states:DescribeExecution",
            "states:GetExecutionHistory",
        ],
        // Waits for the node's agent, reads what is live to sync it.
        "node-joined" => &[
            "sqs:SendMessage",
            "ssm:GetParameter",
            "ssm:GetParameterHistory",
            "ssm:DescribeInstanceInformation",
        ],
        // Starts the execution and leaves the job's queue ticket.
        "deploy-dispatch" => &["states:StartExecution", "ssm:PutParameter"],
        "deploy-step" => &[
            "sqs:SendMessage",
            "ssm:GetParameter",
            "ssm:GetParameterHistory",
            "ssm:GetParametersByPath",
            "ssm:PutParameter",
            "ssm:DeleteParameters",
            "ssm:DescribeInstanceInformation",
            "ssm:SendCommand",
            "ssm:ListCommands",
            "ssm:ListCommandInvocations",
            "ssm:GetCommandInvocation",
            "ssm:GetCalendarState",
            "states:DescribeExecution",
            "states:GetExecutionHistory",
            "states:ListExecutions",
            "cloudwatch:DescribeAlarms",
        ],
        other => panic!("no calls listed for {other}"),
    };
    calls.iter().copied().collect()
}

/// What Lambda itself calls with the function's role: the SQS event source's polling.
fn event_source_calls(binary: &str) -> BTreeSet<&'static str> {
    match binary {
        // The three Lambda's guide names, and ChangeMessageVisibility, which AWS's own
        // CDK grants a queue's consumer beside them.
        "deploy-dispatch" => [
            "sqs:ReceiveMessage",
            "sqs:DeleteMessage",
            "sqs:GetQueueAttributes",
            "sqs:ChangeMessageVisibility",
        ]
        .into(),
        _ => [].into(),
    }
}

#[test]
fn each_role_allows_every_call_its_function_makes_and_no_other() {
    let t = template();
    let fns = functions(&t);
    let all = statements(&t);
    for (_, role, binary) in &fns {
        let allowed: BTreeSet<&str> = all
            .iter()
            .filter(|s| &s.role == role)
            .flat_map(|s| s.actions.iter().map(String::as_str))
            .filter(|a| !a.starts_with("logs:") && *a != "kms:Decrypt")
            .collect();
        let mut needed = calls(binary);
        needed.extend(event_source_calls(binary));
        let missing: Vec<_> = needed.difference(&allowed).collect();
        assert!(missing.is_empty(), "{binary}'s role lacks {missing:?}");
        let extra: Vec<_> = allowed.difference(&needed).collect();
        assert!(
            extra.is_empty(),
            "{binary}'s role allows {extra:?}, which it never calls"
        );
    }
}

/// Every SDK operation the library calls, as its IAM action: an operation added to the
/// code but to no function's calls above fails here.
#[test]
fn the_calls_above_are_every_aws_operation_the_code_makes() {
    fn scan(dir: &std::path::Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                scan(&path, found);
                continue;
            }
            let whole = std::fs::read_to_string(&path).unwrap();
            // The code, not its unit tests (last in a file, as scripts/check-layers reads
            // them), which may call `.get_…()` of other crates.
            let text = whole.split("#[cfg(test)]").next().unwrap_or_default();
            // The SDK's fluent builders: `.send_command()`, `.get_parameter()`, …
            for (i, _) in text.match_indices("()") {
                let ident: String = text[..i]
                    .chars()
                    .rev()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                let verbs = [
                    "get_",
                    "put_",
                    "list_",
                    "describe_",
                    "send_",
                    "start_",
                    "delete_",
                ];
                if text[..i].ends_with(&format!(".{ident}"))
                    && verbs.iter().any(|v| ident.starts_with(v))
                {
                    found.insert(iam_action(&ident));
                }
            }
        }
    }
    fn iam_action(op: &str) -> String {
        let pascal: String = op
            .split('_')
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        match op {
            // SendMessageBatch is authorized as SendMessage.
            "send_message_batch" => "sqs:SendMessage".into(),
            "start_execution"
            | "describe_execution"
            | "get_execution_history"
            | "list_executions" => {
                format!("states:{pascal}")
            }
            "describe_alarms" => format!("cloudwatch:{pascal}"),
            _ => format!("ssm:{pascal}"),
        }
    }
    let mut found = BTreeSet::new();
    scan(std::path::Path::new("src"), &mut found);
    let listed: BTreeSet<String> = functions(&template())
        .iter()
        .flat_map(|(_, _, binary)| calls(binary))
        .map(String::from)
        .collect();
    assert_eq!(found, listed);
}

/// The page reads state, so it is never open: the function and every route to it exist
/// only with a JWT issuer and audience set, each route goes through the HTTP API's JWT
/// authorizer, and its role writes nothing.
#[test]
fn the_page_is_served_only_behind_the_jwt_authorizer_and_only_reads() {
    let t = template();
    let r = resources(&t);
    let has_page = &t["Conditions"]["HasPage"];
    let given = |p: &str| format!("{has_page:?}").contains(p);
    assert!(
        given("PageJwtIssuer") && given("PageJwtAudience"),
        "{has_page:?}"
    );
    for (name, res) in &r {
        if name.starts_with("Page") {
            assert_eq!(res["Condition"].as_str(), Some("HasPage"), "{name}");
        }
    }
    assert_eq!(
        r["PageApi"]["Properties"]["ProtocolType"].as_str(),
        Some("HTTP")
    );
    let auth = &r["PageAuthorizer"]["Properties"];
    assert_eq!(text(&auth["ApiId"]), "Ref PageApi");
    assert_eq!(auth["AuthorizerType"].as_str(), Some("JWT"));
    assert_eq!(
        text(&auth["JwtConfiguration"]["Issuer"]),
        "Ref PageJwtIssuer"
    );
    assert_eq!(
        texts(&auth["JwtConfiguration"]["Audience"]),
        ["Ref PageJwtAudience"]
    );
    assert_eq!(
        texts(&auth["IdentitySource"]),
        ["$request.header.Authorization"]
    );
    let mut routes: Vec<String> = vec![];
    for res in r.values() {
        if res["Type"].as_str() != Some("AWS::ApiGatewayV2::Route") {
            continue;
        }
        let p = &res["Properties"];
        routes.push(p["RouteKey"].as_str().unwrap().to_string());
        // On the page's own API, never on the webhooks' (whose posts are signed instead).
        assert_eq!(text(&p["ApiId"]), "Ref PageApi", "{p:?}");
        assert_eq!(p["AuthorizationType"].as_str(), Some("JWT"), "{p:?}");
        assert_eq!(text(&p["AuthorizerId"]), "Ref PageAuthorizer", "{p:?}");
        assert_eq!(text(&p["Target"]), "integrations/${PageIntegration}");
    }
    routes.sort();
    assert_eq!(routes, ["GET /", "GET /api/jobs/{id}", "GET /jobs/{id}"]);
    // The function has no route of SAM's own (which would skip the authorizer).
    assert!(r["PageFunction"]["Properties"].get("Events").is_none());
    let writes = ["Put", "Delete", "Send", "Start", "Stop", "Create", "Update"];
    for s in statements(&t).iter().filter(|s| s.role == "PageRole") {
        // Its own log lines aside.
        for a in s.actions.iter().filter(|a| !a.starts_with("logs:")) {
            let verb = a.split_once(':').map_or("", |(_, v)| v);
            assert!(
                !writes.iter().any(|w| verb.starts_with(w)),
                "the page may {a}"
            );
        }
    }
}
