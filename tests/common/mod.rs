//! Shared helpers for end-to-end tests: run the real `hearth` binary on an
//! ephemeral port and talk HTTP to it over real sockets.
#![allow(dead_code)]

pub mod fake_server;
pub mod faults;
pub mod fed;
pub mod node;
pub mod synapse;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Hearth {
    pub child: Child,
    pub addr: SocketAddr,
    pub data_dir: tempfile::TempDir,
    /// Every stdout line so far (the log), filled by a reader thread.
    lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
}

/// Builder-ish options for starting hearth.
#[derive(Clone, Default)]
pub struct Opts {
    pub shards: usize,
    pub env: Vec<(String, String)>,
    /// Run in a child whose seccomp filter refuses io_uring_setup with EPERM.
    pub deny_io_uring: bool,
    /// Also read stderr into the log (tests of what hearth prints).
    pub capture_stderr: bool,
}

impl Opts {
    /// `n` shards, unless `HEARTH_TEST_SHARDS` overrides it: CI reruns the
    /// API suites with one shard so both shapes are covered.
    pub fn shards(n: usize) -> Opts {
        let n = std::env::var("HEARTH_TEST_SHARDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(n);
        Opts {
            shards: n,
            ..Opts::default()
        }
    }
    pub fn env(mut self, k: &str, v: &str) -> Opts {
        self.env.push((k.into(), v.into()));
        self
    }
}

impl Hearth {
    pub fn start(opts: Opts) -> Hearth {
        Hearth::start_in(opts, tempfile::tempdir().expect("tempdir"))
    }

    /// Start on an existing data dir (e.g. to test a restart).
    pub fn start_in(opts: Opts, data_dir: tempfile::TempDir) -> Hearth {
        // As root the embedded PostgreSQL runs as `postgres`, which must be
        // able to traverse into the data dir (tempdir makes it 0700).
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(data_dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod data dir");
        }
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hearth"));
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HEARTH_SERVER_NAME", "localhost")
            .env("HEARTH_SHARDS", opts.shards.max(1).to_string())
            .env("HEARTH_DATA_DIR", data_dir.path())
            .env("HEARTH_LISTENERS__0__PORT", "0")
            .env("HEARTH_LISTENERS__0__ADDRESS", "127.0.0.1")
            // Suites are not rate limited; a test that wants limits sets
            // them (Opts::env) and overrides this.
            .env("HEARTH_RATE_LIMITS__ENABLED", "false")
            .stdout(Stdio::piped())
            .stderr(if opts.capture_stderr {
                Stdio::piped()
            } else {
                Stdio::inherit()
            });
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        if opts.deny_io_uring {
            use std::os::unix::process::CommandExt;
            // SAFETY: only async-signal-safe syscalls (prctl) between fork and exec.
            unsafe {
                cmd.pre_exec(seccomp::deny_io_uring_setup);
            }
        }
        let mut child = cmd.spawn().expect("spawn hearth");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("[hearth stderr] {line}");
                    if tx.send(format!("[stderr] {line}")).is_err() {
                        break;
                    }
                }
            });
        }
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                println!("[hearth] {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut h = Hearth {
            child,
            addr: "127.0.0.1:0".parse().unwrap(),
            data_dir,
            lines: rx,
            log: Vec::new(),
        };
        let line = h.wait_for_log("listening on http://", Duration::from_secs(60));
        let addr = line
            .split("listening on http://")
            .nth(1)
            .map(|s| {
                s.chars()
                    .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
                    .collect::<String>()
            })
            .expect("address in listening line");
        h.addr = addr.parse().expect("socket address");
        h.lines_seen_until_now();
        h
    }

    /// Wait for a log line containing `needle` (also searching lines seen before).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> String {
        if let Some(l) = self.log.iter().find(|l| l.contains(needle)) {
            return l.clone();
        }
        let until = Instant::now() + timeout;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.log.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "no log line containing {needle:?}; log so far: {:#?}",
                    self.log
                ),
            }
        }
    }

    /// Drain log lines that have arrived so far into `self.log`.
    pub fn lines_seen_until_now(&mut self) {
        while let Ok(l) = self.lines.try_recv() {
            self.log.push(l);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Wait for exit, returning the exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Count io_uring instances held by the process.
    pub fn io_uring_fds(&self) -> usize {
        let dir = format!("/proc/{}/fd", self.pid());
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read_link(e.path()).ok())
                    .filter(|p| p.to_string_lossy().contains("io_uring"))
                    .count()
            })
            .unwrap_or(0)
    }
}

impl Drop for Hearth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// Read one response (Content-Length framed) from a stream.
pub fn read_response(s: &mut impl Read, head_only: bool) -> Resp {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        // A signal (SIGCHLD from a child process) can interrupt the read.
        let n = match s.read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => r.expect("read head"),
        };
        assert!(
            n > 0,
            "connection closed mid-head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).expect("utf8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':').unwrap();
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0u8; if head_only { 0 } else { len }];
    s.read_exact(&mut body).expect("read body");
    Resp {
        status,
        headers,
        body,
    }
}

/// One request on a fresh connection.
pub fn get(h: &Hearth, path: &str) -> Resp {
    let mut s = h.connect();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    read_response(&mut s, false)
}

pub mod seccomp {
    //! A minimal seccomp-BPF filter: io_uring_setup fails with EPERM, as under
    //! Docker's default profile, everything else is allowed.
    use std::io;

    const SYS_IO_URING_SETUP: u32 = 425;

    pub fn deny_io_uring_setup() -> io::Result<()> {
        let filter = [
            // A = seccomp_data.nr
            libc::sock_filter {
                code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
                jt: 0,
                jf: 0,
                k: 0,
            },
            // if A == io_uring_setup: fall through to ERRNO, else skip it
            libc::sock_filter {
                code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
                jt: 0,
                jf: 1,
                k: SYS_IO_URING_SETUP,
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32),
            },
            libc::sock_filter {
                code: (libc::BPF_RET | libc::BPF_K) as u16,
                jt: 0,
                jf: 0,
                k: libc::SECCOMP_RET_ALLOW,
            },
        ];
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        // SAFETY: prctl with a valid filter program that outlives the call.
        unsafe {
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// One request with optional bearer token and raw body, on a fresh
/// connection (so the kernel may pick any shard).
pub fn request(h: &Hearth, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Resp {
    request_to(h.addr, method, path, token, body)
}

/// [`request`] by address, for threads (a `Hearth` is not `Sync`).
pub fn request_to(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    read_response(&mut s, false)
}

/// A JSON request (`body: None` sends no body).
pub fn json_request(
    h: &Hearth,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> Resp {
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    request(h, method, path, token, &bytes)
}

// ---- Client-API helpers shared by the `api_*` suites ----

pub const V3: &str = "/_matrix/client/v3";

/// A JSON request with a token; `path` is under `/_matrix/client/v3` unless
/// it starts with `/_matrix`.
pub fn call(h: &Hearth, m: &str, path: &str, token: &str, body: Option<serde_json::Value>) -> Resp {
    let path = if path.starts_with("/_matrix") {
        path.to_owned()
    } else {
        format!("{V3}{path}")
    };
    json_request(h, m, &path, Some(token), body.as_ref())
}

/// The JSON body of a 200 response (panics with the body otherwise).
#[track_caller]
pub fn ok(r: Resp) -> serde_json::Value {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// Asserts a Matrix error with this status and errcode.
#[track_caller]
pub fn assert_err(r: &Resp, status: u16, errcode: &str) {
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, status, "{body}");
    assert_eq!(r.json()["errcode"], errcode, "{body}");
}

/// Percent-encodes a path segment (room ids, aliases, event ids).
pub fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A registered user.
pub struct Registered {
    pub token: String,
    pub id: String,
    pub device: String,
}

/// Registers `user` (password "pw") through the dummy UIA flow.
pub fn register_user(h: &Hearth, user: &str) -> Registered {
    let body =
        serde_json::json!({"username": user, "password": "pw", "auth": {"type": "m.login.dummy"}});
    let r = json_request(h, "POST", &format!("{V3}/register"), None, Some(&body));
    let r = if r.status == 401 {
        let mut body = body;
        body["auth"]["session"] = r.json()["session"].clone();
        json_request(h, "POST", &format!("{V3}/register"), None, Some(&body))
    } else {
        r
    };
    let v = ok(r);
    Registered {
        token: v["access_token"].as_str().unwrap().to_owned(),
        id: v["user_id"].as_str().unwrap().to_owned(),
        device: v["device_id"].as_str().unwrap().to_owned(),
    }
}

/// Registers `user` and returns its access token.
pub fn register(h: &Hearth, user: &str) -> String {
    register_user(h, user).token
}
