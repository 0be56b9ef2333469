//! Canary versus baseline on the app's own metrics: the nodes already on the new version
//! (the canary) and those still on the old one (the baseline) are scraped at the same
//! moments, and what each group served between two scrapes is added up. Two one-sided
//! tests then ask whether the canary is worse: its error ratio (Fisher's exact test on the
//! two proportions) and its latency (the same test on the share of requests slower than
//! each bound of the histogram's buckets, Bonferroni over the bounds). The tests are looked at after every scrape, each look at a
//! share of `alpha` that shrinks as 1/k² (together they never spend more than `alpha`),
//! so a clear result stops early and the false-alarm rate stays at most `alpha` however
//! long the analysis runs. Assumed: requests are independent and both groups get the same
//! mix of them (a load balancer spreading traffic evenly).

use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, DiscreteCDF, Hypergeometric, Normal};

/// The most terms Fisher's test adds exactly (see `fisher`).
const EXACT_TERMS: u64 = 20_000;

/// What one group of nodes has served since it started counting: cumulative counters,
/// summed over the group's nodes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    pub requests: u64,
    pub errors: u64,
    /// The latency histogram's buckets: upper bound (as the node wrote it, `le`) and the
    /// cumulative count, in increasing bounds, `+Inf` last. Empty: no latency exported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buckets: Vec<(String, u64)>,
}

impl Served {
    /// What was served between `before` and `self`, if the counters only grew (a node
    /// restarted meanwhile resets its own: that window is not counted).
    fn since(&self, before: &Served) -> Option<Served> {
        let buckets = if self.same_bounds(before) {
            self.buckets
                .iter()
                .zip(&before.buckets)
                .map(|(a, b)| a.1.checked_sub(b.1).map(|n| (a.0.clone(), n)))
                .collect::<Option<Vec<_>>>()?
        } else {
            vec![]
        };
        Some(Served {
            requests: self.requests.checked_sub(before.requests)?,
            errors: self.errors.checked_sub(before.errors)?,
            buckets,
        })
    }

    /// Whether both histograms have the same buckets (none alike too).
    fn same_bounds(&self, other: &Served) -> bool {
        self.buckets.len() == other.buckets.len()
            && self
                .buckets
                .iter()
                .zip(&other.buckets)
                .all(|(a, b)| a.0 == b.0)
    }

    /// Adds another's counts (another node's, another window's).
    pub fn add(&mut self, other: &Served) {
        // Saturating: the counts are what nodes say.
        self.requests = self.requests.saturating_add(other.requests);
        self.errors = self.errors.saturating_add(other.errors);
        if self.same_bounds(other) {
            for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
                a.1 = a.1.saturating_add(b.1);
            }
        } else if self.buckets.is_empty() && self.requests == other.requests {
            // Nothing counted before this.
            self.buckets = other.buckets.clone();
        } else {
            // Histograms that do not line up cannot be compared: no latency test.
            self.buckets.clear();
        }
    }
}

/// One node's counters as a scrape read them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeServed {
    pub node: String,
    /// On the new version (else the baseline).
    pub canary: bool,
    pub served: Served,
}

/// One scrape of both groups, at the same moment: each node that answered, and those
/// that did not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scrape {
    pub nodes: Vec<NodeServed>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unanswered: Vec<String>,
}

/// What a stage's analysis has added up so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    /// Each node's counters at the last scrape, to count the next window from.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last: Vec<NodeServed>,
    pub canary: Served,
    pub baseline: Served,
    /// Windows counted (each a look at the tests).
    pub looks: u32,
}

impl Tally {
    /// Adds the window since the last scrape, node by node: a node that did not answer
    /// either time, or whose counters went down (it restarted), adds nothing. False when
    /// the window could not be counted for both groups (the first scrape, say).
    pub fn add(&mut self, scrape: Scrape) -> bool {
        let (mut canary, mut baseline) = (None::<Served>, None::<Served>);
        for now in &scrape.nodes {
            let before = self
                .last
                .iter()
                .find(|b| b.node == now.node && b.canary == now.canary);
            let Some(window) = before.and_then(|b| now.served.since(&b.served)) else {
                continue;
            };
            let group = if now.canary {
                &mut canary
            } else {
                &mut baseline
            };
            match group {
                Some(g) => g.add(&window),
                None => *group = Some(window),
            }
        }
        self.last = scrape.nodes;
        match (canary, baseline) {
            (Some(c), Some(b)) => {
                self.canary.add(&c);
                self.baseline.add(&b);
                self.looks = self.looks.saturating_add(1);
                true
            }
            _ => false,
        }
    }
}

/// The analysis's settings, as a deploy carries them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// The false-alarm rate, in millionths (0.01 is 10,000).
    pub alpha_ppm: u32,
    /// Requests each group must have served before the canary can pass.
    pub min_requests: u64,
}

impl Settings {
    pub fn alpha(&self) -> f64 {
        f64::from(self.alpha_ppm) / 1e6
    }
}

/// The verdict on the canary so far.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Worse, by this test: what was seen, and the p-value against the look's share.
    Worse(String),
    /// No sign of it, on enough requests.
    Pass(String),
    /// Not enough requests yet.
    Inconclusive(String),
}

/// The share of `alpha` the `look`th look (from 1) may spend on each of the two tests:
/// `alpha · 6/(π² k²) / 2`, which sums to `alpha` over every look there could be.
pub fn look_alpha(alpha: f64, look: u32) -> f64 {
    let k = f64::from(look.max(1));
    alpha * 6.0 / (std::f64::consts::PI.powi(2) * k * k) / 2.0
}

/// One-sided p-value that the canary's error ratio is no higher than the baseline's
/// (Fisher's exact test: the canary's errors among all errors, drawn as its share of all
/// requests).
pub fn errors_p(canary: &Served, baseline: &Served) -> f64 {
    fisher(
        (canary.errors, canary.requests),
        (baseline.errors, baseline.requests),
    )
}

/// Fisher's exact one-sided p-value that `a` (hits, of n) is no higher a share than `b`.
fn fisher((ha, na): (u64, u64), (hb, nb): (u64, u64)) -> f64 {
    let (ha, hb) = (ha.min(na), hb.min(nb));
    if ha == 0 || na == 0 || nb == 0 {
        return 1.0;
    }
    let (Some(n), Some(hits)) = (na.checked_add(nb), ha.checked_add(hb)) else {
        return 1.0;
    };
    // statrs adds the terms one by one: past EXACT_TERMS (a busy service), the normal
    // approximation, which at such counts is as good.
    let terms = ha.min(hits.min(na) - ha);
    if terms > EXACT_TERMS {
        let (n, k, d) = (n as f64, hits as f64, na as f64);
        let mean = d * k / n;
        let variance = d * (k / n) * ((n - k) / n) * ((n - d) / (n - 1.0));
        if variance <= 0.0 {
            return 1.0;
        }
        return Normal::standard().sf((ha as f64 - 0.5 - mean) / variance.sqrt());
    }
    match Hypergeometric::new(n, hits, na) {
        // P(X >= ha) = P(X > ha - 1), summed from whichever end has fewer terms.
        Ok(h) if ha < hits.min(na) - ha => (1.0 - h.cdf(ha - 1)).max(0.0),
        Ok(h) => h.sf(ha - 1),
        Err(_) => 1.0,
    }
}

/// Where the canary is slowest against the baseline: the bucket bound, and each side's
/// share of requests slower than it.
#[derive(Debug, Clone, PartialEq)]
pub struct Slower {
    pub bound: String,
    pub canary: f64,
    pub baseline: f64,
}

/// One-sided p-value that the canary is no slower than the baseline, from the bucketed
/// latencies: at each bucket bound, Fisher's exact test on the share of requests slower
/// than it, the smallest p-value times the bounds tested (Bonferroni), so that it holds
/// however coarse the buckets are. (A Mann-Whitney rank test with its normal
/// approximation came first: with most requests in one or two buckets it raised 9 false
/// alarms in 1,000 runs against its 0.005 share; `cargo bench --bench analysis`.) 1
/// without comparable histograms.
pub fn latency_p(canary: &Served, baseline: &Served) -> (f64, Option<Slower>) {
    if canary.buckets.is_empty() || !canary.same_bounds(baseline) {
        return (1.0, None);
    }
    let total = |s: &Served| s.buckets.last().map_or(0, |b| b.1);
    let (n1, n2) = (total(canary), total(baseline));
    let bounds: Vec<(String, u64, u64)> = canary
        .buckets
        .iter()
        .zip(&baseline.buckets)
        .take(canary.buckets.len().saturating_sub(1))
        .map(|(c, b)| (c.0.clone(), n1.saturating_sub(c.1), n2.saturating_sub(b.1)))
        // Only bounds that split the requests tell anything.
        .filter(|(_, c, b)| {
            let above = c.saturating_add(*b);
            above > 0 && above < n1.saturating_add(n2)
        })
        .collect();
    let tested = bounds.len() as f64;
    let best = bounds
        .into_iter()
        .map(|(bound, c, b)| (fisher((c, n1), (b, n2)), bound, c, b))
        .min_by(|x, y| x.0.total_cmp(&y.0));
    match best {
        Some((p, bound, c, b)) => (
            (p * tested).min(1.0),
            Some(Slower {
                bound,
                canary: c as f64 / n1.max(1) as f64 * 100.0,
                baseline: b as f64 / n2.max(1) as f64 * 100.0,
            }),
        ),
        None => (1.0, None),
    }
}

/// The verdict after `tally.looks` looks: worse by either test at the look's share of
/// `alpha`, or else a pass once both groups served `min_requests`.
pub fn judge(tally: &Tally, settings: Settings, canary: &str, baseline: &str) -> Verdict {
    let (c, b) = (&tally.canary, &tally.baseline);
    let share = look_alpha(settings.alpha(), tally.looks);
    let ratio = |s: &Served| {
        if s.requests == 0 {
            0.0
        } else {
            s.errors as f64 / s.requests as f64 * 100.0
        }
    };
    let errors = format!(
        "error ratio {:.1} % ({} of {}) on {canary} vs {:.1} % ({} of {}) on {baseline}",
        ratio(c),
        c.errors,
        c.requests,
        ratio(b),
        b.errors,
        b.requests
    );
    let p = errors_p(c, b);
    if p <= share {
        return Verdict::Worse(format!("{errors}, {}", shown_p(p)));
    }
    let (p, slower) = latency_p(c, b);
    if let (true, Some(slower)) = (p <= share, &slower) {
        return Verdict::Worse(format!(
            "{:.1} % of requests slower than {} s on {canary} vs {:.1} % on {baseline}, {}",
            slower.canary,
            slower.bound,
            slower.baseline,
            shown_p(p)
        ));
    }
    let median = |s: &Served| -> Option<String> {
        let half = s.buckets.last()?.1.div_ceil(2);
        s.buckets
            .iter()
            .find(|(_, n)| *n >= half)
            .map(|(le, _)| le.clone())
    };
    let latency = match (median(c), median(b)) {
        (Some(mc), Some(mb)) => {
            format!("median latency ≤ {mc} s on {canary} vs ≤ {mb} s on {baseline}")
        }
        _ => String::new(),
    };
    if c.requests < settings.min_requests || b.requests < settings.min_requests {
        return Verdict::Inconclusive(format!(
            "{} requests on {canary} and {} on {baseline}, fewer than the {} each needs",
            c.requests, b.requests, settings.min_requests
        ));
    }
    let mut seen = errors;
    if !latency.is_empty() {
        seen.push_str("; ");
        seen.push_str(&latency);
    }
    Verdict::Pass(seen)
}

fn shown_p(p: f64) -> String {
    if p < 0.001 {
        "p < 0.001".into()
    } else {
        format!("p = {p:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(requests: u64, errors: u64, buckets: &[u64]) -> Served {
        let bounds = ["0.005", "0.01", "0.025", "0.05", "0.1", "+Inf"];
        let mut total = 0;
        Served {
            requests,
            errors,
            buckets: buckets
                .iter()
                .zip(bounds)
                .map(|(n, le)| {
                    total += n;
                    (le.to_string(), total)
                })
                .collect(),
        }
    }

    #[test]
    fn looks_spend_at_most_alpha_in_all() {
        let spent: f64 = (1..100_000).map(|k| 2.0 * look_alpha(0.01, k)).sum();
        assert!(spent < 0.01 && spent > 0.00999, "{spent}");
    }

    #[test]
    fn fisher_sees_a_worse_canary_but_not_one_stray_error() {
        // 3 % against 0.2 %.
        let p = errors_p(&served(500, 15, &[]), &served(2000, 4, &[]));
        assert!(p < 1e-5, "{p}");
        // One error among 100 against none among 1,000: proves nothing.
        let p = errors_p(&served(100, 1, &[]), &served(1000, 0, &[]));
        assert!((p - 100.0 / 1100.0).abs() < 1e-9, "{p}");
        // Better than the baseline.
        assert!(errors_p(&served(1000, 1, &[]), &served(1000, 10, &[])) > 0.99);
        assert_eq!(errors_p(&served(0, 0, &[]), &served(10, 1, &[])), 1.0);
        // A busy service: the normal approximation, the same answers.
        let worse = errors_p(
            &served(1_000_000, 30_000, &[]),
            &served(2_000_000, 40_000, &[]),
        );
        assert!(worse < 1e-12, "{worse}");
        let same = errors_p(
            &served(1_000_000, 20_100, &[]),
            &served(2_000_000, 40_000, &[]),
        );
        assert!(same > 0.05 && same < 0.95, "{same}");
        let exact = errors_p(&served(100_000, 2_050, &[]), &served(200_000, 4_000, &[]));
        assert!(exact > 0.05 && exact < 0.95, "{exact}");
    }

    #[test]
    fn the_latency_test_sees_slower_buckets_and_not_the_same_ones() {
        let base = served(400, 0, &[300, 80, 20, 0, 0, 0]);
        let same = served(400, 0, &[290, 90, 20, 0, 0, 0]);
        assert!(latency_p(&same, &base).0 > 0.1);
        // 40 ms more: most requests move up to the 0.05 bucket.
        let slow = served(400, 0, &[0, 0, 10, 380, 10, 0]);
        let (p, slower) = latency_p(&slow, &base);
        assert!(p < 1e-9, "{p}");
        let slower = slower.unwrap();
        assert_eq!(slower.bound, "0.025");
        assert_eq!((slower.canary, slower.baseline), (97.5, 0.0));
        // Faster is no alarm.
        assert!(latency_p(&base, &slow).0 > 0.99);
        // No histogram, or another one: nothing to say.
        assert_eq!(latency_p(&served(10, 0, &[]), &base).0, 1.0);
    }

    #[test]
    fn windows_count_node_by_node_and_not_across_a_restart() {
        let node = |name: &str, canary: bool, n: u64| NodeServed {
            node: name.into(),
            canary,
            served: served(n, n / 100, &[n, 0, 0, 0, 0, 0]),
        };
        let scrape = |nodes: Vec<NodeServed>| Scrape {
            nodes,
            unanswered: vec![],
        };
        let mut t = Tally::default();
        assert!(!t.add(scrape(vec![
            node("c", true, 10),
            node("a", false, 100),
            node("b", false, 100)
        ])));
        assert!(t.add(scrape(vec![
            node("c", true, 30),
            node("a", false, 160),
            node("b", false, 130)
        ])));
        assert_eq!(
            (t.canary.requests, t.baseline.requests, t.looks),
            (20, 90, 1)
        );
        assert_eq!(t.canary.buckets[0], ("0.005".to_string(), 20));
        // b did not answer: a alone counts for the baseline; then b is back, counted from
        // its new reading only.
        assert!(t.add(scrape(vec![node("c", true, 40), node("a", false, 200)])));
        assert_eq!(
            (t.canary.requests, t.baseline.requests, t.looks),
            (30, 130, 2)
        );
        assert!(t.add(scrape(vec![
            node("c", true, 45),
            node("a", false, 210),
            node("b", false, 500)
        ])));
        assert_eq!((t.canary.requests, t.baseline.requests), (35, 140));
        // a restarted (its counters went down, though the group's total rose): a adds
        // nothing, b does.
        assert!(t.add(scrape(vec![
            node("c", true, 50),
            node("a", false, 3),
            node("b", false, 900)
        ])));
        assert_eq!(
            (t.canary.requests, t.baseline.requests, t.looks),
            (40, 540, 4)
        );
        // No canary node counted: no look.
        assert!(!t.add(scrape(vec![node("a", false, 10)])));
        assert_eq!(t.looks, 4);
    }

    #[test]
    fn the_verdict_says_what_was_seen() {
        let settings = Settings {
            alpha_ppm: 10_000,
            min_requests: 200,
        };
        let tally = |c: Served, b: Served| Tally {
            last: vec![],
            canary: c,
            baseline: b,
            looks: 1,
        };
        let worse = judge(
            &tally(served(500, 24, &[]), served(1500, 3, &[])),
            settings,
            "web1 (1.3.0)",
            "9 baseline nodes (1.2.0)",
        );
        assert_eq!(
            worse,
            Verdict::Worse(
                "error ratio 4.8 % (24 of 500) on web1 (1.3.0) vs 0.2 % (3 of 1500) on 9 baseline nodes (1.2.0), p < 0.001".into()
            )
        );
        let few = judge(
            &tally(served(50, 0, &[]), served(500, 0, &[])),
            settings,
            "c",
            "b",
        );
        assert!(matches!(few, Verdict::Inconclusive(w) if w.contains("50 requests on c")));
        let good = judge(
            &tally(
                served(400, 1, &[300, 80, 20, 0, 0, 0]),
                served(800, 2, &[600, 160, 40, 0, 0, 0]),
            ),
            settings,
            "c",
            "b",
        );
        assert!(
            matches!(&good, Verdict::Pass(w) if w.ends_with("median latency ≤ 0.005 s on c vs ≤ 0.005 s on b")),
            "{good:?}"
        );
    }
}
