//! Where the host's own output goes: logs on stderr, coloured only for a
//! terminal, and writes to a closed pipe (`host run ... | head`) dropped
//! instead of stopping or crashing the host.

use std::ffi::OsString;
use std::io::{IsTerminal, Write};

/// Sets up the log subscriber: `filter` in tracing syntax, to stderr.
pub fn init(filter: &str) {
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR"),
    );
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(filter)
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(ansi)
        .with_writer(|| Lossy(std::io::stderr()))
        .init();
}

/// Whether log lines get ANSI colours: only on a terminal, and never when
/// `NO_COLOR` is set to a non-empty value (no-color.org).
pub fn colour(stderr_is_terminal: bool, no_color: Option<OsString>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// A writer whose failed writes are dropped: a reader that went away must
/// not stop a run that is still draining its queue.
pub struct Lossy<W>(pub W);

impl<W: Write> Write for Lossy<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(self.0.write(buf).unwrap_or(buf.len()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

/// Writes `text` to stdout; a closed or failing stdout drops it.
pub fn stdout(text: std::fmt::Arguments<'_>) {
    let mut out = Lossy(std::io::stdout().lock());
    let _ = out.write_fmt(text);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Writes `text` to stderr; a closed or failing stderr drops it.
pub fn stderr(text: std::fmt::Arguments<'_>) {
    let mut err = Lossy(std::io::stderr().lock());
    let _ = err.write_fmt(text);
    let _ = err.write_all(b"\n");
}

/// An error with its causes, each cause shown once: a cause whose text the
/// message already carries (`... (os error 2)` wrapped by a message that
/// quotes it) is not repeated.
pub fn render(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some(OsString::new())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }

    #[test]
    fn a_cause_the_message_quotes_is_shown_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = io.to_string();
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read x: {source}")]
        struct Quoting {
            #[source]
            source: std::io::Error,
        }
        let e = anyhow::Error::from(Quoting { source: io }).context("loading");
        assert_eq!(render(&e), format!("loading: cannot read x: {text}"));
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(render(&plain), "outer: inner");
    }
}
