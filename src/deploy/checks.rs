//! Metric checks: what a deploy reads besides its health command, during the canary's
//! bake, after each batch and for a while after the last node (the post-deploy watch),
//! and how one reading decides. What a check reads (a Prometheus query, say) is the
//! config's and an adapter's; here are only the verdicts and the rules that judge them.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use super::analysis::{Scrape, Settings};

/// What a check that has no data counts as once its data wait is over.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoData {
    /// The deploy rolls back (marking nothing: no data may be the metrics' fault, not
    /// the version's).
    #[default]
    Fail,
    /// The check is passed over.
    Pass,
}

/// A check as a deploy carries it: its name (what the driver evaluates it by), what no
/// data means for it, and for a canary-versus-baseline analysis its settings (the engine
/// keeps its tally and judges it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub name: String,
    #[serde(default, skip_serializing_if = "is_fail")]
    pub no_data: NoData,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Settings>,
    /// It reads the deployed version's own figures (its query names `{version}`, or it
    /// compares canary and baseline): only then is its failure a verdict on the version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub per_version: bool,
    /// A node check: read by running its command on the nodes the deploy restarted (a
    /// `CommandKind::Check` through the fleet), not through the `Checks` port.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub on_nodes: bool,
}

/// The nodes an analysis compares as it reads: those on the new version (restarted by
/// the deploy and healthy) and those still serving the old one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Groups {
    pub canary: Vec<String>,
    pub baseline: Vec<String>,
}

impl Groups {
    pub fn is_empty(&self) -> bool {
        self.canary.is_empty() && self.baseline.is_empty()
    }
}

impl fmt::Display for NoData {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NoData::Fail => "fail",
            NoData::Pass => "pass",
        })
    }
}

fn is_fail(n: &NoData) -> bool {
    *n == NoData::Fail
}

/// One reading of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reading", rename_all = "snake_case")]
pub enum Reading {
    /// `detail`: what was read, and what it had to be ("0.002 (needs < 0.01)").
    Pass {
        detail: String,
    },
    Fail {
        detail: String,
    },
    /// Nothing to judge (an empty answer, no traffic, the metrics source unreachable):
    /// `detail` says which.
    NoData {
        detail: String,
    },
    /// The check itself is broken (its query or token refused): the deploy rolls back,
    /// whatever `no_data` says, marking nothing.
    Refused {
        detail: String,
    },
    /// An analysis's scrape of both groups, for the engine to add to its tally and judge.
    Scraped {
        scrape: Box<Scrape>,
    },
}

impl Reading {
    pub fn detail(&self) -> &str {
        match self {
            Reading::Pass { detail }
            | Reading::Fail { detail }
            | Reading::NoData { detail }
            | Reading::Refused { detail } => detail,
            Reading::Scraped { .. } => "scraped",
        }
    }
}

/// When a deploy reads its checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// While the canary bakes (`bake_seconds`).
    Canary,
    /// After a batch restarted, before the next one.
    Batch,
    /// After the last node (`watch_seconds`).
    Watch,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Canary => "on the canary",
            Stage::Batch => "after a batch",
            Stage::Watch => "after the last node",
        })
    }
}

/// A threshold a reading is held to: `< 0.01`, `>= 100`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    pub op: Op,
    pub threshold: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl Op {
    fn text(self) -> &'static str {
        match self {
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Eq => "==",
            Op::Ne => "!=",
        }
    }
}

impl Condition {
    /// Reads `< 0.01`: an operator, then a finite number.
    pub fn parse(text: &str) -> Result<Condition, String> {
        let text = text.trim();
        // Two-character operators first, so that `<=` is not read as `<` and `=0.1`.
        let ops = [Op::Le, Op::Ge, Op::Eq, Op::Ne, Op::Lt, Op::Gt];
        let Some((op, rest)) = ops
            .iter()
            .find_map(|&op| text.strip_prefix(op.text()).map(|rest| (op, rest)))
        else {
            return Err(format!(
                "{text:?} is not a condition: an operator (<, <=, >, >=, ==, !=) and a number, as \"< 0.01\""
            ));
        };
        match rest.trim().parse::<f64>() {
            Ok(threshold) if threshold.is_finite() => Ok(Condition { op, threshold }),
            _ => Err(format!(
                "{text:?} is not a condition: {:?} is not a finite number",
                rest.trim()
            )),
        }
    }

    pub fn holds(&self, value: f64) -> bool {
        let t = self.threshold;
        match self.op {
            Op::Lt => value < t,
            Op::Le => value <= t,
            Op::Gt => value > t,
            Op::Ge => value >= t,
            Op::Eq => value == t,
            Op::Ne => value != t,
        }
    }

    /// How `values` (each with what names it, empty for a lone value) stand against this
    /// condition: every one must hold; none (or only NaN, as a ratio of no requests is)
    /// is no data.
    pub fn judge(&self, values: &[(String, f64)]) -> Reading {
        let known: Vec<&(String, f64)> = values.iter().filter(|(_, v)| !v.is_nan()).collect();
        let shown = |(labels, v): &(String, f64)| match labels.as_str() {
            "" => format!("{}", Shown(*v)),
            l => format!("{} at {l}", Shown(*v)),
        };
        if known.is_empty() {
            return Reading::NoData {
                detail: match values.len() {
                    0 => "the query returned no series".into(),
                    n => format!("the query returned {n} series, none with a number (NaN)"),
                },
            };
        }
        match known.iter().find(|(_, v)| !self.holds(*v)) {
            Some(bad) => Reading::Fail {
                detail: format!("{} (needs {self})", shown(bad)),
            },
            None => {
                let worst = known
                    .iter()
                    .max_by(|a, b| {
                        let room = |v: f64| (v - self.threshold).abs();
                        room(b.1).total_cmp(&room(a.1))
                    })
                    .map(|v| shown(v))
                    .unwrap_or_default();
                Reading::Pass {
                    detail: format!("{worst} (needs {self})"),
                }
            }
        }
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.op.text(), Shown(self.threshold))
    }
}

/// A reading's number as people read it: four significant digits at most.
struct Shown(f64);

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        if v == v.trunc() && v.abs() < 1e15 {
            write!(f, "{}", v as i64)
        } else if v.abs() >= 1e-3 && v.abs() < 1e6 {
            let digits = (3 - v.abs().log10().floor() as i32).max(0) as usize;
            let text = format!("{v:.digits$}");
            // Only a fraction's trailing zeros go: 1230 keeps its own.
            let text = match text.contains('.') {
                true => text.trim_end_matches('0').trim_end_matches('.'),
                false => &text,
            };
            f.write_str(text)
        } else {
            write!(f, "{v:.3e}")
        }
    }
}

/// `text` as a PromQL string literal (double-quoted, escaped), for `{version}`, `{app}`
/// and `{env}` in a query.
pub fn promql_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `query` with `{version}`, `{app}` and `{env}` replaced by PromQL strings of theirs;
/// any other braces are the query's own (label matchers).
pub fn promql(query: &str, version: &str, app: &str, env: &str) -> String {
    query
        .replace("{version}", &promql_string(version))
        .replace("{app}", &promql_string(app))
        .replace("{env}", &promql_string(env))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(text: &str) -> Condition {
        Condition::parse(text).unwrap()
    }

    #[test]
    fn conditions_read_every_operator_and_refuse_the_rest() {
        assert_eq!(
            c("< 0.01"),
            Condition {
                op: Op::Lt,
                threshold: 0.01
            }
        );
        assert_eq!(c("<=5").op, Op::Le);
        assert_eq!(c(" >= 1e3 ").threshold, 1000.0);
        assert_eq!(c("> -2").op, Op::Gt);
        assert_eq!(c("== 0").op, Op::Eq);
        assert_eq!(c("!= 0").op, Op::Ne);
        for bad in ["", "0.01", "=< 1", "< ", "< abc", "< inf", "< NaN", "~ 1"] {
            assert!(Condition::parse(bad).is_err(), "{bad:?}");
        }
        assert!(c("<= 1").holds(1.0) && !c("< 1").holds(1.0));
        assert!(c("> 1").holds(2.0) && !c(">= 2").holds(1.9));
        assert!(c("!= 0").holds(1.0) && c("== 0").holds(0.0));
    }

    #[test]
    fn every_value_must_hold_and_no_number_is_no_data() {
        let lt = c("< 0.01");
        let v = |pairs: &[(&str, f64)]| -> Vec<(String, f64)> {
            pairs.iter().map(|(l, v)| (l.to_string(), *v)).collect()
        };
        assert_eq!(
            lt.judge(&v(&[("", 0.002)])),
            Reading::Pass {
                detail: "0.002 (needs < 0.01)".into()
            }
        );
        assert_eq!(
            lt.judge(&v(&[("{node=\"a\"}", 0.001), ("{node=\"b\"}", 0.0523)])),
            Reading::Fail {
                detail: "0.0523 at {node=\"b\"} (needs < 0.01)".into()
            }
        );
        // The value nearest its threshold is the one shown.
        assert_eq!(
            lt.judge(&v(&[("a", 0.001), ("b", 0.009)])).detail(),
            "0.009 at b (needs < 0.01)"
        );
        assert!(matches!(lt.judge(&[]), Reading::NoData { .. }));
        assert!(matches!(
            lt.judge(&v(&[("", f64::NAN)])),
            Reading::NoData { detail } if detail.contains("NaN")
        ));
        // NaN beside a number: the number decides.
        assert!(matches!(
            lt.judge(&v(&[("a", f64::NAN), ("b", 0.5)])),
            Reading::Fail { .. }
        ));
    }

    #[test]
    fn numbers_are_shown_short() {
        assert_eq!(Shown(0.05).to_string(), "0.05");
        assert_eq!(Shown(0.048_123_4).to_string(), "0.04812");
        assert_eq!(Shown(12.0).to_string(), "12");
        assert_eq!(Shown(1234.5678).to_string(), "1235");
        assert_eq!(Shown(1230.4).to_string(), "1230");
        assert_eq!(Shown(9999.6).to_string(), "10000");
        assert_eq!(Shown(1500.5).to_string(), "1500");
        assert_eq!(Shown(0.10004).to_string(), "0.1");
        assert_eq!(Shown(0.000_012).to_string(), "1.200e-5");
    }

    #[test]
    fn placeholders_become_promql_strings() {
        assert_eq!(
            promql(
                r#"rate(x{version={version},app={app},env={env},code=~"5.."}[1m])"#,
                "1.3.0",
                "hello",
                "prod"
            ),
            r#"rate(x{version="1.3.0",app="hello",env="prod",code=~"5.."}[1m])"#
        );
        assert_eq!(promql_string(r#"a"b\c"#), r#""a\"b\\c""#);
    }
}
