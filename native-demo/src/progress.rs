//! Progress on stderr for every command: bars on a terminal, and where stderr is a log file
//! instead, a line at each twentieth of the work, so that long runs still show how far they are.

use std::io::IsTerminal;

use indicatif::{HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A bar over `len` steps drawn with `template` (indicatif's syntax), hidden when stderr is
/// not a terminal (it still counts, for [`advance`]'s log lines).
pub fn bar(len: u64, template: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar
}

/// A bar counting `unit`s, with the time left.
pub fn count(len: u64, what: &str, unit: &str) -> ProgressBar {
    bar(len, &format!("{what} {{bar:40}} {{pos}}/{{len}} {unit}, {{per_sec}}, {{eta}} left"))
}

/// A bar over bytes (downloads, model loading); its length is set as the total becomes known.
pub fn bytes(what: &str) -> ProgressBar {
    bar(0, &format!("{what} {{bar:40}} {{bytes}}/{{total_bytes}} ({{eta}} left)"))
}

/// Advances `bar` by `step` and, when it is hidden, logs a line each time a twentieth of the
/// work is crossed.
pub fn advance(bar: &ProgressBar, step: u64, what: &str, unit: &str) {
    bar.inc(step);
    let (pos, len) = (bar.position(), bar.length().unwrap_or(0));
    if bar.is_hidden() && len > 0 && (pos * 20 / len) != (pos.saturating_sub(step) * 20 / len) {
        eprintln!("{what}: {pos}/{len} {unit}, {} left", HumanDuration(bar.eta()));
    }
}

/// A line on stderr, above the bar when it is drawn.
#[cfg(feature = "train")]
pub fn line(bar: &ProgressBar, text: &str) {
    if bar.is_hidden() {
        eprintln!("{text}");
    } else {
        bar.println(text);
    }
}
