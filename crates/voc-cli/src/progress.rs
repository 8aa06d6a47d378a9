//! One look for every progress bar of `voc` (always on stderr, so stdout stays clean for results).
use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps labelled `what`; `len` may be 0 and set later with `set_length`.
pub fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}]",
        )
        .expect("a valid progress template"),
    );
    bar.set_message(what.to_string());
    bar
}
