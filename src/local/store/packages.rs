//! Which files of the package directory were seen already.

use chrono::{DateTime, Utc};
use rusqlite::params;

use super::Store;
use crate::deploy::ports::PortError;

impl Store {
    /// The names in `dir` not seen before.
    pub async fn unseen_files(
        &self,
        dir: &str,
        names: Vec<String>,
    ) -> Result<Vec<String>, PortError> {
        let dir = dir.to_string();
        self.with(move |c| {
            let mut st =
                c.prepare("SELECT EXISTS(SELECT 1 FROM seen_files WHERE dir = ?1 AND name = ?2)")?;
            let mut new = vec![];
            for name in names {
                if !st.query_row(params![dir, name], |r| r.get::<_, bool>(0))? {
                    new.push(name);
                }
            }
            Ok(new)
        })
        .await
    }

    pub async fn mark_seen(
        &self,
        dir: &str,
        names: Vec<String>,
        now: DateTime<Utc>,
    ) -> Result<(), PortError> {
        let dir = dir.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            for name in names {
                tx.execute(
                    "INSERT OR IGNORE INTO seen_files (dir, name, seen_at) VALUES (?1, ?2, ?3)",
                    params![dir, name, now.to_rfc3339()],
                )?;
            }
            tx.commit()
        })
        .await
    }

    pub async fn has_seen_dir(&self, dir: &str) -> Result<bool, PortError> {
        let dir = dir.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT EXISTS(SELECT 1 FROM seen_files WHERE dir = ?1)",
                params![dir],
                |r| r.get(0),
            )
        })
        .await
    }
}
