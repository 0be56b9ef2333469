//! The canary-versus-baseline analysis on seeded synthetic traffic: the real tally and
//! verdict (`shipit::deploy::analysis`), fed windows of requests as a deploy's scrapes
//! would be, one canary node against two baseline nodes, 150 requests a node a window.
//! Each request fails with the version's error rate and takes the version's latency
//! (about 2 ms, log-normal, in the example service's histogram buckets).
//!
//! Prints, over 1,000 runs of 30 windows each (the analysis never stops early on a pass
//! here, so every look may raise a false alarm):
//! - good versions (0.2 % errors and the same latency on both sides): the false-alarm
//!   rate, beside `alpha`;
//! - 3 % errors, and 40 ms added latency: the detection rate, and the median requests
//!   the canary served before the verdict.
//!
//! `cargo bench --bench analysis`

use shipit::deploy::analysis::{judge, NodeServed, Scrape, Served, Settings, Tally, Verdict};

const RUNS: u64 = 1_000;
const WINDOWS: u32 = 30;
const PER_NODE: u64 = 150;
const BUCKETS: [f64; 8] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];

/// xorshift64*: the same seed, the same traffic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// A standard normal (Box-Muller).
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unit().max(1e-12), self.unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

#[derive(Clone, Copy)]
struct Version {
    error_rate: f64,
    added_seconds: f64,
}

/// Nothing served yet, in the histogram's buckets (as a node that just started exports).
fn nothing() -> Served {
    Served {
        requests: 0,
        errors: 0,
        buckets: BUCKETS
            .iter()
            .map(|b| b.to_string())
            .chain(["inf".to_string()])
            .map(|le| (le, 0))
            .collect(),
    }
}

/// `nodes` nodes' requests for one window, added to `served` (cumulative, as scraped).
fn serve(rng: &mut Rng, v: Version, nodes: u64, served: &mut Served) {
    for _ in 0..nodes * PER_NODE {
        served.requests += 1;
        if rng.unit() < v.error_rate {
            served.errors += 1;
        }
        let took = 0.002 * (0.5 * rng.normal()).exp() + v.added_seconds;
        for (i, (_, n)) in served.buckets.iter_mut().enumerate() {
            if BUCKETS.get(i).is_none_or(|b| took <= *b) {
                *n += 1;
            }
        }
    }
}

/// One analysis: the canary runs `canary`, the baseline `baseline`. The canary's requests
/// before the verdict, if it was found worse, and by which test (true: its errors).
fn run(seed: u64, canary: Version, baseline: Version, settings: Settings) -> Option<(u64, bool)> {
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut tally = Tally::default();
    let (mut c, mut b) = (nothing(), nothing());
    let scrape = |c: &Served, b: &Served| Scrape {
        nodes: vec![
            NodeServed {
                node: "canary".into(),
                canary: true,
                served: c.clone(),
            },
            NodeServed {
                node: "baseline".into(),
                canary: false,
                served: b.clone(),
            },
        ],
        unanswered: vec![],
    };
    // The first scrape opens the first window.
    tally.add(scrape(&c, &b));
    for _ in 0..WINDOWS {
        serve(&mut rng, canary, 1, &mut c);
        serve(&mut rng, baseline, 2, &mut b);
        tally.add(scrape(&c, &b));
        if let Verdict::Worse(why) = judge(&tally, settings, "canary", "baseline") {
            return Some((tally.canary.requests, why.starts_with("error ratio")));
        }
    }
    None
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

fn main() {
    let settings = Settings {
        alpha_ppm: 10_000,
        min_requests: 200,
    };
    let good = Version {
        error_rate: 0.002,
        added_seconds: 0.0,
    };
    let cases = [
        ("good (same as the baseline)", good),
        (
            "3 % errors",
            Version {
                error_rate: 0.03,
                ..good
            },
        ),
        (
            "40 ms more latency",
            Version {
                added_seconds: 0.040,
                ..good
            },
        ),
    ];
    println!(
        "canary vs baseline: {RUNS} seeded runs of {WINDOWS} windows, {PER_NODE} requests a node a window, 1 canary node vs 2 baseline nodes, alpha = {}",
        settings.alpha()
    );
    for (name, canary) in cases {
        let found: Vec<(u64, bool)> = (0..RUNS)
            .filter_map(|seed| run(seed, canary, good, settings))
            .collect();
        let rate = found.len() as f64 / RUNS as f64;
        let by_errors = found.iter().filter(|f| f.1).count();
        let by_test = format!(
            "{by_errors} by the error test, {} by the latency test",
            found.len() - by_errors
        );
        let requests = found.iter().map(|f| f.0).collect();
        if canary.error_rate == good.error_rate && canary.added_seconds == good.added_seconds {
            println!(
                "  {name}: false alarms {} of {RUNS} = {:.3} (alpha {}; {by_test})",
                found.len(),
                rate,
                settings.alpha()
            );
        } else {
            println!(
                "  {name}: detected {} of {RUNS} = {:.3} ({by_test}), median {} canary requests to decide",
                found.len(),
                rate,
                median(requests)
            );
        }
    }
}
