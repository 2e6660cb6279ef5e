//! The generic daemon options master(8) passes (spec §4.2): getopt string
//! `cdDi:lm:n:o:s:St:uvVz`, parsing stops at the first non-option (the `+`
//! prefix on Linux), option letters may be clustered (`-lu`) and an option
//! argument may be glued (`-tunix`) or separate (`-t unix`).

/// The parsed command line of a master(8) child.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MasterArgs {
    /// `-c`: chroot to `queue_directory`.
    pub chroot: bool,
    /// `-d`: not a daemon (allows a terminal on stdin).
    pub debug_no_detach: bool,
    /// `-D`: run `debugger_command` (accepted, logged, otherwise ignored).
    pub debugger: bool,
    /// `-l`: process limit 1 (required by tlsmgr).
    pub solitary: bool,
    /// `-z`: process limit 0.
    pub limit_zero: bool,
    /// `-n`: the service name.
    pub service_name: Option<String>,
    /// `-o name=value`, in order.
    pub overrides: Vec<String>,
    /// `-s n`: listen sockets on fds 6..6+n-1 (default 1).
    pub socket_count: usize,
    /// `-S`: standalone, one client on stdin/stdout (not supported here).
    pub stdin_client: bool,
    /// `-t`: transport type (`unix`, `inet`, `pass`).
    pub transport: Option<String>,
    /// `-u`: drop privileges to `mail_owner`.
    pub unprivileged: bool,
    /// `-v`, counted.
    pub verbose: u32,
    /// `-V`: also log to stderr.
    pub stderr: bool,
    /// Arguments after the options (tlsmgr takes none).
    pub rest: Vec<String>,
}

/// Why the command line was refused; the text is what Postfix logs after `fatal: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArgError(pub String);

/// Whether `args` (without `argv[0]`) look like a master(8) child's command
/// line rather than one of our subcommands: master always passes options
/// first (at least `-t` or `-S`), our subcommands are words.
pub fn looks_like_master_child(args: &[String]) -> bool {
    match args.first() {
        Some(first) => {
            first.len() >= 2 && first.starts_with('-') && !first.starts_with("--") && first != "-h"
        }
        None => false,
    }
}

impl MasterArgs {
    /// Parses `args` (without `argv[0]`).
    pub fn parse(args: &[String]) -> Result<MasterArgs, ArgError> {
        let mut out = MasterArgs {
            socket_count: 1,
            ..MasterArgs::default()
        };
        let mut i = 0;
        while i < args.len() {
            let arg = &args[i];
            if arg == "--" {
                i += 1;
                break;
            }
            if !arg.starts_with('-') || arg.len() < 2 {
                break;
            }
            let letters: Vec<char> = arg[1..].chars().collect();
            let mut j = 0;
            while j < letters.len() {
                let c = letters[j];
                j += 1;
                if "imnost".contains(c) {
                    // Option with an argument: the rest of this word, or the next word.
                    let value = if j < letters.len() {
                        let v: String = letters[j..].iter().collect();
                        j = letters.len();
                        v
                    } else {
                        i += 1;
                        match args.get(i) {
                            Some(v) => v.clone(),
                            None => {
                                return Err(ArgError(format!(
                                    "option requires an argument -- '{c}'"
                                )))
                            }
                        }
                    };
                    match c {
                        'n' => out.service_name = Some(value),
                        'o' => out.overrides.push(value),
                        's' => {
                            out.socket_count = value
                                .parse::<usize>()
                                .ok()
                                .filter(|n| (1..=1000).contains(n))
                                .ok_or_else(|| ArgError(format!("invalid socket_count: {value}")))?
                        }
                        't' => out.transport = Some(value),
                        // -i / -m: max_idle / max_use; tlsmgr forces both to 0.
                        _ => {}
                    }
                } else {
                    match c {
                        'c' => out.chroot = true,
                        'd' => out.debug_no_detach = true,
                        'D' => out.debugger = true,
                        'l' => out.solitary = true,
                        'S' => out.stdin_client = true,
                        'u' => out.unprivileged = true,
                        'v' => out.verbose += 1,
                        'V' => out.stderr = true,
                        'z' => out.limit_zero = true,
                        other => return Err(ArgError(format!("invalid option: {other}"))),
                    }
                }
            }
            i += 1;
        }
        out.rest = args[i.min(args.len())..].to_vec();
        Ok(out)
    }

    /// The checks multi_server and tlsmgr make before serving.
    pub fn validate(&self) -> Result<(), ArgError> {
        if self.stdin_client {
            return Err(ArgError(
                "the -S (stand-alone) mode is not supported by this tlsmgr".into(),
            ));
        }
        match self.transport.as_deref() {
            None => return Err(ArgError("no transport type specified".into())),
            Some("unix") => {}
            Some(t @ ("inet" | "pass" | "fifo")) => {
                return Err(ArgError(format!(
                    "transport type {t} is not supported by this tlsmgr (use unix)"
                )))
            }
            Some(t) => return Err(ArgError(format!("unsupported transport type: {t}"))),
        }
        if !self.solitary {
            return Err(ArgError(format!(
                "service {} requires a process limit of 1",
                self.service_name.as_deref().unwrap_or("tlsmgr")
            )));
        }
        if let Some(arg) = self.rest.first() {
            return Err(ArgError(format!("unexpected command-line argument: {arg}")));
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn debian_master_cf_line() {
        let a = MasterArgs::parse(&v("-l -t unix -u -c")).unwrap();
        assert!(a.solitary && a.unprivileged && a.chroot);
        assert_eq!(a.transport.as_deref(), Some("unix"));
        assert_eq!(a.socket_count, 1);
        a.validate().unwrap();
    }

    #[test]
    fn clustered_and_glued() {
        let a = MasterArgs::parse(&v("-luvv -tunix -s2 -n mytls -o a=b -o c = d")).unwrap();
        assert!(a.solitary && a.unprivileged);
        assert_eq!(a.verbose, 2);
        assert_eq!(a.transport.as_deref(), Some("unix"));
        assert_eq!(a.socket_count, 2);
        assert_eq!(a.service_name.as_deref(), Some("mytls"));
        // Parsing stops at the first non-option word.
        assert_eq!(a.overrides, vec!["a=b".to_string(), "c".to_string()]);
        assert_eq!(a.rest, v("= d"));
        assert_eq!(
            a.validate().unwrap_err().0,
            "unexpected command-line argument: ="
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            MasterArgs::parse(&v("-l -x")).unwrap_err().0,
            "invalid option: x"
        );
        assert_eq!(
            MasterArgs::parse(&v("-l -t unix"))
                .map(|a| {
                    let mut a = a;
                    a.solitary = false;
                    a.validate().unwrap_err().0
                })
                .unwrap(),
            "service tlsmgr requires a process limit of 1"
        );
        assert!(MasterArgs::parse(&v("-l -t")).is_err());
        assert!(MasterArgs::parse(&v("-l")).unwrap().validate().is_err());
        assert!(MasterArgs::parse(&v("-l -s 0 -t unix")).is_err());
    }

    #[test]
    fn master_or_subcommand() {
        assert!(looks_like_master_child(&v("-l -t unix")));
        assert!(looks_like_master_child(&v("-t unix -l")));
        assert!(!looks_like_master_child(&v("serve -c /etc/postfix")));
        assert!(!looks_like_master_child(&v("--help")));
        assert!(!looks_like_master_child(&v("-h")));
        assert!(!looks_like_master_child(&[]));
    }
}
