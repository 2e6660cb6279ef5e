//! Our main.cf reader agrees with Postfix's own: for every file of the
//! corpus (tests/data/maincf/ plus Debian's shipped main.cf files), the
//! effective value of every Postfix parameter tlsmgr reads equals what
//! `postconf -c DIR -h -x NAME` prints, and a file postconf rejects is
//! rejected by us too. Needs Debian's `postfix` package (fails in CI without).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use tlsmgr::config::dir::ConfigDir;
use tlsmgr::config::{effective_values, read_raw, Config, DEFAULTS};

const POSTCONF: &str = "/usr/sbin/postconf";

fn postconf_available() -> bool {
    let ok = Path::new(POSTCONF).exists();
    if !ok && std::env::var_os("CI").is_some() {
        panic!("CI must install Debian's postfix package ({POSTCONF} missing)");
    }
    if !ok {
        eprintln!("skipping: {POSTCONF} not installed");
    }
    ok
}

/// The names the installed postconf knows (`postconf -d -H`).
fn postconf_names() -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("main.cf"), "").unwrap();
    let out = Command::new(POSTCONF)
        .arg("-c")
        .arg(tmp.path())
        .args(["-d", "-H"])
        .env_remove("MAIL_CONFIG")
        .output()
        .unwrap();
    assert!(out.status.success(), "postconf -d -H failed");
    let names: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert!(names.iter().any(|n| n == "data_directory"), "{names:?}");
    names
}

/// Postfix parameters we know that are newer than Postfix 3.7: compared
/// only when the installed postconf knows them (it prints no value for a
/// name it does not know).
const NEWER_THAN_3_7: &[&str] = &["default_cache_db_type"];

/// The Postfix parameters we read (ours, `tlsmgr_*`, postconf does not
/// know), those of [`NEWER_THAN_3_7`] only when the installed postconf
/// knows them. Any other name postconf does not know is a test failure.
fn postfix_params() -> Vec<&'static str> {
    let known = postconf_names();
    let known = |n: &str| known.iter().any(|k| k == n);
    let names: Vec<&'static str> = DEFAULTS
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !n.starts_with("tlsmgr_"))
        .filter(|n| known(n) || !NEWER_THAN_3_7.contains(n))
        .collect();
    for n in &names {
        assert!(known(n), "postconf does not know {n}");
    }
    names
}

/// postconf -h prints values with whitespace runs collapsed; compare the
/// same way (whitespace retention itself is checked inside the corpus with
/// `${{a} == {b}}` comparisons, which postconf evaluates exactly).
fn squash(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn corpus(sub: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/maincf")
        .join(sub);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cf"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "empty corpus {}", dir.display());
    files
}

/// Runs postconf on `dir`; Ok(values) or Err(stderr) when it fails.
fn postconf(dir: &Path, overrides: &[&str], names: &[&str]) -> Result<Vec<String>, String> {
    let mut cmd = Command::new(POSTCONF);
    cmd.arg("-c").arg(dir).env_remove("MAIL_CONFIG");
    for o in overrides {
        cmd.arg("-o").arg(o);
    }
    let out = cmd.arg("-h").arg("-x").args(names).output().unwrap();
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let values: Vec<String> = text.lines().map(str::to_string).collect();
    assert_eq!(values.len(), names.len(), "postconf output: {text}");
    Ok(values)
}

/// Ours: the effective values, or the error text.
fn ours(dir: &Path, overrides: &[&str]) -> Result<Vec<(&'static str, String)>, String> {
    let handle = ConfigDir::open(dir).unwrap();
    let overrides: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    let raw = read_raw(&handle, &overrides).map_err(|e| e.to_string())?;
    effective_values(&raw).map_err(|e| e.to_string())
}

fn with_main_cf(file: &Path) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(file, tmp.path().join("main.cf")).unwrap();
    tmp
}

fn agree(file: &Path, overrides: &[&str]) -> usize {
    let tmp = with_main_cf(file);
    let names = postfix_params();
    let theirs = postconf(tmp.path(), overrides, &names)
        .unwrap_or_else(|e| panic!("postconf rejects {}: {e}", file.display()));
    let ours =
        ours(tmp.path(), overrides).unwrap_or_else(|e| panic!("we reject {}: {e}", file.display()));
    let mut compared = 0;
    for (name, theirs) in names.iter().zip(&theirs) {
        let mine = ours
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap();
        assert_eq!(
            squash(mine),
            squash(theirs),
            "{name} in {} (overrides {overrides:?})",
            file.display()
        );
        compared += 1;
    }
    compared
}

#[test]
fn every_parameter_agrees_over_the_corpus() {
    if !postconf_available() {
        return;
    }
    let mut files = corpus("good");
    for shipped in ["main.cf.dist", "main.cf.debian", "main.cf.tls"] {
        let p = Path::new("/usr/share/postfix").join(shipped);
        if p.exists() {
            files.push(p);
        } else if std::env::var_os("CI").is_some() {
            panic!("{} missing", p.display());
        }
    }
    let mut total = 0;
    for f in &files {
        total += agree(f, &[]);
    }
    // Each file contributes every parameter; a silent zero would be a bug here.
    assert_eq!(total, files.len() * postfix_params().len());
}

#[test]
fn overrides_agree() {
    if !postconf_available() {
        return;
    }
    let f = corpus("good")
        .into_iter()
        .find(|p| p.ends_with("plain_expansion.cf"))
        .unwrap();
    agree(
        &f,
        &[
            "data_directory=/from/override",
            "tls_random_source = ${top?{egd:$top/pool}}",
            "smtpd_tls_loglevel=${{$top} == {/srv/pf} ? {cache} : {0}}",
        ],
    );
}

#[test]
fn files_postconf_rejects_are_rejected_with_file_and_line() {
    if !postconf_available() {
        return;
    }
    let names = postfix_params();
    for f in corpus("bad") {
        let tmp = with_main_cf(&f);
        let theirs = postconf(tmp.path(), &[], &names);
        assert!(theirs.is_err(), "postconf accepts {}", f.display());
        let err = ours(tmp.path(), &[]).expect_err(&format!("we accept {}", f.display()));
        // Our message names the file and the line of the bad definition.
        let main_cf = tmp.path().join("main.cf");
        assert!(
            err.starts_with(&format!("{}, line ", main_cf.display())),
            "{}: {err}",
            f.display()
        );
    }
}

#[test]
fn syntax_error_message_is_postfix_s() {
    if !postconf_available() {
        return;
    }
    let f = corpus("bad")
        .into_iter()
        .find(|p| p.ends_with("missing_equals.cf"))
        .unwrap();
    let tmp = with_main_cf(&f);
    let theirs = postconf(tmp.path(), &[], &["data_directory"]).unwrap_err();
    let ours = Config::load(tmp.path(), &[]).unwrap_err().to_string();
    assert!(
        theirs.contains(&format!("postconf: fatal: {ours}")),
        "postconf said {theirs:?}, we said {ours:?}"
    );
}
