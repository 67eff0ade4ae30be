//! Exit codes (sysexits; docs/cli.md): the same numbers for the daemon and every CLI command.

/// Success.
pub const OK: u8 = 0;
/// The operation failed.
pub const FAILED: u8 = 1;
/// A backup is partial: some selected stores failed, every other one is complete and usable.
pub const PARTIAL: u8 = 3;
/// Bad command line (EX_USAGE).
pub const USAGE: u8 = 64;
/// Data that does not check out: a corrupt or unverifiable backup artifact or manifest, a
/// volume that fails verify (EX_DATAERR).
pub const DATAERR: u8 = 65;
/// A required backend is unavailable; nothing backed up because every selected store (or the
/// backup storage) could not be reached (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// Permission denied: the CLI would write into a directory another user owns (EX_NOPERM).
pub const NOPERM: u8 = 77;
/// Temporary failure, worth retrying: the HTTP port is taken, another backup runs
/// (EX_TEMPFAIL).
pub const TEMPFAIL: u8 = 75;
/// Configuration error (EX_CONFIG). systemd does not restart on it (RestartPreventExitStatus=78).
pub const CONFIG: u8 = 78;
