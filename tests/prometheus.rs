//! A real Prometheus scrapes a running router's admin endpoint: the target is up (so the
//! merged text parses for Prometheus itself, one TYPE per family and all), and switchboard
//! series are queryable. Also `promtool check metrics` on the scrape, when promtool is there.
//!
//! Prometheus comes from Debian's `prometheus` package; `scripts/services.sh prometheus`
//! installs it when it is missing (root). The test fails, not skips, without it.

// Test helpers panic on failure: that is how a test fails.
#![allow(clippy::unwrap_used)]

mod supervisor_support;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use supervisor_support::{Router, http_get, wait_until};

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(cmd)).find(|p| p.is_file())
}

fn prometheus() -> PathBuf {
    if let Some(p) = which("prometheus") {
        return p;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
    let ok = Command::new(script).arg("prometheus").status().is_ok_and(|s| s.success());
    assert!(ok, "prometheus is missing and `scripts/services.sh prometheus` could not install it");
    which("prometheus").expect("prometheus after install")
}

/// Kills Prometheus when the test ends, however it ends.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn query(prom: SocketAddr, q: &str) -> serde_json::Value {
    let (code, body) = http_get(prom, &format!("/api/v1/query?query={q}")).expect("query prometheus");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["status"], "success", "{body}");
    v["data"]["result"].clone()
}

#[test]
fn prometheus_scrapes_the_admin_endpoint() {
    let bin = prometheus();
    let r = Router::start(2);
    for _ in 0..5 {
        let _ = r.get("/");
    }
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: switchboard\n    static_configs:\n      - targets: ['{}']\n",
            r.admin
        ),
    )
    .unwrap();
    let prom: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _running = Running(
        Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={prom}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus"),
    );
    let prom_log = || std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
    assert!(
        wait_until(Duration::from_secs(30), || http_get(prom, "/-/ready").is_ok_and(|(c, _)| c == 200)),
        "prometheus not ready:\n{}",
        prom_log()
    );
    // `up` is 1 once a scrape succeeded: the exposition parsed.
    let up_is_1 = || {
        query(prom, "up")
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["metric"]["job"] == "switchboard" && s["value"][1] == "1"))
    };
    if !wait_until(Duration::from_secs(20), up_is_1) {
        let (_, targets) = http_get(prom, "/api/v1/targets").unwrap();
        panic!("target not up: {targets}\n{}", prom_log());
    }
    // A supervisor series and a per-worker series, with one series per worker.
    let workers = query(prom, "switchboard_workers");
    assert_eq!(workers[0]["value"][1], "2", "{workers}");
    let wait_for_both =
        || query(prom, "switchboard_connections_accepted_total").as_array().is_some_and(|a| a.len() == 2);
    assert!(wait_until(Duration::from_secs(10), wait_for_both));
    let series = query(prom, "switchboard_connections_accepted_total");
    let mut labels: Vec<_> = series.as_array().unwrap().iter().map(|s| s["metric"]["worker"].clone()).collect();
    labels.sort_by_key(|v| v.to_string());
    assert_eq!(labels, [serde_json::json!("0"), serde_json::json!("1")]);
    let p99 = query(prom, "histogram_quantile(0.99,sum(rate(switchboard_delivery_latency_seconds_bucket[1m]))by(le))");
    assert!(p99.is_array(), "{p99}");
    println!("prometheus scraped {}: up=1, switchboard_workers=2, per-worker series {series}", r.admin);
}

#[test]
fn promtool_parses_the_scrape() {
    let Some(promtool) = which("promtool").or_else(|| {
        prometheus();
        which("promtool")
    }) else {
        panic!("promtool missing (Debian's prometheus package ships it)");
    };
    let r = Router::start(2);
    let (_, text) = r.admin_get("/metrics").unwrap();
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    // Lint remarks (e.g. a family without HELP) are style; a parse error is a broken scrape.
    assert!(!report.contains("error while linting") && !report.contains("parsing error"), "{report}\n{text}");
    println!("promtool check metrics: {}", if report.trim().is_empty() { "clean" } else { report.trim() });
}
