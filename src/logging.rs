//! Logging set-up: journald's native protocol when stderr is the journal, else JSON or text
//! on stderr, ANSI colour only on a terminal. `RUST_LOG` wins over `log.level`.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use lucid_actors::config::{LogConfig, LogFormat};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::cli::LogFormatArg;

/// Installs the global subscriber. `default_level` replaces `log.level` for CLI commands that
/// should stay quiet unless asked (`RUST_LOG` still wins).
pub fn init(
    cfg: &LogConfig,
    cli: Option<LogFormatArg>,
    default_level: Option<&str>,
) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::try_new(directives),
        _ => EnvFilter::try_new(default_level.unwrap_or(&cfg.level)),
    }
    .map_err(|e| format!("invalid log level: {e}"))?;

    let format = match cli {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None => cfg.format,
    };
    let format = match format {
        LogFormat::Auto if stderr_is_journal() => LogFormat::Journald,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    };

    let layer: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Journald => match tracing_journald::layer() {
            Ok(layer) => layer.with_syslog_identifier("lucid-db".to_owned()).boxed(),
            // No journald socket after all (a container, say): plain text keeps the logs.
            Err(_) => text_layer(),
        },
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text | LogFormat::Auto => text_layer(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init()
        .map_err(|e| e.to_string())
}

fn text_layer() -> Box<dyn Layer<Registry> + Send + Sync> {
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .boxed()
}

/// systemd sets `JOURNAL_STREAM=dev:inode` of the stream it connected to stderr; when ours
/// matches, stderr is the journal and the native protocol keeps fields and levels.
fn stderr_is_journal() -> bool {
    let Ok(fd) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(fd).metadata() else {
        return false;
    };
    journal_stream_matches(
        std::env::var("JOURNAL_STREAM").ok().as_deref(),
        meta.dev(),
        meta.ino(),
    )
}

fn journal_stream_matches(value: Option<&str>, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = value.and_then(|v| v.split_once(':')) else {
        return false;
    };
    d.parse() == Ok(dev) && i.parse() == Ok(ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_must_name_our_stderr() {
        let cases = [
            (Some("8:1234"), true),
            (Some("8:1235"), false),
            (Some("9:1234"), false),
            (Some("8"), false),
            (Some("x:y"), false),
            (None, false),
        ];
        for (value, want) in cases {
            assert_eq!(journal_stream_matches(value, 8, 1234), want, "{value:?}");
        }
    }
}
