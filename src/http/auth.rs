//! Bearer tokens with a scope each, and the per-token rate limit.
//!
//! `lucid-db token add NAME --scope S` makes a random token, prints it once and stores only
//! its SHA-256 in `http.tokens_file` (JSON, mode 0600, replaced by rename); `token ls` and
//! `token revoke` edit the same file. The daemon holds the file's entries in memory and
//! re-reads it when its inode, size or mtime changes (a poll every second: no inotify, the
//! same on every filesystem), so an added or revoked token counts within seconds.
//!
//! A request's token is hashed and compared with every entry's hash in constant time; the
//! token itself is never logged or kept. Scopes are ordered: `admin` may do what `write` may,
//! `write` what `read` may.
//!
//! Every authenticated request counts against its token's sliding window in Redis
//! (`lucid:ratelimit:token:{name}`, `http.rate_limit` per `http.rate_window`). While Redis is
//! unavailable `redis.rate_limit_when_down` decides: `closed` answers 503 with `Retry-After`;
//! `open` counts in this process instead (the same window, per worker process), and `/health`
//! says so.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime};

use actix_web::http::StatusCode;
use lucid_actors::config::DownPolicy;
use lucid_actors::events::{self, ApiTokensLoaded};
use lucid_actors::redis::{RateSubject, RedisHandle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Read,
    Write,
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Result<Scope, String> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            other => Err(format!(
                "unknown scope {other:?}; one of read, write, admin"
            )),
        }
    }
}

/// The caller of an authenticated request (in the request's extensions).
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    pub scope: Scope,
}

// ---------------------------------------------------------------------------------------------
// The tokens file

/// One token as stored: never the token, only its hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub name: String,
    pub scope: Scope,
    /// SHA-256 of the token, hex.
    pub sha256: String,
    /// RFC 3339.
    pub created: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokensFile {
    pub tokens: Vec<TokenEntry>,
}

/// Names as Redis keys and audit documents accept them.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!("token name {name:?}: 1-64 of A-Z a-z 0-9 _ - ."))
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A new random token: `ldb_` and 256 random bits in hex.
pub fn generate() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("ldb_{}", hex::encode(bytes))
}

impl TokensFile {
    /// The file's entries; a missing file holds none.
    pub fn read(path: &Path) -> Result<TokensFile, String> {
        match fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a tokens file: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TokensFile::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// Writes the whole file, mode 0600, through a temporary file and a rename: a reader
    /// sees the old file or the new one, never half of one.
    pub fn write(&self, path: &Path) -> Result<(), String> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(err)?;
        }
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))
            .map_err(err)?;
        f.write_all(&body).map_err(err)?;
        f.sync_all().map_err(err)?;
        fs::rename(&tmp, path).map_err(err)
    }

    /// Adds a token named `name`; answers the token (the only time it exists in clear).
    pub fn add(&mut self, name: &str, scope: Scope) -> Result<String, String> {
        check_name(name)?;
        if self.tokens.iter().any(|t| t.name == name) {
            return Err(format!("a token named {name:?} exists; revoke it first"));
        }
        let token = generate();
        self.tokens.push(TokenEntry {
            name: name.to_owned(),
            scope,
            sha256: hex::encode(hash(&token)),
            created: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        });
        Ok(token)
    }

    /// Removes the token named `name`; whether there was one.
    pub fn revoke(&mut self, name: &str) -> bool {
        let before = self.tokens.len();
        self.tokens.retain(|t| t.name != name);
        self.tokens.len() != before
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon's view

struct Known {
    name: String,
    scope: Scope,
    hash: [u8; 32],
}

/// Which file the entries came from, to notice a change.
type Stamp = (u64, u64, Option<SystemTime>);

/// The tokens the daemon accepts; cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    path: PathBuf,
    known: Arc<RwLock<Vec<Known>>>,
    stamp: Arc<Mutex<Option<Stamp>>>,
}

impl Tokens {
    /// Reads `path` now (a missing file: no token is accepted until one is added).
    pub fn load(path: PathBuf) -> Tokens {
        let tokens = Tokens {
            path,
            known: Arc::new(RwLock::new(Vec::new())),
            stamp: Arc::new(Mutex::new(None)),
        };
        tokens.reload_if_changed();
        tokens
    }

    /// Re-reads the file when it changed since the last read.
    pub fn reload_if_changed(&self) {
        let stamp: Option<Stamp> = fs::metadata(&self.path)
            .ok()
            .map(|m| (m.ino(), m.len(), m.modified().ok()));
        let mut last = self.stamp.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some() && *last == stamp {
            return;
        }
        match TokensFile::read(&self.path) {
            Ok(file) => {
                let mut known = Vec::with_capacity(file.tokens.len());
                for t in file.tokens {
                    let mut h = [0u8; 32];
                    if hex::decode_to_slice(&t.sha256, &mut h).is_ok() {
                        known.push(Known {
                            name: t.name,
                            scope: t.scope,
                            hash: h,
                        });
                    }
                }
                let n = known.len() as u64;
                *self.known.write().unwrap_or_else(PoisonError::into_inner) = known;
                *last = stamp;
                events::emit(ApiTokensLoaded {
                    code: "ok",
                    tokens: n,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read http.tokens_file");
                *last = stamp;
                events::emit(ApiTokensLoaded {
                    code: "tokens_unreadable",
                    tokens: self.known.read().map(|k| k.len() as u64).unwrap_or(0),
                });
            }
        }
    }

    /// Polls the file every second for as long as the server runs.
    pub async fn watch(self) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.reload_if_changed();
        }
    }

    /// The caller `token` belongs to. Every entry is compared (no early exit), each in
    /// constant time, so the answer's timing says nothing of how close a guess was.
    pub fn verify(&self, token: &str) -> Option<Caller> {
        let h = hash(token);
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        let mut found = None;
        for k in known.iter() {
            if bool::from(k.hash.ct_eq(&h)) {
                found = Some(Caller {
                    name: k.name.clone(),
                    scope: k.scope,
                });
            }
        }
        found
    }
}

/// The bearer token of a request, or 401.
pub fn authenticate(tokens: &Tokens, header: Option<&str>) -> Result<Caller, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let Some(value) = header else {
        return Err(unauthorized(
            "a bearer token is required (Authorization: Bearer …)",
        ));
    };
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be \"Bearer <token>\""))?;
    tokens
        .verify(token)
        .ok_or_else(|| unauthorized("the token is not valid (unknown or revoked)"))
}

/// 403 unless `caller` has at least `need`.
pub fn authorize(caller: &Caller, need: Scope) -> Result<(), ApiError> {
    if caller.scope >= need {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs a {} token; {:?} is {}",
                need.as_str(),
                caller.name,
                caller.scope.as_str()
            ),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Rate limit

/// The per-token limit; see the module doc.
pub struct Limiter {
    pub limit: u32,
    pub window: Duration,
    pub when_down: DownPolicy,
    /// Set while the in-process window stands in for Redis (`open`); `/health` reports it.
    pub local_in_use: AtomicBool,
    local: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Limiter {
    pub fn new(limit: u32, window: Duration, when_down: DownPolicy) -> Limiter {
        Limiter {
            limit,
            window,
            when_down,
            local_in_use: AtomicBool::new(false),
            local: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one request of `name`; `Err` is the 429 or 503 to answer.
    pub async fn check(&self, redis: Option<&RedisHandle>, name: &str) -> Result<(), ApiError> {
        let decision = match redis {
            Some(r) => r
                .check_rate_limit(RateSubject::Token(name.to_owned()), self.limit, self.window)
                .await
                .ok(),
            None => None,
        };
        match decision {
            Some(d) if d.degraded.is_none() => {
                self.local_in_use.store(false, Ordering::Relaxed);
                if d.allowed {
                    Ok(())
                } else {
                    Err(self.too_many(d.retry_after))
                }
            }
            // Redis is down (or off): the policy decides.
            _ => match self.when_down {
                DownPolicy::Closed => Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rate_limit_unavailable",
                    "the rate limit cannot be checked while redis is unavailable \
                     (redis.rate_limit_when_down = closed); try again later",
                )
                .retry_after(Duration::from_secs(1))),
                DownPolicy::Open => {
                    self.local_in_use.store(true, Ordering::Relaxed);
                    self.check_local(name, Instant::now())
                }
            },
        }
    }

    fn too_many(&self, retry_after: Duration) -> ApiError {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "more than {} requests in {}",
                self.limit,
                humantime_window(self.window)
            ),
        )
        .retry_after(retry_after.max(Duration::from_secs(1)))
    }

    /// The same sliding window, in this process.
    fn check_local(&self, name: &str, now: Instant) -> Result<(), ApiError> {
        let mut local = self.local.lock().unwrap_or_else(PoisonError::into_inner);
        let seen = local.entry(name.to_owned()).or_default();
        while seen
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            seen.pop_front();
        }
        if seen.len() < self.limit as usize {
            seen.push_back(now);
            Ok(())
        } else {
            let oldest = seen.front().copied().unwrap_or(now);
            Err(self.too_many(self.window.saturating_sub(now.duration_since(oldest))))
        }
    }
}

fn humantime_window(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_accepted_until_revoked_and_only_its_hash_is_stored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokens.json");
        let mut file = TokensFile::default();
        let token = file.add("svc-a", Scope::Write).expect("add");
        file.write(&path).expect("write");
        let text = fs::read_to_string(&path).expect("read");
        assert!(!text.contains(&token), "the token itself is stored");
        let mode = fs::metadata(&path).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);

        let tokens = Tokens::load(path.clone());
        let caller = tokens.verify(&token).expect("accepted");
        assert_eq!(
            (caller.name.as_str(), caller.scope),
            ("svc-a", Scope::Write)
        );
        assert!(tokens.verify("ldb_wrong").is_none());

        assert!(file.revoke("svc-a"));
        file.write(&path).expect("write");
        tokens.reload_if_changed();
        assert!(tokens.verify(&token).is_none());
    }

    #[test]
    fn names_are_checked_and_unique() {
        let mut file = TokensFile::default();
        assert!(file.add("../x", Scope::Read).is_err());
        assert!(file.add("", Scope::Read).is_err());
        file.add("a", Scope::Read).expect("add");
        assert!(file.add("a", Scope::Admin).is_err());
    }

    #[test]
    fn scopes_are_ordered() {
        let c = |scope| Caller {
            name: "t".into(),
            scope,
        };
        assert!(authorize(&c(Scope::Admin), Scope::Write).is_ok());
        assert!(authorize(&c(Scope::Write), Scope::Read).is_ok());
        let e = authorize(&c(Scope::Read), Scope::Write).expect_err("read cannot write");
        assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "forbidden"));
    }

    #[test]
    fn the_local_window_admits_limit_then_refuses_until_the_oldest_leaves() {
        let l = Limiter::new(2, Duration::from_secs(10), DownPolicy::Open);
        let t0 = Instant::now();
        assert!(l.check_local("a", t0).is_ok());
        assert!(l.check_local("a", t0).is_ok());
        let e = l
            .check_local("a", t0 + Duration::from_secs(4))
            .expect_err("third");
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.retry_after, Some(Duration::from_secs(6)));
        assert!(l.check_local("b", t0).is_ok(), "per token");
        assert!(l.check_local("a", t0 + Duration::from_secs(10)).is_ok());
    }
}
