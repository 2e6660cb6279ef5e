//! Soak (issue 14): our daemon (fjall caches on disk) under Postfix's
//! handshake mix at 64 connections for ten minutes, sampled every 10 s:
//! resident memory, open file descriptors and the p99 of the last window.
//! The first half of the run is warm-up: the caches fill up to their
//! bound and fjall's tables grow (resident memory rose by a quarter over
//! the first five minutes in the first runs). The run passes when the
//! last minute is flat against the minute that ends the first half (the
//! tolerances are [`RSS_GROWTH`], [`FD_SLACK`], [`P99_GROWTH`]); it writes
//! the samples as CSV and an SVG plot.
//!
//! ```sh
//! cargo bench --bench soak                       # 10 minutes
//! cargo bench --bench soak -- --minutes 2 --out target/soak
//! ```
//!
//! Open loop (`--rate`): a fixed rate of handshakes over the connections,
//! latency from each handshake's due time (`load/open_loop.rs`), with both
//! caches first filled to `--prefill` sessions each (default 100 000, our
//! default bound, so that every new session evicts one), for each of
//! `--servers` (default `ours-fjall,stock`; `ceiling` shows what the
//! machine itself adds to the tail) in turn. Per window: p50, p99,
//! p99.9, max, RSS, server CPU; then the median and worst window's p99.9,
//! the windows over 10 ms and over 3× the median, and the RSS spread after
//! the first minute. It reports and does not judge:
//!
//! ```sh
//! cargo bench --bench soak -- --rate 2000 --minutes 5 --servers ours-fjall,stock
//! ```
//!
//! Ours runs as Postfix runs it, a master(8) child (`load/servers.rs`).
//!
//! Not in CI: under `cargo test --all-targets` it runs a 3-sample smoke
//! of one second each, which checks that sampling works.
#![allow(dead_code)]

#[path = "load/ceiling.rs"]
mod ceiling;
#[path = "load/driver.rs"]
mod driver;
#[path = "load/open_loop.rs"]
mod open_loop;
#[path = "load/servers.rs"]
mod servers;
#[path = "load/wire.rs"]
mod wire;

use servers::{Kind, Server, StartOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Resident memory of the last minute may exceed the level at the end of
/// the warm-up by this factor.
const RSS_GROWTH: f64 = 1.05;
/// The median of open descriptors (counted between windows, with no
/// client connected) may differ by this many from the warm-up's: fjall
/// opens and closes table files as it flushes and compacts (47 to 67 seen
/// in one run).
const FD_SLACK: i64 = 8;
/// Pause between a window and the descriptor count.
const FD_SETTLE: Duration = Duration::from_millis(500);
/// The median p99 of the last minute may be this many times the warm-up's.
const P99_GROWTH: f64 = 2.0;

struct Sample {
    at_s: f64,
    rss_bytes: u64,
    fds: i64,
    p99_us: f64,
    req_per_s: f64,
    errors: u64,
}

fn open_fds(pid: u32) -> i64 {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count() as i64)
        .unwrap_or(-1)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A plotted figure: label, colour, value of a sample.
type Series = (&'static str, &'static str, fn(&Sample) -> f64);

fn svg(samples: &[Sample]) -> String {
    let (w, h, pad) = (720.0, 180.0, 40.0);
    let t_max = samples.last().map_or(1.0, |s| s.at_s).max(1.0);
    let mut out = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{w}' height='{}' font-family='sans-serif' font-size='12'>\n",
        3.0 * h
    );
    let series: [Series; 3] = [
        ("RSS MiB", "#1f77b4", |s| s.rss_bytes as f64 / 1048576.0),
        ("open fds", "#2ca02c", |s| s.fds as f64),
        ("p99 µs (last 10 s)", "#d62728", |s| s.p99_us),
    ];
    for (i, (label, color, f)) in series.iter().enumerate() {
        let y0 = i as f64 * h;
        let max = samples.iter().map(f).fold(0.0_f64, f64::max).max(1.0) * 1.1;
        let pts: Vec<String> = samples
            .iter()
            .map(|s| {
                let x = pad + (s.at_s / t_max) * (w - 2.0 * pad);
                let y = y0 + h - pad / 2.0 - (f(s) / max) * (h - pad);
                format!("{x:.1},{y:.1}")
            })
            .collect();
        out += &format!(
            "<text x='{pad}' y='{}'>{label} (max axis {max:.0})</text>\n\
             <line x1='{pad}' y1='{yb}' x2='{}' y2='{yb}' stroke='#999'/>\n\
             <polyline fill='none' stroke='{color}' stroke-width='2' points='{}'/>\n",
            y0 + 14.0,
            w - pad,
            pts.join(" "),
            yb = y0 + h - pad / 2.0,
        );
    }
    out += &format!(
        "<text x='{pad}' y='{}'>time: 0 to {t_max:.0} s</text>\n</svg>\n",
        3.0 * h - 4.0
    );
    out
}

struct Args {
    minutes: f64,
    interval: Duration,
    conns: usize,
    out: PathBuf,
    smoke: bool,
    /// Open loop at this many handshakes/s (`None`: closed loop).
    rate: Option<f64>,
    prefill: u64,
    servers: Vec<Kind>,
}

fn parse_args() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let smoke = !argv.iter().any(|a| a == "--bench");
    let mut a = Args {
        minutes: 10.0,
        interval: Duration::from_secs(10),
        conns: 64,
        out: PathBuf::from("target/soak"),
        smoke,
        rate: None,
        prefill: 100_000,
        servers: vec![Kind::OursFjall, Kind::Stock],
    };
    let mut it = argv.iter();
    while let Some(k) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--minutes" => a.minutes = val()?.parse().map_err(|e| format!("--minutes: {e}"))?,
            "--interval" => {
                a.interval =
                    Duration::from_secs(val()?.parse().map_err(|e| format!("--interval: {e}"))?)
            }
            "--conns" => a.conns = val()?.parse().map_err(|e| format!("--conns: {e}"))?,
            "--out" => a.out = PathBuf::from(val()?),
            "--rate" => a.rate = Some(val()?.parse().map_err(|e| format!("--rate: {e}"))?),
            "--prefill" => a.prefill = val()?.parse().map_err(|e| format!("--prefill: {e}"))?,
            "--servers" => {
                a.servers = val()?
                    .split(',')
                    .map(|n| Kind::from_name(n.trim()).ok_or(format!("--servers: no server {n}")))
                    .collect::<Result<_, _>>()?
            }
            _ => {}
        }
    }
    if a.smoke {
        a.minutes = 3.0 / 60.0;
        a.interval = Duration::from_secs(1);
        a.conns = 8;
        a.prefill = 300;
    }
    Ok(a)
}

/// `--rate`: the open-loop soak of each server in turn.
fn run_open(a: &Args, rate: f64) -> Result<(), String> {
    let mut servers = a.servers.clone();
    if servers.contains(&Kind::Stock) && !servers::stock_available()? {
        eprintln!(
            "soak: {} not available: stock left out",
            servers::STOCK_TLSMGR
        );
        servers.retain(|k| *k != Kind::Stock);
    }
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let mix = driver::Mix::default();
    let mut summary = String::new();
    for kind in servers {
        let server = Server::start(kind, &StartOptions::default())?;
        let t = Instant::now();
        open_loop::prefill(&server.socket, a.prefill, &mix, 1)?;
        println!(
            "soak {}: prefilled {} sessions per cache in {:.1} s; {rate}/s over {} connections for {:.1} min",
            kind.name(),
            a.prefill,
            t.elapsed().as_secs_f64(),
            a.conns,
            a.minutes
        );
        let plan = open_loop::Plan {
            rate,
            conns: a.conns,
            warmup: Duration::ZERO,
            duration: Duration::from_secs_f64(a.minutes * 60.0),
            window: a.interval,
            mix: mix.clone(),
            id_tag: 2,
        };
        let windows = open_loop::run(&server.socket, server.pid(), &plan, &mut |w, win| {
            println!(
                "  window {w:>3}: rss {:>6.1} MiB cpu {:>5.2} s load {:.2}",
                win.rss as f64 / 1048576.0,
                win.server_cpu.as_secs_f64(),
                win.loadavg
            );
        });
        let (log, disk) = server.stop_and_measure();
        let windows = windows.map_err(|e| format!("{}: {e}\n{log}", kind.name()))?;
        let mut table = format!(
            "{} at {rate}/s, {} connections, caches prefilled to {} each:\n\n\
             | t s | done/s | p50 µs | p99 µs | p99.9 µs | max µs | unfinished | RSS MiB | server CPU µs/handshake | load avg |\n\
             |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
            kind.name(),
            a.conns,
            a.prefill
        );
        for (i, w) in windows.iter().enumerate() {
            table += &format!(
                "| {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {:.1} | {:.2} |\n",
                (a.interval * i as u32).as_secs_f64(),
                w.handshake_rate(),
                w.percentile_us(50.0),
                w.percentile_us(99.0),
                w.percentile_us(99.9),
                w.max_us(),
                w.unfinished,
                w.rss as f64 / 1048576.0,
                w.cpu_us_per_handshake(),
                w.loadavg
            );
        }
        let p999: Vec<f64> = windows.iter().map(|w| w.percentile_us(99.9)).collect();
        let med = median(p999.clone());
        let worst = p999.iter().copied().fold(0.0_f64, f64::max);
        let over_10ms = p999.iter().filter(|&&p| p > 10_000.0).count();
        let over_3x = p999.iter().filter(|&&p| p > 3.0 * med).count();
        let per_min = (60.0 / a.interval.as_secs_f64()).max(1.0) as usize;
        let later: Vec<u64> = windows.iter().skip(per_min).map(|w| w.rss).collect();
        let (lo, hi) = (
            later.iter().copied().min().unwrap_or(0) as f64,
            later.iter().copied().max().unwrap_or(0) as f64,
        );
        let peak = windows.iter().map(|w| w.rss).max().unwrap_or(0);
        let errors: u64 = windows.iter().map(|w| w.errors).sum();
        let lost: u64 = windows.iter().map(|w| w.lost).sum();
        let line = format!(
            "{}: p99.9 per window: median {:.1} ms, worst {:.1} ms; {over_10ms} of {} windows over 10 ms, {over_3x} over 3× the median; RSS after the first minute {:.1}–{:.1} MiB ({:+.1} %), peak {:.1} MiB; disk {:.1} MiB; errors {errors}, lost {lost}",
            kind.name(),
            med / 1000.0,
            worst / 1000.0,
            windows.len(),
            lo / 1048576.0,
            hi / 1048576.0,
            100.0 * (hi - lo) / lo.max(1.0),
            peak as f64 / 1048576.0,
            disk.alloc as f64 / 1048576.0,
        );
        table += &format!("\n{line}\n");
        println!("{table}");
        summary += &format!("{line}\n");
        std::fs::write(a.out.join(format!("soak-open-{}.md", kind.name())), &table)
            .map_err(|e| format!("write soak table: {e}"))?;
        if errors > 0 || windows.iter().all(|w| w.latencies.is_empty()) {
            return Err(format!(
                "{}: {errors} bad replies or no handshakes\n{log}",
                kind.name()
            ));
        }
    }
    println!("{summary}");
    Ok(())
}

fn run(a: &Args) -> Result<(), String> {
    if let Some(rate) = a.rate {
        return run_open(a, rate);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let server = Server::start(Kind::OursFjall, &StartOptions::default())?;
    let pid = server.pid();
    let mix = driver::Mix::default();
    let total = Duration::from_secs_f64(a.minutes * 60.0);
    let start = Instant::now();
    let mut samples = Vec::new();
    println!(
        "soak: ours-fjall, {} connections, sample every {:?}, {:.1} min",
        a.conns, a.interval, a.minutes
    );
    while start.elapsed() < total {
        let m = driver::run(&rt, &server, a.conns, Duration::ZERO, a.interval, &mix)?;
        // The window's connections are closed; let the server see their
        // EOFs, so the descriptors counted are the daemon's own, not the
        // teardown of the last window's clients.
        std::thread::sleep(FD_SETTLE);
        let s = Sample {
            at_s: start.elapsed().as_secs_f64(),
            rss_bytes: servers::status_kb(pid, "VmRSS").unwrap_or(0),
            fds: open_fds(pid),
            p99_us: m.percentile_us(99.0),
            req_per_s: m.throughput(),
            errors: m.errors + m.lost,
        };
        println!(
            "t={:>5.0}s rss {:>6.1} MiB fds {:>3} p99 {:>7.0} µs {:>7.0} req/s errors {}",
            s.at_s,
            s.rss_bytes as f64 / 1048576.0,
            s.fds,
            s.p99_us,
            s.req_per_s,
            s.errors
        );
        samples.push(s);
    }
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let mut csv = String::from("t_s,rss_bytes,fds,p99_us,req_per_s,errors\n");
    for s in &samples {
        csv += &format!(
            "{:.1},{},{},{:.1},{:.0},{}\n",
            s.at_s, s.rss_bytes, s.fds, s.p99_us, s.req_per_s, s.errors
        );
    }
    std::fs::write(a.out.join("soak.csv"), csv).map_err(|e| format!("soak.csv: {e}"))?;
    std::fs::write(a.out.join("soak.svg"), svg(&samples)).map_err(|e| format!("soak.svg: {e}"))?;
    if samples.iter().any(|s| s.errors > 0) {
        return Err("bad replies or lost sessions during the soak".into());
    }
    if samples.iter().any(|s| s.rss_bytes == 0 || s.fds < 0) {
        return Err("no /proc figures for the server".into());
    }
    if a.smoke {
        println!("smoke run: {} samples", samples.len());
        return Ok(());
    }
    // Flat after the warm-up: the last minute against the minute that
    // ends the first half.
    let per_min = (60.0 / a.interval.as_secs_f64()).max(1.0) as usize;
    let half = (samples.len() / 2).max(1);
    let first = &samples[half.saturating_sub(per_min)..half];
    let last = &samples[samples.len().saturating_sub(per_min)..];
    let rss0 = first.iter().map(|s| s.rss_bytes).max().unwrap_or(0) as f64;
    let rss_max = last.iter().map(|s| s.rss_bytes).max().unwrap_or(0) as f64;
    let fds0 = median(first.iter().map(|s| s.fds as f64).collect()) as i64;
    let fds1 = median(last.iter().map(|s| s.fds as f64).collect()) as i64;
    let fds_spread = (fds1 - fds0).abs();
    let p99_0 = median(first.iter().map(|s| s.p99_us).collect());
    let p99_1 = median(last.iter().map(|s| s.p99_us).collect());
    println!(
        "flatness, last minute against the end of the warm-up: rss max {:.1} -> {:.1} MiB (x{:.3}, bound x{RSS_GROWTH}); fds median {fds0} -> {fds1} (bound ± {FD_SLACK}); p99 median {p99_0:.0} -> {p99_1:.0} µs (x{:.2}, bound x{P99_GROWTH})",
        rss0 / 1048576.0,
        rss_max / 1048576.0,
        rss_max / rss0.max(1.0),
        p99_1 / p99_0.max(1.0),
    );
    if rss_max > rss0 * RSS_GROWTH || fds_spread > FD_SLACK || p99_1 > p99_0 * P99_GROWTH {
        return Err("not flat".into());
    }
    println!("flat within the tolerances; samples in {}", a.out.display());
    Ok(())
}

fn main() -> ExitCode {
    // The bench started this binary again as the ceiling server.
    if let Some(code) = ceiling::serve_if_asked() {
        return code;
    }
    match parse_args().and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}
