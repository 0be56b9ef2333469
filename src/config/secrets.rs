//! Secrets are written in the config as a literal, `env:NAME`, or `ssm:/path` (an SSM
//! SecureString); they are resolved once per process and kept in memory.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use tokio::sync::Mutex;

#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Literal(String),
    Env(String),
    Ssm(String),
}

impl fmt::Debug for Secret {
    // Never print a literal secret, not even in debug logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Literal(_) => f.write_str("Secret::Literal(***)"),
            Secret::Env(n) => write!(f, "Secret::Env({n})"),
            Secret::Ssm(p) => write!(f, "Secret::Ssm({p})"),
        }
    }
}

impl FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Secret, String> {
        if let Some(name) = s.strip_prefix("env:") {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "{s:?}: env: needs a variable name (letters, digits, '_')"
                ));
            }
            Ok(Secret::Env(name.to_string()))
        } else if let Some(path) = s.strip_prefix("ssm:") {
            if !path.starts_with('/') || path.len() < 2 {
                return Err(format!(
                    "{s:?}: ssm: needs an absolute parameter path like ssm:/shipit/github-secret"
                ));
            }
            Ok(Secret::Ssm(path.to_string()))
        } else if s.is_empty() {
            Err("empty secret".into())
        } else {
            Ok(Secret::Literal(s.to_string()))
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("secret {0} is in SSM, but no AWS client is configured here")]
    NoSsm(String),
    #[error("reading SSM parameter {path}: {source}")]
    Ssm {
        path: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Resolves secrets, asking SSM at most once per parameter per process.
pub struct Secrets {
    ssm: Option<aws_sdk_ssm::Client>,
    cache: Mutex<HashMap<String, String>>,
}

impl Secrets {
    pub fn new(ssm: Option<aws_sdk_ssm::Client>) -> Secrets {
        Secrets {
            ssm,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn resolve(&self, secret: &Secret) -> Result<String, SecretError> {
        match secret {
            Secret::Literal(v) => Ok(v.clone()),
            Secret::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::EnvMissing(name.clone()))
            }
            Secret::Ssm(path) => {
                let mut cache = self.cache.lock().await;
                if let Some(v) = cache.get(path) {
                    return Ok(v.clone());
                }
                let client = self
                    .ssm
                    .as_ref()
                    .ok_or_else(|| SecretError::NoSsm(path.clone()))?;
                let out = client
                    .get_parameter()
                    .name(path)
                    .with_decryption(true)
                    .send()
                    .await
                    .map_err(|e| SecretError::Ssm {
                        path: path.clone(),
                        source: aws_sdk_ssm::error::DisplayErrorContext(e)
                            .to_string()
                            .into(),
                    })?;
                let value =
                    out.parameter
                        .and_then(|p| p.value)
                        .ok_or_else(|| SecretError::Ssm {
                            path: path.clone(),
                            source: "parameter has no value".into(),
                        })?;
                cache.insert(path.clone(), value.clone());
                Ok(value)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_three_forms() {
        assert_eq!(
            "env:GH_SECRET".parse::<Secret>().unwrap(),
            Secret::Env("GH_SECRET".into())
        );
        assert_eq!(
            "ssm:/shipit/gh".parse::<Secret>().unwrap(),
            Secret::Ssm("/shipit/gh".into())
        );
        assert_eq!(
            "hunter2".parse::<Secret>().unwrap(),
            Secret::Literal("hunter2".into())
        );
        for bad in ["env:", "env:A-B", "ssm:relative", "ssm:/", ""] {
            assert!(bad.parse::<Secret>().is_err(), "{bad}");
        }
        assert!(!format!("{:?}", Secret::Literal("hunter2".into())).contains("hunter2"));
    }
}
