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
pub struct Secret(String);

impl Secret {
    /// Wraps a value; trailing newlines (as `echo pw > file` leaves them) are dropped.
    pub fn new(value: impl Into<String>) -> Self {
        let mut value = value.into();
        while value.ends_with('\n') || value.ends_with('\r') {
            value.pop();
        }
        Secret(value)
    }

    /// The value itself, for handing to a driver. Never format it.
    pub fn expose(&self) -> &str {
        &self.0
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

/// Hides the password of a URL's user-info (`scheme://user:password@host`), keeping the user
/// name so an operator can still tell which account is used. Works on strings the `url` crate
/// cannot parse, such as MongoDB's multi-host URIs (`mongodb://u:p@h1,h2/db`).
pub fn url(raw: &str) -> String {
    let Some(scheme_end) = raw.find("://") else {
        return raw.to_owned();
    };
    let authority_start = scheme_end + 3;
    let rest = &raw[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    // The last '@' ends the user-info: passwords may contain '@' themselves.
    let Some(at) = authority.rfind('@') else {
        return raw.to_owned();
    };
    let userinfo = &authority[..at];
    let user = match userinfo.find(':') {
        Some(colon) => &userinfo[..colon],
        // A lone token (`redis://token@host`) is a password for Redis and ES API keys.
        None if userinfo.is_empty() => "",
        None => {
            return format!(
                "{}{}@{}",
                &raw[..authority_start],
                MASK,
                &raw[authority_start + at + 1..]
            );
        }
    };
    format!(
        "{}{}:{}@{}",
        &raw[..authority_start],
        user,
        MASK,
        &raw[authority_start + at + 1..]
    )
}

/// Redacts every URL inside free text (driver error messages, for instance).
pub fn text(raw: &str) -> String {
    if !raw.contains("://") {
        return raw.to_owned();
    }
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    while let Some(pos) = rest.find("://") {
        // The URL starts at the beginning of the scheme word.
        let scheme_start = rest[..pos]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'))
            .map_or(0, |i| i + 1);
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

/// `serialize_with` helper: a URL field, redacted.
pub fn serialize_url<S: Serializer>(raw: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&url(raw))
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
            ("http://host/path?x=a@b", "http://host/path?x=a@b"),
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
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2\n");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(serde_json::to_string(&s).ok().as_deref(), Some("\"***\""));
    }
}
