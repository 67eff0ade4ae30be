//! Redaction: the one place that decides how a credential is hidden.
//!
//! Every URL that reaches a log line, an event, `config check` or an HTTP reply goes through
//! [`url`]; every error message from a driver goes through [`text`], because drivers like to
//! quote the address they failed to reach. Secrets read from files live in [`Secret`], which
//! has no way to print its value.

use std::fmt;

use serde::{Serialize, Serializer};

/// What a hidden value is replaced with.
pub const MASK: &str = "***";

/// A credential read from a file or `$CREDENTIALS_DIRECTORY`. `Debug`, `Display` and
/// `Serialize` print [`MASK`]; only [`Secret::expose`] gives the value, at the driver call.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    value: String,
    origin: String,
}

impl Secret {
    /// Wraps a value; trailing newlines (as `echo pw > file` leaves them) are dropped.
    pub fn new(value: impl Into<String>) -> Self {
        let mut value = value.into();
        while value.ends_with('\n') || value.ends_with('\r') {
            value.pop();
        }
        Secret {
            value,
            origin: String::new(),
        }
    }

    /// Records where the value came from (a key or a credential name; never the value).
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = origin.into();
        self
    }

    /// The value itself, for handing to a driver. Never format it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where it came from, for `config check`.
    pub fn origin(&self) -> &str {
        &self.origin
    }
}

/// A backend URL, which may carry a password. Prints redacted everywhere (`Debug`,
/// `Display`, `Serialize`); [`SecretUrl::expose`] gives it to the driver.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for SecretUrl {
    fn from(s: &str) -> Self {
        SecretUrl(s.to_owned())
    }
}

impl From<String> for SecretUrl {
    fn from(s: String) -> Self {
        SecretUrl(s)
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", url(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&url(&self.0))
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&url(&self.0))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(MASK)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(MASK)
    }
}

/// Query parameters whose value is a credential (`unix:///r.sock?pass=…` for redis-rs).
const SECRET_PARAMS: [&str; 5] = ["pass", "password", "token", "secret", "api_key"];

/// Hides the password of a URL's user-info (`scheme://user:password@host`), keeping the user
/// name so an operator can still tell which account is used, and the value of credential
/// query parameters (`?pass=`). Works on strings the `url` crate cannot parse (MongoDB's
/// multi-host URIs, passwords with an unencoded `/`, `?`, `#` or `@`): everything between
/// `://` and the last `@` is user-info, which over-redacts an `@` in a path — acceptable, a
/// leaked password is not.
pub fn url(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_owned();
    };
    let start = scheme_end + 3;
    let (head, rest) = raw.split_at(start);
    let (userinfo_masked, after) = match rest.rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            // `user:password` keeps the user; a lone token is a credential (ES API keys).
            let masked = match userinfo.split_once(':') {
                Some((user, _)) if !user.contains(['/', '?', '#']) => format!("{user}:{MASK}@"),
                _ => format!("{MASK}@"),
            };
            (masked, &rest[at + 1..])
        }
        None => (String::new(), rest),
    };
    format!("{head}{userinfo_masked}{}", mask_params(after))
}

/// Masks the values of [`SECRET_PARAMS`] in a URL's query string.
fn mask_params(rest: &str) -> String {
    let Some(q) = rest.find('?') else {
        return rest.to_owned();
    };
    let (path, query) = rest.split_at(q + 1);
    let (query, fragment) = match query.find('#') {
        Some(h) => query.split_at(h),
        None => (query, ""),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if SECRET_PARAMS.contains(&k.to_ascii_lowercase().as_str()) => {
                format!("{k}={MASK}")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}{}{fragment}", params.join("&"))
}

/// Redacts every URL inside free text (driver error messages, config errors).
pub fn text(raw: &str) -> String {
    if !raw.contains("://") {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find("://") {
        // The URL starts at the beginning of the scheme word.
        let scheme_start = rest[..pos]
            .char_indices()
            .rev()
            .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |(i, c)| i + c.len_utf8());
        let end = rest[pos..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '<' | '>' | ')' | ','))
            .map_or(rest.len(), |i| pos + i);
        out.push_str(&rest[..scheme_start]);
        out.push_str(&url(&rest[scheme_start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_cases() {
        let cases = [
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            ("redis://:hunter2@host:6379", "redis://:***@host:6379"),
            (
                "redis://default:hunter2@host/1",
                "redis://default:***@host/1",
            ),
            ("redis://tok@host", "redis://***@host"),
            (
                "mongodb://app:p@ss@h1:27017,h2:27017/lucid?replicaSet=rs0",
                "mongodb://app:***@h1:27017,h2:27017/lucid?replicaSet=rs0",
            ),
            (
                "https://elastic:changeme@es.lan:9200",
                "https://elastic:***@es.lan:9200",
            ),
            // unencoded /, ? or # in the password
            (
                "redis://:pa/ss@127.0.0.1:6379/0",
                "redis://:***@127.0.0.1:6379/0",
            ),
            (
                "mongodb://u:pa?ss#x@h:27017/db",
                "mongodb://u:***@h:27017/db",
            ),
            // credentials in the query
            (
                "unix:///tmp/r.sock?db=1&pass=hunter2",
                "unix:///tmp/r.sock?db=1&pass=***",
            ),
            (
                "redis+unix:///r.sock?password=x#frag",
                "redis+unix:///r.sock?password=***#frag",
            ),
            // an @ in a path is taken for user-info: over-redacted, never leaked
            ("http://host/path?x=a@b", "http://***@b"),
            ("not a url", "not a url"),
        ];
        for (raw, want) in cases {
            assert_eq!(url(raw), want, "redacting {raw}");
        }
    }

    #[test]
    fn text_redacts_every_url_in_a_message() {
        let msg =
            "failed to reach redis://:s3cret@10.0.0.2:6379 (then tried 'mongodb://u:s3cret@h/db')";
        let red = text(msg);
        assert!(!red.contains("s3cret"), "{red}");
        assert!(red.contains("redis://:***@10.0.0.2:6379"), "{red}");
        assert!(red.contains("mongodb://u:***@h/db"), "{red}");
        assert_eq!(text("plain message"), "plain message");
        // multi-byte text before a URL
        assert_eq!(text("échec: redis://:pw@h"), "échec: redis://:***@h");
        assert_eq!(text("échecredis://:pw@h"), "échecredis://:***@h");
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2\n").with_origin("redis.password_file");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(s.origin(), "redis.password_file");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(serde_json::to_string(&s).ok().as_deref(), Some("\"***\""));
        let u = SecretUrl::from("redis://:hunter2@h:1/0");
        assert_eq!(u.expose(), "redis://:hunter2@h:1/0");
        assert_eq!(
            format!("{u} {u:?}"),
            "redis://:***@h:1/0 \"redis://:***@h:1/0\""
        );
        assert_eq!(
            serde_json::to_string(&u).ok().as_deref(),
            Some("\"redis://:***@h:1/0\"")
        );
    }
}
