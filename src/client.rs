//! The client side of the protocol, over a blocking UNIX socket: used by
//! `tlsmgr client` (the admin's probe), the integration tests and benches.

use crate::protocol::attr::{self, Limits};
use crate::protocol::{Reply, Request, Status};
use bytes::{Bytes, BytesMut};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket I/O failed (including timeouts).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The server closed the connection before a complete reply.
    #[error("server closed the connection")]
    Closed,
    /// The server sent something that is not a valid announcement or reply.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server's reply does not have the shape of the request's reply.
    #[error("protocol error: {0}")]
    Reply(#[from] crate::protocol::reply::ReplyError),
}

/// Why a command line cannot become a request.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The session file (or standard input, `-`) could not be read.
    #[error("read {file}: {source}")]
    Read {
        /// The file named on the command line.
        file: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// `tktkey NAME_HEX` with a name that is not hex.
    #[error("bad hex key name: {0}")]
    BadKeyName(String),
}

/// A connection to a tlsmgr server.
pub struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    limits: Limits,
}

impl Client {
    /// Connects, and reads and checks the server's announcement.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        // A signal arriving in this process (tests spawn and signal
        // children) must not fail the connection: retry on EINTR.
        let stream = loop {
            match UnixStream::connect(path) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut c = Client {
            stream,
            buf: Vec::new(),
            limits: Limits::default(),
        };
        let list = c.read_list()?;
        if list.len() != 1 || list[0].0 != "protocol" || list[0].1 != "tlsmgr_protocol" {
            return Err(ClientError::Protocol(format!(
                "unexpected announcement {list:?} (expected: protocol=tlsmgr_protocol)"
            )));
        }
        Ok(c)
    }

    /// Sends raw bytes (tests use this for malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads one attribute list.
    pub fn read_list(&mut self) -> Result<Vec<(Bytes, Bytes)>, ClientError> {
        loop {
            match attr::decode_list(&self.buf, &self.limits) {
                Ok(Some((list, used))) => {
                    self.buf.drain(..used);
                    return Ok(list);
                }
                Ok(None) => {}
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
            let mut chunk = [0u8; 8192];
            let n = match self.stream.read(&mut chunk) {
                // A signal to this process (a test harness reaping a child)
                // is no reason to give up on the reply.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => r?,
            };
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends `req` and reads its reply.
    pub fn request(&mut self, req: &Request) -> Result<Reply, ClientError> {
        let mut out = BytesMut::new();
        req.encode(&mut out);
        self.stream.write_all(&out)?;
        let list = self.read_list()?;
        Ok(Reply::decode(req.kind(), &list)?)
    }

    /// The underlying socket.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }
}

/// The requests `tlsmgr client` can send.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClientCommand {
    /// `seed`: ask for N random bytes (Postfix accepts 1..255).
    Seed {
        /// Number of bytes.
        size: i64,
    },
    /// `policy`: is the cache enabled, and its timeout.
    Policy {
        /// smtpd, smtp or lmtp.
        cache_type: String,
    },
    /// `lookup`: fetch a cached session.
    Lookup {
        /// smtpd, smtp or lmtp.
        cache_type: String,
        /// Cache id.
        id: String,
    },
    /// `update`: store a session read from FILE (`-` = stdin).
    Update {
        /// smtpd, smtp or lmtp.
        cache_type: String,
        /// Cache id.
        id: String,
        /// File with the session bytes, or `-`.
        file: String,
    },
    /// `delete`: remove a cached session.
    Delete {
        /// smtpd, smtp or lmtp.
        cache_type: String,
        /// Cache id.
        id: String,
    },
    /// `tktkey`: the current ticket key, or the key named NAME_HEX (32 hex digits).
    Tktkey {
        /// Key name in hex.
        name_hex: Option<String>,
    },
}

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok()
}

impl ClientCommand {
    /// The protocol request for this command.
    pub fn to_request(&self) -> Result<Request, CommandError> {
        let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
        Ok(match self {
            ClientCommand::Seed { size } => Request::Seed { size: *size as i32 },
            ClientCommand::Policy { cache_type } => Request::Policy {
                cache_type: b(cache_type),
            },
            ClientCommand::Lookup { cache_type, id } => Request::Lookup {
                cache_type: b(cache_type),
                cache_id: b(id),
            },
            ClientCommand::Update {
                cache_type,
                id,
                file,
            } => {
                let session = if file == "-" {
                    let mut v = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut v)
                        .map_err(|source| CommandError::Read {
                            file: "stdin".into(),
                            source,
                        })?;
                    v
                } else {
                    std::fs::read(file).map_err(|source| CommandError::Read {
                        file: file.clone(),
                        source,
                    })?
                };
                Request::Update {
                    cache_type: b(cache_type),
                    cache_id: b(id),
                    session: Bytes::from(session),
                }
            }
            ClientCommand::Delete { cache_type, id } => Request::Delete {
                cache_type: b(cache_type),
                cache_id: b(id),
            },
            ClientCommand::Tktkey { name_hex } => Request::TktKey {
                keyname: match name_hex {
                    None => Bytes::new(),
                    Some(h) => Bytes::from(
                        parse_hex(h).ok_or_else(|| CommandError::BadKeyName(h.clone()))?,
                    ),
                },
            },
        })
    }
}

/// Renders a reply as `name: value` lines; data as hex, or raw bytes.
pub fn render(reply: &Reply, raw: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let mut line = |name: &str, value: &[u8], is_data: bool| {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        if is_data && !raw {
            out.extend_from_slice(hex::encode(value).as_bytes());
        } else {
            out.extend_from_slice(value);
        }
        out.push(b'\n');
    };
    line("status", reply.status().name().as_bytes(), false);
    match reply {
        Reply::Status(_) => {}
        Reply::Seed { seed, .. } => line("seed", seed, true),
        Reply::Policy {
            cachable, timeout, ..
        } => {
            line("cachable", if *cachable { b"1" } else { b"0" }, false);
            line("timeout", timeout.to_string().as_bytes(), false);
        }
        Reply::Lookup { session, .. } => line("session", session, true),
        Reply::TktKey { keybuf, .. } => line("keybuf", keybuf, true),
    }
    out
}

/// Runs `tlsmgr client`: exit 0 for OK, 1 for ERR/FAIL, 2 for errors.
pub fn run_command(socket: &Path, cmd: &ClientCommand, raw: bool) -> ExitCode {
    let req = match cmd.to_request() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tlsmgr client: {e}");
            return ExitCode::from(2);
        }
    };
    let result = Client::connect(socket, Duration::from_secs(30)).and_then(|mut c| c.request(&req));
    match result {
        Ok(reply) => {
            let _ = std::io::stdout().write_all(&render(&reply, raw));
            if reply.status() == Status::Ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("tlsmgr client: {}: {e}", socket.display());
            ExitCode::from(2)
        }
    }
}
