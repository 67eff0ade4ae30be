//! The one key builder: every key the Redis actor writes is `lucid:{service}:{entity}:{id}`.
//! Names are validated here, so a bad name is an error before anything is sent.

use std::fmt;

use super::RedisError;

/// First segment of every key.
pub const PREFIX: &str = "lucid";
/// Longest id accepted (bytes).
pub const MAX_ID_BYTES: usize = 512;
/// Longest service or entity name accepted.
pub const MAX_NAME_BYTES: usize = 32;

/// A validated Redis key in the Lucid namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String);

impl Key {
    /// `lucid:{service}:{entity}:{id}`. `service` and `entity`: 1–32 of `a-z 0-9 _ -`;
    /// `id`: 1–512 bytes without whitespace or control characters (`:` is allowed, for IPv6).
    pub fn new(service: &str, entity: &str, id: &str) -> Result<Key, RedisError> {
        Self::with_id_field(service, entity, id, "id")
    }

    /// As [`Key::new`], naming the id `field` in errors (`user_id`, `channel`).
    pub(crate) fn with_id_field(
        service: &str,
        entity: &str,
        id: &str,
        field: &'static str,
    ) -> Result<Key, RedisError> {
        Self::with_suffix(service, entity, id, field, format_args!(""))
    }

    /// `lucid:{service}:{entity}:{id}{suffix}`, in one allocation: `id` is checked, `suffix`
    /// is this crate's own (a rate-limit policy, say).
    pub(crate) fn with_suffix(
        service: &str,
        entity: &str,
        id: &str,
        field: &'static str,
        suffix: std::fmt::Arguments<'_>,
    ) -> Result<Key, RedisError> {
        use std::fmt::Write;
        check_name("service", service)?;
        check_name("entity", entity)?;
        check_id(field, id)?;
        let mut key =
            String::with_capacity(PREFIX.len() + service.len() + entity.len() + id.len() + 24);
        for part in [PREFIX, ":", service, ":", entity, ":", id] {
            key.push_str(part);
        }
        let _ = key.write_fmt(suffix);
        Ok(Key(key))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A fixed key of this crate's own (checked by a test to follow the pattern).
    pub(crate) fn fixed(key: &'static str) -> Key {
        Key(key.to_owned())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl redis::ToRedisArgs for Key {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg(self.0.as_bytes());
    }
}

impl redis::ToSingleRedisArg for Key {}

pub(crate) fn check_name(field: &'static str, name: &str) -> Result<(), RedisError> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(RedisError::invalid(
            field,
            format!("must be 1 to {MAX_NAME_BYTES} characters"),
        ));
    }
    // Bytes first (this runs on every call): every allowed character is ASCII.
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
    if !name.bytes().all(allowed) {
        let c = name
            .chars()
            .find(|c| !(c.is_ascii() && allowed(*c as u8)))
            .unwrap_or('?');
        return Err(RedisError::invalid(
            field,
            format!("{c:?} is not allowed (use a-z, 0-9, _ and -)"),
        ));
    }
    Ok(())
}

pub(crate) fn check_id(field: &'static str, id: &str) -> Result<(), RedisError> {
    if id.is_empty() {
        return Err(RedisError::invalid(field, "must not be empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(RedisError::invalid(
            field,
            format!("is {} bytes, at most {MAX_ID_BYTES}", id.len()),
        ));
    }
    // ASCII fast path; other text is checked character by character.
    let bad = if id.is_ascii() {
        id.bytes().any(|b| b <= b' ' || b == 0x7f)
    } else {
        id.chars().any(|c| c.is_whitespace() || c.is_control())
    };
    if bad {
        return Err(RedisError::invalid(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_lucid_pattern() {
        let k = Key::new("cache", "user", "42").expect("valid");
        assert_eq!(k.as_str(), "lucid:cache:user:42");
        let ip6 = Key::new("ratelimit", "ip", "2001:db8::1").expect("ipv6 ids keep their colons");
        assert_eq!(ip6.as_str(), "lucid:ratelimit:ip:2001:db8::1");
    }

    #[test]
    fn refuses_bad_parts() {
        let long_id = "x".repeat(MAX_ID_BYTES + 1);
        let cases = [
            ("", "user", "1", "service"),
            ("Cache", "user", "1", "service"),
            ("cache", "us:er", "1", "entity"),
            ("cache", &"e".repeat(33), "1", "entity"),
            ("cache", "user", "", "id"),
            ("cache", "user", "a b", "id"),
            ("cache", "user", "a\nb", "id"),
            ("cache", "user", &long_id, "id"),
        ];
        for (s, e, i, field) in cases {
            match Key::new(s, e, i) {
                Err(RedisError::Invalid { field: f, .. }) => assert_eq!(f, field, "{s}:{e}:{i}"),
                other => panic!("{s}:{e}:{i}: {other:?}"),
            }
        }
    }
}
