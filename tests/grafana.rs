//! The Grafana dashboard queries only metrics that exist: every name in
//! `grafana/switchboard.json` is defined in `src/metrics.rs` and appears in a real scrape of
//! a running router's admin endpoint. Both lists are read from the files, not written here.

// Test helpers panic on failure: that is how a test fails.
#![allow(clippy::unwrap_used)]

mod supervisor_support;

use std::collections::BTreeSet;

use supervisor_support::Router;
use switchboard::router::admin::merge::Kind;

fn root() -> &'static std::path::Path {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `pub const X: &str = "switchboard_...";` in src/metrics.rs.
fn defined_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("src/metrics.rs")).unwrap();
    text.lines()
        .filter(|l| l.trim_start().starts_with("pub const"))
        .filter_map(|l| l.split('"').nth(1))
        .map(str::to_owned)
        .collect()
}

/// Every PromQL expression in the dashboard (panel targets and template queries).
fn dashboard_queries() -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "definition" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(root().join("grafana/switchboard.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = vec![];
    walk(&json, &mut out);
    out
}

/// Identifiers starting with `switchboard_` in a PromQL expression (outside quoted strings).
fn names_in(expr: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let unquoted: String = expr.split('"').step_by(2).collect::<Vec<_>>().join(" ");
    let mut out = vec![];
    let mut rest = unquoted.as_str();
    while let Some(i) = rest.find("switchboard_") {
        let before_ok = rest[..i].chars().next_back().is_none_or(|c| !is_ident(c));
        let tail = &rest[i..];
        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        if before_ok {
            out.push(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// A histogram's `_bucket`/`_sum`/`_count` series belong to the name defined for it.
fn family_of(name: &str, defined: &BTreeSet<String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && defined.contains(base)
        {
            return base.to_owned();
        }
    }
    name.to_owned()
}

#[test]
fn every_dashboard_metric_is_defined_and_scraped() {
    let defined = defined_names();
    assert!(defined.len() > 20, "{defined:?}");
    let queries = dashboard_queries();
    let used: BTreeSet<String> = queries.iter().flat_map(|q| names_in(q)).collect();
    assert!(used.len() > 15, "{used:?}");
    for name in &used {
        let fam = family_of(name, &defined);
        assert!(defined.contains(&fam), "the dashboard queries {name}, which src/metrics.rs does not define");
    }

    let r = Router::start(2);
    // Some traffic, so that every worker has counted something.
    for _ in 0..10 {
        let _ = r.get("/");
    }
    let families = r.metrics();
    let scraped: BTreeSet<&str> = families.iter().flat_map(|f| f.samples.iter().map(|s| s.name.as_str())).collect();
    let missing: Vec<_> = used.iter().filter(|n| !scraped.contains(n.as_str())).collect();
    assert!(missing.is_empty(), "the dashboard queries series absent from a real scrape: {missing:?}");
    // Histograms, not summaries: quantiles of summaries cannot be summed across workers.
    for f in &families {
        assert_ne!(f.kind, Kind::Summary, "{} is a summary", f.name);
    }
    let latency = families.iter().find(|f| f.name == switchboard::metrics::DELIVERY_LATENCY).expect("latency");
    assert_eq!(latency.kind, Kind::Histogram);
    println!("dashboard: {} queries over {} metric names, all in the scrape", queries.len(), used.len());
}

#[test]
fn latency_quantiles_come_from_the_summed_histogram() {
    let queries = dashboard_queries();
    for q in ["0.5", "0.99"] {
        assert!(
            queries.iter().any(|e| e.starts_with(&format!("histogram_quantile({q}, sum by (le) (rate("))
                && e.contains("switchboard_delivery_latency_seconds_bucket")),
            "no p{q} panel over sum by (le) of the latency histogram"
        );
    }
}

#[test]
fn name_extraction() {
    assert_eq!(
        names_in("sum by (le) (rate(switchboard_a_bucket{x=\"switchboard_no\"}[5m])) / switchboard_b"),
        ["switchboard_a_bucket", "switchboard_b"]
    );
    assert!(names_in("my_switchboard_x").is_empty());
}
