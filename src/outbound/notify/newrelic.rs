//! New Relic: a change-tracking deployment marker (NerdGraph) when a version goes live.

use serde_json::json;

use super::render::*;
use super::*;

impl Round<'_> {
    /// A change-tracking deployment when a version goes live.
    pub(super) async fn newrelic(&self, memo: &NotifyState) {
        let Some(NewRelicTarget {
            entity_guid,
            api_key,
            endpoint,
        }) = &self.app.notify.newrelic
        else {
            return;
        };
        let Some(Outcome::Succeeded { .. }) = finished(self.notices) else {
            return;
        };
        let job = &self.deploy.job;
        let mut deployment = json!({
            "entityGuid": entity_guid,
            "version": job.version.as_str(),
            "user": job.requested_by,
            "timestamp": memo.started_at.unwrap_or(self.now).timestamp_millis(),
            "deploymentType": "ROLLING",
            "groupId": job.id.as_str(),
            "description": format!("{} {} → {} by shipit ({})", job.app, change(self.deploy), job.env, trigger(&job.source)),
            "changelog": format!("{} → {}", self.deploy.previous.as_ref().map_or("nothing", |v| v.as_str()), job.version),
        });
        if let Some(commit) = commit(&job.source) {
            deployment["commit"] = json!(commit);
        }
        let query = concat!(
            "mutation($deployment: ChangeTrackingDeploymentInput!) { ",
            "changeTrackingCreateDeployment(deployment: $deployment) ",
            "{ deploymentId entityGuid } }"
        );
        let body = json!({"query": query, "variables": {"deployment": deployment}});
        let result = async {
            let key = self.secret(api_key).await?;
            let reply = self
                .send(|| {
                    self.notifier
                        .http
                        .post(endpoint)
                        .header("API-Key", &key)
                        .json(&body)
                })
                .await?;
            // GraphQL reports its errors in a 200.
            match reply.get("errors") {
                Some(errors) => Err(format!("NerdGraph: {errors}")),
                None => Ok(()),
            }
        };
        if let Err(e) = result.await {
            self.warn("newrelic", &e);
        }
    }
}
