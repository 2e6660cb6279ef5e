//! Soak (issue 14): our daemon (fjall caches on disk) under Postfix's
//! handshake mix at 64 connections for ten minutes, sampled every 10 s:
//! resident memory, open file descriptors and the p99 of the last window.
//! The run passes when all three stay flat after the first minute (the
//! tolerances are [`RSS_GROWTH`], [`FD_SLACK`], [`P99_GROWTH`]); it writes
//! the samples as CSV and an SVG plot.
//!
//! ```sh
//! cargo bench --bench soak                       # 10 minutes
//! cargo bench --bench soak -- --minutes 2 --out target/soak
//! ```
//!
//! Not in CI: under `cargo test --all-targets` it runs a 3-sample smoke
//! of one second each, which checks that sampling works.
#![allow(dead_code)]

#[path = "load/driver.rs"]
mod driver;
#[path = "load/servers.rs"]
mod servers;
#[path = "load/wire.rs"]
mod wire;

use servers::{Kind, Server, StartOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Resident memory may grow by this much over its level at the end of
/// the first minute (caches fill during the run; the bound keeps them).
const RSS_GROWTH: f64 = 1.25;
/// Open descriptors may differ by this many from the first minute's.
const FD_SLACK: i64 = 4;
/// The median p99 of the last minute may be this many times the first's.
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
            _ => {}
        }
    }
    if a.smoke {
        a.minutes = 3.0 / 60.0;
        a.interval = Duration::from_secs(1);
        a.conns = 8;
    }
    Ok(a)
}

fn run(a: &Args) -> Result<(), String> {
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
    // Flat after the first minute: compare the last minute with the end of
    // the first.
    let per_min = (60.0 / a.interval.as_secs_f64()).max(1.0) as usize;
    let first = &samples[..per_min.min(samples.len())];
    let last = &samples[samples.len().saturating_sub(per_min)..];
    let rss0 = first.last().map_or(0, |s| s.rss_bytes) as f64;
    let rss_max = last.iter().map(|s| s.rss_bytes).max().unwrap_or(0) as f64;
    let fds0 = first.last().map_or(0, |s| s.fds);
    let fds_spread = last.iter().map(|s| (s.fds - fds0).abs()).max().unwrap_or(0);
    let p99_0 = median(first.iter().map(|s| s.p99_us).collect());
    let p99_1 = median(last.iter().map(|s| s.p99_us).collect());
    println!(
        "flatness: rss {:.1} -> max {:.1} MiB (x{:.2}, bound x{RSS_GROWTH}); fds {fds0} ± {fds_spread} (bound ± {FD_SLACK}); p99 median {p99_0:.0} -> {p99_1:.0} µs (x{:.2}, bound x{P99_GROWTH})",
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
    match parse_args().and_then(|a| run(&a)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::FAILURE
        }
    }
}
