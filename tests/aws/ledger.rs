//! History and locks: the same behaviour from Parameter Store (emulator) and SQLite, and
//! the chat commands that read and change them.

use std::sync::Arc;

use crate::helpers::*;
use chrono::{Duration, Utc};
use shipit::deploy::history::{rollback_target, Faulty};
use shipit::deploy::job::{DeployJob, Source};
use shipit::deploy::ports::{Ledger, LockInfo};
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
        ledger.record(j, now).await.unwrap();
    }
    let mut staging = job("9.9.9", "other-env");
    staging.env = "staging".into();
    ledger.record(&staging, now).await.unwrap();
    ledger.record(&j3, now).await.unwrap(); // a replayed step
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
        .mark_faulty("hello", "production", &mark(&j1, "first"))
        .await
        .unwrap();
    ledger
        .mark_faulty("hello", "production", &mark(&j1, "again"))
        .await
        .unwrap();
    ledger
        .mark_faulty("hello", "production", &mark(&j2, "second"))
        .await
        .unwrap();
    let faulty = ledger.faulty("hello", "production").await.unwrap();
    let reasons: Vec<_> = faulty.iter().map(|f| f.reason.as_str()).collect();
    assert_eq!(reasons, ["second", "first"]);
    assert!(ledger.faulty("hello", "staging").await.unwrap().is_empty());
    let why = rollback_target(&h, &faulty).unwrap_err();
    assert!(why.contains("marked faulty (1.0.0)"), "{why}");

    assert_eq!(
        ledger
            .try_lock("hello", "production", &manual("maintenance"), now)
            .await
            .unwrap(),
        Ok(())
    );
    let held = ledger
        .try_lock("hello", "production", &manual("second"), now)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(held.reason, "maintenance");
    assert_eq!(
        held_reason(ledger, now).await.as_deref(),
        Some("maintenance")
    );
    assert_eq!(
        ledger.lock_state("hello", "staging", now).await.unwrap(),
        None
    );
    assert_eq!(
        ledger
            .unlock("hello", "production")
            .await
            .unwrap()
            .unwrap()
            .reason,
        "maintenance"
    );
    assert_eq!(ledger.unlock("hello", "production").await.unwrap(), None);

    // A deploy ending releases its own lock, never someone else's.
    let deploying = LockInfo {
        job: Some(j1.id.clone()),
        ..manual("deploying")
    };
    assert_eq!(
        ledger
            .try_lock("hello", "production", &deploying, now)
            .await
            .unwrap(),
        Ok(())
    );
    ledger.release("hello", "production", &j2.id).await.unwrap();
    assert_eq!(held_reason(ledger, now).await.as_deref(), Some("deploying"));
    ledger.release("hello", "production", &j1.id).await.unwrap();
    assert_eq!(held_reason(ledger, now).await, None);
    assert_eq!(
        ledger
            .try_lock("hello", "production", &manual("by hand"), now)
            .await
            .unwrap(),
        Ok(())
    );
    ledger.release("hello", "production", &j1.id).await.unwrap();
    assert_eq!(held_reason(ledger, now).await.as_deref(), Some("by hand"));
    ledger.unlock("hello", "production").await.unwrap();

    // A crashed deploy's lock expires and is taken over.
    let crashed = LockInfo {
        expires: Some(now - Duration::seconds(1)),
        job: Some(j1.id.clone()),
        ..manual("deploying")
    };
    assert_eq!(
        ledger
            .try_lock("hello", "production", &crashed, now - Duration::seconds(60))
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        ledger.lock_state("hello", "production", now).await.unwrap(),
        None,
        "expired lock still reported"
    );
    assert_eq!(
        ledger
            .try_lock("hello", "production", &manual("after crash"), now)
            .await
            .unwrap(),
        Ok(())
    );
    assert_eq!(
        held_reason(ledger, now).await.as_deref(),
        Some("after crash")
    );
}

#[tokio::test]
async fn parameter_store_ledger_keeps_history_and_locks() {
    let ledger = ssm_ledger(aws_sdk_ssm::Client::new(&sdk().await));
    ledger_contract(&ledger).await;
}

#[tokio::test]
async fn sqlite_ledger_keeps_history_and_locks() {
    let dir = tempfile::tempdir().unwrap();
    ledger_contract(&Store::open(&dir.path().join("s.db")).unwrap()).await;
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
    ledger.record(&old, Utc::now()).await.unwrap();
    ledger.record(&live, Utc::now()).await.unwrap();

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
        refused.contains("locked by @roadrunner: db migration. Nothing was queued"),
        "{refused}"
    );
    assert!(say(&ingress, me, "rollback hello")
        .await
        .contains("Nothing was queued"));
    assert!(say(&ingress, me, "status hello")
        .await
        .contains("locked by @roadrunner: db migration"));
    assert!(fifo.drain().await.is_empty());
    assert!(say(&ingress, me, "unlock hello")
        .await
        .starts_with("Unlocked hello/production"));

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
