//! Line charts of training curves (loss, mAP, learning rate per epoch) as PNG, with no plotting
//! library: panels side by side, each with a title, axes with "nice" ticks, a legend and 2-pixel lines,
//! text in the crate's 5x7 pixel [`font`].
//!
//! ```
//! use voc_data::chart::{render_panels, Panel, Series, YScale, SERIES_COLORS};
//!
//! let loss = Series {
//!     name: "train".into(),
//!     color: SERIES_COLORS[0],
//!     points: vec![(0.0, 0.9), (1.0, 0.5), (2.0, f64::NAN), (3.0, 0.3)], // NaN: a gap
//! };
//! let panel = Panel {
//!     title: "loss".into(),
//!     x_label: "epoch".into(),
//!     series: vec![loss],
//!     y_scale: YScale::Linear,
//!     y_range: None,
//! };
//! let image = render_panels(&[panel.clone(), panel], 400, 300)?;
//! assert_eq!((image.width(), image.height()), (800, 300));
//! # Ok::<(), voc_core::CoreError>(())
//! ```
use std::path::Path;

use image::{Rgb, RgbImage as Canvas};
use voc_core::CoreError;

use crate::error::{DataError, Result};
use crate::font;

/// One curve: a name for the legend (empty: not listed), its colour, and its `(x, y)` points in
/// drawing order. Points whose x or y is not finite are gaps (the line breaks there), as are y <= 0 on a
/// [`YScale::Log10`] panel; a point with gaps on both sides is drawn as a dot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend entry; an empty name leaves the series out of the legend.
    pub name: String,
    /// Line colour, RGB.
    pub color: [u8; 3],
    /// `(x, y)` points, joined in this order.
    pub points: Vec<(f64, f64)>,
}

impl Series {
    /// A series from its name, colour and points.
    pub fn new(name: impl Into<String>, color: [u8; 3], points: Vec<(f64, f64)>) -> Self {
        Self {
            name: name.into(),
            color,
            points,
        }
    }
}

/// How a panel's y axis maps values to heights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum YScale {
    /// Evenly spaced values, ticks in steps of 1, 2 or 5 times a power of ten.
    #[default]
    Linear,
    /// Evenly spaced powers of ten (ticks `1E-3`, `1E-2`, ...); values <= 0 are not drawn.
    Log10,
}

/// One chart: a title, the x axis' name, its series, and the y axis.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Drawn centred above the plot.
    pub title: String,
    /// Drawn under the x axis ("epoch"); empty: none.
    pub x_label: String,
    /// The curves, drawn in order (later ones on top).
    pub series: Vec<Series>,
    /// Linear or logarithmic y axis.
    pub y_scale: YScale,
    /// A fixed y range `(low, high)`, e.g. `(0.0, 1.0)` for mAP; `None`: the data's range plus 5% each
    /// side (a constant series: +-10% of its value, or +-0.5 at zero; on a log axis +-half a decade).
    pub y_range: Option<(f64, f64)>,
}

impl Panel {
    /// A panel with a linear y axis over the data's range; set `y_scale` and `y_range` to change that.
    pub fn new(title: impl Into<String>, x_label: impl Into<String>, series: Vec<Series>) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            series,
            y_scale: YScale::Linear,
            y_range: None,
        }
    }
}

/// Line colours to cycle through: the Okabe-Ito palette, told apart by colour-blind readers (blue,
/// vermillion, bluish green, reddish purple, orange, sky blue).
pub const SERIES_COLORS: [[u8; 3]; 6] = [
    [0, 114, 178],
    [213, 94, 0],
    [0, 158, 115],
    [204, 121, 167],
    [230, 159, 0],
    [86, 180, 233],
];

const WHITE: [u8; 3] = [255, 255, 255];
const TEXT: [u8; 3] = [0, 0, 0];
const FRAME: [u8; 3] = [0, 0, 0];
const GRID: [u8; 3] = [228, 228, 228];
const LEGEND_BORDER: [u8; 3] = [170, 170, 170];
/// Space around titles, labels and the legend.
const PAD: i64 = 8;
/// Length of a tick mark outside the frame.
const TICK: i64 = 4;
/// Pixels between the frame and the outermost data (so points on the range's ends stay off the frame).
const INSET: f64 = 5.0;

/// Draws the panels side by side, each `panel_width` x `panel_height` pixels, on white. A panel with no
/// point to draw shows its frame and "NO DATA". Errors: no panels, a panel too small for its text, or a
/// fixed `y_range` that is not an increasing pair of finite numbers (positive on a log axis).
pub fn render_panels(
    panels: &[Panel],
    panel_width: usize,
    panel_height: usize,
) -> voc_core::Result<voc_core::RgbImage> {
    if panels.is_empty() {
        return Err(CoreError::BadArgument("no chart panels to draw".into()));
    }
    let too_big = |n: usize| u32::try_from(n).is_err();
    if too_big(panel_height) || panels.len().checked_mul(panel_width).is_none_or(too_big) {
        return Err(CoreError::BadArgument(format!(
            "{} chart panels of {panel_width}x{panel_height} pixels: too large an image",
            panels.len()
        )));
    }
    let mut canvas = Canvas::from_pixel(
        (panels.len() * panel_width) as u32,
        panel_height as u32,
        Rgb(WHITE),
    );
    for (i, panel) in panels.iter().enumerate() {
        let tile = render_panel(panel, panel_width, panel_height)?;
        image::imageops::replace(&mut canvas, &tile, (i * panel_width) as i64, 0);
    }
    voc_core::RgbImage::new(panel_height, panels.len() * panel_width, canvas.into_raw())
}

/// [`render_panels`], written to `path` as a PNG atomically (the old file, if any, stays until the new
/// one is complete). Every error names `path`.
pub fn write_panels_png(
    path: &Path,
    panels: &[Panel],
    panel_width: usize,
    panel_height: usize,
) -> Result<()> {
    let shown = path.display().to_string();
    let named = |msg: String| {
        if msg.contains(&shown) {
            DataError::BadArgument(msg)
        } else {
            DataError::BadArgument(format!("{shown}: {msg}"))
        }
    };
    let image =
        render_panels(panels, panel_width, panel_height).map_err(|e| named(e.to_string()))?;
    image.write_png(path).map_err(|e| match e {
        CoreError::Io { source, .. } => DataError::Io {
            path: path.to_path_buf(),
            source,
        },
        CoreError::Png { source, .. } => DataError::BadImage {
            path: path.to_path_buf(),
            msg: format!("cannot encode PNG: {source}"),
        },
        CoreError::BadArgument(msg) => named(msg),
    })
}

/// Where a panel's data lands: the frame (panel pixels, the lines themselves included) and the ranges
/// it shows. `y_range` is in axis units: log10 of y on a log axis.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Axes {
    pub(crate) left: i64,
    pub(crate) top: i64,
    pub(crate) right: i64,
    pub(crate) bottom: i64,
    pub(crate) x_range: (f64, f64),
    pub(crate) y_range: (f64, f64),
    pub(crate) y_scale: YScale,
}

impl Axes {
    /// The axis value of a data y: itself, or its log10; `None` for a gap.
    fn axis_y(&self, y: f64) -> Option<f64> {
        match self.y_scale {
            YScale::Linear => y.is_finite().then_some(y),
            YScale::Log10 => (y.is_finite() && y > 0.0).then(|| y.log10()),
        }
    }

    fn x_px(&self, x: f64) -> f64 {
        let (a, b) = self.x_range;
        let (l, r) = (self.left as f64 + INSET, self.right as f64 - INSET);
        l + (x - a) / (b - a) * (r - l)
    }

    /// Pixel row of an axis value (log10 of y on a log axis).
    fn axis_px(&self, v: f64) -> f64 {
        let (a, b) = self.y_range;
        let (t, bo) = (self.top as f64 + INSET, self.bottom as f64 - INSET);
        t + (b - v) / (b - a) * (bo - t)
    }

    /// The panel pixel `(column, row)` of a data point, `None` for a gap.
    pub(crate) fn to_pixel(&self, x: f64, y: f64) -> Option<(f64, f64)> {
        if !x.is_finite() {
            return None;
        }
        let p = (self.x_px(x), self.axis_px(self.axis_y(y)?));
        (p.0.is_finite() && p.1.is_finite()).then_some(p)
    }
}

/// Everything placed in a panel before drawing.
struct Layout {
    /// Text scale of ticks and legend; the title is one larger.
    scale: usize,
    title_scale: usize,
    axes: Axes,
    /// Whether any point is drawn; if not, no ticks and "NO DATA".
    has_data: bool,
    x_ticks: Vec<(f64, String)>,
    /// In axis units.
    y_ticks: Vec<(f64, String)>,
}

fn valid_point(scale: YScale, (x, y): (f64, f64)) -> bool {
    x.is_finite()
        && y.is_finite()
        && match scale {
            YScale::Linear => true,
            YScale::Log10 => y > 0.0,
        }
}

/// Lowest and highest of some values, `None` if there are none.
fn extent(values: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    values.fold(None, |acc, v| match acc {
        None => Some((v, v)),
        Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
    })
}

fn layout(panel: &Panel, width: usize, height: usize) -> voc_core::Result<Layout> {
    let scale = if width >= 560 && height >= 400 { 2 } else { 1 };
    let title_scale = if width >= 240 { scale + 1 } else { scale };
    let (w, h) = (width as i64, height as i64);
    let line = font::text_height(scale) as i64;
    let y_scale = panel.y_scale;
    let points = || {
        panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(move |&p| valid_point(y_scale, p))
    };
    let to_axis = |y: f64| match panel.y_scale {
        YScale::Linear => y,
        YScale::Log10 => y.log10(),
    };
    let fixed = match panel.y_range {
        None => None,
        Some((lo, hi)) => {
            let ok = lo.is_finite()
                && hi.is_finite()
                && lo < hi
                && (panel.y_scale == YScale::Linear || lo > 0.0);
            if !ok {
                return Err(CoreError::BadArgument(format!(
                    "chart panel '{}': y range ({lo}, {hi}) is not an increasing pair of finite {}numbers",
                    panel.title,
                    if panel.y_scale == YScale::Log10 { "positive " } else { "" }
                )));
            }
            Some((to_axis(lo), to_axis(hi)))
        }
    };
    let x_extent = extent(points().map(|p| p.0));
    let y_extent = extent(points().map(|p| to_axis(p.1)));
    let has_data = x_extent.is_some();
    let x_range = match x_extent {
        Some((lo, hi)) if hi > lo => (lo, hi),
        Some((lo, hi)) => (lo - 0.5, hi + 0.5),
        None => (0.0, 1.0),
    };
    let y_range = fixed.unwrap_or(match y_extent {
        Some((lo, hi)) if hi > lo => {
            let d = 0.05 * (hi - lo);
            (lo - d, hi + d)
        }
        Some((v, _)) => {
            let d = match panel.y_scale {
                YScale::Log10 => 0.5,
                YScale::Linear if v == 0.0 => 0.5,
                YScale::Linear => 0.1 * v.abs(),
            };
            (v - d, v + d)
        }
        None => (0.0, 1.0),
    });

    let top = if panel.title.is_empty() {
        PAD
    } else {
        2 * PAD + font::text_height(title_scale) as i64
    };
    let mut bottom_margin = TICK + 3 + line + PAD;
    if !panel.x_label.is_empty() {
        bottom_margin += line + 5;
    }
    let bottom = h - 1 - bottom_margin;
    let mut axes = Axes {
        left: 0,
        top,
        right: w - 1 - PAD,
        bottom,
        x_range,
        y_range,
        y_scale: panel.y_scale,
    };
    let plot_h = bottom as f64 - top as f64 - 2.0 * INSET;
    let y_ticks = if !has_data || plot_h < 1.0 {
        Vec::new()
    } else {
        match panel.y_scale {
            YScale::Linear => linear_ticks(y_range, plot_h, 40.0, |_| line + 8, false),
            YScale::Log10 => log_ticks(y_range, plot_h, line + 8),
        }
    };
    let label_w = y_ticks
        .iter()
        .map(|(_, s)| font::text_width(s, scale) as i64)
        .max()
        .unwrap_or(0);
    axes.left = PAD + label_w + 3 + TICK;
    let plot_w = axes.right as f64 - axes.left as f64 - 2.0 * INSET;
    if plot_w < 16.0 || plot_h < 16.0 {
        return Err(CoreError::BadArgument(format!(
            "chart panel '{}': {width}x{height} pixels leave {}x{} to plot after its text; at least 16x16 \
             is needed",
            panel.title,
            plot_w.max(0.0) as i64,
            plot_h.max(0.0) as i64
        )));
    }
    let integer_x = points().all(|(x, _)| x.fract() == 0.0);
    let x_ticks = if has_data {
        let gap = 2 * font::text_width("0", scale) as i64 + 4;
        linear_ticks(
            x_range,
            plot_w,
            60.0,
            |s| font::text_width(s, scale) as i64 + gap,
            integer_x,
        )
    } else {
        Vec::new()
    };
    Ok(Layout {
        scale,
        title_scale,
        axes,
        has_data,
        x_ticks,
        y_ticks,
    })
}

/// 1, 2 or 5 times a power of ten, the smallest at least `raw`.
fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.log10().floor());
    let f = raw / p;
    let m = [1.0, 2.0, 5.0]
        .into_iter()
        .find(|&m| f <= m * (1.0 + 1e-9))
        .unwrap_or(10.0);
    m * p
}

/// Ticks on `range` (`span_px` pixels long) at multiples of a nice step, about `target_px` apart,
/// labelled; the step grows until each label fits in its share of the axis (`room(label)` pixels), and
/// is a whole number if `integer`.
fn linear_ticks(
    (lo, hi): (f64, f64),
    span_px: f64,
    target_px: f64,
    room: impl Fn(&str) -> i64,
    integer: bool,
) -> Vec<(f64, String)> {
    let span = hi - lo;
    if !(span.is_finite() && span > 0.0) {
        return Vec::new();
    }
    let count = |step: f64| (hi / step + 1e-9).floor() - (lo / step - 1e-9).ceil() + 1.0;
    let mut step = nice_step(span / (span_px / target_px).clamp(2.0, 10.0));
    // A short range between two multiples of the step: a finer step, for at least two ticks.
    for _ in 0..4 {
        if count(step) >= 2.0 || (integer && step <= 1.0) {
            break;
        }
        step = nice_step(step / 2.5);
    }
    if integer {
        step = step.max(1.0);
    }
    loop {
        let (first, n) = ((lo / step - 1e-9).ceil(), count(step));
        if !(n.is_finite() && n < 100.0) {
            return Vec::new();
        }
        let values: Vec<f64> = (0..n.max(0.0) as i64)
            .map(|i| {
                let v = (first + i as f64) * step;
                if v.abs() < step * 1e-9 {
                    0.0
                } else {
                    v
                }
            })
            .collect();
        let labels = linear_labels(&values, step);
        let per_tick = step / span * span_px;
        let widest = labels.iter().map(|s| room(s)).max().unwrap_or(0);
        let coarser = nice_step(step * 1.5);
        // Labels that do not fit make the step coarser, as long as two ticks remain.
        if widest as f64 <= per_tick || count(coarser) < 2.0 {
            return values.into_iter().zip(labels).collect();
        }
        step = coarser;
    }
}

/// Labels of ticks `step` apart: as many decimals as the step needs, or `1.5E-5` form for very large
/// or very small values.
fn linear_labels(values: &[f64], step: f64) -> Vec<String> {
    let exp = (step.log10() + 1e-9).floor() as i32;
    let biggest = values.iter().fold(0f64, |m, v| m.max(v.abs()));
    if biggest >= 1e5 || (biggest > 0.0 && biggest < 1e-3) {
        let digits = (biggest.log10().floor() as i32 - exp).max(0) as usize;
        return values
            .iter()
            .map(|&v| {
                if v == 0.0 {
                    "0".to_string()
                } else {
                    format!("{v:.digits$e}").to_uppercase()
                }
            })
            .collect();
    }
    let decimals = (-exp).max(0) as usize;
    values.iter().map(|v| format!("{v:.decimals$}")).collect()
}

/// Ticks of a log axis (`range` in log10 units, `span_px` pixels long, labels `min_gap` pixels apart at
/// least): at powers of ten, every k-th decade if they crowd, or at 1, 2 and 5 (then every integer)
/// times them when the range holds fewer than two.
fn log_ticks((lo, hi): (f64, f64), span_px: f64, min_gap: i64) -> Vec<(f64, String)> {
    if !(lo.is_finite() && hi.is_finite() && hi > lo) {
        return Vec::new();
    }
    let px_per_decade = span_px / (hi - lo);
    let first = (lo - 1e-9).ceil() as i32;
    let last = (hi + 1e-9).floor() as i32;
    let mut ticks: Vec<(i32, i32)> = Vec::new(); // (mantissa, exponent)
    if last > first {
        let stride = (min_gap as f64 / px_per_decade).ceil().max(1.0) as i32;
        ticks = (first..=last)
            .filter(|k| k.rem_euclid(stride) == 0)
            .map(|k| (1, k))
            .collect();
    }
    for mantissas in [&[1, 2, 5][..], &[1, 2, 3, 4, 5, 6, 7, 8, 9]] {
        if ticks.len() >= 2 {
            break;
        }
        ticks = (first - 1..=last)
            .flat_map(|k| mantissas.iter().map(move |&m| (m, k)))
            .filter(|&(m, k)| {
                let v = (m as f64).log10() + k as f64;
                v >= lo - 1e-9 && v <= hi + 1e-9
            })
            .collect();
        // Drop ticks that crowd the one before.
        let mut kept: Vec<(i32, i32)> = Vec::new();
        for t in ticks {
            let v = |(m, k): (i32, i32)| (m as f64).log10() + k as f64;
            if kept
                .last()
                .is_none_or(|&p| (v(t) - v(p)) * px_per_decade >= min_gap as f64)
            {
                kept.push(t);
            }
        }
        ticks = kept;
    }
    let plain = ticks.iter().all(|&(_, k)| (-2..=3).contains(&k));
    ticks
        .into_iter()
        .map(|(m, k)| {
            let label = if plain {
                format!("{:.*}", (-k).max(0) as usize, m as f64 * 10f64.powi(k))
            } else {
                format!("{m}E{k}")
            };
            ((m as f64).log10() + k as f64, label)
        })
        .collect()
}

/// A pixel rectangle, both ends included.
#[derive(Debug, Clone, Copy)]
struct Rect {
    x0: i64,
    y0: i64,
    x1: i64,
    y1: i64,
}

impl Rect {
    fn contains(&self, x: i64, y: i64) -> bool {
        x >= self.x0 && x <= self.x1 && y >= self.y0 && y <= self.y1
    }
}

fn put(canvas: &mut Canvas, clip: Rect, x: i64, y: i64, color: [u8; 3]) {
    if clip.contains(x, y)
        && x < canvas.width() as i64
        && y < canvas.height() as i64
        && x >= 0
        && y >= 0
    {
        canvas.put_pixel(x as u32, y as u32, Rgb(color));
    }
}

fn fill(canvas: &mut Canvas, r: Rect, color: [u8; 3]) {
    for y in r.y0..=r.y1 {
        for x in r.x0..=r.x1 {
            put(canvas, r, x, y, color);
        }
    }
}

fn outline(canvas: &mut Canvas, r: Rect, color: [u8; 3]) {
    let all = frame_area();
    for x in r.x0..=r.x1 {
        put(canvas, all, x, r.y0, color);
        put(canvas, all, x, r.y1, color);
    }
    for y in r.y0..=r.y1 {
        put(canvas, all, r.x0, y, color);
        put(canvas, all, r.x1, y, color);
    }
}

/// The part of segment a-b inside `r` (Liang-Barsky), `None` if it misses.
fn clip_segment(a: (f64, f64), b: (f64, f64), r: Rect) -> Option<((f64, f64), (f64, f64))> {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let (mut t0, mut t1) = (0.0f64, 1.0f64);
    for (p, q) in [
        (-dx, a.0 - r.x0 as f64),
        (dx, r.x1 as f64 - a.0),
        (-dy, a.1 - r.y0 as f64),
        (dy, r.y1 as f64 - a.1),
    ] {
        if p == 0.0 {
            if q < 0.0 {
                return None;
            }
        } else {
            let t = q / p;
            if p < 0.0 {
                t0 = t0.max(t);
            } else {
                t1 = t1.min(t);
            }
        }
    }
    (t0 <= t1).then_some((
        (a.0 + t0 * dx, a.1 + t0 * dy),
        (a.0 + t1 * dx, a.1 + t1 * dy),
    ))
}

/// A 2-pixel line from a to b (Bresenham with a 2x2 brush), only inside `clip`.
fn draw_line(canvas: &mut Canvas, clip: Rect, a: (f64, f64), b: (f64, f64), color: [u8; 3]) {
    let Some((a, b)) = clip_segment(a, b, clip) else {
        return;
    };
    let (mut x, mut y) = (a.0.round() as i64, a.1.round() as i64);
    let (x1, y1) = (b.0.round() as i64, b.1.round() as i64);
    let (dx, dy) = ((x1 - x).abs(), -(y1 - y).abs());
    let (sx, sy) = ((x1 - x).signum(), (y1 - y).signum());
    let mut err = dx + dy;
    loop {
        for (ox, oy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
            put(canvas, clip, x + ox, y + oy, color);
        }
        if x == x1 && y == y1 {
            break;
        }
        let e2 = 2 * err;
        if e2 >= dy {
            err += dy;
            x += sx;
        }
        if e2 <= dx {
            err += dx;
            y += sy;
        }
    }
}

/// A filled dot of radius about 3 around `c`, only inside `clip`.
fn draw_dot(canvas: &mut Canvas, clip: Rect, c: (f64, f64), color: [u8; 3]) {
    if !(c.0.abs() < 1e9 && c.1.abs() < 1e9) {
        return;
    }
    let (cx, cy) = (c.0.round() as i64, c.1.round() as i64);
    for dy in -3..=3i64 {
        for dx in -3..=3i64 {
            if dx * dx + dy * dy <= 9 {
                put(canvas, clip, cx + dx, cy + dy, color);
            }
        }
    }
}

fn text(canvas: &mut Canvas, x: i64, y: i64, s: &str, scale: usize, color: [u8; 3]) {
    let (w, h) = (canvas.width() as i64, canvas.height() as i64);
    let tw = font::text_width(s, scale) as i64;
    let th = font::text_height(scale) as i64;
    // Keep the text inside the panel where it fits.
    let x = x.min(w - tw).max(0);
    let y = y.min(h - th).max(0);
    font::draw_text(canvas, x as usize, y as usize, s, scale, color);
}

fn render_panel(panel: &Panel, width: usize, height: usize) -> voc_core::Result<Canvas> {
    let Layout {
        scale,
        title_scale,
        axes,
        has_data,
        x_ticks,
        y_ticks,
    } = layout(panel, width, height)?;
    let mut canvas = Canvas::from_pixel(width as u32, height as u32, Rgb(WHITE));
    let line = font::text_height(scale) as i64;
    let frame = Rect {
        x0: axes.left,
        y0: axes.top,
        x1: axes.right,
        y1: axes.bottom,
    };
    let inside = Rect {
        x0: frame.x0 + 1,
        y0: frame.y0 + 1,
        x1: frame.x1 - 1,
        y1: frame.y1 - 1,
    };

    // Grid and ticks.
    for (v, label) in &y_ticks {
        let y = axes.axis_px(*v).round() as i64;
        for x in inside.x0..=inside.x1 {
            put(&mut canvas, inside, x, y, GRID);
        }
        for x in frame.x0 - TICK..frame.x0 {
            put(&mut canvas, frame_area(), x, y, FRAME);
        }
        let tw = font::text_width(label, scale) as i64;
        text(
            &mut canvas,
            frame.x0 - TICK - 3 - tw,
            y - line / 2,
            label,
            scale,
            TEXT,
        );
    }
    for (v, label) in &x_ticks {
        let x = axes.x_px(*v).round() as i64;
        for y in inside.y0..=inside.y1 {
            put(&mut canvas, inside, x, y, GRID);
        }
        for y in frame.y1 + 1..=frame.y1 + TICK {
            put(&mut canvas, frame_area(), x, y, FRAME);
        }
        let tw = font::text_width(label, scale) as i64;
        text(
            &mut canvas,
            x - tw / 2,
            frame.y1 + TICK + 3,
            label,
            scale,
            TEXT,
        );
    }

    // Curves.
    for series in &panel.series {
        let pixels: Vec<Option<(f64, f64)>> = series
            .points
            .iter()
            .map(|&(x, y)| axes.to_pixel(x, y))
            .collect();
        for (i, p) in pixels.iter().enumerate() {
            let Some(p) = *p else { continue };
            match pixels.get(i + 1).copied().flatten() {
                Some(q) => draw_line(&mut canvas, inside, p, q, series.color),
                None if i == 0 || pixels[i - 1].is_none() => {
                    draw_dot(&mut canvas, inside, p, series.color)
                }
                None => {}
            }
        }
    }
    outline(&mut canvas, frame, FRAME);

    if !has_data {
        let msg = "NO DATA";
        let tw = font::text_width(msg, scale + 1) as i64;
        let th = font::text_height(scale + 1) as i64;
        text(
            &mut canvas,
            (frame.x0 + frame.x1 - tw) / 2,
            (frame.y0 + frame.y1 - th) / 2,
            msg,
            scale + 1,
            TEXT,
        );
    } else {
        draw_legend(&mut canvas, panel, inside, scale);
    }

    // Title and x label.
    if !panel.title.is_empty() {
        let room = width.saturating_sub(2 * PAD as usize);
        let mut ts = title_scale;
        while ts > 1 && font::text_width(&panel.title, ts) > room {
            ts -= 1;
        }
        let title = fit_text(&panel.title, ts, room);
        let tw = font::text_width(&title, ts) as i64;
        let x = ((frame.x0 + frame.x1 - tw) / 2).max(PAD);
        text(&mut canvas, x, PAD, &title, ts, TEXT);
    }
    if !panel.x_label.is_empty() {
        let tw = font::text_width(&panel.x_label, scale) as i64;
        text(
            &mut canvas,
            (frame.x0 + frame.x1 - tw) / 2,
            frame.y1 + TICK + 3 + line + 5,
            &panel.x_label,
            scale,
            TEXT,
        );
    }
    Ok(canvas)
}

/// `s`, or as much of it as fits in `room` pixels followed by "..".
fn fit_text(s: &str, scale: usize, room: usize) -> String {
    if font::text_width(s, scale) <= room {
        return s.to_string();
    }
    let mut kept: String = s.chars().collect();
    while !kept.is_empty() && font::text_width(&format!("{kept}.."), scale) > room {
        kept.pop();
    }
    format!("{}..", kept.trim_end())
}

/// No clipping beyond the panel's own edges.
fn frame_area() -> Rect {
    Rect {
        x0: 0,
        y0: 0,
        x1: i64::MAX,
        y1: i64::MAX,
    }
}

/// The named series' colours and names in a white box, in the corner of the plot (`inside`) that
/// covers the fewest curve pixels (top right first on a tie).
fn draw_legend(canvas: &mut Canvas, panel: &Panel, inside: Rect, scale: usize) {
    let entries: Vec<&Series> = panel.series.iter().filter(|s| !s.name.is_empty()).collect();
    if entries.is_empty() {
        return;
    }
    let line = font::text_height(scale) as i64;
    let swatch = 14 * scale as i64;
    let row = line + 4;
    let names_w = entries
        .iter()
        .map(|s| font::text_width(&s.name, scale) as i64)
        .max()
        .unwrap_or(0);
    let (w, h) = (4 + swatch + 5 + names_w + 5, 4 + entries.len() as i64 * row);
    let margin = 6;
    if w + 2 * margin > inside.x1 - inside.x0 + 1 || h + 2 * margin > inside.y1 - inside.y0 + 1 {
        return; // No room: the curves matter more.
    }
    let (left, right) = (inside.x0 + margin, inside.x1 - margin - w + 1);
    let (top, bottom) = (inside.y0 + margin, inside.y1 - margin - h + 1);
    let corners = [(right, top), (left, top), (right, bottom), (left, bottom)];
    let colors: Vec<[u8; 3]> = panel.series.iter().map(|s| s.color).collect();
    let covered = |&(x0, y0): &(i64, i64)| {
        let mut n = 0;
        for y in y0.max(0)..(y0 + h).min(canvas.height() as i64) {
            for x in x0.max(0)..(x0 + w).min(canvas.width() as i64) {
                if colors.contains(&canvas.get_pixel(x as u32, y as u32).0) {
                    n += 1;
                }
            }
        }
        n
    };
    let &(x0, y0) = corners
        .iter()
        .min_by_key(|c| covered(c))
        .expect("four corners");
    let r = Rect {
        x0,
        y0,
        x1: x0 + w - 1,
        y1: y0 + h - 1,
    };
    fill(canvas, r, WHITE);
    outline(canvas, r, LEGEND_BORDER);
    for (i, s) in entries.iter().enumerate() {
        let y = y0 + 3 + i as i64 * row;
        let mid = y + line / 2;
        fill(
            canvas,
            Rect {
                x0: x0 + 4,
                y0: mid - 1,
                x1: x0 + 4 + swatch - 1,
                y1: mid + 1,
            },
            s.color,
        );
        text(canvas, x0 + 4 + swatch + 5, y, &s.name, scale, TEXT);
    }
}

/// The axes of a panel as [`render_panels`] draws it, for tests that look for a point's pixel.
#[cfg(test)]
pub(crate) fn panel_axes(panel: &Panel, width: usize, height: usize) -> Axes {
    layout(panel, width, height).expect("panel layout").axes
}

/// Writes a confusion matrix as `csv` (a header row of the predicted classes, then one row per true
/// class: `truth\\predicted,NAME,...`) and as the [`render_confusion`] picture at `png`, each atomically.
pub fn write_confusion(
    csv: &Path,
    png: &Path,
    title: &str,
    names: &[String],
    counts: &[Vec<u64>],
) -> Result<()> {
    let image = render_confusion(title, names, counts)?;
    let mut text = format!("truth\\predicted,{}\n", names.join(","));
    for (name, row) in names.iter().zip(counts) {
        let cells: Vec<String> = row.iter().map(u64::to_string).collect();
        text.push_str(&format!("{name},{}\n", cells.join(",")));
    }
    voc_core::write_atomic(csv, |f| std::io::Write::write_all(f, text.as_bytes()))?;
    image.write_png(png)?;
    Ok(())
}

/// A confusion matrix as a picture: one row per true class, one column per predicted class (numbered
/// as `names`' indices, the legend of numbers on the left), each cell shaded by its share of the true
/// class's pixels (white 0 to dark blue 1) and labelled with that share in percent when it is at least
/// 1%. `counts[truth][pred]`; a class without true pixels gets an empty row.
///
/// ```
/// use voc_data::chart::render_confusion;
/// let names = ["background", "cat"].map(String::from);
/// let image = render_confusion("confusion", &names, &[vec![90, 10], vec![5, 45]])?;
/// assert!(image.width() > 100 && image.height() > 50);
/// # Ok::<(), voc_core::CoreError>(())
/// ```
pub fn render_confusion(
    title: &str,
    names: &[String],
    counts: &[Vec<u64>],
) -> std::result::Result<voc_core::RgbImage, CoreError> {
    let n = names.len();
    if n == 0 || counts.len() != n || counts.iter().any(|row| row.len() != n) {
        return Err(CoreError::BadArgument(format!(
            "confusion chart: expected a {n} x {n} matrix for {n} class names, got {} rows",
            counts.len()
        )));
    }
    const CELL: usize = 26;
    const PAD: usize = 8;
    let labels: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, name)| format!("{i:>2} {name}"))
        .collect();
    let label_width = labels
        .iter()
        .map(|l| font::text_width(l, 1))
        .max()
        .unwrap_or(0);
    let left = PAD + label_width + PAD;
    let top = PAD + font::text_height(2) + PAD + font::text_height(1) + 4;
    let width = left + n * CELL + PAD;
    let height = top + n * CELL + PAD + font::text_height(1) + PAD;
    let mut canvas = Canvas::from_pixel(width as u32, height as u32, Rgb([255, 255, 255]));
    font::draw_text(&mut canvas, PAD, PAD, title, 2, [0, 0, 0]);
    let header_y = PAD + font::text_height(2) + PAD;
    for j in 0..n {
        let s = j.to_string();
        let x = left + j * CELL + (CELL - font::text_width(&s, 1)) / 2;
        font::draw_text(&mut canvas, x, header_y, &s, 1, [60, 60, 60]);
    }
    for (i, row) in counts.iter().enumerate() {
        let y0 = top + i * CELL;
        font::draw_text(
            &mut canvas,
            PAD,
            y0 + (CELL - font::text_height(1)) / 2,
            &labels[i],
            1,
            [0, 0, 0],
        );
        let total: u64 = row.iter().sum();
        for (j, &count) in row.iter().enumerate() {
            let share = if total > 0 {
                count as f64 / total as f64
            } else {
                0.0
            };
            // White to dark blue (8, 48, 107).
            let mix = |white: f64, dark: f64| (white + (dark - white) * share).round() as u8;
            let color = [mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0)];
            let x0 = left + j * CELL;
            for y in y0 + 1..y0 + CELL {
                for x in x0 + 1..x0 + CELL {
                    canvas.put_pixel(x as u32, y as u32, Rgb(color));
                }
            }
            let percent = (100.0 * share).round() as u32;
            if percent >= 1 {
                let s = percent.to_string();
                let ink = if share > 0.5 {
                    [255, 255, 255]
                } else {
                    [0, 0, 0]
                };
                let tx = x0 + (CELL - font::text_width(&s, 1)) / 2;
                let ty = y0 + (CELL - font::text_height(1)) / 2;
                font::draw_text(&mut canvas, tx, ty, &s, 1, ink);
            }
        }
    }
    let note = "rows = true class, columns = predicted class, cells = % of the row pixels";
    font::draw_text(
        &mut canvas,
        PAD,
        top + n * CELL + PAD,
        note,
        1,
        [60, 60, 60],
    );
    voc_core::RgbImage::new(height, width, canvas.into_raw())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(color: [u8; 3], points: &[(f64, f64)]) -> Series {
        Series {
            name: String::new(),
            color,
            points: points.to_vec(),
        }
    }

    fn panel(series: Vec<Series>, y_scale: YScale, y_range: Option<(f64, f64)>) -> Panel {
        Panel {
            title: "T".into(),
            x_label: "epoch".into(),
            series,
            y_scale,
            y_range,
        }
    }

    /// Whether `color` is within `r` pixels of (x, y) in the image.
    fn near(image: &voc_core::RgbImage, (x, y): (f64, f64), r: i64, color: [u8; 3]) -> bool {
        let (x, y) = (x.round() as i64, y.round() as i64);
        (-r..=r).any(|dy| {
            (-r..=r).any(|dx| {
                let (px, py) = (x + dx, y + dy);
                px >= 0
                    && py >= 0
                    && (px as usize) < image.width()
                    && (py as usize) < image.height()
                    && image.pixel(py as usize, px as usize) == color
            })
        })
    }

    #[test]
    fn nice_steps_are_1_2_5() {
        let steps: Vec<f64> = [0.7, 1.0, 1.3, 2.5, 4.0, 7.0, 0.013]
            .into_iter()
            .map(nice_step)
            .collect();
        assert_eq!(steps, [1.0, 1.0, 2.0, 5.0, 5.0, 10.0, 0.02]);
    }

    #[test]
    fn linear_ticks_are_nice_and_labelled_with_the_steps_decimals() {
        let ticks = linear_ticks((0.0, 1.0), 400.0, 60.0, |_| 10, false);
        let labels: Vec<&str> = ticks.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]);
        let ticks = linear_ticks((-0.35, 0.42), 300.0, 60.0, |_| 10, false);
        assert!(
            ticks.iter().any(|(v, s)| *v == 0.0 && s == "0.0"),
            "{ticks:?}"
        );
        let ticks = linear_ticks((0.0, 30.0), 400.0, 60.0, |_| 10, true);
        assert!(ticks.iter().all(|(v, _)| v.fract() == 0.0), "{ticks:?}");
        assert_eq!(ticks[0].1, "0");
        // Integer x never gets fractional ticks even on a short range.
        let ticks = linear_ticks((0.0, 2.0), 400.0, 60.0, |_| 10, true);
        let labels: Vec<&str> = ticks.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["0", "1", "2"]);
        // Wide labels make the step grow.
        let crowded = linear_ticks((0.0, 100.0), 100.0, 20.0, |_| 40, false);
        assert!(crowded.len() <= 3, "{crowded:?}");
        // Tiny values use the E form.
        let small = linear_ticks((1e-5, 5e-5), 200.0, 40.0, |_| 10, false);
        assert!(small.iter().all(|(_, s)| s.contains("E-5")), "{small:?}");
    }

    #[test]
    fn log_ticks_are_powers_of_ten() {
        let ticks = log_ticks((-6.2, -2.8), 300.0, 15);
        let labels: Vec<&str> = ticks.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["1E-6", "1E-5", "1E-4", "1E-3"]);
        // Less than two decades: 1-2-5 ticks.
        let ticks = log_ticks(((5e-4f64).log10(), (3e-3f64).log10()), 300.0, 15);
        let labels: Vec<&str> = ticks.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["5E-4", "1E-3", "2E-3"]);
        // Many decades on few pixels: every other one.
        let ticks = log_ticks((-10.0, 0.0), 100.0, 15);
        assert!(ticks.len() <= 6 && ticks.len() >= 2, "{ticks:?}");
        // Near 1, plain decimals.
        let ticks = log_ticks((-1.0, 1.0), 300.0, 15);
        let labels: Vec<&str> = ticks.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(labels, ["0.1", "1", "10"]);
    }

    #[test]
    fn points_land_where_the_axes_map_them() {
        let (w, h) = (400, 300);
        let color = SERIES_COLORS[1];
        let pts = [(0.0, 1.0), (5.0, 3.0), (10.0, 2.0)];
        let p = panel(vec![series(color, &pts)], YScale::Linear, None);
        let image = render_panels(std::slice::from_ref(&p), w, h).unwrap();
        let axes = panel_axes(&p, w, h);
        for (x, y) in pts {
            let px = axes.to_pixel(x, y).unwrap();
            assert!(near(&image, px, 1, color), "({x}, {y}) at {px:?}");
        }
        // 5% margins around the data.
        assert!((axes.y_range.0 - 0.9).abs() < 1e-12 && (axes.y_range.1 - 3.1).abs() < 1e-12);
        // Second of two panels: offset by one panel width.
        let image = render_panels(&[panel(vec![], YScale::Linear, None), p.clone()], w, h).unwrap();
        for (x, y) in pts {
            let (px, py) = axes.to_pixel(x, y).unwrap();
            assert!(near(&image, (px + w as f64, py), 1, color));
        }
    }

    #[test]
    fn fixed_range_and_constant_series() {
        let (w, h) = (300, 200);
        let p = panel(
            vec![series(SERIES_COLORS[2], &[(0.0, 0.2), (4.0, 0.5)])],
            YScale::Linear,
            Some((0.0, 1.0)),
        );
        let axes = panel_axes(&p, w, h);
        assert_eq!(axes.y_range, (0.0, 1.0));
        let image = render_panels(&[p], w, h).unwrap();
        let mid = axes.to_pixel(4.0, 0.5).unwrap();
        assert!((mid.1 - (axes.top + axes.bottom) as f64 / 2.0).abs() < 1.0);
        assert!(near(&image, mid, 1, SERIES_COLORS[2]));
        let constant = panel(
            vec![series(SERIES_COLORS[0], &[(0.0, 2.0), (1.0, 2.0)])],
            YScale::Linear,
            None,
        );
        let (lo, hi) = panel_axes(&constant, w, h).y_range;
        assert!((lo - 1.8).abs() < 1e-12 && (hi - 2.2).abs() < 1e-12);
        let zero = panel(vec![series(WHITE, &[(0.0, 0.0)])], YScale::Linear, None);
        assert_eq!(panel_axes(&zero, w, h).y_range, (-0.5, 0.5));
        assert_eq!(panel_axes(&zero, w, h).x_range, (-0.5, 0.5));
    }

    #[test]
    fn a_single_point_is_a_dot() {
        let (w, h) = (300, 200);
        let color = SERIES_COLORS[3];
        let p = panel(
            vec![series(color, &[(3.0, 0.5), (4.0, f64::NAN)])],
            YScale::Linear,
            None,
        );
        let image = render_panels(std::slice::from_ref(&p), w, h).unwrap();
        let c = panel_axes(&p, w, h).to_pixel(3.0, 0.5).unwrap();
        let n = image
            .as_bytes()
            .chunks(3)
            .filter(|px| *px == color.as_slice())
            .count();
        assert!(near(&image, c, 0, color));
        assert!((20..=40).contains(&n), "{n} pixels");
    }

    #[test]
    fn log_axis_skips_non_positive_values() {
        let p = panel(
            vec![series(
                SERIES_COLORS[0],
                &[(0.0, 0.0), (1.0, -1.0), (2.0, 1e-3), (3.0, 1e-2)],
            )],
            YScale::Log10,
            None,
        );
        let axes = panel_axes(&p, 300, 200);
        assert_eq!(axes.x_range, (2.0, 3.0));
        assert!(axes.to_pixel(0.0, 0.0).is_none());
        let low = axes.to_pixel(2.0, 1e-3).unwrap();
        let high = axes.to_pixel(3.0, 1e-2).unwrap();
        assert!(low.1 > high.1);
        assert!(render_panels(&[p], 300, 200).is_ok());
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(render_panels(&[], 300, 200).is_err());
        let p = panel(vec![], YScale::Linear, None);
        let e = render_panels(std::slice::from_ref(&p), 40, 30).unwrap_err();
        assert!(e.to_string().contains("40x30"), "{e}");
        let bad = Panel {
            y_range: Some((1.0, 0.0)),
            ..p.clone()
        };
        assert!(render_panels(&[bad], 300, 200).is_err());
        let bad = Panel {
            y_range: Some((0.0, 1.0)),
            y_scale: YScale::Log10,
            ..p
        };
        let e = render_panels(&[bad], 300, 200).unwrap_err();
        assert!(e.to_string().contains("positive"), "{e}");
    }

    #[test]
    fn lines_far_outside_the_range_are_clipped() {
        let p = panel(
            vec![series(
                SERIES_COLORS[0],
                &[(0.0, -1e300), (1.0, 1e300), (2.0, 0.5)],
            )],
            YScale::Linear,
            Some((0.0, 1.0)),
        );
        let axes = panel_axes(&p, 300, 200);
        let image = render_panels(&[p], 300, 200).unwrap();
        for y in 0..image.height() {
            for x in 0..image.width() {
                if image.pixel(y, x) == SERIES_COLORS[0] {
                    let (x, y) = (x as i64, y as i64);
                    assert!(x > axes.left && x < axes.right && y > axes.top && y < axes.bottom);
                }
            }
        }
    }
}
