//! Charts drawn with [plotters](https://docs.rs/plotters): line panels (training curves, robustness
//! sweeps, precision-recall), horizontal bar charts (class counts, per-class scores) and confusion
//! matrices. Each chart renders to an RGB image (the run folders' PNGs) and to SVG text (the HTML
//! report) from the same drawing code, with text in the bundled DejaVu Sans subset, so a picture
//! looks the same on every machine and needs no system font.
//!
//! ```
//! use voc_data::chart::{panels_svg, render_panels, Panel, Series, YScale, SERIES_COLORS};
//!
//! let loss = Series {
//!     name: "train".into(),
//!     color: SERIES_COLORS[0],
//!     points: vec![(0.0, 0.9), (1.0, 0.5), (2.0, f64::NAN), (3.0, 0.3)], // NaN: a gap
//! };
//! let panel = Panel::new("loss", "epoch", vec![loss]).with_mark(1.0, "best");
//! let image = render_panels(&[panel.clone(), panel.clone()], 400, 300)?;
//! assert_eq!((image.width(), image.height()), (800, 300));
//! let svg = panels_svg(&[panel], 400, 300)?;
//! assert!(svg.starts_with("<svg"));
//! # Ok::<(), voc_core::CoreError>(())
//! ```
use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use voc_core::CoreError;

use crate::error::{DataError, Result};

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
    /// Evenly spaced values.
    #[default]
    Linear,
    /// Evenly spaced powers of ten (ticks `1E-3`, `1E-2`, ...); values <= 0 are not drawn.
    Log10,
}

/// A labelled vertical line across a panel: the best epoch, an early stop, a learning-rate cut.
#[derive(Debug, Clone, PartialEq)]
pub struct XMark {
    /// Where, in x units.
    pub x: f64,
    /// Drawn at the top of the line.
    pub label: String,
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
    /// A fixed x range; `None`: the data's.
    pub x_range: Option<(f64, f64)>,
    /// Vertical marks, drawn under the series.
    pub marks: Vec<XMark>,
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
            x_range: None,
            marks: Vec::new(),
        }
    }

    /// This panel with a fixed y range.
    pub fn with_y_range(mut self, low: f64, high: f64) -> Self {
        self.y_range = Some((low, high));
        self
    }

    /// This panel with a logarithmic y axis.
    pub fn log_y(mut self) -> Self {
        self.y_scale = YScale::Log10;
        self
    }

    /// This panel with a training run's marks: its best epoch and, if it stopped early, the last one.
    pub fn with_run_marks(self, best_epoch: Option<usize>, stopped_at: Option<usize>) -> Self {
        let mut panel = self;
        if let Some(b) = best_epoch {
            panel = panel.with_mark(b as f64, format!("best {b}"));
        }
        if let Some(s) = stopped_at.filter(|&s| Some(s) != best_epoch) {
            panel = panel.with_mark(s as f64, format!("stop {s}"));
        }
        panel
    }

    /// This panel with one more vertical mark.
    pub fn with_mark(mut self, x: f64, label: impl Into<String>) -> Self {
        self.marks.push(XMark {
            x,
            label: label.into(),
        });
        self
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

/// The font family every chart uses: the bundled subset of DejaVu Sans (printable ASCII and a few
/// signs), registered with plotters on first use under the generic name, so an SVG shown in a browser
/// falls back to the browser's own sans-serif.
const FONT: &str = "sans-serif";
static FONT_BYTES: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans-subset.ttf");
static REGISTER_FONT: Once = Once::new();

fn register_font() {
    REGISTER_FONT.call_once(|| {
        // The bundled file is checked by the tests; a failure here would only lose text.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES);
    });
}

fn rgb(c: [u8; 3]) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

const GRID: RGBColor = RGBColor(228, 228, 228);
const MARK: RGBColor = RGBColor(120, 120, 120);
/// The smallest panel whose text and plot both fit.
const MIN_PANEL: (usize, usize) = (120, 100);

fn bad(msg: String) -> CoreError {
    CoreError::BadArgument(msg)
}

fn draw_error<E: std::error::Error + Send + Sync>(
    what: &str,
    e: DrawingAreaErrorKind<E>,
) -> CoreError {
    bad(format!("{what}: drawing failed: {e}"))
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

/// The ranges a panel shows, in axis units (log10 of y on a log axis), and whether it has data.
struct Frame {
    x: (f64, f64),
    y: (f64, f64),
    has_data: bool,
    integer_x: bool,
}

fn frame(panel: &Panel) -> voc_core::Result<Frame> {
    let scale = panel.y_scale;
    let to_axis = |y: f64| match scale {
        YScale::Linear => y,
        YScale::Log10 => y.log10(),
    };
    let points = || {
        panel
            .series
            .iter()
            .flat_map(|s| s.points.iter().copied())
            .filter(move |&p| valid_point(scale, p))
    };
    let fixed_y = match panel.y_range {
        None => None,
        Some((lo, hi)) => {
            let ok = lo.is_finite()
                && hi.is_finite()
                && lo < hi
                && (scale == YScale::Linear || lo > 0.0);
            if !ok {
                return Err(bad(format!(
                    "chart panel '{}': y range ({lo}, {hi}) is not an increasing pair of finite {}numbers",
                    panel.title,
                    if scale == YScale::Log10 { "positive " } else { "" }
                )));
            }
            Some((to_axis(lo), to_axis(hi)))
        }
    };
    if let Some((lo, hi)) = panel.x_range {
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(bad(format!(
                "chart panel '{}': x range ({lo}, {hi}) is not an increasing pair of finite numbers",
                panel.title
            )));
        }
    }
    let x_extent = extent(points().map(|p| p.0));
    let y_extent = extent(points().map(|p| to_axis(p.1)));
    let x = panel.x_range.unwrap_or(match x_extent {
        Some((lo, hi)) if hi > lo => (lo, hi),
        Some((lo, hi)) => (lo - 0.5, hi + 0.5),
        None => (0.0, 1.0),
    });
    let y = fixed_y.unwrap_or(match y_extent {
        Some((lo, hi)) if hi > lo => {
            let d = 0.05 * (hi - lo);
            (lo - d, hi + d)
        }
        Some((v, _)) => {
            let d = match scale {
                YScale::Log10 => 0.5,
                YScale::Linear if v == 0.0 => 0.5,
                YScale::Linear => 0.1 * v.abs(),
            };
            (v - d, v + d)
        }
        None => (0.0, 1.0),
    });
    Ok(Frame {
        x,
        y,
        has_data: x_extent.is_some(),
        integer_x: points().all(|(x, _)| x.fract() == 0.0),
    })
}

/// A series split at its gaps into runs of drawable points, in axis units.
fn runs(series: &Series, scale: YScale) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![Vec::new()];
    for &(x, y) in &series.points {
        if valid_point(scale, (x, y)) {
            let y = match scale {
                YScale::Linear => y,
                YScale::Log10 => y.log10(),
            };
            out.last_mut().expect("one run").push((x, y));
        } else if !out.last().expect("one run").is_empty() {
            out.push(Vec::new());
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

fn tick_label(v: f64, step_hint: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let decimals = if step_hint >= 1.0 {
        0
    } else {
        (-step_hint.log10().floor()) as usize + 1
    }
    .min(6);
    let s = format!("{v:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> voc_core::Result<()> {
    let f = frame(panel)?;
    let (w, h) = area.dim_in_pixel();
    let big = w >= 560 && h >= 400;
    let (title_px, text_px) = if big { (24, 17) } else { (17, 13) };
    let err = |e| draw_error(&format!("chart panel '{}'", panel.title), e);
    let mut builder = ChartBuilder::on(area);
    builder
        .margin(8)
        .x_label_area_size(if panel.x_label.is_empty() { 24 } else { 42 })
        .y_label_area_size(if big { 70 } else { 54 });
    if !panel.title.is_empty() {
        builder.caption(&panel.title, (FONT, title_px));
    }
    let mut chart = builder
        .build_cartesian_2d(f.x.0..f.x.1, f.y.0..f.y.1)
        .map_err(err)?;
    let x_step = (f.x.1 - f.x.0) / 6.0;
    let y_step = (f.y.1 - f.y.0) / 6.0;
    let x_fmt = |v: &f64| tick_label(*v, x_step);
    let y_fmt = |v: &f64| match panel.y_scale {
        YScale::Linear => tick_label(*v, y_step),
        YScale::Log10 if v.fract().abs() < 1e-9 => format!("1E{}", v.round() as i64),
        YScale::Log10 => format!("{:.1E}", 10f64.powf(*v)),
    };
    let x_labels = if f.integer_x {
        ((f.x.1 - f.x.0).round() as usize + 1).clamp(2, 10)
    } else {
        7
    };
    let mut mesh = chart.configure_mesh();
    mesh.light_line_style(WHITE)
        .bold_line_style(GRID)
        .label_style((FONT, text_px))
        .axis_desc_style((FONT, text_px))
        .x_labels(x_labels)
        .y_labels(6)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt);
    if !panel.x_label.is_empty() {
        mesh.x_desc(&panel.x_label);
    }
    if !f.has_data {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw().map_err(err)?;
    for mark in &panel.marks {
        if mark.x.is_finite() && mark.x >= f.x.0 && mark.x <= f.x.1 {
            chart
                .draw_series(std::iter::once(PathElement::new(
                    vec![(mark.x, f.y.0), (mark.x, f.y.1)],
                    MARK.stroke_width(1),
                )))
                .map_err(err)?;
            // At the bottom: the legend sits in the top right corner.
            let label = EmptyElement::at((mark.x, f.y.0))
                + Text::new(
                    mark.label.clone(),
                    (3, -text_px - 3),
                    (FONT, text_px).into_font().color(&MARK),
                );
            chart.draw_series(std::iter::once(label)).map_err(err)?;
        }
    }
    for series in &panel.series {
        let color = rgb(series.color);
        let style = color.stroke_width(2);
        let mut labelled = false;
        for run in runs(series, panel.y_scale) {
            let drawn = if run.len() == 1 {
                chart
                    .draw_series(std::iter::once(Circle::new(run[0], 3, color.filled())))
                    .map_err(err)?
            } else {
                chart
                    .draw_series(LineSeries::new(run, style))
                    .map_err(err)?
            };
            if !labelled && !series.name.is_empty() {
                labelled = true;
                drawn.label(series.name.clone()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2))
                });
            }
        }
    }
    if !f.has_data {
        let centre = ((f.x.0 + f.x.1) / 2.0, (f.y.0 + f.y.1) / 2.0);
        let style =
            (FONT, title_px)
                .into_font()
                .color(&BLACK)
                .pos(plotters::style::text_anchor::Pos::new(
                    plotters::style::text_anchor::HPos::Center,
                    plotters::style::text_anchor::VPos::Center,
                ));
        chart
            .draw_series(std::iter::once(Text::new("NO DATA", centre, style)))
            .map_err(err)?;
    }
    if panel.series.iter().any(|s| !s.name.is_empty()) && f.has_data {
        chart
            .configure_series_labels()
            .label_font((FONT, text_px))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(170, 170, 170))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn check_panels(panels: &[Panel], width: usize, height: usize) -> voc_core::Result<(u32, u32)> {
    if panels.is_empty() {
        return Err(bad("no chart panels to draw".into()));
    }
    if width < MIN_PANEL.0 || height < MIN_PANEL.1 {
        return Err(bad(format!(
            "chart panels of {width}x{height} pixels are too small for their text; at least {}x{} is needed",
            MIN_PANEL.0, MIN_PANEL.1
        )));
    }
    let total = panels.len().checked_mul(width);
    match (
        total.and_then(|t| u32::try_from(t).ok()),
        u32::try_from(height),
    ) {
        (Some(w), Ok(h)) if (w as u64) * (h as u64) <= 1 << 28 => Ok((w, h)),
        _ => Err(bad(format!(
            "{} chart panels of {width}x{height} pixels: too large an image",
            panels.len()
        ))),
    }
}

fn draw_panels<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    panels: &[Panel],
) -> voc_core::Result<()> {
    root.fill(&WHITE).map_err(|e| draw_error("chart", e))?;
    for (area, panel) in root.split_evenly((1, panels.len())).iter().zip(panels) {
        draw_panel(area, panel)?;
    }
    root.present().map_err(|e| draw_error("chart", e))
}

/// Draws the panels side by side, each `panel_width` x `panel_height` pixels, on white. A panel with no
/// point to draw shows its frame and "NO DATA". Errors: no panels, a panel too small for its text, or a
/// fixed range that is not an increasing pair of finite numbers (positive on a log axis).
pub fn render_panels(
    panels: &[Panel],
    panel_width: usize,
    panel_height: usize,
) -> voc_core::Result<voc_core::RgbImage> {
    register_font();
    let (w, h) = check_panels(panels, panel_width, panel_height)?;
    let mut buf = vec![255u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        draw_panels(&root, panels)?;
    }
    voc_core::RgbImage::new(h as usize, w as usize, buf)
}

/// The same picture as [`render_panels`], as an SVG document (text as text, selectable and sharp at
/// any zoom).
pub fn panels_svg(
    panels: &[Panel],
    panel_width: usize,
    panel_height: usize,
) -> voc_core::Result<String> {
    register_font();
    let (w, h) = check_panels(panels, panel_width, panel_height)?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (w, h)).into_drawing_area();
        draw_panels(&root, panels)?;
    }
    Ok(svg)
}

fn named_error(path: &Path, e: CoreError) -> DataError {
    let shown = path.display().to_string();
    match e {
        CoreError::Io { source, .. } => DataError::Io {
            path: path.to_path_buf(),
            source,
        },
        CoreError::Png { source, .. } => DataError::BadImage {
            path: path.to_path_buf(),
            msg: format!("cannot encode PNG: {source}"),
        },
        CoreError::BadArgument(msg) if msg.contains(&shown) => DataError::BadArgument(msg),
        CoreError::BadArgument(msg) => DataError::BadArgument(format!("{shown}: {msg}")),
    }
}

/// [`render_panels`], written to `path` as a PNG atomically (the old file, if any, stays until the new
/// one is complete). Every error names `path`.
pub fn write_panels_png(
    path: &Path,
    panels: &[Panel],
    panel_width: usize,
    panel_height: usize,
) -> Result<()> {
    let image =
        render_panels(panels, panel_width, panel_height).map_err(|e| named_error(path, e))?;
    image.write_png(path).map_err(|e| named_error(path, e))
}

/// Horizontal bars, one per labelled value, top to bottom in the given order (sort them first for a
/// ranking): class counts, per-class AP or IoU.
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    /// Drawn above the bars.
    pub title: String,
    /// The value axis' name.
    pub x_label: String,
    /// `(label, value)`, drawn top to bottom; non-finite values are drawn as empty rows.
    pub bars: Vec<(String, f64)>,
    /// Bar colour.
    pub color: [u8; 3],
    /// A fixed value range, e.g. `(0, 1)` for scores; `None`: 0 to the largest value.
    pub x_range: Option<(f64, f64)>,
}

/// Pixels per bar row.
const BAR_ROW: usize = 19;

impl BarChart {
    /// The picture's height for its number of bars.
    pub fn height(&self) -> usize {
        70 + BAR_ROW * self.bars.len().max(1)
    }
}

fn draw_bars<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    chart_spec: &BarChart,
) -> voc_core::Result<()> {
    let err = |e| draw_error(&format!("bar chart '{}'", chart_spec.title), e);
    root.fill(&WHITE).map_err(err)?;
    let n = chart_spec.bars.len().max(1);
    let high = chart_spec
        .bars
        .iter()
        .map(|b| b.1)
        .filter(|v| v.is_finite())
        .fold(0.0f64, f64::max);
    let (lo, hi) = chart_spec
        .x_range
        .unwrap_or((0.0, if high > 0.0 { high * 1.08 } else { 1.0 }));
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        return Err(bad(format!(
            "bar chart '{}': value range ({lo}, {hi}) is not an increasing pair of finite numbers",
            chart_spec.title
        )));
    }
    let label_w = chart_spec
        .bars
        .iter()
        .map(|b| b.0.chars().count())
        .max()
        .unwrap_or(4) as u32
        * 8
        + 12;
    let mut chart = ChartBuilder::on(root)
        .margin(8)
        .caption(&chart_spec.title, (FONT, 17))
        .x_label_area_size(34)
        .y_label_area_size(label_w.min(220))
        .build_cartesian_2d(lo..hi, (0..n - 1).into_segmented())
        .map_err(err)?;
    let names: Vec<&str> = chart_spec.bars.iter().map(|b| b.0.as_str()).collect();
    // Row 0 at the top: plotters counts segments upwards.
    let y_fmt = |v: &SegmentValue<usize>| match v {
        SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => names
            .get(n - 1 - (*i).min(n - 1))
            .copied()
            .unwrap_or("")
            .to_string(),
        SegmentValue::Last => String::new(),
    };
    let x_step = (hi - lo) / 6.0;
    let x_fmt = |v: &f64| tick_label(*v, x_step);
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE)
        .bold_line_style(GRID)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 13))
        .y_labels(n)
        .y_label_formatter(&y_fmt)
        .x_label_formatter(&x_fmt)
        .x_desc(&chart_spec.x_label)
        .draw()
        .map_err(err)?;
    let color = rgb(chart_spec.color);
    chart
        .draw_series(
            chart_spec
                .bars
                .iter()
                .enumerate()
                .filter(|(_, b)| b.1.is_finite())
                .map(|(i, b)| {
                    let row = n - 1 - i;
                    let mut bar = Rectangle::new(
                        [
                            (lo, SegmentValue::Exact(row)),
                            (b.1.clamp(lo, hi), SegmentValue::Exact(row + 1)),
                        ],
                        color.filled(),
                    );
                    bar.set_margin(2, 2, 0, 0);
                    bar
                }),
        )
        .map_err(err)?;
    root.present().map_err(err)
}

/// A bar chart as SVG, `width` pixels wide and [`BarChart::height`] tall.
pub fn bars_svg(chart: &BarChart, width: usize) -> voc_core::Result<String> {
    register_font();
    if !(200..=4096).contains(&width) {
        return Err(bad(format!(
            "bar chart '{}': width {width} is outside 200..=4096 pixels",
            chart.title
        )));
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width as u32, chart.height() as u32))
            .into_drawing_area();
        draw_bars(&root, chart)?;
    }
    Ok(svg)
}

/// A bar chart as an RGB image, `width` pixels wide and [`BarChart::height`] tall.
pub fn render_bars(chart: &BarChart, width: usize) -> voc_core::Result<voc_core::RgbImage> {
    register_font();
    if !(200..=4096).contains(&width) {
        return Err(bad(format!(
            "bar chart '{}': width {width} is outside 200..=4096 pixels",
            chart.title
        )));
    }
    let h = chart.height();
    let mut buf = vec![255u8; width * h * 3];
    {
        let root =
            BitMapBackend::with_buffer(&mut buf, (width as u32, h as u32)).into_drawing_area();
        draw_bars(&root, chart)?;
    }
    voc_core::RgbImage::new(h, width, buf)
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
    image.write_png(png).map_err(|e| named_error(png, e))?;
    Ok(())
}

/// Cell side of the confusion picture, in pixels.
const CELL: usize = 26;

struct ConfusionLayout {
    left: usize,
    top: usize,
    width: usize,
    height: usize,
}

fn confusion_layout(names: &[String], counts: &[Vec<u64>]) -> voc_core::Result<ConfusionLayout> {
    let n = names.len();
    if n == 0 || counts.len() != n || counts.iter().any(|row| row.len() != n) {
        return Err(bad(format!(
            "confusion chart: expected a {n} x {n} matrix for {n} class names, got {} rows",
            counts.len()
        )));
    }
    if n > 256 {
        return Err(bad(format!(
            "confusion chart: {n} classes; at most 256 are drawn"
        )));
    }
    let label_chars = names
        .iter()
        .map(|name| name.chars().count() + 3)
        .max()
        .unwrap_or(0);
    let left = 8 + label_chars * 7 + 8;
    let top = 8 + 22 + 8 + 14;
    // Wide enough for the note under the matrix.
    let width = (left + n * CELL + 8).max(470);
    let height = top + n * CELL + 8 + 14 + 8;
    Ok(ConfusionLayout {
        left,
        top,
        width,
        height,
    })
}

fn draw_confusion<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    layout: &ConfusionLayout,
    title: &str,
    names: &[String],
    counts: &[Vec<u64>],
) -> voc_core::Result<()> {
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let err = |e| draw_error("confusion chart", e);
    root.fill(&WHITE).map_err(err)?;
    let text = |size: u32, color: RGBColor| (FONT, size).into_font().color(&color);
    let centred =
        |size: u32, color: RGBColor| text(size, color).pos(Pos::new(HPos::Center, VPos::Center));
    root.draw(&Text::new(title.to_string(), (8, 8), text(17, BLACK)))
        .map_err(err)?;
    let (left, top) = (layout.left as i32, layout.top as i32);
    let cell = CELL as i32;
    for j in 0..names.len() as i32 {
        root.draw(&Text::new(
            j.to_string(),
            (left + j * cell + cell / 2, top - 8),
            centred(11, RGBColor(60, 60, 60)),
        ))
        .map_err(err)?;
    }
    for (i, row) in counts.iter().enumerate() {
        let y0 = top + i as i32 * cell;
        root.draw(&Text::new(
            format!("{i:>2} {}", names[i]),
            (8, y0 + cell / 2),
            text(11, BLACK).pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(err)?;
        let total: u64 = row.iter().sum();
        for (j, &count) in row.iter().enumerate() {
            let share = if total > 0 {
                count as f64 / total as f64
            } else {
                0.0
            };
            // White to dark blue (8, 48, 107).
            let mix = |white: f64, dark: f64| (white + (dark - white) * share).round() as u8;
            let color = RGBColor(mix(255.0, 8.0), mix(255.0, 48.0), mix(255.0, 107.0));
            let x0 = left + j as i32 * cell;
            root.draw(&Rectangle::new(
                [(x0 + 1, y0 + 1), (x0 + cell - 1, y0 + cell - 1)],
                color.filled(),
            ))
            .map_err(err)?;
            let percent = (100.0 * share).round() as u32;
            if percent >= 1 {
                let ink = if share > 0.5 { WHITE } else { BLACK };
                root.draw(&Text::new(
                    percent.to_string(),
                    (x0 + cell / 2, y0 + cell / 2),
                    centred(10, ink),
                ))
                .map_err(err)?;
            }
        }
    }
    let note = "rows = true class, columns = predicted class, cells = % of the row's pixels";
    root.draw(&Text::new(
        note,
        (8, top + names.len() as i32 * cell + 8),
        text(11, RGBColor(60, 60, 60)),
    ))
    .map_err(err)?;
    root.present().map_err(err)
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
    register_font();
    let layout = confusion_layout(names, counts)?;
    let mut buf = vec![255u8; layout.width * layout.height * 3];
    {
        let root =
            BitMapBackend::with_buffer(&mut buf, (layout.width as u32, layout.height as u32))
                .into_drawing_area();
        draw_confusion(&root, &layout, title, names, counts)?;
    }
    voc_core::RgbImage::new(layout.height, layout.width, buf)
}

/// [`render_confusion`] as an SVG document.
pub fn confusion_svg(
    title: &str,
    names: &[String],
    counts: &[Vec<u64>],
) -> voc_core::Result<String> {
    register_font();
    let layout = confusion_layout(names, counts)?;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (layout.width as u32, layout.height as u32))
            .into_drawing_area();
        draw_confusion(&root, &layout, title, names, counts)?;
    }
    Ok(svg)
}

/// One epoch of a training run, as [`training_curve_panels`] plots it.
pub trait EpochPoint {
    /// 1-based epoch.
    fn epoch(&self) -> usize;
    /// Mean training loss over the epoch.
    fn train_loss(&self) -> f64;
    /// Loss on the validation images.
    fn val_loss(&self) -> f64;
    /// The learning rate the epoch ran at.
    fn learning_rate(&self) -> f64;
}

/// A named validation score of an epoch, for [`training_curve_panels`].
pub type EpochScore<'a, R> = (&'a str, fn(&R) -> f64);

/// The three panels of a training run's `curves.png`: the training and validation loss, the
/// validation `scores` (name and value, on 0..1) and the learning rate (log scale), each with the
/// run's best and stopping epochs marked.
pub fn training_curve_panels<R: EpochPoint>(
    records: &[R],
    scores: &[EpochScore<'_, R>],
    best_epoch: Option<usize>,
    stopped_at: Option<usize>,
) -> Vec<Panel> {
    let series = |name: &str, color: usize, f: &dyn Fn(&R) -> f64| {
        Series::new(
            name,
            SERIES_COLORS[color % SERIES_COLORS.len()],
            records.iter().map(|r| (r.epoch() as f64, f(r))).collect(),
        )
    };
    // Scores skip the validation loss's colour, so a score never looks like a loss.
    let score_colors = [0, 2, 3, 5];
    [
        Panel::new(
            "Loss",
            "epoch",
            vec![
                series("train", 0, &|r| r.train_loss()),
                series("validation", 1, &|r| r.val_loss()),
            ],
        ),
        Panel::new(
            "Validation scores",
            "epoch",
            scores
                .iter()
                .zip(score_colors.iter().cycle())
                .map(|((name, f), &color)| series(name, color, f))
                .collect(),
        )
        .with_y_range(0.0, 1.0),
        Panel::new(
            "Learning rate",
            "epoch",
            vec![series("lr", 4, &|r| r.learning_rate())],
        )
        .log_y(),
    ]
    .into_iter()
    .map(|p| p.with_run_marks(best_epoch, stopped_at))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Epoch(usize, f64);

    impl EpochPoint for Epoch {
        fn epoch(&self) -> usize {
            self.0
        }
        fn train_loss(&self) -> f64 {
            1.0 / self.0 as f64
        }
        fn val_loss(&self) -> f64 {
            2.0 / self.0 as f64
        }
        fn learning_rate(&self) -> f64 {
            1e-3
        }
    }

    #[test]
    fn training_curves_are_loss_scores_and_rate_with_the_run_marks() {
        let records = [Epoch(1, 0.2), Epoch(2, 0.5), Epoch(3, 0.4)];
        let scores: [EpochScore<'_, Epoch>; 2] = [("mAP", |r| r.1), ("Dice", |r| r.1 / 2.0)];
        let panels = training_curve_panels(&records, &scores, Some(2), Some(3));
        let titles: Vec<&str> = panels.iter().map(|p| p.title.as_str()).collect();
        assert_eq!(titles, ["Loss", "Validation scores", "Learning rate"]);
        let names = |p: &Panel| p.series.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&panels[0]), ["train", "validation"]);
        assert_eq!(names(&panels[1]), ["mAP", "Dice"]);
        assert_eq!(
            panels[1].series[1].points,
            [(1.0, 0.1), (2.0, 0.25), (3.0, 0.2)]
        );
        assert_eq!(panels[0].series[1].points[1], (2.0, 1.0));
        // Scores never take the validation loss's colour.
        assert!(panels[1]
            .series
            .iter()
            .all(|s| s.color != panels[0].series[1].color));
        assert_eq!(panels[1].y_range, Some((0.0, 1.0)));
        assert_eq!(panels[2].y_scale, YScale::Log10);
        for p in &panels {
            let marks: Vec<&str> = p.marks.iter().map(|m| m.label.as_str()).collect();
            assert_eq!(marks, ["best 2", "stop 3"]);
        }
    }

    fn series(color: [u8; 3], points: &[(f64, f64)]) -> Series {
        Series::new("", color, points.to_vec())
    }

    fn count(image: &voc_core::RgbImage, color: [u8; 3]) -> usize {
        image.as_bytes().chunks(3).filter(|p| *p == color).count()
    }

    #[test]
    fn the_bundled_font_parses() {
        assert!(plotters::style::register_font("voc-test", FontStyle::Normal, FONT_BYTES).is_ok());
    }

    #[test]
    fn tick_labels_use_the_steps_decimals() {
        assert_eq!(tick_label(0.25, 0.05), "0.25");
        assert_eq!(tick_label(2.0, 1.0), "2");
        assert_eq!(tick_label(0.0, 0.1), "0");
        assert_eq!(tick_label(0.001, 0.0005), "0.001");
    }

    #[test]
    fn fixed_range_and_constant_series() {
        let p = Panel::new("t", "", vec![series([1, 2, 3], &[(0.0, 2.0), (1.0, 2.0)])]);
        let f = frame(&p).unwrap();
        assert!((f.y.0 - 1.8).abs() < 1e-12 && (f.y.1 - 2.2).abs() < 1e-12);
        let f = frame(&p.clone().with_y_range(0.0, 5.0)).unwrap();
        assert_eq!(f.y, (0.0, 5.0));
        let zero = Panel::new("t", "", vec![series([1, 2, 3], &[(0.0, 0.0)])]);
        let f = frame(&zero).unwrap();
        assert_eq!(f.y, (-0.5, 0.5));
        assert_eq!(f.x, (-0.5, 0.5));
    }

    #[test]
    fn gaps_split_runs_and_log_drops_non_positive() {
        let s = series(
            [0, 0, 0],
            &[(0.0, 1.0), (1.0, f64::NAN), (2.0, 1.0), (3.0, 2.0)],
        );
        assert_eq!(runs(&s, YScale::Linear).len(), 2);
        let s = series([0, 0, 0], &[(0.0, 1.0), (1.0, 0.0), (2.0, 10.0)]);
        let r = runs(&s, YScale::Log10);
        assert_eq!(r, vec![vec![(0.0, 0.0)], vec![(2.0, 1.0)]]);
    }

    #[test]
    fn a_single_point_is_a_dot() {
        let p = Panel::new("t", "", vec![series([200, 10, 10], &[(1.0, 1.0)])]);
        let image = render_panels(&[p], 200, 150).unwrap();
        assert!(count(&image, [200, 10, 10]) >= 9);
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(render_panels(&[], 200, 150).is_err());
        let p = Panel::new("t", "", vec![]);
        assert!(render_panels(std::slice::from_ref(&p), 50, 150).is_err());
        assert!(render_panels(&[p.clone().with_y_range(1.0, 0.0)], 200, 150).is_err());
        assert!(render_panels(&[p.clone().log_y().with_y_range(0.0, 1.0)], 200, 150).is_err());
        assert!(render_panels(&[p], usize::MAX / 2, 150).is_err());
        assert!(render_confusion("c", &["a".into()], &[vec![1, 2]]).is_err());
    }

    #[test]
    fn marks_are_drawn() {
        let p = Panel::new(
            "t",
            "epoch",
            vec![series([0, 114, 178], &[(1.0, 0.5), (5.0, 0.9)])],
        );
        let plain = render_panels(std::slice::from_ref(&p), 300, 200).unwrap();
        let marked = render_panels(&[p.with_mark(3.0, "best")], 300, 200).unwrap();
        assert!(count(&marked, [120, 120, 120]) > count(&plain, [120, 120, 120]) + 50);
    }

    #[test]
    fn bars_and_confusion_render_both_ways() {
        let chart = BarChart {
            title: "AP".into(),
            x_label: "AP".into(),
            bars: vec![
                ("cat".into(), 0.9),
                ("dog".into(), 0.5),
                ("cow".into(), f64::NAN),
            ],
            color: SERIES_COLORS[0],
            x_range: Some((0.0, 1.0)),
        };
        let image = render_bars(&chart, 400).unwrap();
        assert_eq!(image.height(), chart.height());
        assert!(count(&image, SERIES_COLORS[0]) > 1000);
        let svg = bars_svg(&chart, 400).unwrap();
        assert!(svg.contains("cat") && svg.contains("dog"));
        let names = ["background", "cat"].map(String::from);
        let svg = confusion_svg("c", &names, &[vec![90, 10], vec![5, 45]]).unwrap();
        assert!(svg.contains("background") && svg.contains("\n90\n"));
    }
}
