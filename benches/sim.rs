//! The AWS deploy simulated in virtual time (`tokio::time::pause`): the real engine, the
//! real deploy-step driver and the real SSM fleet logic, with Run Command answered by a
//! model of 1,000 nodes (installs 5–60 s, restart 2 s then its health check 1 s, both in
//! one command as the node waits for health) with Run
//! Command's limits (50 targets a command, MaxConcurrency, delivery 0.5–1 s, an API rate
//! with the SDK's retry of throttled calls, which gives up after the attempts our client
//! makes), each execution run as the state machine runs it (a failed step retried twice,
//! then the Abort task). Prints, from
//! one run each (virtual time, so the shared machine's load does not matter):
//! - makespan ÷ floor (slowest install + Σ over nodes of restart + health);
//! - one-at-a-time makespan (Σ install + restart + health) ÷ ours;
//! - SSM API calls per node (by API, polls by command kind), and how many were throttled
//!   and retried; deploy-step invocations; Step Functions history events (must stay
//!   under 25,000 per execution) and state transitions;
//! - the same with a health check failing on node 500: time until the rollback is done;
//! - the same deploy in batches `[1, 5, "20%"]`: one-at-a-time makespan ÷ batched;
//! - 10,000 nodes over 500 apps deployed at once, sharing the account's SSM rate: whether
//!   all finish, throttled attempts, calls that failed when their attempts ran out and
//!   steps that failed, and the most history events of one execution;
//! - 10,000 nodes in one environment, one at a time: the largest state a step returned
//!   (Step Functions' limit: 256 KB) and the largest value written as Parameter Store
//!   would hold it (history entry, faulty list; limit 4 KB), beside the 1,000-node runs'.
//!
//! `cargo bench --bench sim`

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use shipit::aws::fleet::{RunCommand, SendRequest, SsmFleet, Status};
use shipit::config::secrets::Secrets;
use shipit::config::Config;
use shipit::deploy::command::UNHEALTHY;
use shipit::deploy::history::HistoryEntry;
use shipit::deploy::job::{DeployJob, Source};
use shipit::deploy::ports::{Ledger, PortError, Throttled};
use shipit::deploy::status::JobStatus;
use shipit::deploy::version::Version;
use shipit::drive::step::{StepInput, StepState, Stepper, TaskError};
use shipit::drive::{Driver, Outbound};
use shipit::local::store::Store;
use tokio::time::Instant;

const NODES: usize = 1000;
const RESTART: Duration = Duration::from_secs(2);
const HEALTH: Duration = Duration::from_secs(1);
/// Every SSM API call takes this long (a typical in-region round trip), so polls do not
/// land exactly when commands end.
const CALL_LATENCY: Duration = Duration::from_millis(50);
/// The account's SSM API rate, a token bucket (an assumption: AWS meters each API and
/// does not publish every rate; a busy account shares it with its other tools).
const CALLS_PER_SECOND: f64 = 20.0;
const CALL_BURST: f64 = 40.0;
/// The SDK's retry of a throttled call as `run::aws::ssm_client` configures it: at most
/// `ATTEMPTS` attempts, exponential back-off with full jitter from the SDK's default
/// initial back-off to its cap; then the call fails with the throttling error.
const ATTEMPTS: u32 = 8;
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(20);
/// Run Command delivers to a node's agent after this, plus up to as much again (jitter).
const DELIVERY: Duration = Duration::from_millis(500);
/// Step Functions history events: per step, the Task's five (entered, scheduled, started,
/// succeeded, exited) and the Choice's two; per loop the Wait's two; plus the execution's
/// start and end and the final state's two. tests/aws/deploy.rs sees 20 for 2 steps.
fn history_events(steps: u64) -> u64 {
    steps * 7 + (steps - 1) * 2 + 4
}

/// State transitions, what Step Functions bills: every state entered, so per step the
/// Task and the Choice, per loop the Wait, and the final Succeed or Fail.
fn state_transitions(steps: u64) -> u64 {
    steps * 2 + (steps - 1) + 1
}

struct SentCommand {
    comment: String,
    script: String,
    nodes: Vec<String>,
    at: Instant,
    /// MaxConcurrency as a count (a percentage taken of the targets).
    concurrency: usize,
}

/// MaxConcurrency: a count, or a percentage of `targets` (at least 1).
fn concurrency(value: &str, targets: usize) -> usize {
    match value.strip_suffix('%') {
        Some(p) => (p.parse::<usize>().unwrap() * targets / 100).max(1),
        None => value.parse().unwrap(),
    }
}

/// Run Command in virtual time, with its limits: at most 50 targets a command, which start
/// in order at most `MaxConcurrency` at once; an invocation ends `duration` after it
/// started; the health check of `failing` on the new version (2.0.0) fails.
struct Model {
    install: BTreeMap<String, Duration>,
    /// Nodes per app when the nodes are shared out among apps `a0`, `a1`, … by their
    /// `shipit:app` tag; 0: every node is `hello`'s.
    per_app: usize,
    failing: Option<String>,
    commands: Mutex<Vec<SentCommand>>,
    /// Calls by API, and for ListCommandInvocations by the command kind it looked at.
    by_api: Mutex<BTreeMap<String, u64>>,
    /// Attempts refused for the rate.
    throttled: AtomicU64,
    /// Calls that failed when the SDK's attempts ran out.
    gave_up: AtomicU64,
    /// (tokens, when last counted)
    bucket: Mutex<(f64, Instant)>,
    rng: Mutex<u64>,
}

/// A fixed linear congruential sequence: the same "random" numbers every run.
fn next(x: &mut u64) -> u64 {
    *x = x
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    *x >> 33
}

impl Model {
    fn shared(failing: Option<usize>, nodes: usize, per_app: usize) -> Model {
        let mut x: u64 = 42;
        let install = (0..nodes)
            .map(|i| (node(i), Duration::from_secs(5 + next(&mut x) % 56)))
            .collect();
        Model {
            install,
            per_app,
            failing: failing.map(node),
            commands: Mutex::new(vec![]),
            by_api: Mutex::new(BTreeMap::new()),
            throttled: AtomicU64::new(0),
            gave_up: AtomicU64::new(0),
            bucket: Mutex::new((CALL_BURST, Instant::now())),
            rng: Mutex::new(7),
        }
    }

    /// `calls` API calls to `api`, one after another, each retried as the SDK does while
    /// the rate refuses it, and failing with the throttling error when its attempts run out.
    async fn call(&self, calls: u64, api: &str) -> Result<(), PortError> {
        *self.by_api.lock().unwrap().entry(api.into()).or_default() += calls;
        for _ in 0..calls {
            let mut attempt = 0;
            loop {
                tokio::time::sleep(CALL_LATENCY).await;
                if self.token() {
                    break;
                }
                self.throttled.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                if attempt == ATTEMPTS {
                    self.gave_up.fetch_add(1, Ordering::Relaxed);
                    // As the SDK adapter reports it (`aws::sdk_err`).
                    let said = format!("SSM {api}: ThrottlingException: Rate exceeded");
                    return Err(Box::new(Throttled(said)));
                }
                let ceiling = RETRY_CAP.min(RETRY_BASE * 2u32.pow(attempt - 1));
                let jitter = next(&mut self.rng.lock().unwrap()) % 1000;
                tokio::time::sleep(ceiling.mul_f64(jitter as f64 / 1000.0)).await;
            }
        }
        Ok(())
    }

    /// API calls made, throttled retries aside.
    fn calls(&self) -> u64 {
        self.by_api.lock().unwrap().values().sum()
    }

    fn token(&self) -> bool {
        let mut b = self.bucket.lock().unwrap();
        let now = Instant::now();
        let tokens = (b.0 + (now - b.1).as_secs_f64() * CALLS_PER_SECOND).min(CALL_BURST);
        *b = (tokens, now);
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// When Run Command reaches `node` for a command sent at `at`.
    fn delivered(&self, at: Instant, id: usize, node: &str) -> Instant {
        let mut x = id as u64
            ^ node
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(b as u64));
        at + DELIVERY + DELIVERY.mul_f64((next(&mut x) % 1000) as f64 / 1000.0)
    }

    /// A failing node checks for the whole 1 s health timeout, then once more.
    fn duration(&self, kind: &str, node: &str, version: &str) -> Duration {
        match kind {
            "install" => self.install[node],
            "restart" if self.fails(node, version) => RESTART + 2 * HEALTH,
            "restart" => RESTART + HEALTH,
            _ => HEALTH,
        }
    }

    fn fails(&self, node: &str, version: &str) -> bool {
        version == "2.0.0" && Some(node) == self.failing.as_deref()
    }
}

/// The node's command and the version it checks: "restart" (with its node's health
/// checks), "install", "health", from the lines of the script the config renders.
fn command_of(script: &str) -> (&'static str, &str) {
    // A line may open the subshell of the node's run-once guard.
    let line = |word: &str| {
        script
            .lines()
            .find_map(|l| l.trim_start_matches("( ").strip_prefix(word))
    };
    let version = line("health ").unwrap_or("").trim();
    match (line("restart"), line("install ")) {
        (Some(_), _) => ("restart", version),
        (None, Some(_)) => ("install", version),
        (None, None) => ("health", version),
    }
}

fn node(i: usize) -> String {
    format!("i-{i:017x}")
}

#[async_trait]
impl RunCommand for Model {
    async fn online_nodes(
        &self,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<String>, PortError> {
        let app = tags.get("shipit:app").and_then(|a| a.strip_prefix('a'));
        let nodes: Vec<String> = match (app.and_then(|a| a.parse::<usize>().ok()), self.per_app) {
            (Some(k), per) if per > 0 => (k * per..(k + 1) * per).map(node).collect(),
            _ => self.install.keys().cloned().collect(),
        };
        // DescribeInstanceInformation pages 50 nodes at a time.
        self.call(
            nodes.len().div_ceil(50) as u64,
            "DescribeInstanceInformation",
        )
        .await?;
        Ok(nodes)
    }

    async fn send(&self, req: &SendRequest) -> Result<String, PortError> {
        self.call(1, "SendCommand").await?;
        // What SendCommand refuses (ValidationException).
        if req.nodes.len() > 50 || req.comment.chars().count() > 100 {
            return Err(format!(
                "ValidationException: {} ids, comment {:?}",
                req.nodes.len(),
                req.comment
            )
            .into());
        }
        let mut cmds = self.commands.lock().unwrap();
        cmds.push(SentCommand {
            comment: req.comment.clone(),
            script: req.script.clone(),
            nodes: req.nodes.clone(),
            at: Instant::now(),
            concurrency: concurrency(&req.max_concurrency, req.nodes.len()),
        });
        Ok((cmds.len() - 1).to_string())
    }

    async fn find(
        &self,
        _: &str,
        comment: &str,
        _: DateTime<Utc>,
    ) -> Result<Option<String>, PortError> {
        self.call(1, "ListCommands").await?;
        let cmds = self.commands.lock().unwrap();
        Ok(cmds
            .iter()
            .position(|c| c.comment == comment)
            .map(|i| i.to_string()))
    }

    async fn statuses(&self, id: &str) -> Result<Vec<(String, Status)>, PortError> {
        let id: usize = id.parse()?;
        // ListCommandInvocations pages 50 invocations at a time.
        let (pages, kind) = {
            let cmds = self.commands.lock().unwrap();
            let kind = command_of(&cmds[id].script).0;
            (cmds[id].nodes.len().div_ceil(50), kind)
        };
        self.call(pages as u64, &format!("ListCommandInvocations ({kind})"))
            .await?;
        let cmds = self.commands.lock().unwrap();
        let c = &cmds[id];
        let version = command_of(&c.script).1;
        // Targets start in order as MaxConcurrency lets them, each once delivered: it takes
        // the first free slot.
        let mut slots = vec![c.at; c.concurrency.min(c.nodes.len()).max(1)];
        let ends: Vec<Instant> = c
            .nodes
            .iter()
            .map(|n| {
                let slot = slots.iter_mut().min().unwrap();
                let took = self.duration(kind, n, version);
                *slot = (*slot).max(self.delivered(c.at, id, n)) + took;
                *slot
            })
            .collect();
        Ok(c.nodes
            .iter()
            .zip(ends)
            .map(|(n, end)| {
                let status = if Instant::now() < end {
                    Status::Running
                } else if kind != "install" && self.fails(n, version) {
                    Status::Failed
                } else {
                    Status::Succeeded
                };
                (n.clone(), status)
            })
            .collect())
    }

    async fn outcome(&self, id: &str, _: &str) -> Result<Option<(Option<i32>, String)>, PortError> {
        self.call(1, "GetCommandInvocation").await?;
        let restart =
            command_of(&self.commands.lock().unwrap()[id.parse::<usize>()?].script).0 == "restart";
        let mut said = "HTTP 502 from /health".to_string();
        if restart {
            said.push_str(&format!("\n{UNHEALTHY} 2 checks in 1 s"));
        }
        Ok(Some((Some(1), said)))
    }
}

struct Run {
    makespan: Duration,
    /// The largest state a step returned, as JSON (what Step Functions carries).
    most_state: usize,
    /// The largest history entry or faulty list, as the SSM ledger writes them.
    most_value: usize,
    status: Option<JobStatus>,
    steps: u64,
    ssm_calls: u64,
    throttled: u64,
}

/// A deploy of `version` of `app`'s hello-app to production, asked for by name.
fn sim_job(app: &str, version: &str, now: DateTime<Utc>) -> DeployJob {
    DeployJob::new(
        app,
        "production",
        "hello-app".parse().unwrap(),
        Version::parse(version).unwrap(),
        Source::Cli {
            user: "sim".into(),
            nonce: version.into(),
        },
        now,
    )
}

async fn simulate(
    nodes: usize,
    failing: Option<usize>,
    rollout: &str,
    store: &Path,
) -> (Run, Arc<Model>) {
    let text = r#"
[apps.hello]
package = "hello-app"
install = "install {package}=={version}"
restart = "restart"
health = "health {version}"
[apps.hello.rollout]
health_timeout_seconds = 1
ROLLOUT
[apps.hello.environments.production]
ssm_tags = { "shipit:app" = "hello" }
"#
    .replace("ROLLOUT", rollout);
    let config = Arc::new(Config::parse(&text, Path::new("sim.toml")).unwrap());
    let ledger = Arc::new(Store::open(store).unwrap());
    let job = |v: &str, now| sim_job("hello", v, now);
    let base = (Utc::now(), Instant::now());
    let clock = Arc::new(move || base.0 + chrono::Duration::from_std(base.1.elapsed()).unwrap());
    ledger
        .record(
            &HistoryEntry::new(job("1.0.0", clock()), clock()),
            Default::default(),
        )
        .await
        .unwrap();
    let model = Arc::new(Model::shared(failing, nodes, 0));
    let out = Outbound::new(config.clone(), Arc::new(Secrets::new(None)));
    let fleet = Arc::new(SsmFleet::new(model.clone(), config.clone()));
    let driver = Driver::new(config, ledger.clone(), fleet, None, out);
    let stepper = Stepper::new(driver, Duration::from_secs(60)).with_clock(clock.clone());
    let start = Instant::now();
    let (status, steps, _, most_state) = execute(&stepper, job("2.0.0", clock())).await;
    let makespan = start.elapsed();
    // Each as `aws::ledger::SsmLedger` writes it: one entry a parameter, the marks in one.
    let entries = ledger.history("hello", "production", 10).await.unwrap();
    let faulty = ledger.faulty("hello", "production").await.unwrap();
    let most_value = entries
        .iter()
        .map(|e| serde_json::to_string(e).unwrap().len())
        .chain([serde_json::to_string(&faulty).unwrap().len()])
        .max()
        .unwrap();
    let run = Run {
        makespan,
        most_state,
        most_value,
        status,
        steps,
        ssm_calls: model.calls(),
        throttled: model.throttled.load(Ordering::Relaxed),
    };
    (run, model)
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (ok, model) = rt.block_on(simulate(NODES, None, "", &dir.path().join("a.db")));
    let max_install = model.install.values().max().unwrap().as_secs_f64();
    let sum_install: f64 = model.install.values().map(Duration::as_secs_f64).sum();
    let per_node = (RESTART + HEALTH).as_secs_f64();
    let floor = max_install + NODES as f64 * per_node;
    let serial = sum_install + NODES as f64 * per_node;
    let ours = ok.makespan.as_secs_f64();
    println!(
        "simulated deploy of {NODES} nodes (virtual time): {:?}",
        ok.status
    );
    println!("  makespan {ours:.0} s; floor {floor:.0} s (slowest install {max_install:.0} s + {NODES} × {per_node:.0} s)");
    println!("  makespan ÷ floor                  {:.3}", ours / floor);
    // Each restart (with its node's health check) and the install also wait for their
    // delivery (mean 1.5 × DELIVERY).
    let delivered = floor + (NODES + 1) as f64 * 1.5 * DELIVERY.as_secs_f64();
    println!(
        "  makespan ÷ floor with delivery    {:.3} ({delivered:.0} s)",
        ours / delivered
    );
    println!(
        "  one-at-a-time ({serial:.0} s) ÷ ours   {:.1}",
        serial / ours
    );
    println!(
        "  SSM calls per node                {:.2}",
        ok.ssm_calls as f64 / NODES as f64
    );
    for (api, calls) in model.by_api.lock().unwrap().iter() {
        println!("    {api:<33} {:.2}", *calls as f64 / NODES as f64);
    }
    println!("  attempts throttled                {}", ok.throttled);
    println!("  deploy-step invocations           {}", ok.steps);
    println!(
        "  Step Functions history events     {} (limit 25,000); state transitions {}",
        history_events(ok.steps),
        state_transitions(ok.steps)
    );
    println!(
        "  largest state returned {} bytes; largest Parameter Store value {} bytes",
        ok.most_state, ok.most_value
    );
    assert_eq!(ok.status, Some(JobStatus::Succeeded));

    let (bad, _) = rt.block_on(simulate(NODES, Some(500), "", &dir.path().join("b.db")));
    println!("health check failing on node 500: {:?}", bad.status);
    // Its floor: forward to node 500, then the old version reinstalled and 500 restarts.
    let bad_floor = 2.0 * (max_install + 500.0 * per_node);
    println!(
        "  time to a finished rollback       {:.0} s; ÷ its floor ({bad_floor:.0} s) {:.3}",
        bad.makespan.as_secs_f64(),
        bad.makespan.as_secs_f64() / bad_floor
    );
    println!(
        "  SSM calls per node                {:.2}",
        bad.ssm_calls as f64 / NODES as f64
    );
    println!(
        "  Step Functions history events     {}",
        history_events(bad.steps)
    );
    println!(
        "  largest state returned {} bytes; largest Parameter Store value {} bytes (the faulty list)",
        bad.most_state, bad.most_value
    );

    let batches = r#"batches = [1, 5, "20%"]"#;
    let (fast, _) = rt.block_on(simulate(NODES, None, batches, &dir.path().join("c.db")));
    println!("{batches}: {:?}", fast.status);
    println!(
        "  makespan {:.0} s; one at a time ÷ batched            {:.1}",
        fast.makespan.as_secs_f64(),
        ours / fast.makespan.as_secs_f64()
    );
    println!(
        "  SSM calls per node                {:.2}",
        fast.ssm_calls as f64 / NODES as f64
    );
    println!(
        "  Step Functions history events     {}; state transitions {}",
        history_events(fast.steps),
        state_transitions(fast.steps)
    );
    assert_eq!(fast.status, Some(JobStatus::Succeeded));

    let (apps, per_app) = (500, 20);
    let many = rt.block_on(simulate_many(apps, per_app, &dir.path().join("d.db")));
    println!(
        "{} nodes over {apps} apps, one execution each at once, SSM shared at {CALLS_PER_SECOND} calls/s:",
        apps * per_app
    );
    println!(
        "  succeeded {} of {apps}; makespan {:.0} s",
        many.succeeded,
        many.makespan.as_secs_f64()
    );
    println!(
        "  SSM calls per node {:.2}; attempts throttled {} ({:.2} per call)",
        many.ssm_calls as f64 / (apps * per_app) as f64,
        many.throttled,
        many.throttled as f64 / many.ssm_calls as f64
    );
    println!(
        "  calls failed after the SDK's {ATTEMPTS} attempts {}; steps failed {}",
        many.gave_up, many.failed_steps
    );
    println!(
        "  history events per execution: most {} (limit 25,000); state transitions, all {}",
        history_events(many.most_steps),
        many.transitions
    );
    assert_eq!(many.succeeded, apps);
    assert!(history_events(many.most_steps) < 25_000);

    let big = 10_000;
    let (one, _) = rt.block_on(simulate(big, None, "", &dir.path().join("e.db")));
    println!(
        "{big} nodes in one environment, one at a time: {:?}",
        one.status
    );
    println!(
        "  makespan {:.0} s; deploy-step invocations {}; history events {} (limit 25,000)",
        one.makespan.as_secs_f64(),
        one.steps,
        history_events(one.steps)
    );
    println!(
        "  largest state returned {} bytes (limit 262,144); largest Parameter Store value {} bytes (limit 4,096)",
        one.most_state, one.most_value
    );
    assert_eq!(one.status, Some(JobStatus::Succeeded));
    assert!(one.most_state <= 256 * 1024 && one.most_value <= 4096);
}

struct Many {
    makespan: Duration,
    succeeded: usize,
    most_steps: u64,
    transitions: u64,
    ssm_calls: u64,
    throttled: u64,
    gave_up: u64,
    failed_steps: u64,
}

/// `apps` apps of `per_app` nodes each, all deployed at once (one execution per app+env),
/// sharing one account's SSM rate.
async fn simulate_many(apps: usize, per_app: usize, store: &Path) -> Many {
    let mut text = String::new();
    for k in 0..apps {
        text.push_str(&format!(
            r#"
[apps.a{k}]
package = "hello-app"
install = "install {{package}}=={{version}}"
restart = "restart"
health = "health {{version}}"
[apps.a{k}.rollout]
health_timeout_seconds = 1
[apps.a{k}.environments.production]
ssm_tags = {{ "shipit:app" = "a{k}" }}
"#
        ));
    }
    let config = Arc::new(Config::parse(&text, Path::new("sim.toml")).unwrap());
    let ledger = Arc::new(Store::open(store).unwrap());
    let base = (Utc::now(), Instant::now());
    let clock = Arc::new(move || base.0 + chrono::Duration::from_std(base.1.elapsed()).unwrap());
    let job = sim_job;
    for k in 0..apps {
        let old = job(&format!("a{k}"), "1.0.0", clock());
        ledger
            .record(&HistoryEntry::new(old, clock()), Default::default())
            .await
            .unwrap();
    }
    let model = Arc::new(Model::shared(None, apps * per_app, per_app));
    let out = Outbound::new(config.clone(), Arc::new(Secrets::new(None)));
    let fleet = Arc::new(SsmFleet::new(model.clone(), config.clone()));
    let driver = Driver::new(config, ledger, fleet, None, out);
    let stepper = Arc::new(Stepper::new(driver, Duration::from_secs(60)).with_clock(clock.clone()));
    let start = Instant::now();
    let runs: Vec<_> = (0..apps)
        .map(|k| {
            let (stepper, clock) = (stepper.clone(), clock.clone());
            let job = job(&format!("a{k}"), "2.0.0", clock());
            tokio::spawn(async move { execute(&stepper, job).await })
        })
        .collect();
    let mut many = Many {
        makespan: Duration::ZERO,
        succeeded: 0,
        most_steps: 0,
        transitions: 0,
        ssm_calls: 0,
        throttled: 0,
        gave_up: 0,
        failed_steps: 0,
    };
    for r in runs {
        let (status, steps, failed, _) = r.await.unwrap();
        many.failed_steps += failed;
        many.succeeded += usize::from(status == Some(JobStatus::Succeeded));
        many.most_steps = many.most_steps.max(steps);
        many.transitions += state_transitions(steps);
    }
    many.makespan = start.elapsed();
    many.ssm_calls = model.calls();
    many.throttled = model.throttled.load(Ordering::Relaxed);
    many.gave_up = model.gave_up.load(Ordering::Relaxed);
    many
}

/// One execution as the state machine (infra/statemachine/deploy.asl.json) runs it: a
/// step that fails is retried twice, 2 s then 4 s later, and told it is a retry; after a
/// third failure the Catch hands the error to the Abort task, a step that ends the deploy.
/// Returns the job's status, the steps taken, how many of them failed, and the largest
/// state a step returned (bytes of JSON).
async fn execute(stepper: &Stepper, job: DeployJob) -> (Option<JobStatus>, u64, u64, usize) {
    let mut state = StepState::start(job);
    let (mut steps, mut failed, mut most) = (0, 0, 0);
    while !state.done {
        let mut attempt = 0;
        state = loop {
            steps += 1;
            let input = StepInput::Attempt {
                state: state.clone(),
                attempt,
            };
            match stepper.step(input).await {
                Ok(next) => break next,
                Err(_) if attempt < 2 => {
                    failed += 1;
                    tokio::time::sleep(Duration::from_secs(2 << attempt)).await;
                    attempt += 1;
                }
                Err(e) => {
                    failed += 1;
                    steps += 1;
                    let mut aborted = state.clone();
                    aborted.error = Some(TaskError {
                        error: "Error".into(),
                        cause: e.to_string(),
                    });
                    break stepper.step(StepInput::from(aborted)).await.unwrap();
                }
            }
        };
        most = most.max(serde_json::to_string(&state).unwrap().len());
        tokio::time::sleep(Duration::from_secs(state.wait_seconds)).await;
    }
    (state.status, steps, failed, most)
}
