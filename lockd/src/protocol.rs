//! The daemon's socket protocol: one JSON request per line on a Unix socket, one JSON reply.
//! The daemon answers it; the CLI client and the toolstack hook send it.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use lockd_common::settings::VifSettings;
use serde::{Deserialize, Serialize};

/// A client request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// An `xe` command: the command line after `lockd`.
    Xe { argv: Vec<String> },
    /// The toolstack hook's `filter`: settings for one VIF on one netdev, parsed by the hook
    /// from xenopsd's record. `network_name_label` is the record's bridge; with `plumb` the
    /// netdev is also put on it (off every bridge if the VIF is disabled) and up, as the
    /// original `setup-vif-rules` does.
    Apply {
        vif: VifSettings,
        network_name_label: String,
        #[serde(default)]
        plumb: bool,
    },
    /// The toolstack hook's `clear` of one netdev: only that netdev loses its policy; with
    /// `plumb` it leaves its bridge and is set up.
    Unplug {
        device: String,
        #[serde(default)]
        plumb: bool,
    },
    /// The toolstack hook could not read or apply the record for `device`: the VIF keeps the
    /// policy it has, or, having none, is enforced as `disabled` until a valid one arrives.
    Fence {
        device: String,
        reason: String,
        /// The VM the hook plugged the netdev for: a VIF of another VM that had a netdev of
        /// this name never keeps its policy on it.
        #[serde(default)]
        vm_uuid: Option<String>,
    },
    /// `lockd monitor`: after a reply with code 0, one JSON line per dropped frame (and per
    /// suppressed count) that the filter keeps, until the client hangs up.
    Monitor {
        vif: Option<String>,
        device: Option<String>,
        reason: Option<String>,
    },
    /// `lockd explain --vif`: the VIF's policy in force, as JSON in `stdout`.
    Policy { vif: String },
}

/// The daemon's answer.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Reply {
    /// Success, with `stdout`.
    pub fn ok(stdout: String) -> Reply {
        Reply {
            code: 0,
            stdout,
            stderr: String::new(),
        }
    }

    /// Failure `code`, with one `lockd: …` line on stderr.
    pub fn fail(code: i32, msg: impl std::fmt::Display) -> Reply {
        Reply {
            code,
            stdout: String::new(),
            stderr: format!("lockd: {msg}\n"),
        }
    }
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket.
    #[error(
        "the lockd daemon is not running (cannot connect to {}: {error}); start it with \
         `systemctl start lockd` or `lockd daemon`",
        socket.display()
    )]
    NotRunning {
        socket: PathBuf,
        error: std::io::Error,
    },
    /// The connection failed midway.
    #[error("{0}")]
    Io(std::io::Error),
    /// The daemon's reply is not a reply (or the request could not be encoded).
    #[error("reading the daemon's reply: {0}")]
    Reply(serde_json::Error),
}

/// Client side: sends an `xe` command to the daemon at `socket` and returns its reply.
pub fn call(socket: &Path, argv: &[String]) -> Result<Reply, ClientError> {
    request(
        socket,
        &Request::Xe {
            argv: argv.to_vec(),
        },
    )
}

/// Like [`request`], but waits up to `patience` for a daemon that is (re)starting: the
/// toolstack's hook must not fail a VIF plug because lockd is being restarted.
pub fn request_patiently(
    socket: &Path,
    req: &Request,
    patience: Duration,
) -> Result<Reply, ClientError> {
    let start = Instant::now();
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return exchange(s, req),
            Err(_) if start.elapsed() < patience => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => return request(socket, req),
        }
    }
}

/// Client side: sends `req` to the daemon at `socket` and returns its reply.
pub fn request(socket: &Path, req: &Request) -> Result<Reply, ClientError> {
    let s = UnixStream::connect(socket).map_err(|error| ClientError::NotRunning {
        socket: socket.to_path_buf(),
        error,
    })?;
    exchange(s, req)
}

/// One request and its reply on a connected socket.
fn exchange(mut s: UnixStream, req: &Request) -> Result<Reply, ClientError> {
    let mut bytes = serde_json::to_vec(req).map_err(ClientError::Reply)?;
    bytes.push(b'\n');
    s.write_all(&bytes).map_err(ClientError::Io)?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(ClientError::Io)?;
    serde_json::from_str(&line).map_err(ClientError::Reply)
}
