//! The local package index: a wheelhouse directory on this machine, where a new file is
//! an upload event.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::ingress::package::UploadOutcome;
use crate::ingress::Ingress;
use crate::local::store::Store;

/// Polls the package directory; polling (not inotify) works the same on every
/// filesystem, network mounts included, and a 2 s delay is nothing next to a deploy.
pub async fn watch(ingress: Arc<Ingress>, store: Store) {
    let Some(dir) = ingress.config.server.package_dir.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        match scan(&ingress, &store, &dir, Utc::now()).await {
            Ok(outcomes) => {
                for o in outcomes {
                    match o {
                        UploadOutcome::Queued { location, jobs } => {
                            tracing::info!(%location, jobs = jobs.len(), "upload queued")
                        }
                        UploadOutcome::Ignored { location, reason } => {
                            tracing::info!(%location, %reason, "upload ignored")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "package directory scan failed; retrying")
            }
        }
    }
}

/// The local package directory: every file not seen before is an upload. The first
/// scan of a directory only takes note of what is already there, so pointing shipit
/// at an existing wheelhouse does not deploy its whole past.
pub async fn scan(
    ingress: &Ingress,
    store: &Store,
    dir: &Path,
    now: DateTime<Utc>,
) -> Result<Vec<UploadOutcome>, String> {
    let key = dir.display().to_string();
    let baseline = !store.has_seen_dir(&key).await.map_err(|e| e.to_string())?;
    let mut names = vec![];
    let mut entries = tokio::fs::read_dir(dir)
        .await
        .map_err(|e| format!("reading {key}: {e}"))?;
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| format!("reading {key}: {e}"))?
    {
        let is_file = entry
            .file_type()
            .await
            .map(|t| t.is_file())
            .unwrap_or(false);
        if let (true, Some(name)) = (is_file, entry.file_name().to_str()) {
            // Writers should rename finished files into place; dotfiles are partial.
            if !name.starts_with('.') {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    let err = |e: crate::deploy::ports::PortError| e.to_string();
    if baseline {
        tracing::info!(dir = %key, files = names.len(), "package directory baselined; files added from now on deploy");
        // The "." row marks the directory as baselined even while it is empty.
        names.push(".".into());
        store.mark_seen(&key, names, now).await.map_err(err)?;
        return Ok(vec![]);
    }
    let mut out = vec![];
    for name in store.unseen_files(&key, names).await.map_err(err)? {
        let location = dir.join(&name).display().to_string();
        // Marked seen only once queued: a queue outage retries the file next scan.
        out.push(ingress.upload_file(location, &name, now).await?);
        store.mark_seen(&key, vec![name], now).await.map_err(err)?;
    }
    Ok(out)
}
