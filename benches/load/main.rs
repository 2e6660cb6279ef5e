//! Load benchmark (issue 7, parts 2 and 3): ours (fjall and memory stores),
//! Debian's stock tlsmgr and a fixed-reply ceiling server, side by side in
//! one run on the same machine, under the request mix Postfix produces per
//! TLS handshake; then memory and disk with 100 000 cached sessions.
//!
//! `cargo bench --bench load` runs the full matrix (every server at 1, 8, 64
//! and 256 connections, interleaved rounds, medians) and the footprint test,
//! prints markdown tables and writes them, a CSV of every run and an SVG
//! plot to `target/load-bench/`. Options (after `--`):
//!
//! - `--quick`: one round of 1 s at 1 and 64 connections, footprint of 10 000;
//! - `--servers ours-fjall,ours-memory,ours-shared,stock,ceiling`,
//!   `--conns 1,8,64,256` (`ours-shared`: fjall, sharing through a
//!   `redis-server` the bench starts; its table beside `ours-fjall` shows
//!   the throughput ratio and the added p99);
//! - `--rounds N` (3), `--secs S` (3), `--warmup S` (0.5);
//! - `--footprint N` (100000; 0 skips it), `--no-load` (footprint only);
//! - `--hit-ratio P` (0.5), `--gen-threads N` (2), `--base-dir DIR` (where
//!   the servers' directories go; default $TMPDIR), `--out DIR`;
//! - `--main-cf 'NAME = VALUE'` (repeatable): a main.cf line for our servers;
//! - `--replot RUNS.CSV`: no run; the table and plot again from a saved CSV
//!   (`--caption TEXT` sets the plot's caption);
//! - `--open-loop 1000,3000,10000`: instead of the closed-loop matrix, a
//!   fixed rate of handshakes per second spread over `--open-conns N` (64)
//!   connections, latency from each handshake's due time
//!   (`open_loop.rs`), for each rate, `--rounds` interleaved rounds of
//!   `--secs` each; servers by default ours-fjall, stock and the ceiling.
//!
//! Environment: `TLSMGR_BENCH_OURS_BIN` runs another build of ours (A/B
//! experiments); `TLSMGR_BENCH_BASE_BIN` is the build `ours-base` runs, on
//! the memory store or, with `TLSMGR_BENCH_BASE_STORE=btree`, on fjall;
//! `TLSMGR_BENCH_CEILING_THREADS` gives the ceiling a multi-thread runtime
//! (default: one thread).
//!
//! Without `--bench` (that is, under `cargo test --all-targets`) it is a
//! smoke run: every available server at 1 and 8 connections for 0.3 s, a
//! footprint of 300 sessions and an open-loop run of 0.3 s at 200
//! handshakes/s over 8 connections per server, failing on any error;
//! nothing is written.
//!
//! Ours runs as Postfix runs it, a master(8) child started exactly as
//! stock is (`ours-fjall`, `ours-memory`); `ours-serve` is `tlsmgr serve`
//! on fjall, for comparison (`servers.rs`).

mod ceiling;
mod driver;
mod footprint;
mod open_loop;
mod report;
mod servers;
mod wire;

use report::Runs;
use servers::{Kind, Server, StartOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Clone)]
struct Args {
    bench: bool,
    servers: Vec<Kind>,
    conns: Vec<usize>,
    rounds: usize,
    secs: f64,
    warmup: f64,
    footprint: u64,
    load: bool,
    gen_threads: usize,
    mix: driver::Mix,
    start: StartOptions,
    out: PathBuf,
    replot: Option<PathBuf>,
    caption: Option<String>,
    /// Open-loop rates (handshakes/s); empty: the closed-loop matrix.
    open_loop: Vec<f64>,
    open_conns: usize,
    servers_given: bool,
}

fn parse_list<T>(v: &str, f: impl Fn(&str) -> Option<T>) -> Result<Vec<T>, String> {
    v.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| f(s.trim()).ok_or_else(|| format!("bad list item: {s}")))
        .collect()
}

fn parse_args() -> Result<Args, String> {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let bench = argv.iter().any(|a| a == "--bench");
    let mut a = Args {
        bench,
        servers: Kind::ALL.to_vec(),
        conns: vec![1, 8, 64, 256],
        rounds: 3,
        secs: 3.0,
        warmup: 0.5,
        footprint: 100_000,
        load: true,
        gen_threads: 2,
        mix: driver::Mix::default(),
        start: StartOptions::default(),
        out: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/load-bench"),
        replot: None,
        caption: None,
        open_loop: Vec::new(),
        open_conns: 64,
        servers_given: false,
    };
    if !bench {
        a.conns = vec![1, 8];
        a.rounds = 1;
        a.secs = 0.3;
        a.warmup = 0.0;
        a.footprint = 300;
        // Enough handshakes per connection in 0.3 s for resumptions.
        a.open_conns = 8;
    }
    let mut it = argv.into_iter();
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        let num = |v: String| v.parse::<f64>().map_err(|e| format!("{v}: {e}"));
        match arg.as_str() {
            "--bench" => {}
            "--quick" => {
                a.conns = vec![1, 64];
                a.rounds = 1;
                a.secs = 1.0;
                a.footprint = 10_000;
            }
            "--servers" => {
                a.servers = parse_list(&val()?, Kind::from_name)?;
                a.servers_given = true;
            }
            "--open-loop" => a.open_loop = parse_list(&val()?, |s| s.parse().ok())?,
            "--open-conns" => a.open_conns = num(val()?)?.max(1.0) as usize,
            "--conns" => a.conns = parse_list(&val()?, |s| s.parse().ok())?,
            "--rounds" => a.rounds = num(val()?)? as usize,
            "--secs" => a.secs = num(val()?)?,
            "--warmup" => a.warmup = num(val()?)?,
            "--footprint" => a.footprint = num(val()?)? as u64,
            "--no-load" => a.load = false,
            "--hit-ratio" => a.mix.hit_ratio = num(val()?)?,
            "--gen-threads" => a.gen_threads = num(val()?)?.max(1.0) as usize,
            "--base-dir" => a.start.base_dir = Some(PathBuf::from(val()?)),
            // A main.cf line for our servers (repeatable), e.g.
            // `--main-cf 'tlsmgr_io_threads = 1'` for an A/B of a parameter.
            "--main-cf" => {
                a.start.main_cf_extra.push_str(&val()?);
                a.start.main_cf_extra.push('\n');
            }
            "--out" => a.out = PathBuf::from(val()?),
            "--replot" => a.replot = Some(PathBuf::from(val()?)),
            "--caption" => a.caption = Some(val()?),
            // libtest-style flags cargo may pass to a harness-less target.
            s if s.starts_with("--") && !bench => eprintln!("load: ignoring {s}"),
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => {}
        }
    }
    Ok(a)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .and_then(|kb| kb.parse::<u64>().ok())
        .map(|kb| kb / 1024 / 1024)
        .unwrap_or(0);
    format!("{cpu}, {cores} cores, {mem} GiB RAM, Linux {kernel}")
}

/// `--replot`: the table and the SVG again from a saved `runs.csv`.
fn replot(
    csv: &std::path::Path,
    out: &std::path::Path,
    caption: Option<&str>,
) -> Result<(), String> {
    let text = std::fs::read_to_string(csv).map_err(|e| format!("{}: {e}", csv.display()))?;
    let (points, conns) = report::summarize_csv(&text)?;
    let table = report::table(&points, &conns);
    println!("{table}");
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let caption = caption
        .map(str::to_string)
        .unwrap_or_else(|| format!("replotted from {}", csv.display()));
    std::fs::write(out.join("load.svg"), report::svg(&points, &conns, &caption))
        .map_err(|e| format!("write load.svg: {e}"))?;
    std::fs::write(out.join("table.md"), table).map_err(|e| format!("write table.md: {e}"))
}

fn run(args: &Args) -> Result<(), String> {
    if let Some(csv) = &args.replot {
        return replot(csv, &args.out, args.caption.as_deref());
    }
    let mut servers = args.servers.clone();
    if servers.contains(&Kind::Stock) && !servers::stock_available()? {
        eprintln!(
            "load: {} not available (or not root): stock left out",
            servers::STOCK_TLSMGR
        );
        servers.retain(|k| *k != Kind::Stock);
    }
    let mut args = args.clone();
    let _redis = if servers.contains(&Kind::OursShared) {
        match servers::Redis::start()? {
            Some(r) => {
                args.start.shared_store = Some(r.url.clone());
                Some(r)
            }
            None => {
                eprintln!("load: redis-server not installed: ours-shared left out");
                servers.retain(|k| *k != Kind::OursShared);
                None
            }
        }
    } else {
        None
    };
    let args = &args;
    if !args.open_loop.is_empty() {
        if !args.servers_given {
            servers.retain(|k| matches!(k, Kind::OursFjall | Kind::Stock | Kind::Ceiling));
        }
        return open_loop_points(args, &servers, &args.open_loop);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.gen_threads)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let mut out = String::new();
    let header = format!(
        "machine: {}\nmix: seed, lookup (resume p={}), update on miss, tktkey (smtpd); sessions {}–{} B; \
         {} round(s) × {:.1} s (+{:.1} s warm-up) per point, medians; generator: {} tokio workers\n",
        machine(),
        args.mix.hit_ratio,
        args.mix.session_min,
        args.mix.session_max,
        args.rounds,
        args.secs,
        args.warmup,
        args.gen_threads
    );
    println!("{header}");
    out.push_str(&header);
    let mut runs = Runs::new();
    if args.load {
        for round in 0..args.rounds {
            for &c in &args.conns {
                // Rotate the order each round so no server always goes first.
                let mut order = servers.clone();
                let n = order.len();
                if n > 0 {
                    order.rotate_left((round + c) % n);
                }
                for kind in order {
                    let server = Server::start(kind, &args.start)?;
                    let m = driver::run(
                        &rt,
                        &server,
                        c,
                        Duration::from_secs_f64(args.warmup),
                        Duration::from_secs_f64(args.secs),
                        &args.mix,
                    );
                    let log = server.stop();
                    let m = m.map_err(|e| format!("{} at {c}: {e}\n{log}", kind.name()))?;
                    eprintln!(
                        "round {round} {:>11} c={c:<3} {:>8.0} req/s p99 {:>8.0} µs cpu {:.2} (busiest thread {:.2}) gen {:.2} errors {} lost {} | p99 µs {} | {}",
                        kind.name(),
                        m.throughput(),
                        m.percentile_us(99.0),
                        m.server_cores(),
                        m.busiest_thread_cores(),
                        m.client_cores(),
                        m.errors,
                        m.lost,
                        m.p99_by_kind(),
                        m.slow_summary()
                    );
                    if !args.bench {
                        check_smoke(kind, &m, &log)?;
                    }
                    runs.entry((kind, c)).or_default().push(m);
                }
            }
        }
        let points = report::summarize(&runs);
        let table = report::table(&points, &args.conns);
        println!("{table}");
        out.push_str(&table);
        if servers.contains(&Kind::OursShared) && servers.contains(&Kind::OursFjall) {
            let t = report::shared_table(&points, &args.conns);
            println!("\nshared through Redis beside local (fjall):\n{t}");
            out.push_str("\nshared through Redis beside local (fjall):\n");
            out.push_str(&t);
        }
        if args.bench {
            std::fs::create_dir_all(&args.out)
                .map_err(|e| format!("{}: {e}", args.out.display()))?;
            let write = |name: &str, text: &str| {
                std::fs::write(args.out.join(name), text).map_err(|e| format!("write {name}: {e}"))
            };
            write("runs.csv", &report::csv(&runs))?;
            write(
                "load.svg",
                &report::svg(&points, &args.conns, &header.replace('\n', " ")),
            )?;
        }
    }
    if args.footprint > 0 {
        let mut rows = Vec::new();
        // The shared store adds nothing to a host's own footprint.
        for kind in servers
            .iter()
            .copied()
            .filter(|k| *k != Kind::Ceiling && *k != Kind::OursShared)
        {
            let f = footprint::measure(&rt, kind, args.footprint, &args.start)?;
            eprintln!(
                "footprint {} done in {:.1} s",
                kind.name(),
                f.fill_time.as_secs_f64()
            );
            if f.sample_hits != f.sample {
                return Err(format!(
                    "{}: only {}/{} sampled sessions found after the fill",
                    kind.name(),
                    f.sample_hits,
                    f.sample
                ));
            }
            rows.push(f);
        }
        let t = report::footprint_table(&rows);
        println!("\n{t}");
        out.push('\n');
        out.push_str(&t);
    }
    if !args.bench {
        // The smoke run checks that the open-loop generator works too.
        open_loop_points(args, &servers, &[200.0])?;
    }
    if args.bench {
        std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
        std::fs::write(args.out.join("results.md"), out).map_err(|e| format!("results.md: {e}"))?;
        eprintln!("load: results in {}", args.out.display());
    }
    Ok(())
}

/// `--open-loop`: every server at every rate, interleaved rounds, one
/// window per run; prints the table of medians (and writes it with
/// `--bench`).
fn open_loop_points(args: &Args, servers: &[Kind], rates: &[f64]) -> Result<(), String> {
    let mut runs: std::collections::BTreeMap<(usize, Kind), Vec<open_loop::Window>> =
        Default::default();
    let duration = Duration::from_secs_f64(args.secs);
    for round in 0..args.rounds {
        for (ri, &rate) in rates.iter().enumerate() {
            let mut order = servers.to_vec();
            let n = order.len();
            if n > 0 {
                order.rotate_left((round + ri) % n);
            }
            for kind in order {
                let server = Server::start(kind, &args.start)?;
                let plan = open_loop::Plan {
                    rate,
                    conns: args.open_conns,
                    warmup: Duration::from_secs_f64(args.warmup),
                    duration,
                    window: duration,
                    mix: args.mix.clone(),
                    id_tag: 0,
                };
                let w = open_loop::run(&server.socket, server.pid(), &plan, &mut |_, _| {});
                let log = server.stop();
                let mut w = w.map_err(|e| format!("{} at {rate}/s: {e}\n{log}", kind.name()))?;
                let w = w.pop().ok_or("no window")?;
                eprintln!(
                    "open loop round {round} {:>11} {rate:>6.0}/s: done {:>6.0}/s p50 {:>7.0} p99 {:>7.0} p99.9 {:>7.0} max {:>7.0} µs unfinished {} cpu {:.1} µs/hs errors {} lost {} load {:.2}",
                    kind.name(),
                    w.handshake_rate(),
                    w.percentile_us(50.0),
                    w.percentile_us(99.0),
                    w.percentile_us(99.9),
                    w.max_us(),
                    w.unfinished,
                    w.cpu_us_per_handshake(),
                    w.errors,
                    w.lost,
                    w.loadavg,
                );
                if !args.bench {
                    if w.latencies.is_empty() || w.errors > 0 || w.lost > 0 {
                        return Err(format!(
                            "{}: open loop: {} handshakes, {} errors, {} lost\n{log}",
                            kind.name(),
                            w.latencies.len(),
                            w.errors,
                            w.lost
                        ));
                    }
                    if kind != Kind::Ceiling && w.hits == 0 {
                        return Err(format!("{}: open loop: no lookup hit", kind.name()));
                    }
                }
                runs.entry((ri, kind)).or_default().push(w);
            }
        }
    }
    let table = report::open_loop_table(rates, &runs);
    println!(
        "\nopen loop: {} connections, {} round(s) × {:.1} s (+{:.1} s warm-up), medians; latency of a handshake from its due time\nmachine: {}\n{table}",
        args.open_conns,
        args.rounds,
        args.secs,
        args.warmup,
        machine()
    );
    if args.bench {
        std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
        std::fs::write(args.out.join("open-loop.md"), &table)
            .map_err(|e| format!("write open-loop.md: {e}"))?;
    }
    Ok(())
}

/// The smoke run's assertions: the harness really talked to the server.
fn check_smoke(kind: Kind, m: &driver::Measure, log: &str) -> Result<(), String> {
    let name = kind.name();
    if m.requests == 0 || m.handshakes == 0 {
        return Err(format!("{name}: no request completed"));
    }
    if m.errors > 0 {
        return Err(format!("{name}: {} bad replies\n{log}", m.errors));
    }
    // Real servers must give back what was stored: resumptions hit.
    if kind != Kind::Ceiling && m.hits == 0 {
        return Err(format!("{name}: no lookup hit"));
    }
    if m.lost > 0 {
        return Err(format!("{name}: {} stored sessions not found", m.lost));
    }
    if kind != Kind::Ceiling && (m.server_cpu.is_zero() && m.server_peak_rss == 0) {
        return Err(format!("{name}: no CPU or RSS figures from /proc"));
    }
    Ok(())
}

fn main() -> ExitCode {
    // The bench started this binary again as the ceiling server.
    if let Some(code) = ceiling::serve_if_asked() {
        return code;
    }
    let result = parse_args().and_then(|a| run(&a));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::FAILURE
        }
    }
}
