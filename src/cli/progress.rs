//! Progress of long command-line work on a terminal: a bar on stderr when stderr is a
//! TTY, nothing at all otherwise (logs, CI and pipes stay clean).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `total` steps described by `what` (e.g. `"listing {pos}/{len} types"`), or a
/// hidden one when stderr is not a terminal or the work is shorter than `min` steps.
pub fn bar(total: u64, what: &str, min: u64) -> ProgressBar {
    if !std::io::stderr().is_terminal() || total < min {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(&format!("{{spinner}} {what} {{wide_bar}} {{elapsed}}"))
            .expect("valid template"),
    );
    // Drawn at once: a fast run would otherwise show nothing before it ends.
    bar.tick();
    bar
}
