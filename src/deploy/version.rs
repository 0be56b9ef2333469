//! Versions (PEP 440) and package names (PEP 503/508) as they enter shipit from outside.
//!
//! Every version and package name in a job has passed through here, so the rest of the
//! system may rely on them being normalized and free of shell metacharacters.

use std::fmt;
use std::str::FromStr;

pub use pep508_rs::PackageName;
use serde::{Deserialize, Serialize};

/// A valid PEP 440 version in its normalized form (`1.0.0-RC1` becomes `1.0.0rc1`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Version(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error("empty version")]
    Empty,
    #[error("version {0:?} contains characters PEP 440 does not allow")]
    BadCharacters(String),
    #[error("version {0:?} is not a valid PEP 440 version")]
    NotPep440(String),
}

impl Version {
    pub fn parse(raw: &str) -> Result<Self, VersionError> {
        if raw.is_empty() {
            return Err(VersionError::Empty);
        }
        // PEP 440 asks parsers to strip surrounding whitespace; we refuse it instead, so
        // that a tag like "v1.0\n" or a version carrying a shell payload is never accepted
        // in some "cleaned" form.
        let allowed =
            |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+' | '!');
        if !raw.chars().all(allowed) {
            return Err(VersionError::BadCharacters(raw.to_string()));
        }
        let parsed = pep440_rs::Version::from_str(raw)
            .map_err(|_| VersionError::NotPep440(raw.to_string()))?;
        Ok(Version(parsed.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// PEP 440 equality (`1.1` is `1.1.0`).
    pub fn same_as(&self, other: &Version) -> bool {
        !self.is_newer_than(other) && !other.is_newer_than(self)
    }

    /// PEP 440 ordering (`1.10` > `1.9`, `2.0rc1` < `2.0`).
    pub fn is_newer_than(&self, other: &Version) -> bool {
        match (
            pep440_rs::Version::from_str(&self.0),
            pep440_rs::Version::from_str(&other.0),
        ) {
            (Ok(a), Ok(b)) => a > b,
            _ => false,
        }
    }
}

/// Orders versions newest first (PEP 440), for `sort_by`.
pub fn newest_first(a: &Version, b: &Version) -> std::cmp::Ordering {
    if a.is_newer_than(b) {
        std::cmp::Ordering::Less
    } else if b.is_newer_than(a) {
        std::cmp::Ordering::Greater
    } else {
        std::cmp::Ordering::Equal
    }
}

impl TryFrom<String> for Version {
    type Error = VersionError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Version::parse(&value)
    }
}

impl From<Version> for String {
    fn from(v: Version) -> String {
        v.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// The package and version a distribution file name announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Distribution {
    pub package: PackageName,
    pub version: Version,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilenameError {
    #[error("{0:?} is neither a wheel (.whl) nor an sdist (.tar.gz, .zip)")]
    NotADistribution(String),
    #[error("{0:?} does not have the form name-version(-build)-python-abi-platform.whl")]
    BadWheelName(String),
    #[error("{0:?} does not have the form name-version.tar.gz")]
    BadSdistName(String),
    #[error("package name {0:?} is not a valid PEP 508 name")]
    BadPackageName(String),
    #[error(transparent)]
    BadVersion(#[from] VersionError),
}

/// Parses a wheel (`{name}-{ver}(-{build})?-{py}-{abi}-{plat}.whl`) or sdist
/// (`{name}-{ver}.tar.gz` / `.zip`) file name; any leading directories are ignored.
pub fn parse_distribution_filename(path: &str) -> Result<Distribution, FilenameError> {
    let file = path.rsplit('/').next().unwrap_or(path);
    let (name, version) = if let Some(stem) = file.strip_suffix(".whl") {
        let parts: Vec<&str> = stem.split('-').collect();
        match parts.as_slice() {
            [name, version, _, _, _] | [name, version, _, _, _, _]
                if parts.iter().all(|p| !p.is_empty()) =>
            {
                (*name, *version)
            }
            _ => return Err(FilenameError::BadWheelName(file.to_string())),
        }
    } else if let Some(stem) = file
        .strip_suffix(".tar.gz")
        .or_else(|| file.strip_suffix(".zip"))
    {
        // Legacy sdists kept dashes in the name ("hello-app-1.0.tar.gz"); the version
        // never contains one in its normalized form, so the last dash separates them.
        match stem.rsplit_once('-') {
            Some((name, version)) if !name.is_empty() && !version.is_empty() => (name, version),
            _ => return Err(FilenameError::BadSdistName(file.to_string())),
        }
    } else {
        return Err(FilenameError::NotADistribution(file.to_string()));
    };
    let package =
        PackageName::from_str(name).map_err(|_| FilenameError::BadPackageName(name.to_string()))?;
    Ok(Distribution {
        package,
        version: Version::parse(version)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_normalized() {
        assert_eq!(Version::parse("1.0.0-RC1").unwrap().as_str(), "1.0.0rc1");
        assert_eq!(Version::parse("1.4.2").unwrap().as_str(), "1.4.2");
        assert_eq!(
            Version::parse("2!1.0.post1").unwrap().as_str(),
            "2!1.0.post1"
        );
        assert_eq!(
            Version::parse("1.0+local.7").unwrap().as_str(),
            "1.0+local.7"
        );
    }

    #[test]
    fn hostile_versions_are_refused() {
        for bad in [
            "",
            "1.0;rm -rf /",
            "1.0$(id)",
            "1.0\n",
            " 1.0",
            "1.0 ",
            "`id`",
            "1.0'",
            "latest",
            "1..0",
        ] {
            assert!(Version::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn wheel_and_sdist_names() {
        let d = parse_distribution_filename("simple/hello_app-1.4.2-py3-none-any.whl").unwrap();
        assert_eq!(
            (d.package.to_string().as_str(), d.version.as_str()),
            ("hello-app", "1.4.2")
        );
        let d = parse_distribution_filename("Hello.App-1.0-1-py3-none-any.whl").unwrap();
        assert_eq!(
            (d.package.to_string().as_str(), d.version.as_str()),
            ("hello-app", "1.0")
        );
        let d = parse_distribution_filename("hello-app-2.0rc1.tar.gz").unwrap();
        assert_eq!(
            (d.package.to_string().as_str(), d.version.as_str()),
            ("hello-app", "2.0rc1")
        );
        let d = parse_distribution_filename("hello_app-2.0.zip").unwrap();
        assert_eq!(d.version.as_str(), "2.0");
    }

    #[test]
    fn bad_file_names() {
        for bad in [
            "hello_app-1.0.egg",
            "hello_app-1.0-py3.whl",
            "hello_app-1.0-1-2-py3-none-any.whl",
            "hello_app--py3-none-any.whl",
            "-1.0.tar.gz",
            "hello_app.tar.gz",
            "hello$app-1.0.tar.gz",
            "hello_app-1.0;id-py3-none-any.whl",
        ] {
            assert!(
                parse_distribution_filename(bad).is_err(),
                "{bad:?} was accepted"
            );
        }
    }
}
