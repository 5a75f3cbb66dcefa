//! Progress bars for the bench's long phases (connecting, publishing, resubscribing).
//!
//! Drawn only when stderr is a terminal: in a pipe or a CI log the bench stays plain, and
//! the one-line phase summaries it prints anyway are its whole output.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps labelled `what`; hidden (every call a no-op) off a terminal.
pub fn bar(len: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let b = ProgressBar::new(len);
    b.set_style(
        ProgressStyle::with_template("   {msg:<13} {bar:40} {pos:>7}/{len:<7} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    b.set_message(what.to_string());
    b
}

/// Whether the bars are drawn (so a caller can skip its plain per-second lines).
pub fn on_terminal() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_a_terminal_the_bar_is_hidden() {
        // The test harness captures stderr: the bench's situation in a pipe or a CI log.
        if !on_terminal() {
            let b = bar(10, "connecting");
            b.inc(5);
            assert!(b.is_hidden());
        }
    }
}
