//! Package sources `serve` follows: a wheelhouse directory on this machine, and the
//! package indexes apps name; a new file in either is an upload event.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::secrets::Secrets;
use crate::config::PackageIndex;
use crate::ingress::index;
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
            Ok(outcomes) => log_outcomes(outcomes),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "package directory scan failed; retrying")
            }
        }
    }
}

/// The local package directory: every file not seen before is an upload (see `take_new`).
pub async fn scan(
    ingress: &Ingress,
    store: &Store,
    dir: &Path,
    now: DateTime<Utc>,
) -> Result<Vec<UploadOutcome>, String> {
    let key = dir.display().to_string();
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
    let files = names
        .into_iter()
        .map(|name| (dir.join(&name).display().to_string(), name))
        .collect();
    take_new(ingress, store, &key, files, now).await
}

/// The files of `source` (a directory, an index page) not seen before are uploads, each
/// `(location, file name)`. The first look at a source only takes note of what is there,
/// so pointing shipit at an existing wheelhouse or index does not deploy its whole past.
async fn take_new(
    ingress: &Ingress,
    store: &Store,
    source: &str,
    files: Vec<(String, String)>,
    now: DateTime<Utc>,
) -> Result<Vec<UploadOutcome>, String> {
    let err = |e: crate::deploy::ports::PortError| e.to_string();
    let baseline = !store.has_seen_dir(source).await.map_err(err)?;
    let mut names: Vec<String> = files.iter().map(|(_, name)| name.clone()).collect();
    if baseline {
        tracing::info!(%source, files = names.len(), "package source baselined; files added from now on deploy");
        // The "." row marks the source as baselined even while it is empty.
        names.push(".".into());
        store.mark_seen(source, names, now).await.map_err(err)?;
        return Ok(vec![]);
    }
    let mut out = vec![];
    for name in store.unseen_files(source, names).await.map_err(err)? {
        let location = files
            .iter()
            .find(|(_, n)| *n == name)
            .map_or_else(|| name.clone(), |(l, _)| l.clone());
        // Marked seen only once queued: a queue outage retries the file next time.
        out.push(ingress.upload_file(location, &name, now).await?);
        store.mark_seen(source, vec![name], now).await.map_err(err)?;
    }
    Ok(out)
}

fn log_outcomes(outcomes: Vec<UploadOutcome>) {
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

/// Follows the package index of every app that has one (`[apps.X.index]`), each at its
/// own pace. A failed look is logged and tried again at the next one.
pub async fn follow_indexes(ingress: Arc<Ingress>, store: Store, secrets: Arc<Secrets>) {
    let http = match reqwest::Client::builder()
        .timeout(INDEX_TIMEOUT)
        .user_agent(concat!("shipit/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(h) => h,
        Err(e) => return tracing::error!(error = %e, "no HTTP client for the package indexes"),
    };
    // Owned here, so that stopping this future (serve shutting down) stops them all.
    let mut followers = tokio::task::JoinSet::new();
    let indexes = ingress
        .config
        .apps
        .values()
        .filter_map(|app| app.index.clone().map(|i| (app.package.to_string(), i)));
    for (package, index) in indexes {
        let (ingress, store, secrets, http) =
            (ingress.clone(), store.clone(), secrets.clone(), http.clone());
        followers.spawn(async move {
            let look = IndexLook {
                http: &http,
                secrets: &secrets,
                index: &index,
                package: &package,
            };
            look.follow(&ingress, &store).await
        });
    }
    while followers.join_next().await.is_some() {}
}

/// How long one look at an index may take.
const INDEX_TIMEOUT: Duration = Duration::from_secs(20);

/// One look at `package`'s page of `index`.
pub struct IndexLook<'a> {
    pub http: &'a reqwest::Client,
    pub secrets: &'a Secrets,
    pub index: &'a PackageIndex,
    pub package: &'a str,
}

impl IndexLook<'_> {
    /// Looks every `poll_seconds`, for as long as it is let.
    async fn follow(&self, ingress: &Ingress, store: &Store) {
        let mut tick = tokio::time::interval(Duration::from_secs(self.index.poll_seconds));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.poll(ingress, store, Utc::now()).await {
                Ok(outcomes) => log_outcomes(outcomes),
                Err(e) => tracing::warn!(
                    index = %self.index.url,
                    package = %self.package,
                    error = %e,
                    "package index look failed; trying again"
                ),
            }
        }
    }

    /// Every file of the package's page not seen before is an upload (see `take_new`).
    pub async fn poll(
        &self,
        ingress: &Ingress,
        store: &Store,
        now: DateTime<Utc>,
    ) -> Result<Vec<UploadOutcome>, String> {
        let files = self.files().await?;
        let files = files.into_iter().map(|f| (f.url, f.filename)).collect();
        take_new(ingress, store, self.page()?.as_ref(), files, now).await
    }

    /// PEP 503 names the page by the normalized project name.
    fn page(&self) -> Result<reqwest::Url, String> {
        let name = self.package.to_ascii_lowercase().replace(['_', '.'], "-");
        reqwest::Url::parse(&self.index.url)
            .and_then(|u| u.join(&format!("{name}/")))
            .map_err(|e| format!("{}: {e}", self.index.url))
    }

    async fn files(&self) -> Result<Vec<index::IndexFile>, String> {
        let page = self.page()?;
        let mut req = self
            .http
            .get(page.clone())
            .header(reqwest::header::ACCEPT, index::ACCEPT);
        if let (Some(user), Some(password)) = (&self.index.username, &self.index.password) {
            let password = self
                .secrets
                .resolve(password)
                .await
                .map_err(|e| e.to_string())?;
            req = req.basic_auth(user, Some(password));
        }
        let resp = req.send().await.map_err(|e| http_error(&page, e))?;
        // A project nobody uploaded to yet.
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(vec![]);
        }
        if !resp.status().is_success() {
            return Err(format!("{page}: HTTP {}", resp.status()));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = resp.text().await.map_err(|e| http_error(&page, e))?;
        index::page_files(&content_type, &body, &page).map_err(|e| format!("{page}: {e}"))
    }
}

/// reqwest's own message hides the cause ("error sending request"): say it.
fn http_error(page: &reqwest::Url, e: reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("{page}: timed out");
    }
    let mut text = format!("{page}: {e}");
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}
