//! `lucid-testkit`: real servers for lucid-db's tests and benchmark.
//!
//! [`Server::start`] runs a real server binary on a free loopback port in a temporary
//! directory, waits until it answers its own protocol, and kills it when the [`Server`] is
//! dropped — also when the test panics (unwinding drops it) and when the test process is
//! killed outright (the child gets `PR_SET_PDEATHSIG`). A missing binary is a panic with an
//! install hint, never a skip. [`Server::stop`], [`Server::start_again`], [`Server::pause`]
//! and [`Server::resume`] are the controls for fault tests.
//!
//! Adding a server is one [`ServerKind`]: its binary, an install hint, its arguments and a
//! readiness probe.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How to run one kind of server.
pub struct ServerKind {
    /// Short name for messages (`redis`).
    pub name: &'static str,
    /// URL scheme clients use (`redis`, `mongodb`, `http`).
    pub scheme: &'static str,
    /// Executable, looked up on `PATH` and in the project's `.venv/bin`.
    pub program: &'static str,
    /// What to run when the program is missing.
    pub install_hint: &'static str,
    /// Command-line arguments for a port and a data directory.
    pub args: fn(port: u16, dir: &Path) -> Vec<OsString>,
    /// True once the server answers on `addr`.
    pub ready: fn(addr: SocketAddr) -> bool,
}

/// redis-server from Debian, no persistence, loopback only.
pub static REDIS: ServerKind = ServerKind {
    name: "redis",
    scheme: "redis",
    program: "redis-server",
    install_hint: "run scripts/setup.sh (or: apt-get update && apt-get install -y redis-server)",
    args: |port, dir| {
        [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.display().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
        ]
        .iter()
        .map(OsString::from)
        .collect()
    },
    ready: |addr| {
        redis_ping(addr)
            .is_ok_and(|reply| reply.starts_with("+PONG") || reply.starts_with("-NOAUTH"))
    },
};

/// nx-27017 from the project's venv: a MongoDB wire-protocol server on SQLite, one file
/// database per logical database under the server's directory (so it survives restarts).
pub static MONGO: ServerKind = ServerKind {
    name: "mongodb",
    scheme: "mongodb",
    program: "nx-27017",
    install_hint: "run scripts/setup.sh (it installs nx-27017 into .venv with pip)",
    args: |port, dir| {
        vec![
            "--host".into(),
            "127.0.0.1".into(),
            "--port".into(),
            port.to_string().into(),
            "--data-dir".into(),
            dir.join("data").into_os_string(),
            "--pid-file".into(),
            dir.join("nx.pid").into_os_string(),
            "--log-file".into(),
            dir.join("nx.log").into_os_string(),
        ]
    },
    ready: |addr| mongo_ping(addr).unwrap_or(false),
};

/// Starts nx-27017; panics with an install hint when it is missing.
pub fn mongo() -> Server {
    Server::start(&MONGO)
}

/// osmem-server from the project's venv: an in-memory, OpenSearch-compatible server (one Go
/// binary, inside the Python package rather than in `.venv/bin`). It starts in milliseconds,
/// so every test gets its own. It watches `-parent-pid` as well as our death signal; stdin is
/// not ours to keep open, hence `-no-stdin-watch`. `-no-ja`: without it the first index
/// created loads the Japanese analyzers and takes over a second.
pub static OSMEM: ServerKind = ServerKind {
    name: "elasticsearch",
    scheme: "http",
    program: "osmem-server",
    install_hint: "run scripts/setup.sh (it installs osmem-server into .venv with pip)",
    args: |port, _dir| {
        vec![
            "-addr".into(),
            format!("127.0.0.1:{port}").into(),
            "-no-stdin-watch".into(),
            "-no-ja".into(),
            "-parent-pid".into(),
            std::process::id().to_string().into(),
        ]
    },
    ready: |addr| http_status(addr, "GET", "/").is_ok_and(|status| status == 200),
};

/// Starts osmem-server; panics with an install hint when it is missing.
pub fn elasticsearch() -> Server {
    Server::start(&OSMEM)
}

/// moto's S3-compatible server from the project's venv (`moto[server]`), for the backups'
/// S3 storage. It keeps everything in memory and accepts any access key; buckets are made
/// with [`create_bucket`].
pub static MOTO: ServerKind = ServerKind {
    name: "s3",
    scheme: "http",
    program: "moto_server",
    install_hint: "run scripts/setup.sh (it installs moto[server] into .venv with pip)",
    args: |port, _dir| {
        vec![
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string().into(),
        ]
    },
    ready: |addr| http_status(addr, "GET", "/").is_ok_and(|status| status == 200),
};

/// Starts moto's S3 server; panics with an install hint when it is missing.
pub fn s3() -> Server {
    Server::start(&MOTO)
}

/// Creates `bucket` on an S3 test server (moto takes unsigned requests); panics when the
/// server refuses.
pub fn create_bucket(server: &Server, bucket: &str) {
    let status = http_status_within(
        server.addr(),
        "PUT",
        &format!("/{bucket}"),
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("cannot create bucket {bucket}: {e}"));
    assert!(
        status == 200,
        "creating bucket {bucket} answered HTTP {status}"
    );
}

/// A running (or stopped, between [`Server::stop`] and [`Server::start_again`]) test server.
pub struct Server {
    kind: &'static ServerKind,
    program: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    extra_args: Vec<OsString>,
    child: Option<Child>,
}

/// Starts redis-server; panics with an install hint when it is missing.
pub fn redis() -> Server {
    Server::start(&REDIS)
}

impl Server {
    /// Starts `kind` on a free loopback port; panics (with an install hint when the binary is
    /// missing, with the server's log when it does not come up).
    pub fn start(kind: &'static ServerKind) -> Server {
        Self::start_with(kind, &[])
    }

    /// As [`Server::start`], with extra arguments appended (e.g. `--requirepass x`).
    pub fn start_with(kind: &'static ServerKind, extra: &[&str]) -> Server {
        let program = find_program(kind.program).unwrap_or_else(|| {
            panic!(
                "{} server binary `{}` not found on PATH or in .venv/bin: {}",
                kind.name, kind.program, kind.install_hint
            )
        });
        let dir = tempfile::Builder::new()
            .prefix(&format!("lucid-testkit-{}-", kind.name))
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for {}: {e}", kind.name));
        let mut server = Server {
            kind,
            program,
            port: 0,
            dir,
            extra_args: extra.iter().map(OsString::from).collect(),
            child: None,
        };
        // A free port can be taken between our probe and the server's bind: try a few.
        let mut last_err = String::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) => last_err = e,
            }
        }
        panic!("{} did not start: {last_err}", kind.name);
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The server's URL for clients (`redis://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("{}://{}", self.kind.scheme, self.addr())
    }

    /// The server's data directory (removed when the `Server` is dropped).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL, as a crash would) and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data directory; waits until it answers.
    pub fn start_again(&mut self) {
        self.stop();
        // The old socket may linger briefly; retry for a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!(
                        "{} did not restart on port {}: {e}",
                        self.kind.name, self.port
                    )
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// SIGSTOP: the server keeps its sockets but answers nothing. Returns once every thread of
    /// the process is stopped: the signal is only queued when kill(2) returns, and a thread
    /// still running could answer one more request.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
        let Some(pid) = self.pid() else { return };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !all_threads_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "{} (pid {pid}) did not stop within 5 s of SIGSTOP",
                self.kind.name
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// SIGCONT after [`Server::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's pid; no memory is touched.
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("cannot open the server log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&self.program);
        cmd.args((self.kind.args)(self.port, self.dir.path()))
            .args(&self.extra_args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        let mut child = spawn_tied_to_process(cmd)
            .map_err(|e| format!("cannot run {}: {e}", self.program.display()))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "exited with {status} before answering; log:\n{}",
                    self.log_tail()
                ));
            }
            // The port answering is not enough: between our free-port probe (or our stop) and
            // our bind, another test's server may have taken the port, and it answers while
            // ours fails to bind. Only a listening socket our child holds counts.
            if (self.kind.ready)(self.addr()) && listens_on(child.id(), self.port) {
                self.child = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "no answer on {} within 20 s; log:\n{}",
                    self.addr(),
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `PING` and returns the first reply line.
pub fn redis_ping(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Sends `{ping: 1}` as an OP_MSG and reports whether the reply says `ok`.
pub fn mongo_ping(addr: SocketAddr) -> std::io::Result<bool> {
    // BSON {ping: 1 (int32), $db: "admin"}
    let mut body = Vec::new();
    body.push(0x10);
    body.extend_from_slice(b"ping\0");
    body.extend_from_slice(&1i32.to_le_bytes());
    body.push(0x02);
    body.extend_from_slice(b"$db\0");
    body.extend_from_slice(&6i32.to_le_bytes());
    body.extend_from_slice(b"admin\0");
    body.push(0);
    let mut doc = ((body.len() + 4) as i32).to_le_bytes().to_vec();
    doc.extend_from_slice(&body);
    // header: length, requestID, responseTo, opCode 2013; flags; section kind 0
    let len = 16 + 4 + 1 + doc.len();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(&(len as i32).to_le_bytes());
    msg.extend_from_slice(&1i32.to_le_bytes());
    msg.extend_from_slice(&0i32.to_le_bytes());
    msg.extend_from_slice(&2013i32.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    msg.push(0);
    msg.extend_from_slice(&doc);
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_millis(1000)))?;
    s.write_all(&msg)?;
    let mut header = [0u8; 16];
    s.read_exact(&mut header)?;
    let total = i32::from_le_bytes([header[0], header[1], header[2], header[3]]).max(16) as usize;
    let mut rest = vec![0u8; total - 16];
    s.read_exact(&mut rest)?;
    // The reply document holds "ok" as 1: a double (mongod), an int32 (nx-27017) or an int64.
    let ok_as = |kind: u8, value: &[u8]| {
        let mut want = vec![kind];
        want.extend_from_slice(b"ok\0");
        want.extend_from_slice(value);
        rest.windows(want.len()).any(|w| w == want.as_slice())
    };
    Ok(ok_as(0x01, &1.0f64.to_le_bytes())
        || ok_as(0x10, &1i32.to_le_bytes())
        || ok_as(0x12, &1i64.to_le_bytes()))
}

/// Whether every thread of process `pid` is in the stopped state (`T` in
/// `/proc/PID/task/TID/stat`).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
            // "TID (comm) STATE …": the state follows the last ')' (comm may hold one).
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "T")
        })
    })
}

/// Whether process `pid` holds a socket listening on TCP `port` (IPv4 or IPv6): the inodes of
/// the listening sockets in `/proc/net/tcp{,6}` against the process's open descriptors.
fn listens_on(pid: u32, port: u16) -> bool {
    let want = format!(":{port:04X}");
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            // local_address is column 1, st column 3 (0A: LISTEN), inode column 9.
            if cols.len() > 9 && cols[1].ends_with(&want) && cols[3] == "0A" {
                inodes.push(format!("socket:[{}]", cols[9]));
            }
        }
    }
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// Sends an HTTP/1.1 request with an empty body and returns the status code; a readiness
/// probe, so it waits a second at most for the answer.
pub fn http_status(addr: SocketAddr, method: &str, path: &str) -> std::io::Result<u16> {
    http_status_within(addr, method, path, Duration::from_millis(1000))
}

/// [`http_status`], waiting up to `wait` for the answer (creating a bucket takes longer than a
/// probe).
fn http_status_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    wait: Duration,
) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(wait))?;
    // `Content-Length: 0`: a PUT without it is refused by some servers (moto's bucket create).
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    // "HTTP/1.1 200 OK"
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP answer"))
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("cannot find a free loopback port: {e}"))
}

/// Whether process `pid` still exists (a zombie counts as gone).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // Field 3 is the state; Z = zombie, X = dead.
        Ok(stat) => !matches!(
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next()),
            Some("Z") | Some("X")
        ),
        Err(_) => false,
    }
}

/// The workspace root (where `.venv/` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn find_program(name: &str) -> Option<PathBuf> {
    let venv = workspace_root().join(".venv");
    // Binaries that Python packages ship inside themselves (osmem-server).
    let packaged = std::fs::read_dir(venv.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| {
            python
                .path()
                .join("site-packages")
                .join(name.replace('-', "_"))
                .join("bin")
        });
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(std::iter::once(venv.join("bin")))
        .chain(packaged)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Spawns `cmd` so that it dies with this process.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked the child exits, and test threads
/// come and go; so every server is forked from one long-lived spawner thread, which lives as
/// long as the process.
fn spawn_tied_to_process(mut cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .unwrap_or_else(|e| panic!("cannot start the testkit spawner thread: {e}"));
        Mutex::new(tx)
    });
    let parent = std::process::id();
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() as u32 != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    spawner
        .lock()
        .map_err(|_| std::io::Error::other("testkit spawner lock poisoned"))?
        .send((cmd, tx))
        .map_err(|_| std::io::Error::other("testkit spawner thread is gone"))?;
    rx.recv()
        .map_err(|_| std::io::Error::other("testkit spawner thread is gone"))?
}

/// A minimal HTTP/1.1 GET for tests of the daemon's API: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_get_as(addr, path, None)
}

/// [`http_get`] with a bearer token.
pub fn http_get_as(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {raw:?}")))?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Stands in for systemd's notify socket: bind it, pass [`NotifySocket::path`] as
/// `NOTIFY_SOCKET` to the daemon, read what it sends.
pub struct NotifySocket {
    sock: std::os::unix::net::UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
    seen: Vec<String>,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let path = dir.path().join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&path)
            .unwrap_or_else(|e| panic!("cannot bind {}: {e}", path.display()));
        NotifySocket {
            sock,
            path,
            _dir: dir,
            seen: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every line received so far (each datagram may hold several `KEY=VALUE` lines).
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Reads datagrams until a line satisfies `pred` (returned) or `timeout` passes (None).
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        if self.wait_count(timeout, 1, &pred) == 0 {
            return None;
        }
        self.seen.iter().find(|l| pred(l)).cloned()
    }

    /// Reads datagrams until `n` lines in all satisfy `pred` or `timeout` passes; returns how
    /// many did.
    pub fn wait_count(
        &mut self,
        timeout: Duration,
        n: usize,
        pred: impl Fn(&str) -> bool,
    ) -> usize {
        let mut count = self.seen.iter().filter(|l| pred(l)).count();
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 64 * 1024];
        while count < n {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                break;
            };
            if left.is_zero() || self.sock.set_read_timeout(Some(left)).is_err() {
                break;
            }
            let Ok(len) = self.sock.recv(&mut buf) else {
                break;
            };
            for line in String::from_utf8_lossy(&buf[..len]).lines() {
                self.seen.push(line.to_owned());
                if pred(line) {
                    count += 1;
                }
            }
        }
        count
    }
}

/// The `lucid-db` binary running as a daemon for a test: its own config file, a free HTTP
/// port, a state directory and a [`NotifySocket`], all in a temp dir; killed on drop and
/// when the test process dies.
pub struct Daemon {
    child: Option<Child>,
    /// Where its HTTP API listens.
    pub http: SocketAddr,
    /// systemd's notify socket, as the daemon sees it.
    pub notify: NotifySocket,
    stderr: std::sync::Arc<Mutex<String>>,
    /// Disconnected once the reader has taken everything the daemon wrote to stderr.
    stderr_read: Option<std::sync::mpsc::Receiver<()>>,
    dir: tempfile::TempDir,
}

impl Daemon {
    /// Runs `bin run --config <file>` with `config` as the file's content and `env` added to
    /// an otherwise clean environment (PATH only). `http.bind`, `state_dir` and
    /// `volumes.root` point into the temp dir (through the environment, so `config` may hold
    /// any section); the scheduler's daily jobs are off unless `env` turns them on.
    pub fn start(bin: &Path, config: &str, args: &[&str], env: &[(&str, &str)]) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("lucid-testkit-daemon-")
            .tempdir()
            .unwrap_or_else(|e| panic!("tempdir: {e}"));
        let config_path = dir.path().join("lucid-db.toml");
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("write config: {e}"));
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let notify = NotifySocket::bind();
        std::fs::create_dir_all(dir.path().join("volumes"))
            .unwrap_or_else(|e| panic!("mkdir volumes: {e}"));
        let mut cmd = Command::new(bin);
        cmd.arg("--config")
            .arg(&config_path)
            .args(args)
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("LUCID_DB__HTTP__BIND", http.to_string())
            .env("LUCID_DB__STATE_DIR", dir.path().join("state"))
            .env("LUCID_DB__VOLUMES__ROOT", dir.path().join("volumes"))
            .env("NOTIFY_SOCKET", notify.path())
            // The scheduler's daily jobs off: a test daemon that happens to run at 02:00 UTC
            // must not start a backup under the test. A test that wants one sets it in `env`.
            .envs(
                [
                    "BACKUP",
                    "VERIFY",
                    "RETENTION",
                    "LIFECYCLE",
                    "VOLUME_MAINTENANCE",
                ]
                .map(|job| (format!("LUCID_DB__SCHEDULER__{job}"), "off")),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = spawn_tied_to_process(cmd)
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()));
        let stderr = std::sync::Arc::new(Mutex::new(String::new()));
        let (read_tx, stderr_read) = std::sync::mpsc::channel::<()>();
        if let Some(pipe) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let _done = read_tx;
                let mut reader = std::io::BufReader::new(pipe);
                let mut line = String::new();
                while std::io::BufRead::read_line(&mut reader, &mut line).is_ok_and(|n| n > 0) {
                    if let Ok(mut s) = sink.lock() {
                        s.push_str(&line);
                    }
                    line.clear();
                }
            });
        }
        Daemon {
            child: Some(child),
            http,
            notify,
            stderr,
            stderr_read: Some(stderr_read),
            dir,
        }
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Polls stderr until a line contains `needle`, at most `timeout`.
    pub fn wait_for_log(&self, timeout: Duration, needle: &str) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stderr().lines().find(|l| l.contains(needle)) {
                return Some(line.to_owned());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The temp dir holding its config and state.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends a signal (SIGTERM, SIGINT, …).
    pub fn signal(&self, sig: libc::c_int) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, sig);
            }
        }
    }

    /// Waits for the daemon to exit, at most `timeout`; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                // The process is gone, but the reader may not have taken its last lines yet:
                // what a test asserts about stderr after the exit must be all of it.
                if let Some(read) = self.stderr_read.take() {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let _ = read.recv_timeout(left.max(Duration::from_secs(1)));
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod listen_tests {
    use super::*;

    #[test]
    fn a_port_counts_as_ours_only_when_our_process_listens_on_it() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(listens_on(std::process::id(), port));
        // Another process (init, or whatever pid 1 is here) does not hold our socket.
        assert!(!listens_on(1, port));
        drop(listener);
        assert!(!listens_on(std::process::id(), port));
    }

    #[test]
    fn a_running_process_is_not_stopped_and_a_sigstopped_one_is() {
        assert!(!all_threads_stopped(std::process::id()));
        let mut child = Command::new("sleep").arg("30").spawn().expect("sleep");
        let pid = child.id();
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !all_threads_stopped(pid) {
            assert!(Instant::now() < deadline, "sleep never showed as stopped");
            std::thread::sleep(Duration::from_millis(1));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}
