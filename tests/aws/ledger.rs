//! History and locks: the same behaviour from Parameter Store (emulator) and SQLite, and
//! the chat commands that read and change them.

use std::sync::Arc;

use crate::helpers::*;
use chrono::{Duration, Utc};
use shipit::deploy::history::{rollback_target, Faulty, HistoryEntry};
use shipit::deploy::job::{DeployJob, Source};
use shipit::deploy::lock::LEASE_SECONDS;
use shipit::deploy::ports::{Ledger, LockInfo, Renewal, Unlocked, Written};
use shipit::local::store::Store;

fn job(version: &str, nonce: &str) -> DeployJob {
    cli_job("ann", version, nonce)
}

fn manual(reason: &str) -> LockInfo {
    LockInfo {
        holder: "@ann".into(),
        reason: reason.into(),
        since: Utc::now(),
        expires: None,
        job: None,
        generation: 0,
        abort: None,
        written: Written::default(),
    }
}

async fn held_reason(ledger: &dyn Ledger, now: chrono::DateTime<Utc>) -> Option<String> {
    ledger
        .lock_state("hello", "production", now)
        .await
        .unwrap()
        .map(|l| l.reason)
}

async fn ledger_contract(ledger: &dyn Ledger) {
    let now = Utc::now();
    assert!(ledger
        .history("hello", "production", 10)
        .await
        .unwrap()
        .is_empty());
    assert!(rollback_target(&[], &[]).is_err());

    let (j1, j2, j3) = (job("1.0.0", "a"), job("1.1.0", "b"), job("1.1.0", "c"));
    for j in [&j1, &j2, &j3] {
        ledger
            .record(&HistoryEntry::new(j.clone(), now), Written::default())
            .await
            .unwrap();
    }
    let mut staging = job("9.9.9", "other-env");
    staging.env = "staging".into();
    ledger
        .record(&HistoryEntry::new(staging.clone(), now), Written::default())
        .await
        .unwrap();
    ledger
        .record(&HistoryEntry::new(j3.clone(), now), Written::default())
        .await
        .unwrap(); // a replayed step
    let h = ledger.history("hello", "production", 10).await.unwrap();
    let ids: Vec<_> = h.iter().map(|e| e.job.id.clone()).collect();
    assert_eq!(
        ids,
        [j3.id.clone(), j2.id.clone(), j1.id.clone()],
        "newest first, this env only"
    );
    assert_eq!(
        ledger
            .history("hello", "production", 2)
            .await
            .unwrap()
            .len(),
        2
    );
    // A re-deploy of the live version is skipped: rollback goes to the last other one.
    let (live, previous) = rollback_target(&h, &[]).unwrap();
    assert_eq!(
        (live.id.clone(), previous.id.clone()),
        (j3.id.clone(), j1.id.clone())
    );

    // Marks: per app+env, newest first, the first mark of a version kept; a rollback
    // never lands on a marked version.
    assert!(ledger
        .faulty("hello", "production")
        .await
        .unwrap()
        .is_empty());
    let mark = |version: &DeployJob, reason: &str| Faulty {
        version: version.version.clone(),
        job: j3.id.clone(),
        reason: reason.into(),
        at: now,
    };
    ledger
        .mark_faulty(
            "hello",
            "production",
            &mark(&j1, "first"),
            Written::default(),
        )
        .await
        .unwrap();
    ledger
        .mark_faulty(
            "hello",
            "production",
            &mark(&j1, "again"),
            Written::default(),
        )
        .await
        .unwrap();
    ledger
        .mark_faulty(
            "hello",
            "production",
            &mark(&j2, "second"),
            Written::default(),
        )
        .await
        .unwrap();
    let faulty = ledger.faulty("hello", "production").await.unwrap();
    let reasons: Vec<_> = faulty.iter().map(|f| f.reason.as_str()).collect();
    assert_eq!(reasons, ["second", "first"]);
    assert!(ledger.faulty("hello", "staging").await.unwrap().is_empty());
    let why = rollback_target(&h, &faulty).unwrap_err();
    assert!(why.contains("marked faulty (1.0.0)"), "{why}");

    locks_contract(ledger, &j1, &j2).await;
}

/// The lock rules every ledger keeps: generations that only grow, a lease only its holder
/// renews, take-over only once it lapsed, unlock only for chat locks, abort for deploys.
async fn locks_contract(ledger: &dyn Ledger, j1: &DeployJob, j2: &DeployJob) {
    let now = Utc::now();
    let (app, env) = ("hello", "production");
    let taken = ledger
        .try_lock(app, env, &manual("maintenance"), now)
        .await
        .unwrap()
        .unwrap();
    let held = ledger
        .try_lock(app, env, &manual("second"), now)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(
        (held.reason.as_str(), held.generation),
        ("maintenance", taken.generation)
    );
    assert_eq!(
        held_reason(ledger, now).await.as_deref(),
        Some("maintenance")
    );
    assert_eq!(ledger.lock_state(app, "staging", now).await.unwrap(), None);
    // Nothing to abort: no deploy holds it.
    assert_eq!(
        ledger.request_abort(app, env, "@bob", now).await.unwrap(),
        None
    );
    match ledger.unlock(app, env, now).await.unwrap() {
        Unlocked::Released(l) => assert_eq!(l.reason, "maintenance"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ledger.unlock(app, env, now).await.unwrap(),
        Unlocked::NotLocked
    );

    // A deploy's lock: a newer generation, renewed by its holder only, released by its
    // holder only, never by `unlock`.
    let lease = |job: &DeployJob, at: chrono::DateTime<Utc>| LockInfo {
        job: Some(job.id.clone()),
        since: at,
        expires: Some(LockInfo::lease_from(at, LEASE_SECONDS)),
        ..manual("deploying")
    };
    let first = ledger
        .try_lock(app, env, &lease(j1, now), now)
        .await
        .unwrap()
        .unwrap();
    assert!(first.generation > taken.generation, "generations only grow");
    let again = ledger
        .try_lock(app, env, &lease(j1, now), now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        again.generation, first.generation,
        "a replayed take keeps the lock"
    );
    assert!(matches!(
        ledger.unlock(app, env, now).await.unwrap(),
        Unlocked::Deploying(l) if l.job.as_ref() == Some(&j1.id)
    ));
    let later = now + Duration::seconds(LEASE_SECONDS * 10);
    assert_eq!(
        ledger
            .renew(
                app,
                env,
                &j1.id,
                first.generation,
                LockInfo::lease_from(later, LEASE_SECONDS)
            )
            .await
            .unwrap(),
        Renewal::Held { abort: None }
    );
    // Renewed, so still held long after its first lease would have lapsed.
    assert!(ledger
        .try_lock(app, env, &lease(j2, later), later)
        .await
        .unwrap()
        .is_err());
    assert!(matches!(
        ledger.renew(app, env, &j2.id, first.generation, LockInfo::lease_from(later, LEASE_SECONDS)).await.unwrap(),
        Renewal::Lost { holder: Some(h) } if h.job.as_ref() == Some(&j1.id)
    ));
    ledger
        .release(app, env, &j2.id, Written::default())
        .await
        .unwrap();
    assert_eq!(
        held_reason(ledger, later).await.as_deref(),
        Some("deploying")
    );

    // Abort: recorded on the deploy's lock (first asker kept), seen at its heartbeat.
    assert!(ledger
        .request_abort(app, env, "@bob", later)
        .await
        .unwrap()
        .is_some());
    ledger
        .request_abort(app, env, "@carol", later)
        .await
        .unwrap();
    assert_eq!(
        ledger
            .renew(
                app,
                env,
                &j1.id,
                first.generation,
                LockInfo::lease_from(later, LEASE_SECONDS)
            )
            .await
            .unwrap(),
        Renewal::Held {
            abort: Some("@bob".into())
        }
    );
    ledger
        .release(app, env, &j1.id, Written::default())
        .await
        .unwrap();
    assert_eq!(held_reason(ledger, later).await, None);

    // A holder that stops renewing is taken over once its lease lapses, with a newer
    // generation; it learns so at its next heartbeat. The abort asked of it is not the
    // new holder's.
    let crashed = ledger
        .try_lock(app, env, &lease(j1, later), later)
        .await
        .unwrap()
        .unwrap();
    ledger.request_abort(app, env, "@bob", later).await.unwrap();
    let lapsed = later + Duration::seconds(LEASE_SECONDS + 1);
    let successor = ledger
        .try_lock(app, env, &lease(j2, lapsed), lapsed)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(successor.generation, crashed.generation + 1);
    assert_eq!(successor.abort, None);
    assert!(matches!(
        ledger.renew(app, env, &j1.id, crashed.generation, LockInfo::lease_from(lapsed, LEASE_SECONDS)).await.unwrap(),
        Renewal::Lost { holder: Some(h) } if h.generation == successor.generation
    ));
    assert_eq!(
        ledger
            .renew(
                app,
                env,
                &j2.id,
                successor.generation,
                LockInfo::lease_from(lapsed, LEASE_SECONDS)
            )
            .await
            .unwrap(),
        Renewal::Held { abort: None }
    );
    ledger
        .release(app, env, &j2.id, Written::default())
        .await
        .unwrap();
    assert_eq!(ledger.lock_state(app, env, lapsed).await.unwrap(), None);
}

/// People's words on jobs (approvals): one each per job, the first kept; read back
/// oldest first, from a time on, per app+env; those too old for any rule go.
async fn words_contract(ledger: &dyn Ledger) {
    use shipit::deploy::approval::Approval;
    let now = Utc::now();
    let j = job("1.4.2", "words");
    let word = |by: &str, approved: bool, at: chrono::DateTime<Utc>| Approval {
        job: j.id.clone(),
        version: j.version.clone(),
        by: by.into(),
        approved,
        reason: (!approved).then(|| "not today".into()),
        at,
    };
    let (app, env) = ("hello", "production");
    let ancient = word("U1", true, now - Duration::days(40));
    assert!(ledger.approve(app, env, &ancient).await.unwrap());
    assert!(ledger
        .approve(app, env, &word("U2", true, now - Duration::seconds(2)))
        .await
        .unwrap());
    assert!(
        !ledger
            .approve(app, env, &word("U2", false, now))
            .await
            .unwrap(),
        "the first word stands"
    );
    assert!(ledger
        .approve(app, env, &word("U3", false, now))
        .await
        .unwrap());
    assert!(ledger
        .approve(app, "staging", &word("U4", true, now))
        .await
        .unwrap());
    let words = ledger
        .approvals(app, env, now - Duration::days(100))
        .await
        .unwrap();
    let said: Vec<(&str, bool)> = words.iter().map(|w| (w.by.as_str(), w.approved)).collect();
    assert_eq!(
        said,
        [("U2", true), ("U3", false)],
        "the 40-day-old word went"
    );
    assert_eq!(words[1].reason.as_deref(), Some("not today"));
    let later = ledger
        .approvals(app, env, now - Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(later.len(), 1);
}

#[tokio::test]
async fn parameter_store_ledger_keeps_history_and_locks() {
    let ledger = ssm_ledger(aws_sdk_ssm::Client::new(&sdk().await));
    ledger_contract(&ledger).await;
    words_contract(&ssm_ledger(aws_sdk_ssm::Client::new(&sdk().await))).await;
}

#[tokio::test]
async fn sqlite_ledger_keeps_history_and_locks() {
    let dir = tempfile::tempdir().unwrap();
    ledger_contract(&Store::open(&dir.path().join("s.db")).unwrap()).await;
    words_contract(&Store::open(&dir.path().join("w.db")).unwrap()).await;
}

async fn say(ingress: &shipit::ingress::Ingress, user: &str, text: &str) -> String {
    let now = Utc::now();
    let body = slack_form(user, "roadrunner", text, &unique("trigger"));
    let reply = ingress.slack(&slack_headers(&body, now), &body, now).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body["text"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn chat_status_history_lock_and_rollback_over_parameter_store_and_sqs() {
    let fifo = Fifo::new().await;
    let ledger = Arc::new(ssm_ledger(aws_sdk_ssm::Client::new(&sdk().await)));
    let ingress = ingress(Arc::new(fifo.queue()), ledger.clone()).await;
    let me = "U2CERLKJA";

    assert!(say(&ingress, me, "status hello")
        .await
        .contains("hello/production: nothing deployed yet"));
    let (old, live) = (job("1.0.0", "a"), job("1.1.0", "b"));
    ledger
        .record(
            &HistoryEntry::new(old.clone(), Utc::now()),
            Written::default(),
        )
        .await
        .unwrap();
    ledger
        .record(
            &HistoryEntry::new(live.clone(), Utc::now()),
            Written::default(),
        )
        .await
        .unwrap();

    let status = say(&ingress, me, "status").await;
    assert!(
        status.contains(&format!("hello/production: 1.1.0 (job {}", live.id)),
        "{status}"
    );
    assert!(
        status.contains("hello/staging: nothing deployed yet"),
        "{status}"
    );
    let history = say(&ingress, me, "history hello production").await;
    let (at_new, at_old) = (
        history.find("• 1.1.0").unwrap(),
        history.find("• 1.0.0").unwrap(),
    );
    assert!(at_new < at_old, "{history}");

    // A manual lock stops chat deploys, and only people who may deploy may take it.
    assert!(say(&ingress, "U999", "lock hello production nope")
        .await
        .contains("may not lock"));
    assert!(say(&ingress, me, "lock hello production db migration")
        .await
        .starts_with("Locked hello/production: db migration"));
    let refused = say(&ingress, me, "hello 1.2.0").await;
    assert!(
        refused.contains("locked by @roadrunner (U2CERLKJA): db migration. Nothing was queued"),
        "{refused}"
    );
    assert!(say(&ingress, me, "rollback hello")
        .await
        .contains("Nothing was queued"));
    assert!(say(&ingress, me, "status hello")
        .await
        .contains("locked by @roadrunner (U2CERLKJA): db migration"));
    assert!(fifo.drain().await.is_empty());
    assert!(say(&ingress, me, "unlock hello")
        .await
        .starts_with("Unlocked hello/production"));

    // A running deploy's lock: unlock leaves it, abort asks the deploy to stop.
    let running = LockInfo {
        job: Some(live.id.clone()),
        expires: Some(LockInfo::lease_from(Utc::now(), LEASE_SECONDS)),
        ..manual("deploying")
    };
    assert!(say(&ingress, me, "abort hello")
        .await
        .starts_with("No deploy of hello/production is running."));
    ledger
        .try_lock("hello", "production", &running, Utc::now())
        .await
        .unwrap()
        .unwrap();
    let refused = say(&ingress, me, "unlock hello").await;
    assert!(
        refused.contains("unlock removes only a lock taken with /deploy lock. To stop that deploy: /deploy abort hello production"),
        "{refused}"
    );
    assert!(say(&ingress, "U999", "abort hello")
        .await
        .contains("may not abort"));
    let text = say(&ingress, me, "abort hello").await;
    assert!(
        text.starts_with(&format!(
            "Aborting the deploy of hello/production (job {})",
            live.id
        )),
        "{text}"
    );
    let held = ledger
        .lock_state("hello", "production", Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(held.abort.as_deref(), Some("@roadrunner (U2CERLKJA)"));
    ledger
        .release("hello", "production", &live.id, Written::default())
        .await
        .unwrap();

    // Rollback re-sends the previous live job: its version, a new id, and what it restores.
    let text = say(&ingress, me, "rollback hello").await;
    assert!(
        text.starts_with("Queued rollback from 1.1.0 to hello 1.0.0 to production"),
        "{text}"
    );
    let msgs = fifo.drain().await;
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].0, "hello/production");
    let rb = DeployJob::from_json(&msgs[0].1).unwrap();
    assert_eq!(rb.version.as_str(), "1.0.0");
    assert_ne!(rb.id, old.id);
    match rb.source {
        Source::Rollback {
            restores,
            replaces,
            requested_via,
        } => {
            assert_eq!(
                (restores, replaces),
                (old.id.clone(), Some(live.id.clone()))
            );
            assert!(matches!(*requested_via, Source::Chat { ref user_id, .. } if user_id == me));
        }
        other => panic!("not a rollback: {other:?}"),
    }
}

/// Both contenders read the lapsed lock before either writes: exactly one may win, and
/// the other must learn who did.
async fn contenders_race(a: &dyn Ledger, b: &dyn Ledger) {
    let t0 = Utc::now();
    let (app, env) = ("hello", "production");
    let lease = |nonce: &str, at: chrono::DateTime<Utc>| LockInfo {
        job: Some(job("1.0.0", nonce).id),
        holder: format!("job {nonce}"),
        since: at,
        expires: Some(LockInfo::lease_from(at, LEASE_SECONDS)),
        ..manual("deploying")
    };
    for round in 0..5 {
        let crashed = lease(&format!("crashed{round}"), t0);
        a.try_lock(app, env, &crashed, t0).await.unwrap().unwrap();
        let lapsed = t0 + Duration::seconds(LEASE_SECONDS + 1);
        let (x, y) = (
            lease(&format!("x{round}"), lapsed),
            lease(&format!("y{round}"), lapsed),
        );
        let (rx, ry) = tokio::join!(
            a.try_lock(app, env, &x, lapsed),
            b.try_lock(app, env, &y, lapsed)
        );
        let (rx, ry) = (rx.unwrap(), ry.unwrap());
        let (won, lost) = match (rx, ry) {
            (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
            other => panic!("round {round}: both or neither won: {other:?}"),
        };
        assert_eq!(lost.job, won.job, "the loser must see the winner");
        assert_eq!(lost.generation, won.generation);
        a.release(app, env, won.job.as_ref().unwrap(), Written::default())
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_contenders_for_a_lapsed_lock_on_parameter_store_exactly_one_wins() {
    let sdk = sdk().await;
    let prefix = format!("/{}", unique("shipit"));
    let a = shipit::aws::ledger::SsmLedger::new(aws_sdk_ssm::Client::new(&sdk), &prefix);
    let b = shipit::aws::ledger::SsmLedger::new(aws_sdk_ssm::Client::new(&sdk), &prefix);
    contenders_race(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_contenders_for_a_lapsed_lock_in_sqlite_exactly_one_wins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    // Two connections, as two processes sharing the store would have.
    contenders_race(&Store::open(&path).unwrap(), &Store::open(&path).unwrap()).await;
}

/// A Parameter Store ledger of its own, and its prefix, with the emulator set to lose the
/// answer to the next PutParameter whose request holds `contains` (or the prefix): the
/// call is done, answered 500.
async fn losing_a_put(contains: &str) -> (shipit::aws::ledger::SsmLedger, String) {
    let prefix = format!("/{}", unique("shipit"));
    let ssm = aws_sdk_ssm::Client::new(&sdk().await);
    let contains = if contains.is_empty() {
        &prefix
    } else {
        contains
    };
    let lost = serde_json::json!({ "PutParameter": { "count": 1, "contains": contains } });
    crate::deploy::control(serde_json::json!({ "lost_answers": lost })).await;
    (shipit::aws::ledger::SsmLedger::new(ssm, &prefix), prefix)
}

/// A lock's create whose answer was lost is made again by the SDK, and finds the
/// parameter there: made by the first try, so the lock is the caller's, a job's or a
/// person's.
#[tokio::test]
async fn a_lock_whose_create_answer_was_lost_is_taken_all_the_same() {
    let _turn = crate::deploy::CONTROL.lock().await;
    let now = Utc::now();
    let deploy = LockInfo {
        job: Some(job("1.0.0", "lost").id),
        holder: "job lost".into(),
        since: now,
        expires: Some(LockInfo::lease_from(now, LEASE_SECONDS)),
        ..manual("deploying")
    };
    for asked in [deploy, manual("maintenance")] {
        let (ledger, _) = losing_a_put("").await;
        let taken = ledger.try_lock("hello", "production", &asked, now).await;
        crate::deploy::control(serde_json::json!({})).await;
        let taken = taken.unwrap().expect("taken, not held by another");
        assert_eq!(
            taken,
            LockInfo {
                generation: 1,
                ..asked
            }
        );
    }
}

/// A history write whose answer was lost is made again by the SDK: a second version of
/// the parameter with the same entry. The history still lists the deploy once.
#[tokio::test]
async fn a_history_write_made_twice_is_listed_once() {
    let _turn = crate::deploy::CONTROL.lock().await;
    let now = Utc::now();
    let (j1, j2, j3) = (job("1.0.0", "a"), job("1.1.0", "b"), job("1.2.0", "c"));
    let (ledger, prefix) = losing_a_put(j2.id.as_str()).await;
    let mut recorded = vec![];
    for j in [&j1, &j2, &j3] {
        recorded.push(
            ledger
                .record(&HistoryEntry::new(j.clone(), now), Written::default())
                .await,
        );
    }
    crate::deploy::control(serde_json::json!({})).await;
    assert!(recorded.iter().all(Result::is_ok), "{recorded:?}");
    let versions = aws_sdk_ssm::Client::new(&sdk().await)
        .get_parameter_history()
        .name(format!("{prefix}/live/hello/production"))
        .send()
        .await
        .unwrap();
    assert_eq!(versions.parameters().len(), 4, "j2 written twice");
    let h = ledger.history("hello", "production", 10).await.unwrap();
    let ids: Vec<_> = h.iter().map(|e| e.job.id.clone()).collect();
    assert_eq!(ids, [j3.id.clone(), j2.id.clone(), j1.id.clone()]);
    let two = ledger.history("hello", "production", 2).await.unwrap();
    assert_eq!(two.len(), 2);
}

/// A marked version stays marked however many marks come after it, within the 4 KB the
/// emulator holds Parameter Store to: the oldest marks lose their reasons first.
#[tokio::test]
async fn many_faulty_marks_fit_one_parameter_by_giving_up_the_oldest_reasons() {
    let ledger = ssm_ledger(aws_sdk_ssm::Client::new(&sdk().await));
    let now = Utc::now();
    let mut seen = Written::default();
    for i in 0..40 {
        let j = job(&format!("1.{i}.0"), "m");
        let mark = Faulty {
            version: j.version.clone(),
            job: j.id.clone(),
            reason: format!("n{i} failed its health check: {}", "x".repeat(300)),
            at: now,
        };
        seen = ledger
            .mark_faulty("hello", "production", &mark, seen)
            .await
            .expect("every mark fits");
    }
    let marks = ledger.faulty("hello", "production").await.unwrap();
    assert_eq!(marks.len(), 40, "no mark dropped");
    assert_eq!(marks[0].version.to_string(), "1.39.0");
    assert!(marks[0].reason.starts_with("n39 failed"), "{:?}", marks[0]);
    assert!(marks[39].reason.is_empty(), "{:?}", marks[39]);
    assert!(marks.iter().any(|m| m.version.to_string() == "1.0.0"));
}
