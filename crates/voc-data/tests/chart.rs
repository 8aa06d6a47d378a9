//! Training-curve charts: where series land in the image, gaps, log axes, empty panels, PNG output.
use voc_data::chart::{render_panels, write_panels_png, Panel, Series, YScale, SERIES_COLORS};

const W: usize = 400;
const H: usize = 260;

fn panel(series: Vec<Series>) -> Panel {
    Panel::new("Loss", "epoch", series)
}

/// An unnamed series (so no legend swatch shares its colour).
fn curve(color: [u8; 3], points: &[(f64, f64)]) -> Series {
    Series::new("", color, points.to_vec())
}

/// The (column, row) of every pixel of `color`.
fn pixels_of(image: &voc_core::RgbImage, color: [u8; 3]) -> Vec<(usize, usize)> {
    let mut found = Vec::new();
    for y in 0..image.height() {
        for x in 0..image.width() {
            if image.pixel(y, x) == color {
                found.push((x, y));
            }
        }
    }
    found
}

fn mean_row(pixels: &[(usize, usize)]) -> f64 {
    pixels.iter().map(|p| p.1 as f64).sum::<f64>() / pixels.len() as f64
}

#[test]
fn image_is_the_panels_side_by_side() {
    let p = panel(vec![curve(SERIES_COLORS[0], &[(0.0, 1.0), (1.0, 0.5)])]);
    let image = render_panels(&[p.clone(), p.clone(), p], W, H).unwrap();
    assert_eq!((image.width(), image.height()), (3 * W, H));
    // White background, black text and frame.
    assert_eq!(image.pixel(0, 0), [255, 255, 255]);
    assert!(!pixels_of(&image, [0, 0, 0]).is_empty());
}

#[test]
fn each_panels_series_lands_in_its_own_panel() {
    let (a, b) = (SERIES_COLORS[0], SERIES_COLORS[1]);
    let first = panel(vec![Series::new("train", a, vec![(0.0, 2.0), (9.0, 1.0)])]);
    let second = panel(vec![Series::new("val", b, vec![(0.0, 0.1), (9.0, 0.9)])]);
    let image = render_panels(&[first, second], W, H).unwrap();
    let (pa, pb) = (pixels_of(&image, a), pixels_of(&image, b));
    assert!(pa.len() > 100 && pb.len() > 100);
    assert!(pa.iter().all(|&(x, _)| x < W));
    assert!(pb.iter().all(|&(x, _)| x >= W));
    // A falling line: its left end higher (smaller row) than its right end.
    let left: Vec<_> = pa.iter().copied().filter(|p| p.0 < W / 3).collect();
    let right: Vec<_> = pa.iter().copied().filter(|p| p.0 > 2 * W / 3).collect();
    assert!(mean_row(&left) < mean_row(&right));
}

#[test]
fn nan_is_a_gap() {
    let color = SERIES_COLORS[2];
    let middle = |points: &[(f64, f64)]| {
        let image = render_panels(&[panel(vec![curve(color, points)])], W, H).unwrap();
        let all = pixels_of(&image, color);
        assert!(!all.is_empty());
        all.iter()
            .filter(|p| p.0 > 2 * W / 5 && p.0 < 3 * W / 5)
            .count()
    };
    assert!(middle(&[(0.0, 0.0), (1.0, 0.0), (2.0, 0.0)]) > 0);
    // The two ends are dots, nothing joins them.
    assert_eq!(middle(&[(0.0, 0.0), (1.0, f64::NAN), (2.0, 0.0)]), 0);
    assert_eq!(middle(&[(0.0, 0.0), (1.0, f64::INFINITY), (2.0, 0.0)]), 0);
}

#[test]
fn log_scale_puts_smaller_values_lower() {
    let (a, b) = (SERIES_COLORS[0], SERIES_COLORS[1]);
    let mut p = panel(vec![
        curve(a, &[(0.0, 1e-3), (5.0, 1e-3)]),
        curve(b, &[(0.0, 1e-2), (5.0, 1e-2)]),
        // Not drawable on a log axis: skipped, not an error.
        curve(SERIES_COLORS[3], &[(0.0, 0.0), (5.0, -1.0)]),
    ]);
    p.y_scale = YScale::Log10;
    let image = render_panels(&[p], W, H).unwrap();
    let (pa, pb) = (pixels_of(&image, a), pixels_of(&image, b));
    assert!(mean_row(&pa) > mean_row(&pb) + 50.0);
    assert!(pixels_of(&image, SERIES_COLORS[3]).is_empty());
}

#[test]
fn a_panel_without_data_says_so() {
    let no_series = panel(vec![]);
    let all_gaps = panel(vec![curve(SERIES_COLORS[0], &[(0.0, f64::NAN)])]);
    let mut log_non_positive = panel(vec![curve(SERIES_COLORS[0], &[(0.0, 0.0), (1.0, -2.0)])]);
    log_non_positive.y_scale = YScale::Log10;
    let image = render_panels(&[no_series, all_gaps, log_non_positive], W, H).unwrap();
    assert!(pixels_of(&image, SERIES_COLORS[0]).is_empty());
    for i in 0..3 {
        // "NO DATA" in dark (anti-aliased) text around the middle of each panel.
        let centre = (i * W + W / 2, H / 2);
        let text = (0..image.height())
            .flat_map(|y| (0..image.width()).map(move |x| (x, y)))
            .filter(|p| p.0.abs_diff(centre.0) < 40 && p.1.abs_diff(centre.1) < 20)
            .filter(|&(x, y)| image.pixel(y, x).iter().map(|&c| u32::from(c)).sum::<u32>() < 200)
            .count();
        assert!(text > 20, "panel {i}: {text} text pixels");
    }
}

#[test]
fn fixed_y_range_is_kept() {
    let color = SERIES_COLORS[4];
    let rising = || vec![curve(color, &[(0.0, 0.4), (10.0, 0.6)])];
    let rows = |p: Panel| {
        let image = render_panels(&[p], W, H).unwrap();
        let px = pixels_of(&image, color);
        let (lo, hi) = px
            .iter()
            .fold((H, 0), |(lo, hi), p| (lo.min(p.1), hi.max(p.1)));
        hi - lo
    };
    let auto = rows(panel(rising()));
    let mut fixed = panel(rising());
    fixed.y_range = Some((0.0, 1.0));
    let fixed = rows(fixed);
    // Auto: 0.4..0.6 fills the plot height; fixed 0..1: a fifth of it.
    assert!(auto > H / 2, "{auto}");
    assert!(fixed < H / 4 && fixed * 3 < auto, "{fixed} vs {auto}");
}

#[test]
fn png_reads_back_at_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("curves.png");
    let mut lr = panel(vec![curve(SERIES_COLORS[3], &[(0.0, 1e-3), (3.0, 1e-5)])]);
    lr.y_scale = YScale::Log10;
    let panels = [panel(vec![curve(SERIES_COLORS[0], &[(0.0, 1.0)])]), lr];
    write_panels_png(&path, &panels, W, H).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!((info.width, info.height), (2 * W as u32, H as u32));
    assert_eq!(info.color_type, png::ColorType::Rgb);
    let expected = render_panels(&panels, W, H).unwrap();
    assert_eq!(&buf[..info.buffer_size()], expected.as_bytes());
}

#[test]
fn errors_name_the_path() {
    let panels = [panel(vec![curve(SERIES_COLORS[0], &[(0.0, 1.0)])])];
    let missing = std::path::Path::new("/nonexistent-voc-chart-dir/sub/curves.png");
    let e = write_panels_png(missing, &panels, W, H).unwrap_err();
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    // A folder where the file should go.
    let dir = tempfile::tempdir().unwrap();
    let e = write_panels_png(dir.path(), &panels, W, H).unwrap_err();
    assert!(
        e.to_string().contains(&dir.path().display().to_string()),
        "{e}"
    );
    // A chart that cannot be drawn is named by the file it was for.
    let target = dir.path().join("tiny.png");
    let e = write_panels_png(&target, &panels, 20, 20).unwrap_err();
    assert!(e.to_string().contains(&target.display().to_string()), "{e}");
    let e = write_panels_png(&target, &[], W, H).unwrap_err();
    assert!(e.to_string().contains("no chart panels"), "{e}");
    assert!(!target.exists());
}
