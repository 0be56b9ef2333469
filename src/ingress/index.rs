//! A package's page of a PyPI-style index: the JSON simple API (PEP 691) or its HTML form
//! (PEP 503), read into the files it lists. Yanked files (PEP 592) are left out: they
//! are not releases anyone should deploy.

use serde::Deserialize;

pub use reqwest::Url;

/// What to ask for: JSON first, HTML from indexes that have nothing else.
pub const ACCEPT: &str =
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.1";

/// A file the page lists: its name, and where it is (absolute).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexFile {
    pub filename: String,
    pub url: String,
}

#[derive(Deserialize)]
struct JsonPage {
    files: Vec<JsonFile>,
}

#[derive(Deserialize)]
struct JsonFile {
    filename: String,
    url: String,
    /// `false`, `true`, or the reason as a string.
    #[serde(default)]
    yanked: serde_json::Value,
}

/// The files of the page at `page` that were not yanked. An answer that is not a simple
/// API page (an error or login page, JSON that does not parse) is an error: taking it
/// for an empty page would make every release look new on the next good answer.
pub fn page_files(
    content_type: &str,
    body: &str,
    page: &reqwest::Url,
) -> Result<Vec<IndexFile>, String> {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let files: Vec<(String, String)> = match mime.as_str() {
        "application/vnd.pypi.simple.v1+json" | "application/json" => {
            let page: JsonPage = serde_json::from_str(body)
                .map_err(|e| format!("the index's JSON is not a simple API page: {e}"))?;
            page.files
                .into_iter()
                .filter(|f| matches!(f.yanked, serde_json::Value::Null | serde_json::Value::Bool(false)))
                .map(|f| (f.filename, f.url))
                .collect()
        }
        "application/vnd.pypi.simple.v1+html" | "text/html" => html_files(body)?,
        other => return Err(format!("the index answered {other:?}, not a simple API page")),
    };
    let mut out = vec![];
    for (filename, href) in files {
        let mut url = page
            .join(&href)
            .map_err(|e| format!("{filename}: bad link {href:?}: {e}"))?;
        url.set_fragment(None);
        // A link elsewhere (file:, javascript:) is no file of this index.
        if matches!(url.scheme(), "http" | "https") {
            out.push(IndexFile {
                filename,
                url: url.to_string(),
            });
        }
    }
    Ok(out)
}

/// PEP 503: one anchor per file, its text the file name; `data-yanked` marks a yanked one.
/// A page without anchors must say it is one (`pypi:repository-version`), or it is not.
fn html_files(body: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = vec![];
    let mut rest = body;
    while let Some(start) = find_ci(rest, "<a ") {
        let Some(tag) = rest.get(start..) else { break };
        let (Some(open_end), Some(close)) = (tag.find('>'), find_ci(tag, "</a>")) else {
            return Err("the index's HTML has an unclosed anchor".into());
        };
        let attrs = tag.get(..open_end).unwrap_or_default();
        let text = tag.get(open_end.saturating_add(1)..close).unwrap_or_default();
        rest = tag.get(close.saturating_add(4)..).unwrap_or_default();
        let Some(href) = attribute(attrs, "href") else {
            continue;
        };
        if !attrs.to_ascii_lowercase().contains("data-yanked") {
            let filename = unescape(text.trim());
            let href = unescape(href);
            out.push((filename, href));
        }
    }
    if out.is_empty() && !body.contains("pypi:repository-version") {
        return Err("the index's HTML lists no files and is not a simple API page".into());
    }
    Ok(out)
}

fn find_ci(haystack: &str, needle: &str) -> Option<usize> {
    haystack.to_ascii_lowercase().find(needle)
}

/// The value of `name="…"` (or `'…'`) in an anchor's attributes.
fn attribute<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    let at = find_ci(attrs, &format!("{name}="))?;
    let value = attrs.get(at.saturating_add(name.len()).saturating_add(1)..)?;
    let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'')?;
    let value = value.get(1..)?;
    value.find(quote).and_then(|end| value.get(..end))
}

fn unescape(s: &str) -> String {
    s.replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page() -> reqwest::Url {
        reqwest::Url::parse("http://pypi.internal/simple/hello-app/").unwrap()
    }

    #[test]
    fn json_pages_list_their_files_without_the_yanked() {
        let body = r#"{"meta": {"api-version": "1.1"}, "name": "hello-app", "files": [
            {"filename": "hello_app-1.0.0-py3-none-any.whl", "url": "../../packages/hello_app-1.0.0-py3-none-any.whl#sha256=ab", "hashes": {}},
            {"filename": "hello_app-1.1.0.tar.gz", "url": "https://files.example/hello_app-1.1.0.tar.gz", "hashes": {}, "yanked": "broken"},
            {"filename": "hello_app-1.2.0.tar.gz", "url": "hello_app-1.2.0.tar.gz", "hashes": {}, "yanked": false}
        ]}"#;
        let files = page_files("application/vnd.pypi.simple.v1+json", body, &page()).unwrap();
        assert_eq!(
            files,
            [
                IndexFile {
                    filename: "hello_app-1.0.0-py3-none-any.whl".into(),
                    url: "http://pypi.internal/packages/hello_app-1.0.0-py3-none-any.whl".into()
                },
                IndexFile {
                    filename: "hello_app-1.2.0.tar.gz".into(),
                    url: "http://pypi.internal/simple/hello-app/hello_app-1.2.0.tar.gz".into()
                }
            ]
        );
    }

    #[test]
    fn html_pages_too() {
        let body = r#"<!DOCTYPE html><html><head><meta name="pypi:repository-version" content="1.0"></head><body>
            <a href="/packages/hello_app-1.0.0-py3-none-any.whl#sha256=ab">hello_app-1.0.0-py3-none-any.whl</a><br>
            <A HREF='hello_app-1.1.0.tar.gz' data-yanked="">hello_app-1.1.0.tar.gz</A>
            <a href="hello_app-1.2.0.tar.gz?x=1&amp;y=2">hello_app-1.2.0.tar.gz</a>
            <a href="file:///etc/passwd">hello_app-6.6.6.tar.gz</a>
        </body></html>"#;
        let names: Vec<String> = page_files("text/html; charset=utf-8", body, &page())
            .unwrap()
            .into_iter()
            .map(|f| f.url)
            .collect();
        assert_eq!(
            names,
            [
                "http://pypi.internal/packages/hello_app-1.0.0-py3-none-any.whl",
                "http://pypi.internal/simple/hello-app/hello_app-1.2.0.tar.gz?x=1&y=2"
            ]
        );
        let empty = "<html><head><meta name=\"pypi:repository-version\" content=\"1.0\"></head></html>";
        assert_eq!(page_files("text/html", empty, &page()).unwrap(), []);
    }

    #[test]
    fn answers_that_are_not_simple_api_pages_are_errors() {
        for (ct, body) in [
            ("text/html", "<html><body>Please log in</body></html>"),
            ("application/vnd.pypi.simple.v1+json", "<html>oops</html>"),
            ("application/json", r#"{"detail": "not found"}"#),
            ("text/plain", "hello_app-1.0.0.tar.gz"),
            ("text/html", "<a href=\"x\">never closed"),
        ] {
            assert!(page_files(ct, body, &page()).is_err(), "{ct}: {body}");
        }
    }
}
