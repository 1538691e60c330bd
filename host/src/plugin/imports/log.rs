//! `log`: a plugin's lines in the host's log, tagged with plugin and queue,
//! within a per-call byte budget.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::plugin::bindings::handler::taskhost::plugin::host::Level;
use crate::plugin::store::CallState;

/// Longest log line kept from a plugin; the rest is cut so a chatty plugin
/// cannot flood the host's log.
const MAX_LOG_LINE: usize = 8 * 1024;

/// Writes one line, or drops it once the call's budget is used up.
pub(super) fn log(state: &mut CallState, level: Level, message: String) {
    let plugin = state.ctx.spec.name.as_str();
    let queue = &*state.queue;
    if state.log_left == 0 {
        return;
    }
    if message.len() >= state.log_left {
        state.log_left = 0;
        tracing::warn!(
            plugin,
            queue,
            "plugin used up its log budget for this call; dropping further lines"
        );
        return;
    }
    state.log_left -= message.len();
    let mut msg = escape(&message).into_owned();
    if msg.len() > MAX_LOG_LINE {
        let mut cut = MAX_LOG_LINE;
        while !msg.is_char_boundary(cut) {
            cut -= 1;
        }
        msg.truncate(cut);
        msg.push_str("...[cut]");
    }
    match level {
        Level::Trace => tracing::trace!(plugin, queue, "{msg}"),
        Level::Debug => tracing::debug!(plugin, queue, "{msg}"),
        Level::Info => tracing::info!(plugin, queue, "{msg}"),
        Level::Warn => tracing::warn!(plugin, queue, "{msg}"),
        Level::Error => tracing::error!(plugin, queue, "{msg}"),
    }
}

/// A plugin's text as one inert log line: line breaks, terminal escapes,
/// other control characters and bidi overrides are written as escapes, so a
/// plugin cannot start a line that looks like the host's own or repaint
/// the operator's terminal.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Control characters (C0, DEL, C1) and the invisible marks that reorder or
/// hide text around them.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn breaks_and_escapes_cannot_leave_the_line() {
        assert_eq!(escape("plain text ü"), "plain text ü");
        assert_eq!(
            escape("a\nINFO forged\r\x1b[2J\0\u{7f}\u{202e}b"),
            "a\\nINFO forged\\r\\u{1b}[2J\\u{0}\\u{7f}\\u{202e}b"
        );
    }
}
