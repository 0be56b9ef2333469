//! What a warm Lambda keeps between events, rebuilt when it gets old: the config and the
//! secrets it names are read again, so that a deployer removed from the config, or a
//! rotated secret, counts within `SHIPIT_CONFIG_MAX_AGE_SECONDS` (default 60) instead of
//! at the next cold start.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

type Build<T> =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<T>> + Send>> + Send + Sync>;

pub const DEFAULT_MAX_AGE_SECONDS: u64 = 60;

pub struct Fresh<T> {
    build: Build<T>,
    max_age: Duration,
    current: Mutex<Option<(Arc<T>, Instant)>>,
}

impl<T: Send + Sync> Fresh<T> {
    /// Builds the first value now, so that a function whose config is broken fails at
    /// start as before.
    pub async fn new<F, Fut>(max_age: Duration, build: F) -> anyhow::Result<Fresh<T>>
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<T>> + Send + 'static,
    {
        let build: Build<T> = Box::new(move || Box::pin(build()));
        let first = build().await?;
        Ok(Fresh {
            build,
            max_age,
            current: Mutex::new(Some((Arc::new(first), Instant::now()))),
        })
    }

    /// The value, rebuilt first if it is older than `max_age`. A rebuild that fails is an
    /// error (the event is retried): an old config is not trusted past its age.
    pub async fn get(&self) -> anyhow::Result<Arc<T>> {
        let mut current = self.current.lock().await;
        if let Some((value, at)) = current.as_ref() {
            if at.elapsed() < self.max_age {
                return Ok(value.clone());
            }
        }
        *current = None;
        let value = Arc::new((self.build)().await?);
        *current = Some((value.clone(), Instant::now()));
        Ok(value)
    }
}

/// `SHIPIT_CONFIG_MAX_AGE_SECONDS`, or the default.
pub fn max_age_from_env() -> anyhow::Result<Duration> {
    let seconds = match std::env::var("SHIPIT_CONFIG_MAX_AGE_SECONDS") {
        Ok(s) => s
            .parse()
            .map_err(|_| anyhow::anyhow!("SHIPIT_CONFIG_MAX_AGE_SECONDS={s:?} is not a number"))?,
        Err(_) => DEFAULT_MAX_AGE_SECONDS,
    };
    Ok(Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_value_is_rebuilt_once_it_is_older_than_its_max_age() {
        let builds = Arc::new(AtomicU32::new(0));
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (b, f) = (builds.clone(), fail.clone());
        let fresh = Fresh::new(Duration::from_secs(60), move || {
            let (b, f) = (b.clone(), f.clone());
            async move {
                if f.load(Ordering::SeqCst) {
                    anyhow::bail!("SSM is down");
                }
                Ok(b.fetch_add(1, Ordering::SeqCst) + 1)
            }
        })
        .await
        .unwrap();
        assert_eq!(*fresh.get().await.unwrap(), 1);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(*fresh.get().await.unwrap(), 1, "rebuilt while fresh");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(*fresh.get().await.unwrap(), 2, "kept past its age");
        // Past its age with the source unreadable: an error, not the old value.
        fail.store(true, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(fresh.get().await.is_err());
        fail.store(false, Ordering::SeqCst);
        assert_eq!(*fresh.get().await.unwrap(), 3);
    }
}
