//! Runs a command under the seccomp filters that Debian 13's
//! postfix.service gets from systemd 257, for .ci/debian13-sandbox-test.
//!
//!     sandbox_exec [--mdwe auto|prctl|seccomp] [--caps CAP,...] LIST -- COMMAND [ARG...]
//!     sandbox_exec --name NR...        # syscall numbers to names (native arch)
//!
//! LIST holds the allowed system calls, one name a line (`#` comments):
//! the test writes it from the Debian 13 root's own `systemd-analyze
//! syscall-filter`, so it is that systemd's list, not ours. The filters
//! are built with libseccomp, as systemd builds them, and the launcher is
//! meant to run inside the Debian 13 root, so names resolve with that
//! root's libseccomp (2.6), the one its systemd links.
//!
//! What it installs, in systemd's order (src/core/exec-invoke.c: the
//! system call filter last, closest to the execve), each as a filter of
//! its own as systemd does (src/shared/seccomp-util.c):
//!
//! * RestrictAddressFamilies=AF_UNIX AF_NETLINK AF_INET AF_INET6:
//!   socket() with a family below the lowest allowed, above the highest,
//!   or in between and not allowed fails with EAFNOSUPPORT. socketpair()
//!   is not filtered (systemd does not either).
//! * MemoryDenyWriteExecute=yes: systemd 257 first asks the kernel for
//!   prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN) (Linux 6.3 and later:
//!   W+X mappings and exec gained later fail with EACCES) and falls back
//!   to seccomp only when the kernel answers EINVAL: mmap() with
//!   PROT_WRITE|PROT_EXEC, mprotect()/pkey_mprotect() adding PROT_EXEC,
//!   shmat() with SHM_EXEC fail with EPERM. `--mdwe` picks one (default
//!   `auto`, what systemd does).
//! * RestrictRealtime=yes: sched_setscheduler() with a policy other
//!   than SCHED_OTHER, SCHED_BATCH, SCHED_IDLE fails with EPERM.
//! * RestrictNamespaces=yes: unshare() and clone() with any CLONE_NEW*
//!   flag and every setns() fail with EPERM; clone3() fails with ENOSYS,
//!   since its flags sit in a struct a filter cannot read, and glibc then
//!   falls back to clone().
//! * LockPersonality=yes: personality() with anything but the current
//!   persona (PER_LINUX) fails with EPERM.
//! * SystemCallFilter=@system-service @setuid chroot: the calls in LIST
//!   are allowed, every other kills the process (SECCOMP_RET_KILL_PROCESS:
//!   systemd's default action without SystemCallErrorNumber=).
//!
//! Where ours differs from systemd's:
//!
//! * Architectures: systemd adds the x86 and x32 ABIs to each filter (same
//!   allowed names); ours covers the native ABI only, and a call through
//!   another ABI kills the process (the allow-list filter) or passes
//!   (the other filters, as systemd's bad-arch action ALLOW does there).
//!   Postfix makes no such calls.
//! * ProtectClock=, ProtectKernelModules=, ProtectKernelLogs=,
//!   ProtectHostname=, PrivateDevices= add EPERM filters for @clock,
//!   @module, syslog, sethostname/setdomainname and @raw-io: not
//!   installed here. None of those calls is in the allow list, so the
//!   allow-list filter kills them first (KILL_PROCESS takes precedence
//!   over ERRNO) either way.
//! * no_new_privs: systemd (NoNewPrivileges=no) loads its filters with
//!   CAP_SYS_ADMIN and without no_new_privs, so set-uid programs keep
//!   working; ours does the same when it has CAP_SYS_ADMIN and sets
//!   no_new_privs only when the kernel requires it.
//! * `--caps` drops the capability bounding set to the listed names, as
//!   CapabilityBoundingSet= does; ambient and securebits are left alone.
use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;

/// RestrictAddressFamilies= of Debian 13's postfix.service.
const FAMILIES: [i32; 4] = [
    libc::AF_UNIX,
    libc::AF_NETLINK,
    libc::AF_INET,
    libc::AF_INET6,
];

/// The namespace flags RestrictNamespaces=yes refuses (systemd's
/// namespace_info table: cgroup, ipc, net, mnt, pid, user, uts, time).
const NAMESPACE_FLAGS: [u64; 8] = [
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWUTS as u64,
    0x80, // CLONE_NEWTIME, not in every libc crate version
];

const PR_SET_MDWE: libc::c_int = 65;
const PR_MDWE_REFUSE_EXEC_GAIN: libc::c_ulong = 1;
const SHM_EXEC: u64 = 0o100000;

type Res<T> = Result<T, String>;

fn sys(name: &str) -> Res<ScmpSyscall> {
    ScmpSyscall::from_name(name).map_err(|e| format!("{name}: {e}"))
}

/// A filter that allows what it does not name, like systemd's helpers
/// (seccomp_init_for_arch with SCMP_ACT_ALLOW).
fn allow_by_default() -> Res<ScmpFilterContext> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::Allow).map_err(|e| e.to_string())?;
    ctx.set_act_badarch(ScmpAction::Allow)
        .map_err(|e| e.to_string())?;
    Ok(ctx)
}

fn rule(
    ctx: &mut ScmpFilterContext,
    act: ScmpAction,
    name: &str,
    cmp: &[ScmpArgCompare],
) -> Res<()> {
    let nr = sys(name)?;
    if cmp.is_empty() {
        ctx.add_rule_exact(act, nr)
    } else {
        ctx.add_rule_conditional_exact(act, nr, cmp)
    }
    .map(drop)
    .map_err(|e| format!("rule for {name}: {e}"))
}

fn load(ctx: &mut ScmpFilterContext, what: &str) -> Res<()> {
    // All threads (there is one, but the filter is for the process), and
    // no no_new_privs unless the kernel needs it (see the module comment).
    ctx.set_ctl_tsync(true).map_err(|e| e.to_string())?;
    ctx.set_ctl_nnp(false).map_err(|e| e.to_string())?;
    if ctx.load().is_ok() {
        return Ok(());
    }
    // Without CAP_SYS_ADMIN the kernel refuses a filter unless
    // no_new_privs is set.
    ctx.set_ctl_nnp(true).map_err(|e| e.to_string())?;
    ctx.load()
        .map_err(|e| format!("load the {what} filter: {e}"))
}

fn restrict_address_families() -> Res<()> {
    let mut ctx = allow_by_default()?;
    let eafnosupport = ScmpAction::Errno(libc::EAFNOSUPPORT);
    let first = *FAMILIES.iter().min().unwrap() as u64;
    let last = *FAMILIES.iter().max().unwrap() as u64;
    rule(
        &mut ctx,
        eafnosupport,
        "socket",
        &[ScmpArgCompare::new(0, ScmpCompareOp::Less, first)],
    )?;
    rule(
        &mut ctx,
        eafnosupport,
        "socket",
        &[ScmpArgCompare::new(0, ScmpCompareOp::Greater, last)],
    )?;
    for af in first + 1..last {
        if !FAMILIES.contains(&(af as i32)) {
            rule(
                &mut ctx,
                eafnosupport,
                "socket",
                &[ScmpArgCompare::new(0, ScmpCompareOp::Equal, af)],
            )?;
        }
    }
    load(&mut ctx, "address family")
}

fn mdwe_seccomp() -> Res<()> {
    let mut ctx = allow_by_default()?;
    let eperm = ScmpAction::Errno(libc::EPERM);
    let wx = (libc::PROT_WRITE | libc::PROT_EXEC) as u64;
    let x = libc::PROT_EXEC as u64;
    rule(
        &mut ctx,
        eperm,
        "mmap",
        &[ScmpArgCompare::new(2, ScmpCompareOp::MaskedEqual(wx), wx)],
    )?;
    rule(
        &mut ctx,
        eperm,
        "mprotect",
        &[ScmpArgCompare::new(2, ScmpCompareOp::MaskedEqual(x), x)],
    )?;
    rule(
        &mut ctx,
        eperm,
        "pkey_mprotect",
        &[ScmpArgCompare::new(2, ScmpCompareOp::MaskedEqual(x), x)],
    )?;
    rule(
        &mut ctx,
        eperm,
        "shmat",
        &[ScmpArgCompare::new(
            2,
            ScmpCompareOp::MaskedEqual(SHM_EXEC),
            SHM_EXEC,
        )],
    )?;
    load(&mut ctx, "MemoryDenyWriteExecute")
}

/// Returns which mechanism is in force.
fn memory_deny_write_execute(mode: &str) -> Res<&'static str> {
    if mode != "seccomp" {
        // SAFETY: prctl with integer arguments only.
        let r = unsafe {
            libc::prctl(
                PR_SET_MDWE,
                PR_MDWE_REFUSE_EXEC_GAIN,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        };
        if r == 0 {
            return Ok("prctl(PR_SET_MDWE)");
        }
        let err = std::io::Error::last_os_error();
        if mode == "prctl" || err.raw_os_error() != Some(libc::EINVAL) {
            return Err(format!("prctl(PR_SET_MDWE): {err}"));
        }
    }
    mdwe_seccomp()?;
    Ok("seccomp")
}

fn restrict_realtime() -> Res<()> {
    let mut ctx = allow_by_default()?;
    let eperm = ScmpAction::Errno(libc::EPERM);
    let allowed = [libc::SCHED_OTHER, libc::SCHED_BATCH, libc::SCHED_IDLE];
    let max = *allowed.iter().max().unwrap();
    for p in 0..max {
        if !allowed.contains(&p) {
            rule(
                &mut ctx,
                eperm,
                "sched_setscheduler",
                &[ScmpArgCompare::new(1, ScmpCompareOp::Equal, p as u64)],
            )?;
        }
    }
    rule(
        &mut ctx,
        eperm,
        "sched_setscheduler",
        &[ScmpArgCompare::new(1, ScmpCompareOp::Greater, max as u64)],
    )?;
    load(&mut ctx, "RestrictRealtime")
}

fn restrict_namespaces() -> Res<()> {
    let mut ctx = allow_by_default()?;
    let eperm = ScmpAction::Errno(libc::EPERM);
    // Every namespace type refused: setns() is blocked whatever its flags.
    rule(&mut ctx, eperm, "setns", &[])?;
    for f in NAMESPACE_FLAGS {
        let masked = |arg| [ScmpArgCompare::new(arg, ScmpCompareOp::MaskedEqual(f), f)];
        rule(&mut ctx, eperm, "unshare", &masked(0))?;
        // x86_64 passes clone()'s flags first (s390 second).
        rule(&mut ctx, eperm, "clone", &masked(0))?;
    }
    rule(&mut ctx, ScmpAction::Errno(libc::ENOSYS), "clone3", &[])?;
    load(&mut ctx, "RestrictNamespaces")
}

fn lock_personality() -> Res<()> {
    let mut ctx = allow_by_default()?;
    rule(
        &mut ctx,
        ScmpAction::Errno(libc::EPERM),
        "personality",
        &[ScmpArgCompare::new(
            0,
            ScmpCompareOp::NotEqual,
            0, /* PER_LINUX */
        )],
    )?;
    load(&mut ctx, "LockPersonality")
}

/// The allow list; returns how many names were known to libseccomp.
fn system_call_filter(names: &[String]) -> Res<(usize, Vec<String>)> {
    let mut ctx = ScmpFilterContext::new(ScmpAction::KillProcess).map_err(|e| e.to_string())?;
    ctx.set_act_badarch(ScmpAction::KillProcess)
        .map_err(|e| e.to_string())?;
    let mut known = 0;
    let mut unknown = Vec::new();
    for name in names {
        // As systemd: a name libseccomp does not know is skipped, and
        // one it knows but this architecture lacks (EDOM) is too.
        let Ok(nr) = ScmpSyscall::from_name(name) else {
            unknown.push(name.clone());
            continue;
        };
        match ctx.add_rule_exact(ScmpAction::Allow, nr) {
            Ok(_) => known += 1,
            Err(e) if e.errno() == Some(libseccomp::error::SeccompErrno::EDOM) => {
                unknown.push(name.clone())
            }
            Err(e) => return Err(format!("allow {name}: {e}")),
        }
    }
    load(&mut ctx, "system call")?;
    Ok((known, unknown))
}

fn drop_bounding_set(keep: &str) -> Res<()> {
    let mut keep_nrs = Vec::new();
    for name in keep.split(',').filter(|s| !s.is_empty()) {
        let name = name.trim().to_ascii_lowercase();
        let name = name.strip_prefix("cap_").unwrap_or(&name);
        let nr = match name {
            "chown" => 0,
            "dac_override" => 1,
            "dac_read_search" => 2,
            "setgid" => 6,
            "setuid" => 7,
            "net_bind_service" => 10,
            "sys_chroot" => 18,
            other => return Err(format!("--caps: {other} not known here")),
        };
        keep_nrs.push(nr);
    }
    for cap in 0..64 {
        if keep_nrs.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if r != 0 {
            let err = std::io::Error::last_os_error();
            // EINVAL: past the kernel's last capability.
            if err.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(format!(
                "drop capability {cap} from the bounding set: {err}"
            ));
        }
    }
    Ok(())
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: sandbox_exec [--mdwe auto|prctl|seccomp] [--caps CAP,...] LIST -- COMMAND [ARG...]"
    );
    eprintln!("       sandbox_exec --name NR...");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let str_arg = |i: usize| args.get(i).and_then(|a| a.to_str()).map(str::to_string);
    if str_arg(0).as_deref() == Some("--name") {
        for a in &args[1..] {
            let nr: i32 = match a.to_str().and_then(|s| s.parse().ok()) {
                Some(n) => n,
                None => return usage(),
            };
            let name = ScmpSyscall::from(nr)
                .get_name_by_arch(ScmpArch::native())
                .unwrap_or_else(|_| format!("unknown({nr})"));
            println!("{nr} {name}");
        }
        return ExitCode::SUCCESS;
    }
    let mut i = 0;
    let mut mdwe = "auto".to_string();
    let mut caps = None;
    loop {
        match str_arg(i).as_deref() {
            Some("--mdwe") => {
                let Some(m) =
                    str_arg(i + 1).filter(|m| ["auto", "prctl", "seccomp"].contains(&m.as_str()))
                else {
                    return usage();
                };
                mdwe = m;
                i += 2;
            }
            Some("--caps") => {
                let Some(c) = str_arg(i + 1) else {
                    return usage();
                };
                caps = Some(c);
                i += 2;
            }
            _ => break,
        }
    }
    let (Some(list), Some("--")) = (str_arg(i), str_arg(i + 1).as_deref()) else {
        return usage();
    };
    let command = &args[i + 2..];
    if command.is_empty() {
        return usage();
    }
    let names: Vec<String> = match std::fs::read_to_string(&list) {
        Ok(text) => text
            .lines()
            .map(|l| l.split('#').next().unwrap_or("").trim().to_string())
            .filter(|l| !l.is_empty())
            .collect(),
        Err(e) => {
            eprintln!("sandbox_exec: {list}: {e}");
            return ExitCode::from(1);
        }
    };
    let run = || -> Res<String> {
        if let Some(c) = &caps {
            drop_bounding_set(c)?;
        }
        restrict_address_families()?;
        let how = memory_deny_write_execute(&mdwe)?;
        restrict_realtime()?;
        restrict_namespaces()?;
        lock_personality()?;
        let (known, unknown) = system_call_filter(&names)?;
        Ok(format!(
            "{known} system calls allowed, {} not known on this architecture{}; MemoryDenyWriteExecute by {how}",
            unknown.len(),
            if unknown.is_empty() { String::new() } else { format!(" ({})", unknown.join(" ")) }
        ))
    };
    match run() {
        Ok(summary) => {
            if std::env::var_os("SANDBOX_EXEC_VERBOSE").is_some() {
                eprintln!("sandbox_exec: {summary}");
            }
        }
        Err(e) => {
            eprintln!("sandbox_exec: {e}");
            return ExitCode::from(1);
        }
    }
    let argv: Vec<CString> = command
        .iter()
        .map(|a| CString::new(a.as_bytes()).expect("no NUL in arguments"))
        .collect();
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: argv is NUL-terminated C strings and a null pointer.
    unsafe { libc::execvp(ptrs[0], ptrs.as_ptr()) };
    eprintln!(
        "sandbox_exec: exec {}: {}",
        command[0].to_string_lossy(),
        std::io::Error::last_os_error()
    );
    ExitCode::from(127)
}
