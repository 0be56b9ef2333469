//! Command templates from the config (`pip install -U {package}=={version}`).
//!
//! The template text is the operator's own shell code; every value substituted into it is
//! shell-quoted, so nothing that arrives from outside is ever interpreted by the shell.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Var(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unclosed '{{' at byte {0}")]
    Unclosed(usize),
    #[error("stray '}}' at byte {0}")]
    Stray(usize),
    #[error("bad placeholder {{{0}}}: names are letters, digits and '_'")]
    BadName(String),
    #[error("no value for {{{0}}}")]
    Missing(String),
    #[error("value for {{{0}}} holds a NUL byte and cannot be passed to a shell")]
    Unquotable(String),
    #[error("value for {{{0}}} is not a host name, address or port")]
    NotInUrl(String),
}

impl Template {
    pub fn parse(source: &str) -> Result<Template, TemplateError> {
        let mut parts = vec![];
        let mut text = String::new();
        let mut rest = source.char_indices().peekable();
        while let Some((i, c)) = rest.next() {
            match c {
                '{' if rest.peek().map(|p| p.1) == Some('{') => {
                    rest.next();
                    text.push('{');
                }
                '}' if rest.peek().map(|p| p.1) == Some('}') => {
                    rest.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match rest.next() {
                            Some((_, '}')) => break,
                            Some((_, ch)) => name.push(ch),
                            None => return Err(TemplateError::Unclosed(i)),
                        }
                    }
                    if name.is_empty()
                        || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        return Err(TemplateError::BadName(name));
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(Part::Var(name));
                }
                '}' => return Err(TemplateError::Stray(i)),
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template {
            source: source.to_string(),
            parts,
        })
    }

    pub fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Var(v) => Some(v.as_str()),
            Part::Text(_) => None,
        })
    }

    /// The shell command, with every value quoted for `sh`.
    pub fn render<'v>(
        &self,
        value: impl Fn(&str) -> Option<&'v str>,
    ) -> Result<String, TemplateError> {
        self.fill(value, |name, v| {
            shlex::try_quote(v)
                .map(|q| q.into_owned())
                .map_err(|_| TemplateError::Unquotable(name.to_string()))
        })
    }

    /// A URL, with every value as it is: each must be a host name, an address or a port
    /// (letters, digits, `.`, `-`, `_`, `:`, or an IPv6 address in brackets), so that no
    /// value can change the URL's shape.
    pub fn render_url<'v>(
        &self,
        value: impl Fn(&str) -> Option<&'v str>,
    ) -> Result<String, TemplateError> {
        self.fill(value, |name, v| {
            let plain = !v.is_empty()
                && v.chars().all(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '[' | ']')
                });
            match plain {
                true => Ok(v.to_string()),
                false => Err(TemplateError::NotInUrl(name.to_string())),
            }
        })
    }

    /// The text, each placeholder's value (`value`) as `written` writes it.
    fn fill<'v>(
        &self,
        value: impl Fn(&str) -> Option<&'v str>,
        written: impl Fn(&str, &str) -> Result<String, TemplateError>,
    ) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.source.len() + 32);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Var(name) => {
                    let v = value(name).ok_or_else(|| TemplateError::Missing(name.clone()))?;
                    out.push_str(&written(name, v)?);
                }
            }
        }
        Ok(out)
    }
}

/// `s` quoted for `sh`. Only a NUL byte cannot be quoted: such a string is kept as it is,
/// and the process meant to run it refuses to start (no argument may hold a NUL), so it
/// fails rather than running something else.
pub fn sh_quote(s: &str) -> String {
    shlex::try_quote(s).map_or_else(|_| s.to_string(), |q| q.into_owned())
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| *v)
    }

    #[test]
    fn renders_with_quoting() {
        let t =
            Template::parse("{dir}/venv/bin/pip install -U {package}=={version} && echo {{ok}}")
                .unwrap();
        let cmd = t
            .render(vars(&[
                ("dir", "/srv/my app"),
                ("package", "hello-app"),
                ("version", "1.0"),
            ]))
            .unwrap();
        assert_eq!(
            cmd,
            "'/srv/my app'/venv/bin/pip install -U hello-app==1.0 && echo {ok}"
        );
    }

    #[test]
    fn hostile_values_stay_data() {
        let t = Template::parse("echo {v}").unwrap();
        for evil in ["$(id)", "`id`", "a;rm -rf /", "x'y", "a\nb"] {
            let cmd = t.render(vars(&[("v", evil)])).unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), format!("{evil}\n"));
        }
        assert!(matches!(
            t.render(vars(&[("v", "a\0b")])),
            Err(TemplateError::Unquotable(_))
        ));
        assert!(matches!(
            t.render(vars(&[])),
            Err(TemplateError::Missing(_))
        ));
    }

    #[test]
    fn malformed_templates() {
        assert_eq!(
            Template::parse("a {b").unwrap_err(),
            TemplateError::Unclosed(2)
        );
        assert_eq!(Template::parse("a }").unwrap_err(), TemplateError::Stray(2));
        assert!(matches!(
            Template::parse("{a b}"),
            Err(TemplateError::BadName(_))
        ));
        assert!(matches!(
            Template::parse("{}"),
            Err(TemplateError::BadName(_))
        ));
    }
}
