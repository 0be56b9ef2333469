//! A job's story from what the store keeps: the job row, its notices and its commands.

use rusqlite::params;

use super::{time, Store};
use crate::deploy::job::JobId;
use crate::deploy::ports::{PortError, Stories};
use crate::deploy::story::{Kept, Ran, Story};

type CommandRow = (String, String, Option<String>, Option<String>, String);

#[async_trait::async_trait]
impl Stories for Store {
    async fn story(&self, id: &JobId) -> Result<Option<Story>, PortError> {
        let Some(q) = self.job(id).await? else {
            return Ok(None);
        };
        let (job_id, pattern) = (id.to_string(), format!("{id}:%"));
        let (notices, commands): (Vec<(String, String)>, Vec<CommandRow>) = self
            .with(move |c| {
                let notices = c
                    .prepare("SELECT notice, at FROM notices WHERE job_id = ?1 ORDER BY seq")?
                    .query_map(params![job_id], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let commands = c
                    .prepare(
                        "SELECT key, node, started_at, result, updated_at FROM commands
                         WHERE key LIKE ?1",
                    )?
                    .query_map(params![pattern], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })?
                    .collect::<Result<_, _>>()?;
                Ok((notices, commands))
            })
            .await?;
        let notices = notices
            .iter()
            .map(|(n, at)| Ok((time(at)?, serde_json::from_str(n)?)))
            .collect::<Result<_, PortError>>()?;
        let ran = commands
            .into_iter()
            .map(|(key, node, started, result, updated)| {
                let result = result.map(|r| serde_json::from_str(&r)).transpose()?;
                Ok(Ran {
                    key,
                    node,
                    started_at: started.as_deref().map(time).transpose()?,
                    ended_at: result.is_some().then(|| time(&updated)).transpose()?,
                    result,
                })
            })
            .collect::<Result<_, PortError>>()?;
        Ok(Some(Story::tell(Kept {
            job: q.job,
            status: q.status,
            reason: q.reason,
            queued_at: q.queued_at,
            started_at: q.started_at,
            ended_at: q.ended_at,
            notices,
            ran,
        })))
    }
}
