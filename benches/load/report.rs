//! Results: medians over the interleaved rounds, the markdown table with
//! ratios to the stock daemon and to the ceiling, a CSV of every run, and
//! an SVG line chart of throughput and p99 against concurrency.

use super::driver::Measure;
use super::footprint::Footprint;
use super::servers::Kind;
use std::collections::BTreeMap;
use std::fmt::Write;

/// The median figures of one (server, concurrency) point.
#[derive(Debug, Clone, Default)]
pub struct Point {
    pub runs: usize,
    pub rps: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub cpu_us_per_req: f64,
    pub server_cores: f64,
    pub busiest_thread: f64,
    pub client_cores: f64,
    pub peak_rss_mib: f64,
    pub hit_rate: f64,
    pub errors: u64,
    pub lost: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// Results keyed by server and concurrency.
pub type Runs = BTreeMap<(Kind, usize), Vec<Measure>>;

/// Median figures keyed by server and concurrency.
pub type Points = BTreeMap<(Kind, usize), Point>;

pub fn summarize(runs: &Runs) -> Points {
    runs.iter()
        .map(|(k, ms)| {
            let f = |g: &dyn Fn(&Measure) -> f64| median(ms.iter().map(g).collect());
            (
                *k,
                Point {
                    runs: ms.len(),
                    rps: f(&|m| m.throughput()),
                    p50: f(&|m| m.percentile_us(50.0)),
                    p99: f(&|m| m.percentile_us(99.0)),
                    p999: f(&|m| m.percentile_us(99.9)),
                    cpu_us_per_req: f(&|m| m.server_cpu_per_req_us()),
                    server_cores: f(&|m| m.server_cores()),
                    busiest_thread: f(&|m| m.busiest_thread_cores()),
                    client_cores: f(&|m| m.client_cores()),
                    peak_rss_mib: f(&|m| m.server_peak_rss as f64 / 1048576.0),
                    hit_rate: f(&|m| m.hits as f64 / (m.hits + m.misses).max(1) as f64),
                    errors: ms.iter().map(|m| m.errors).sum(),
                    lost: ms.iter().map(|m| m.lost).sum(),
                },
            )
        })
        .collect()
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 && a.is_finite() => format!("{:.2}", a / b),
        _ => "–".into(),
    }
}

/// The markdown table.
pub fn table(points: &Points, conns: &[usize]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| server | conns | req/s | × stock | × ceiling | p50 µs | p99 µs | p99.9 µs | p99 × stock | server CPU µs/req | server cores | busiest thread | generator cores | peak RSS MiB | hit rate | errors | lost | runs |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &c in conns {
        let stock = points.get(&(Kind::Stock, c));
        let ceiling = points.get(&(Kind::Ceiling, c));
        for kind in Kind::EVERY {
            let Some(p) = points.get(&(kind, c)) else {
                continue;
            };
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {} | {} | {:.0} | {:.0} | {:.0} | {} | {:.1} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} | {} | {} | {} |",
                kind.name(),
                c,
                p.rps,
                ratio(p.rps, stock.map(|x| x.rps)),
                ratio(p.rps, ceiling.map(|x| x.rps)),
                p.p50,
                p.p99,
                p.p999,
                ratio(p.p99, stock.map(|x| x.p99)),
                p.cpu_us_per_req,
                p.server_cores,
                p.busiest_thread,
                p.client_cores,
                p.peak_rss_mib,
                p.hit_rate,
                p.errors,
                p.lost,
                p.runs,
            );
        }
    }
    s
}

/// The open-loop table: per rate and server, the medians over rounds of
/// the completed rate, latency percentiles from the due time, server CPU
/// per handshake and the load average the runs saw.
pub fn open_loop_table(
    rates: &[f64],
    runs: &BTreeMap<(usize, Kind), Vec<super::open_loop::Window>>,
) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| rate/s | server | done/s | p50 µs | p99 µs | p99.9 µs | max µs | unfinished | server CPU µs/handshake | load avg | runs |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for ((ri, kind), ws) in runs {
        let f = |g: &dyn Fn(&super::open_loop::Window) -> f64| median(ws.iter().map(g).collect());
        let _ = writeln!(
            s,
            "| {:.0} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2} | {} |",
            rates.get(*ri).copied().unwrap_or(f64::NAN),
            kind.name(),
            f(&|w| w.handshake_rate()),
            f(&|w| w.percentile_us(50.0)),
            f(&|w| w.percentile_us(99.0)),
            f(&|w| w.percentile_us(99.9)),
            f(&|w| w.max_us()),
            f(&|w| w.unfinished as f64),
            f(&|w| w.cpu_us_per_handshake()),
            f(&|w| w.loadavg),
            ws.len()
        );
    }
    s
}

/// Every run, one CSV line each.
pub fn csv(runs: &Runs) -> String {
    let mut s = String::from(
        "server,conns,round,requests,window_s,rps,p50_us,p99_us,p999_us,server_cpu_s,busiest_thread_cpu_s,client_cpu_s,peak_rss_bytes,hits,misses,lost,errors\n",
    );
    for ((kind, c), ms) in runs {
        for (i, m) in ms.iter().enumerate() {
            let _ = writeln!(
                s,
                "{},{},{},{},{:.3},{:.1},{:.1},{:.1},{:.1},{:.3},{:.3},{:.3},{},{},{},{},{}",
                kind.name(),
                c,
                i,
                m.requests,
                m.window.as_secs_f64(),
                m.throughput(),
                m.percentile_us(50.0),
                m.percentile_us(99.0),
                m.percentile_us(99.9),
                m.server_cpu.as_secs_f64(),
                m.server_busiest_thread.as_secs_f64(),
                m.client_cpu.as_secs_f64(),
                m.server_peak_rss,
                m.hits,
                m.misses,
                m.lost,
                m.errors
            );
        }
    }
    s
}

pub fn footprint_table(rows: &[Footprint]) -> String {
    let mut s = String::new();
    let mib = |b: u64| b as f64 / 1048576.0;
    let _ = writeln!(
        s,
        "| server | sessions | fill time s | updates/s | RSS idle MiB | RSS full MiB | peak RSS MiB | disk allocated MiB | disk apparent MiB | of it journals (files) | settled apparent MiB (journals) | after shutdown apparent MiB | sample hits |"
    );
    let _ = writeln!(
        s,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} ({}) | {:.1} ({}) | {:.1} | {}/{} |",
            r.kind.name(),
            r.sessions,
            r.fill_time.as_secs_f64(),
            r.sessions as f64 / r.fill_time.as_secs_f64().max(1e-9),
            mib(r.rss_idle),
            mib(r.rss_full),
            mib(r.peak_rss),
            mib(r.disk.alloc),
            mib(r.disk.apparent),
            mib(r.disk.journal_apparent),
            r.disk.journals,
            mib(r.disk_settled.apparent),
            r.disk_settled.journals,
            mib(r.disk_stopped.apparent),
            r.sample_hits,
            r.sample
        );
    }
    s
}

fn color(k: Kind) -> &'static str {
    match k {
        Kind::OursFjall => "#1f77b4",
        Kind::OursMemory => "#2ca02c",
        Kind::OursServe => "#17becf",
        Kind::OursShared => "#9467bd",
        Kind::Stock => "#d62728",
        Kind::Ceiling => "#7f7f7f",
        Kind::OursMetrics => "#9467bd",
        Kind::OursBase => "#8c564b",
    }
}

/// `ours-shared` beside `ours-fjall`, per concurrency: the throughput
/// ratio and the p99 it adds.
pub fn shared_table(points: &Points, conns: &[usize]) -> String {
    let mut s = String::from(
        "| conns | ours-fjall req/s | ours-shared req/s | shared ÷ local | p99 local µs | p99 shared µs | added p99 µs |\n|---|---|---|---|---|---|---|\n",
    );
    for &c in conns {
        if let (Some(l), Some(sh)) = (
            points.get(&(Kind::OursFjall, c)),
            points.get(&(Kind::OursShared, c)),
        ) {
            let _ = writeln!(
                s,
                "| {c} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {:.0} |",
                l.rps,
                sh.rps,
                ratio(sh.rps, Some(l.rps)),
                l.p99,
                sh.p99,
                sh.p99 - l.p99
            );
        }
    }
    s
}

/// Upper bound of a "nice" axis: 1, 2 or 5 times a power of ten.
fn nice_max(v: f64) -> f64 {
    if v.is_nan() || v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

/// One panel: a line per server over the concurrency levels.
fn panel(
    s: &mut String,
    x0: f64,
    title: &str,
    unit: &str,
    log_scale: bool,
    conns: &[usize],
    series: &[(Kind, Vec<Option<f64>>)],
) {
    let (w, h, top, left, bottom) = (410.0, 260.0, 40.0, 70.0, 40.0);
    let values = || series.iter().flat_map(|(_, v)| v.iter().flatten().copied());
    let vmax = values().fold(0.0, f64::max);
    // Linear from 0 to a round maximum, or log10 across whole decades.
    let (lo, hi) = if log_scale {
        let vmin = values().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
        let lo = if vmin.is_finite() {
            vmin.log10().floor()
        } else {
            0.0
        };
        (lo, vmax.max(1.0).log10().ceil().max(lo + 1.0))
    } else {
        (0.0, nice_max(vmax))
    };
    let scale = move |v: f64| if log_scale { v.max(1e-9).log10() } else { v };
    let px = |i: usize| x0 + left + (i as f64 + 0.5) * (w / conns.len() as f64);
    let py = move |v: f64| top + h - (scale(v) - lo) / (hi - lo) * h;
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="15" text-anchor="middle">{title}</text>"#,
        x0 + left + w / 2.0
    );
    let _ = writeln!(
        s,
        r##"<rect x="{}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>"##,
        x0 + left
    );
    let ticks: Vec<f64> = if log_scale {
        (lo as i32..=hi as i32).map(|e| 10f64.powi(e)).collect()
    } else {
        (0..=5).map(|t| hi * t as f64 / 5.0).collect()
    };
    for v in ticks {
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="#eee"/><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
            x0 + left,
            x0 + left + w,
            x0 + left - 4.0,
            y + 4.0,
            if v >= 10.0 || v == 0.0 {
                format!("{v:.0}")
            } else {
                format!("{v}")
            }
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="11" transform="rotate(-90 {} {})" text-anchor="middle">{unit}</text>"#,
        x0 + 14.0,
        top + h / 2.0,
        x0 + 14.0,
        top + h / 2.0
    );
    for (i, c) in conns.iter().enumerate() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{c}</text>"#,
            px(i),
            top + h + 16.0
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">concurrent connections</text>"#,
        x0 + left + w / 2.0,
        top + h + bottom - 6.0
    );
    for (kind, vals) in series {
        let pts: Vec<String> = vals
            .iter()
            .enumerate()
            .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", px(i), py(v))))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
            color(*kind),
            pts.join(" ")
        );
        for p in &pts {
            let (x, y) = p.split_once(',').unwrap_or(("0", "0"));
            let _ = writeln!(
                s,
                r#"<circle cx="{x}" cy="{y}" r="3" fill="{}"/>"#,
                color(*kind)
            );
        }
    }
}

/// The SVG: throughput (left) and p99 latency (right) against concurrency.
pub fn svg(points: &Points, conns: &[usize], caption: &str) -> String {
    let kinds: Vec<Kind> = Kind::EVERY
        .into_iter()
        .filter(|k| conns.iter().any(|c| points.contains_key(&(*k, *c))))
        .collect();
    let series = |f: &dyn Fn(&Point) -> f64| -> Vec<(Kind, Vec<Option<f64>>)> {
        kinds
            .iter()
            .map(|k| {
                (
                    *k,
                    conns
                        .iter()
                        .map(|c| points.get(&(*k, *c)).map(f).filter(|v| v.is_finite()))
                        .collect(),
                )
            })
            .collect()
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="1000" height="380" font-family="sans-serif">"#
    );
    let _ = writeln!(s, r#"<rect width="1000" height="380" fill="white"/>"#);
    panel(
        &mut s,
        0.0,
        "Throughput",
        "requests/s",
        false,
        conns,
        &series(&|p| p.rps),
    );
    panel(
        &mut s,
        500.0,
        "p99 latency (log scale)",
        "µs",
        true,
        conns,
        &series(&|p| p.p99),
    );
    for (i, k) in kinds.iter().enumerate() {
        let x = 80.0 + i as f64 * 200.0;
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="352" x2="{}" y2="352" stroke="{}" stroke-width="3"/><text x="{}" y="356" font-size="12">{}</text>"#,
            x + 24.0,
            color(*k),
            x + 30.0,
            k.name()
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="500" y="374" font-size="10" text-anchor="middle" fill="#555">{}</text>"##,
        caption.replace('&', "&amp;").replace('<', "&lt;")
    );
    s.push_str("</svg>\n");
    s
}

/// Medians from a saved `runs.csv` (for `--replot`): the same figures as
/// [`summarize`], computed from each run's recorded percentiles.
pub fn summarize_csv(text: &str) -> Result<(Points, Vec<usize>), String> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().ok_or("empty CSV")?.split(',').collect();
    let col = |name: &str| {
        header
            .iter()
            .position(|h| *h == name)
            .ok_or_else(|| format!("CSV has no column {name}"))
    };
    let names = [
        "server",
        "conns",
        "window_s",
        "rps",
        "p50_us",
        "p99_us",
        "p999_us",
        "server_cpu_s",
        "busiest_thread_cpu_s",
        "client_cpu_s",
        "peak_rss_bytes",
        "hits",
        "misses",
        "lost",
        "errors",
        "requests",
    ];
    let idx: Vec<usize> = names.iter().map(|n| col(n)).collect::<Result<_, _>>()?;
    let mut rows: BTreeMap<(Kind, usize), Vec<Vec<f64>>> = BTreeMap::new();
    for line in lines.filter(|l| !l.is_empty()) {
        let f: Vec<&str> = line.split(',').collect();
        let get = |i: usize| f.get(idx[i]).copied().unwrap_or("");
        let kind = Kind::from_name(get(0)).ok_or_else(|| format!("bad server in {line}"))?;
        let conns: usize = get(1).parse().map_err(|_| format!("bad conns in {line}"))?;
        let nums: Vec<f64> = (2..names.len())
            .map(|i| get(i).parse::<f64>().unwrap_or(f64::NAN))
            .collect();
        rows.entry((kind, conns)).or_default().push(nums);
    }
    let mut conns: Vec<usize> = rows.keys().map(|(_, c)| *c).collect();
    conns.sort_unstable();
    conns.dedup();
    // Offsets into `nums` (names[2..]).
    let [window, rps, p50, p99, p999, cpu, busiest, client, rss, hits, misses, lost, errors, requests] =
        [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13];
    let points = rows
        .into_iter()
        .map(|(k, runs)| {
            let f = |g: &dyn Fn(&[f64]) -> f64| median(runs.iter().map(|r| g(r)).collect());
            let point = Point {
                runs: runs.len(),
                rps: f(&|r| r[rps]),
                p50: f(&|r| r[p50]),
                p99: f(&|r| r[p99]),
                p999: f(&|r| r[p999]),
                cpu_us_per_req: f(&|r| r[cpu] * 1e6 / r[requests].max(1.0)),
                server_cores: f(&|r| r[cpu] / r[window]),
                busiest_thread: f(&|r| r[busiest] / r[window]),
                client_cores: f(&|r| r[client] / r[window]),
                peak_rss_mib: f(&|r| r[rss] / 1048576.0),
                hit_rate: f(&|r| r[hits] / (r[hits] + r[misses]).max(1.0)),
                errors: runs.iter().map(|r| r[errors] as u64).sum(),
                lost: runs.iter().map(|r| r[lost] as u64).sum(),
            };
            (k, point)
        })
        .collect();
    Ok((points, conns))
}
