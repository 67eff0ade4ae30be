//! Keys in the age format (the `age` crate; every artifact opens with the stock `age` CLI).
//!
//! - **Recipients** (`backup.recipients`): X25519 public keys, `age1…`. The Pi holds only
//!   these, so it writes backups it cannot read.
//! - **Identities** (`backup.identity_file`, `--identity FILE`): age identity files
//!   (`AGE-SECRET-KEY-1…` lines, `#` comments), what `age-keygen` and [`keygen`] write. With
//!   one on the Pi, the daemon can verify at the `decoded` level — and whoever has the Pi can
//!   read its backups.
//! - **Passphrase mode** (`backup.passphrase_file`): every backup gets a fresh X25519 identity
//!   ([`BackupKey`]); its artifacts are encrypted to it, and the identity itself is stored
//!   beside them as `key.age`, encrypted with the passphrase (scrypt once per backup, not once
//!   per file: scrypt is slow on purpose). `age -d key.age` gives the identity back;
//!   `age -d -i key.age FILE` decrypts an artifact in one step.
//!
//! No error and no log line here ever holds a secret: a malformed key is named by its place
//! (`backup.recipients[2]`, line 3 of a file), never by its text.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::str::FromStr;

use age::secrecy::{ExposeSecret, SecretString};
use age::x25519;
use chrono::{DateTime, SecondsFormat, Utc};

use crate::redact::Secret;

/// A key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// A recipient that is not an X25519 `age1…` public key.
    #[error("{key}[{index}]: not an age X25519 recipient (age1…): {reason}")]
    Recipient {
        key: String,
        index: usize,
        reason: &'static str,
    },
    /// An identity file that holds no usable identity, or a line that is not one.
    #[error("{place}: {reason}")]
    Identity { place: String, reason: String },
    /// [`keygen`] found a file where it was told to write.
    #[error("{path} exists already: keygen never overwrites a key")]
    Exists { path: String },
    /// Reading or writing a key file failed.
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    /// `key.age` did not open with the passphrase (wrong passphrase, or damaged).
    #[error("key.age does not open with this passphrase ({reason})")]
    Passphrase { reason: String },
}

impl KeyError {
    pub fn code(&self) -> &'static str {
        match self {
            KeyError::Recipient { .. } => "bad_recipient",
            KeyError::Identity { .. } => "bad_identity",
            KeyError::Exists { .. } => "exists",
            KeyError::Io { .. } => "io",
            KeyError::Passphrase { .. } => "wrong_passphrase",
        }
    }
}

/// The public keys backups are encrypted to.
#[derive(Clone, Default)]
pub struct Recipients(Vec<x25519::Recipient>);

impl Recipients {
    /// Parses `list`, the value of config key `key`; the first malformed entry is an error
    /// naming the key and its index (never its text: it may be a secret key pasted by mistake).
    pub fn parse(key: &str, list: &[String]) -> Result<Recipients, KeyError> {
        list.iter()
            .enumerate()
            .map(|(index, text)| {
                let text = text.trim();
                if text.starts_with("AGE-SECRET-KEY-") {
                    return Err(KeyError::Recipient {
                        key: key.to_owned(),
                        index,
                        reason: "this is a secret key (an identity); put its public key here, \
                                 and keep the secret key off the Pi",
                    });
                }
                x25519::Recipient::from_str(text).map_err(|reason| KeyError::Recipient {
                    key: key.to_owned(),
                    index,
                    reason,
                })
            })
            .collect::<Result<_, _>>()
            .map(Recipients)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Adds one recipient (a passphrase-mode backup's own key).
    pub fn push(&mut self, r: x25519::Recipient) {
        self.0.push(r);
    }

    /// The `age1…` strings, as the manifest lists them.
    pub fn to_strings(&self) -> Vec<String> {
        self.0.iter().map(ToString::to_string).collect()
    }

    /// An encryptor to every recipient; `None` when there is none (unencrypted backups).
    pub(super) fn encryptor(&self) -> Option<age::Encryptor> {
        if self.0.is_empty() {
            return None;
        }
        age::Encryptor::with_recipients(self.0.iter().map(|r| r as &dyn age::Recipient)).ok()
    }
}

impl fmt::Debug for Recipients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.to_strings()).finish()
    }
}

/// Secret keys that can decrypt backups. `Debug` shows only how many.
#[derive(Clone, Default)]
pub struct Identities(Vec<x25519::Identity>);

impl fmt::Debug for Identities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identities({} keys)", self.0.len())
    }
}

impl Identities {
    /// The identities in an age identity file's text: `AGE-SECRET-KEY-1…` lines, blank lines
    /// and `#` comments. `place` names the file in errors (its path, or a config key).
    pub fn parse(place: &str, text: &str) -> Result<Identities, KeyError> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let identity = x25519::Identity::from_str(line).map_err(|_| KeyError::Identity {
                place: format!("{place}, line {}", i + 1),
                reason: if line.starts_with("age-encryption.org/") {
                    "this file is itself age-encrypted; decrypt it first (age -d)".to_owned()
                } else {
                    "not an age X25519 identity (AGE-SECRET-KEY-1…)".to_owned()
                },
            })?;
            keys.push(identity);
        }
        if keys.is_empty() {
            return Err(KeyError::Identity {
                place: place.to_owned(),
                reason: "holds no identity".to_owned(),
            });
        }
        Ok(Identities(keys))
    }

    /// Reads and parses an identity file.
    pub fn load(path: &Path) -> Result<Identities, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Identities::parse(&path.display().to_string(), &text)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `other`'s identities to these (an identity file and a passphrase-mode key).
    pub fn extend(&mut self, other: Identities) {
        self.0.extend(other.0);
    }

    /// The public keys of these identities.
    pub fn recipients(&self) -> Recipients {
        Recipients(self.0.iter().map(x25519::Identity::to_public).collect())
    }

    pub(super) fn as_age(&self) -> impl Iterator<Item = &dyn age::Identity> {
        self.0.iter().map(|i| i as &dyn age::Identity)
    }
}

/// The text of an identity file for `identity`, as `age-keygen` writes it.
fn identity_file_text(identity: &x25519::Identity, created: DateTime<Utc>) -> SecretString {
    SecretString::from(format!(
        "# created: {}\n# public key: {}\n{}\n",
        created.to_rfc3339_opts(SecondsFormat::Secs, true),
        identity.to_public(),
        identity.to_string().expose_secret()
    ))
}

/// `lucid-db backup keygen --out FILE`: writes a new identity to `out` (mode 0600, created
/// new: an existing file is never overwritten) and answers its recipient, the public key that
/// goes into `backup.recipients`.
pub fn keygen(out: &Path, now: DateTime<Utc>) -> Result<x25519::Recipient, KeyError> {
    let identity = x25519::Identity::generate();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Exists {
                path: out.display().to_string(),
            },
            _ => KeyError::Io {
                path: out.display().to_string(),
                reason: e.to_string(),
            },
        })?;
    let text = identity_file_text(&identity, now);
    file.write_all(text.expose_secret().as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| KeyError::Io {
            path: out.display().to_string(),
            reason: e.to_string(),
        })?;
    Ok(identity.to_public())
}

/// A passphrase-mode backup's own key: a fresh X25519 identity; see the module doc.
pub struct BackupKey(x25519::Identity);

impl fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupKey({})", self.0.to_public())
    }
}

impl BackupKey {
    pub fn generate() -> BackupKey {
        BackupKey(x25519::Identity::generate())
    }

    /// The public key the backup's artifacts are encrypted to.
    pub fn recipient(&self) -> x25519::Recipient {
        self.0.to_public()
    }

    /// The identity, to decrypt this backup's artifacts.
    pub fn identities(&self) -> Identities {
        Identities(vec![self.0.clone()])
    }

    /// `key.age`: the identity file text, encrypted with `passphrase` (scrypt). `work_factor`
    /// is scrypt's log2(N); `None` lets age pick one that takes about a second on this machine
    /// (the stock CLI accepts up to 2^22 by default, more than a Pi picks). This is CPU work
    /// of about that second: run it off the event loop.
    pub fn seal(
        &self,
        passphrase: &Secret,
        created: DateTime<Utc>,
        work_factor: Option<u8>,
    ) -> Result<Vec<u8>, KeyError> {
        let mut recipient =
            age::scrypt::Recipient::new(SecretString::from(passphrase.expose().to_owned()));
        if let Some(log_n) = work_factor {
            recipient.set_work_factor(log_n);
        }
        let io = |e: std::io::Error| KeyError::Io {
            path: "key.age".to_owned(),
            reason: e.to_string(),
        };
        let encryptor =
            age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
                .map_err(|e| KeyError::Io {
                    path: "key.age".to_owned(),
                    reason: e.to_string(),
                })?;
        let mut out = Vec::new();
        let mut writer = encryptor.wrap_output(&mut out).map_err(io)?;
        writer
            .write_all(
                identity_file_text(&self.0, created)
                    .expose_secret()
                    .as_bytes(),
            )
            .map_err(io)?;
        writer.finish().map_err(io)?;
        Ok(out)
    }

    /// The reverse of [`BackupKey::seal`]: `key.age` and the passphrase give the identity.
    pub fn open(key_age: &[u8], passphrase: &Secret) -> Result<BackupKey, KeyError> {
        let failed = |reason: String| KeyError::Passphrase { reason };
        let decryptor = age::Decryptor::new_buffered(key_age).map_err(|e| failed(e.to_string()))?;
        if !decryptor.is_scrypt() {
            return Err(failed("it is not passphrase-encrypted".to_owned()));
        }
        let identity =
            age::scrypt::Identity::new(SecretString::from(passphrase.expose().to_owned()));
        let mut reader = decryptor
            .decrypt(std::iter::once(&identity as &dyn age::Identity))
            .map_err(|e| failed(e.to_string()))?;
        let mut text = String::new();
        reader
            .read_to_string(&mut text)
            .map_err(|e| failed(e.to_string()))?;
        let mut ids = Identities::parse("key.age", &text)?;
        match ids.0.len() {
            1 => Ok(BackupKey(ids.0.remove(0))),
            n => Err(failed(format!("it holds {n} identities, not one"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const RECIPIENT: &str = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p";

    #[test]
    fn recipients_parse_and_a_bad_one_is_named_by_place_not_text() {
        let ok =
            Recipients::parse("backup.recipients", &[format!("  {RECIPIENT} ")]).expect("valid");
        assert_eq!(ok.to_strings(), [RECIPIENT]);

        let secret = x25519::Identity::generate();
        let secret_text = secret.to_string().expose_secret().to_owned();
        for (bad, needle) in [
            ("age1notakey".to_owned(), "Bech32"),
            (secret_text.clone(), "secret key"),
            ("ssh-ed25519 AAAA".to_owned(), "age1"),
        ] {
            let err = Recipients::parse(
                "backup.recipients",
                &[RECIPIENT.to_owned(), RECIPIENT.to_owned(), bad.clone()],
            )
            .expect_err(&bad);
            assert_eq!(err.code(), "bad_recipient");
            let text = err.to_string();
            assert!(text.starts_with("backup.recipients[2]: "), "{text}");
            assert!(text.contains(needle), "{text}");
            assert!(!text.contains(&secret_text), "echoed a secret: {text}");
            assert!(!text.contains("notakey"), "echoed the value: {text}");
        }
    }

    #[test]
    fn keygen_writes_0600_never_overwrites_and_answers_the_recipient() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("backup.key");
        let recipient = keygen(&out, Utc::now()).expect("keygen");
        let mode = std::fs::metadata(&out).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let ids = Identities::load(&out).expect("loads");
        assert_eq!(ids.recipients().to_strings(), [recipient.to_string()]);
        let text = std::fs::read_to_string(&out).expect("read");
        assert!(
            text.contains(&format!("# public key: {recipient}")),
            "{text}"
        );

        let err = keygen(&out, Utc::now()).expect_err("exists");
        assert_eq!(err.code(), "exists");
        assert_eq!(Identities::load(&out).expect("kept").len(), 1);
    }

    #[test]
    fn identity_files_are_checked_line_by_line_without_echo() {
        let one = x25519::Identity::generate();
        let text = format!("# a comment\n\n{}\n", one.to_string().expose_secret());
        assert_eq!(Identities::parse("id", &text).expect("valid").len(), 1);

        let leaked = one
            .to_string()
            .expose_secret()
            .replace("AGE-SECRET-KEY-1", "AGE-SECRET-KEY-X");
        for (text, needle) in [
            ("# only comments\n".to_owned(), "holds no identity"),
            (format!("# c\n{leaked}\n"), "line 2"),
            ("age-encryption.org/v1\n".to_owned(), "age-encrypted"),
        ] {
            let err = Identities::parse("/etc/lucid/backup.key", &text).expect_err(needle);
            assert_eq!(err.code(), "bad_identity");
            let shown = err.to_string();
            assert!(shown.contains(needle), "{shown}");
            assert!(!shown.contains(&leaked[20..]), "echoed the key: {shown}");
        }
        let err = Identities::load(Path::new("/nonexistent/backup.key")).expect_err("missing");
        assert_eq!(err.code(), "io");
    }

    #[test]
    fn key_age_opens_with_the_passphrase_only() {
        let key = BackupKey::generate();
        let pass = Secret::new("correct horse battery staple");
        let sealed = key.seal(&pass, Utc::now(), Some(10)).expect("seal");
        assert!(sealed.starts_with(b"age-encryption.org/v1\n-> scrypt "));
        let opened = BackupKey::open(&sealed, &pass).expect("open");
        assert_eq!(opened.recipient().to_string(), key.recipient().to_string());

        let err = BackupKey::open(&sealed, &Secret::new("wrong")).expect_err("wrong passphrase");
        assert_eq!(err.code(), "wrong_passphrase");
        let err = BackupKey::open(b"not age", &pass).expect_err("not age");
        assert_eq!(err.code(), "wrong_passphrase");
    }
}
