//! The status page (`GET /` on `tlsmgr_metrics_listen`) in headless
//! Chromium while a client makes requests: the page loads its figures from
//! `/stats.json`, the numbers move from one refresh to the next, the SVG
//! charts have their series, and a screenshot is kept as a test artifact
//! (`target/tmp/status-page.png`).
//!
//! Needs Debian's `chromium`; with CI set, a missing browser fails the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use crate::common;

use common::*;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser"].iter().find_map(|name| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
    });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install Debian's chromium package (.ci/run)"
        );
        eprintln!("skipping: chromium not installed");
    }
    found
}

/// Chromium, headless, with its own profile; `what` is `--dump-dom` or
/// `--screenshot=PATH`. Virtual time lets the page's timers (its refresh)
/// run for `budget_ms` without the test waiting that long.
fn browse(browser: &Path, profile: &Path, what: &str, url: &str, budget_ms: u32) -> String {
    let o = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1200,1100",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg(what)
        .arg(url)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The text of the element with `id` (up to its first tag).
fn text_of<'a>(dom: &'a str, id: &str) -> &'a str {
    let key = format!("id=\"{id}\">");
    let start = dom
        .find(&key)
        .unwrap_or_else(|| panic!("no #{id} in\n{dom}"))
        + key.len();
    &dom[start..start + dom[start..].find('<').unwrap()]
}

/// The row `<tr id="{id}">...</tr>`.
fn row<'a>(dom: &'a str, id: &str) -> &'a str {
    let key = format!("<tr id=\"{id}\">");
    let start = dom.find(&key).unwrap_or_else(|| panic!("no row {id}"));
    &dom[start..start + dom[start..].find("</tr>").unwrap()]
}

fn cell<'a>(row: &'a str, class: &str) -> &'a str {
    let key = format!("class=\"{class}\">");
    let start = row
        .find(&key)
        .unwrap_or_else(|| panic!("no .{class} in {row}"))
        + key.len();
    &row[start..start + row[start..].find('<').unwrap()]
}

#[test]
fn the_status_page_shows_moving_numbers() {
    let Some(browser) = chromium() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let d = TestDaemon::start(&format!("tlsmgr_metrics_listen = {addr}"));
    assert!(eventually(|| std::net::TcpStream::connect(addr).is_ok()));
    // A client that keeps the daemon busy while the page is looked at.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let socket = d.socket.clone();
    let load = {
        let (stop, done) = (stop.clone(), done.clone());
        std::thread::spawn(move || {
            let mut c = tlsmgr::client::Client::connect(&socket, Duration::from_secs(10)).unwrap();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                update(&mut c, "smtpd", &format!("id{}", i % 50), b"session");
                lookup(&mut c, "smtpd", &format!("id{}", i % 70));
                c.request(&tlsmgr::protocol::Request::Seed { size: 32 })
                    .unwrap();
                i += 1;
                done.store(3 * i, Ordering::Relaxed);
            }
        })
    };
    assert!(eventually(|| done.load(Ordering::Relaxed) > 100));
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{addr}/?interval=500");
    let first = browse(&browser, profile.path(), "--dump-dom", &url, 5000);
    let second = browse(&browser, profile.path(), "--dump-dom", &url, 5000);
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    browse(
        &browser,
        profile.path(),
        &format!("--screenshot={}", shot.display()),
        &url,
        5000,
    );
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();

    for dom in [&first, &second] {
        assert_eq!(text_of(dom, "version"), env!("CARGO_PKG_VERSION"));
        assert_eq!(text_of(dom, "error"), "", "the page read stats.json");
        let refreshes: u32 = text_of(dom, "updates").parse().unwrap();
        assert!(refreshes >= 3, "refreshed {refreshes} times");
        // Requests arrived between the last two refreshes: the numbers moved.
        let rate: f64 = text_of(dom, "total-rate").parse().unwrap();
        assert!(rate > 0.0, "total rate {rate}");
        let lookups: f64 = cell(row(dom, "request-lookup"), "rate").parse().unwrap();
        assert!(lookups > 0.0);
        assert!(cell(row(dom, "request-seed"), "p99").ends_with(" ms"));
        let smtpd = row(dom, "cache-smtpd");
        assert_eq!(cell(smtpd, "entries"), "50");
        assert!(cell(smtpd, "hit").ends_with(" %"));
        assert_eq!(cell(row(dom, "cache-lmtp"), "entries"), "off");
        // The charts have their series drawn.
        for name in ["lookup", "update", "seed"] {
            assert!(
                dom.contains(&format!("class=\"series\" data-name=\"{name}\"")),
                "no {name} series"
            );
        }
    }
    let total = |dom: &str| -> u64 { text_of(dom, "total-requests").parse().unwrap() };
    assert!(
        total(&second) > total(&first),
        "the totals moved between loads"
    );
    assert!(total(&second) <= done.load(Ordering::Relaxed) + 3);
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    eprintln!("screenshot: {}", shot.display());
}
