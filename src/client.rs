//! The CLI as the running daemon's HTTP client: commands that change data (`backup now|verify|
//! restore`, `schedule run`, `volumes create|delete|…`) go through the daemon's API when one
//! runs, and run in this process only when none does (docs/cli.md, "Beside a running daemon").
//!
//! "A daemon runs" is the daemon lock in `state_dir` (the daemon holds it as long as it lives);
//! "it answers" is its `/health` at `http.bind` (a wildcard bind is reached over loopback). A
//! held lock whose API does not answer is an error (exit 69): the command never runs in process
//! beside a live daemon, which serves the same stores and volumes.
//!
//! The bearer token is read from `--token-file FILE` or `LUCID_DB_TOKEN_FILE` (the file holds
//! the token alone; a trailing newline is fine) only when a daemon runs (none given, or a file
//! that cannot be read or holds no token alone: exit 77, saying how to make one); it is sent in the
//! `Authorization` header and never printed or logged. An API failure's `code` is mapped to the
//! exit code the same failure has in process, by the command's own table; 401/403 are 77, 429
//! is 75, and a `Retry-After` is said.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use actix_web::http::Method;
use lucid_actors::state::DaemonLock;
use lucid_actors::{Config, StateDir};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::exit;
use crate::http::HealthReport;

/// The environment variable naming the token file when `--token-file` is not given.
pub const TOKEN_FILE_ENV: &str = "LUCID_DB_TOKEN_FILE";

/// How long `/health` and the short calls may take: the daemon answers them at once.
const SHORT: Duration = Duration::from_secs(10);

/// The largest answer read (a long backup list is well under this).
const BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Where the daemon's API is reached from this host: `http.bind`, a wildcard as loopback.
pub fn daemon_addr(bind: SocketAddr) -> SocketAddr {
    match bind.ip() {
        ip if ip.is_unspecified() => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), bind.port()),
        _ => bind,
    }
}

/// The daemon's `/health`, or why it did not answer.
pub async fn health(bind: SocketAddr) -> Result<HealthReport, String> {
    let addr = daemon_addr(bind);
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(2))
        .finish();
    let mut resp = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("/health answered {}", resp.status()));
    }
    resp.json::<HealthReport>().await.map_err(|e| e.to_string())
}

/// The running daemon's API, with the caller's token.
pub struct Api {
    client: awc::Client,
    base: String,
    /// `Bearer …`: never printed.
    auth: String,
    /// What the messages start with (`lucid-db backup now`).
    pub what: String,
}

/// A failure the API answered (or the call itself).
#[derive(Debug, Clone)]
pub struct Failure {
    /// 0 when no answer came (the connection failed or was cut).
    pub status: u16,
    pub code: String,
    pub message: String,
    pub retry_after: Option<String>,
}

impl Failure {
    fn transport(e: impl std::fmt::Display) -> Failure {
        Failure {
            status: 0,
            code: "unavailable".to_owned(),
            message: format!("the daemon's API did not answer: {e}"),
            retry_after: None,
        }
    }

    /// Prints the failure and returns its exit code: 77 for a refused token, 75 for the rate
    /// limit, otherwise `by_code` (the command's in-process table) of the error's code.
    pub fn report(&self, what: &str, by_code: impl Fn(&str) -> u8) -> u8 {
        let retry = self
            .retry_after
            .as_deref()
            .map(|s| format!("; try again in {s} s (Retry-After)"))
            .unwrap_or_default();
        let code = match self.status {
            401 => {
                eprintln!(
                    "{what}: the daemon refused the token: {} ({}). Make one with `lucid-db \
                     token add NAME --scope S` and give it with --token-file FILE or \
                     {TOKEN_FILE_ENV}",
                    self.message, self.code
                );
                return exit::NOPERM;
            }
            403 => {
                eprintln!("{what}: {} ({})", self.message, self.code);
                return exit::NOPERM;
            }
            429 => exit::TEMPFAIL,
            _ => match by_code(&self.code) {
                // A 503 none of the command's codes explain (the rate limit while Redis is
                // down, a part starting): worth retrying.
                exit::FAILED if self.status == 503 => exit::TEMPFAIL,
                code => code,
            },
        };
        eprintln!("{what}: {} ({}){retry}", self.message, self.code);
        code
    }
}

/// Whether a daemon runs with this state directory and its API answers. `Ok(None)`: none runs,
/// the command runs in process (a token given is not read). `Ok(Some)`: go through the API.
/// `Err(exit code)`: said on stderr (a daemon whose API does not answer, no token, a token
/// file that cannot be read).
pub async fn connect(
    config: &Config,
    token_file: Option<&Path>,
    what: &str,
) -> Result<Option<Api>, u8> {
    let addr = daemon_addr(config.http.bind);
    match DaemonLock::held(&StateDir::new(&config.state_dir)) {
        Ok(false) => return Ok(None),
        Ok(true) => {}
        // The lock cannot be looked at (a state directory this user may not write): a daemon
        // that answers there runs; otherwise the command could not run in process either.
        Err(e) => {
            if health(config.http.bind).await.is_err() {
                eprintln!("{what}: {e}");
                return Err(exit::CONFIG);
            }
        }
    }
    if let Err(e) = health(config.http.bind).await {
        eprintln!(
            "{what}: the lucid-db daemon runs with state_dir {} but its API at http://{addr} \
             does not answer ({e}); nothing was done. It must not run in this process beside \
             the daemon: check that http.bind is the daemon's, or wait until it answers \
             (`lucid-db health`)",
            config.state_dir.display()
        );
        return Err(exit::UNAVAILABLE);
    }
    let token = read_token(token_file, what)?;
    let client = awc::Client::builder().disable_timeout().finish();
    Ok(Some(Api {
        client,
        base: format!("http://{addr}"),
        auth: format!("Bearer {token}"),
        what: what.to_owned(),
    }))
}

/// The token from `--token-file` (or `LUCID_DB_TOKEN_FILE`).
fn read_token(flag: Option<&Path>, what: &str) -> Result<String, u8> {
    let how = "make one with `lucid-db token add NAME --scope S` (the scope the command needs: \
               docs/cli.md) and write it alone into a file only you can read";
    // clap takes `LUCID_DB_TOKEN_FILE` when the flag is not given.
    let path: PathBuf = match flag.map(Path::to_path_buf) {
        Some(p) => p,
        None => {
            eprintln!(
                "{what}: the lucid-db daemon runs: this goes through its API, which needs a \
                 token: give --token-file FILE or set {TOKEN_FILE_ENV}; {how}"
            );
            return Err(exit::NOPERM);
        }
    };
    let text = std::fs::read_to_string(&path).map_err(|e| {
        eprintln!(
            "{what}: cannot read the token file {}: {e}; {how}",
            path.display()
        );
        exit::NOPERM
    })?;
    let token = text.trim();
    // A token is one word of printable ASCII; anything else is not a token file (and must not
    // go into a header, where it could break the request).
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        eprintln!(
            "{what}: the token file {} does not hold a token alone; {how}",
            path.display()
        );
        return Err(exit::NOPERM);
    }
    Ok(token.to_owned())
}

impl Api {
    /// `method path` with an optional JSON body; the answer's JSON on success. `long`: no
    /// time limit (a verify or a restore takes as long as it takes; the daemon does not cut
    /// those either).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        long: bool,
    ) -> Result<Value, Failure> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .insert_header(("Authorization", self.auth.as_str()));
        if !long {
            req = req.timeout(SHORT);
        }
        let sent = match body {
            Some(b) => req.send_json(b).await,
            None => req.send().await,
        };
        let mut resp = sent.map_err(Failure::transport)?;
        let status = resp.status();
        let bytes = resp
            .body()
            .limit(BODY_LIMIT)
            .await
            .map_err(Failure::transport)?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(value);
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let field = |k: &str| value["error"][k].as_str().map(str::to_owned);
        Err(Failure {
            status: status.as_u16(),
            code: field("code").unwrap_or_else(|| "error".to_owned()),
            message: field("message").unwrap_or_else(|| format!("the daemon answered {status}")),
            retry_after,
        })
    }

    /// [`Api::call`], the answer read as `T`.
    pub async fn call_as<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        long: bool,
    ) -> Result<T, Failure> {
        let value = self.call(method, path, body, long).await?;
        serde_json::from_value(value).map_err(|e| Failure {
            status: 0,
            code: "bad_answer".to_owned(),
            message: format!(
                "the daemon's answer does not read as expected ({e}): is it another version?"
            ),
            retry_after: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_bind_is_reached_over_loopback() {
        let wild: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        assert_eq!(daemon_addr(wild).to_string(), "127.0.0.1:8080");
        let set: SocketAddr = "10.0.0.5:8080".parse().expect("addr");
        assert_eq!(daemon_addr(set), set);
    }

    #[test]
    fn a_token_file_holds_the_token_alone_and_a_trailing_newline_is_fine() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("token");
        std::fs::write(&path, "ldb_abc123\n").expect("write");
        assert_eq!(read_token(Some(&path), "t").as_deref(), Ok("ldb_abc123"));
        for bad in ["", "\n", "ldb_a b", "ldb_a\nldb_b\n"] {
            std::fs::write(&path, bad).expect("write");
            assert_eq!(read_token(Some(&path), "t"), Err(exit::NOPERM), "{bad:?}");
        }
        let missing = dir.path().join("nope");
        assert_eq!(read_token(Some(&missing), "t"), Err(exit::NOPERM));
    }

    #[test]
    fn refused_tokens_are_77_the_rate_limit_75_and_the_rest_by_the_commands_table() {
        let f = |status, code: &str| Failure {
            status,
            code: code.to_owned(),
            message: "m".to_owned(),
            retry_after: Some("1".to_owned()),
        };
        let table = |code: &str| {
            if code == "busy" {
                exit::TEMPFAIL
            } else {
                exit::FAILED
            }
        };
        assert_eq!(f(401, "unauthorized").report("t", table), exit::NOPERM);
        assert_eq!(f(403, "forbidden").report("t", table), exit::NOPERM);
        assert_eq!(f(429, "rate_limited").report("t", table), exit::TEMPFAIL);
        assert_eq!(
            f(503, "rate_limit_unavailable").report("t", table),
            exit::TEMPFAIL
        );
        assert_eq!(f(409, "busy").report("t", table), exit::TEMPFAIL);
        assert_eq!(f(500, "io").report("t", table), exit::FAILED);
    }
}
