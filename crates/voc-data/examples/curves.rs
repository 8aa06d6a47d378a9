//! Draws a made-up training history (loss, validation mAP, learning rate on a log scale) as a PNG:
//! `cargo run -p voc-data --example curves -- [OUT.png]` (default: `curves.png` in the current folder).
use std::f64::consts::PI;

use voc_data::chart::{write_panels_png, Panel, Series, YScale, SERIES_COLORS};

/// `f` at epochs 0..=30, in the `i`-th colour.
fn curve(name: &str, i: usize, f: impl Fn(f64) -> f64) -> Series {
    let points = (0..=30).map(|e| (f64::from(e), f(f64::from(e)))).collect();
    Series::new(name, SERIES_COLORS[i], points)
}

fn main() -> voc_data::Result<()> {
    let out = std::env::args().nth(1).unwrap_or("curves.png".into());
    let train = curve("train", 0, |e| 0.75 * (-e / 7.0).exp() + 0.08);
    let val = curve("val", 1, |e| 0.6 * (-e / 5.0).exp() + 0.2 + 0.003 * e);
    let map = curve("val mAP", 2, |e| 0.78 * (1.0 - (-e / 6.0).exp()));
    // Linear warm-up to 1e-3 over 3 epochs, then cosine decay.
    let cosine = |e: f64| 1e-6 + 5e-4 * (1.0 + (PI * (e - 3.0).max(0.0) / 27.0).cos());
    let lr = curve("lr", 3, |e| cosine(e).min(1e-3 * (e + 1.0) / 3.0));
    let mut panels = [
        Panel::new("Loss", "epoch", vec![train, val]),
        Panel::new("Validation mAP", "epoch", vec![map]),
        Panel::new("Learning rate", "epoch", vec![lr]),
    ];
    panels[1].y_range = Some((0.0, 1.0));
    panels[2].y_scale = YScale::Log10;
    write_panels_png(out.as_ref(), &panels, 480, 320)?;
    println!("wrote {out}");
    Ok(())
}
