//! `voc report`: one self-contained HTML page of run folders (training and attack runs), the data and a
//! submission. Everything is inline (SVG charts from voc-data's plotters code, pictures as data URIs),
//! so the file opens offline in any browser and prints. The folders it reads are described in
//! `docs/run-folder.md`.
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use base64::Engine as _;
use clap::Args;
use serde_json::Value;
use voc_core::{Mask, RgbImage, CLASS_NAMES, MASK_CLASS_NAMES, NUM_CLASSES};
use voc_data::chart::{self, BarChart, Panel, Series, SERIES_COLORS};
use voc_data::{CompetitionDir, SplitIndex, SplitStats};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Run folders: `voc train classify|segment` runs and `voc attack` runs, in the order shown.
    #[arg(value_name = "RUN")]
    pub runs: Vec<PathBuf>,
    /// The competition data folder: adds the data section, and is where the best and worst validation
    /// images are read from when a run's own data folder (in its config.json) is gone.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// A submission to check (`voc validate`) and, when the split is labelled, score (`voc score`).
    #[arg(long)]
    pub submission: Option<PathBuf>,
    /// The split the submission is for.
    #[arg(long, default_value = "test")]
    pub split: String,
    /// The report's title.
    #[arg(long, default_value = "voc report")]
    pub title: String,
    /// The HTML file to write (atomically).
    #[arg(long, default_value = "report.html")]
    pub out: PathBuf,
    /// Print a JSON summary (file, bytes, sections) instead of the one-line summary.
    #[arg(long)]
    pub json: bool,
}

/// What a run folder holds.
enum Run {
    Classify(TrainRun),
    Segment(TrainRun),
    Attack { dir: PathBuf, report: Value },
}

struct TrainRun {
    dir: PathBuf,
    name: String,
    config: Value,
    data: PathBuf,
    records: Vec<Value>,
}

fn run_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))
}

fn open_run(dir: &Path) -> anyhow::Result<Run> {
    if !dir.is_dir() {
        bail!(
            "{}: not a folder (a run folder was expected)",
            dir.display()
        );
    }
    let attack = dir.join("report.json");
    if attack.is_file() {
        let report = read_json(&attack)?;
        match report.get("task").and_then(Value::as_str) {
            Some("classify" | "segment") => {
                return Ok(Run::Attack {
                    dir: dir.to_path_buf(),
                    report,
                })
            }
            _ => bail!(
                "{}: not a voc attack report (expected \"task\": \"classify\" or \"segment\")",
                attack.display()
            ),
        }
    }
    let config_path = dir.join("config.json");
    if !config_path.is_file() {
        bail!(
            "{}: not a voc run folder (no config.json of a training run, no report.json of an attack run)",
            dir.display()
        );
    }
    let saved = read_json(&config_path)?;
    let format = saved.get("format").and_then(Value::as_u64).unwrap_or(1);
    if format > u64::from(voc_tensor::run::RUN_FORMAT) {
        bail!(
            "{}: run-folder format {format}; this voc reads format {} and older",
            config_path.display(),
            voc_tensor::run::RUN_FORMAT
        );
    }
    let config = saved
        .get("config")
        .cloned()
        .with_context(|| format!("{}: no \"config\" object", config_path.display()))?;
    let data = PathBuf::from(saved.get("data").and_then(Value::as_str).unwrap_or(""));
    let records: Vec<Value> = voc_tensor::run::read_jsonl(&dir.join("metrics.jsonl"))?;
    let run = TrainRun {
        dir: dir.to_path_buf(),
        name: run_name(dir),
        config,
        data,
        records,
    };
    if run.config.get("mode").is_some() {
        Ok(Run::Classify(run))
    } else if run.config.get("crop").is_some() {
        Ok(Run::Segment(run))
    } else {
        bail!(
            "{}: a config of neither `voc train classify` (\"mode\") nor `voc train segment` (\"crop\")",
            config_path.display()
        )
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn data_uri(mime: &str, bytes: &[u8]) -> String {
    format!(
        "data:{mime};base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// A picture as an inline JPEG no wider than `max_width` (photos and galleries: a fraction of a PNG's
/// size).
fn jpeg_img(image: &RgbImage, max_width: usize, alt: &str) -> anyhow::Result<String> {
    let small = voc_data::preview::thumbnail(image, max_width)?;
    let bytes = voc_data::preview::to_jpeg(&small, 85)?;
    Ok(format!(
        "<img src=\"{}\" alt=\"{}\" width=\"{}\">",
        data_uri("image/jpeg", &bytes),
        escape(alt),
        small.width()
    ))
}

fn png_file_img(path: &Path, max_width: usize, alt: &str) -> anyhow::Result<String> {
    let image = voc_data::read_rgb_image(path)?;
    jpeg_img(&image, max_width, alt)
}

fn svg_block(svg: voc_core::Result<String>) -> anyhow::Result<String> {
    let svg = svg?;
    // The XML prolog plotters may write is not allowed inside HTML.
    let start = svg.find("<svg").unwrap_or(0);
    Ok(format!("<div class=\"chart\">{}</div>", &svg[start..]))
}

fn num(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "–".into(),
    }
}

/// The points `(epoch, record[key])` of a run's records.
fn curve(records: &[Value], key: &str) -> Vec<(f64, f64)> {
    records
        .iter()
        .map(|r| {
            (
                num(r.get("epoch")).unwrap_or(f64::NAN),
                num(r.get(key)).unwrap_or(f64::NAN),
            )
        })
        .collect()
}

struct Kind {
    metric: &'static str,
    metric_name: &'static str,
    per_class: &'static str,
    class_names: &'static [&'static str],
}

const CLASSIFY: Kind = Kind {
    metric: "val_map",
    metric_name: "val mAP",
    per_class: "val_ap",
    class_names: &CLASS_NAMES,
};
const SEGMENT: Kind = Kind {
    metric: "val_miou",
    metric_name: "val mIoU",
    per_class: "val_iou",
    class_names: &MASK_CLASS_NAMES,
};

impl TrainRun {
    /// The best epoch as the trainer chose it: the highest val mAP, ties to the higher Dice
    /// (classification), or by the monitored value (segmentation).
    fn best_epoch(&self, kind: &Kind) -> Option<usize> {
        let minimise = self.config.get("monitor").and_then(Value::as_str) == Some("val_loss");
        let key = if minimise { "val_loss" } else { kind.metric };
        let tie_break = kind.metric == "val_map";
        let mut best: Option<(f64, f64, usize)> = None;
        for r in &self.records {
            let (Some(v), Some(e)) = (num(r.get(key)), r.get("epoch").and_then(Value::as_u64))
            else {
                continue;
            };
            let dice = num(r.get("val_dice")).unwrap_or(0.0);
            let better = best.is_none_or(|(b, d, _)| {
                if minimise {
                    v < b
                } else {
                    v > b || (tie_break && v == b && dice > d)
                }
            });
            if better {
                best = Some((v, dice, e as usize));
            }
        }
        best.map(|b| b.2)
    }

    fn planned_epochs(&self) -> usize {
        let epochs = self
            .config
            .get("epochs")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let warmup = match self.config.get("mode").and_then(Value::as_str) {
            Some("finetune") => self
                .config
                .get("warmup_head_epochs")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            _ => 0,
        };
        (epochs + warmup) as usize
    }

    fn record(&self, epoch: usize) -> Option<&Value> {
        self.records
            .iter()
            .find(|r| r.get("epoch").and_then(Value::as_u64) == Some(epoch as u64))
    }

    fn seconds(&self) -> f64 {
        self.records
            .iter()
            .filter_map(|r| num(r.get("seconds")))
            .sum()
    }

    fn images_per_s(&self) -> Option<f64> {
        let v: Vec<f64> = self
            .records
            .iter()
            .filter_map(|r| num(r.get("images_per_s")))
            .filter(|v| v.is_finite())
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    }

    fn describe(&self) -> String {
        let get = |k: &str| {
            self.config.get(k).map(|v| {
                v.as_str()
                    .map(String::from)
                    .unwrap_or_else(|| v.to_string())
            })
        };
        match (get("mode"), get("backbone")) {
            (Some(mode), _) => format!("{} {mode}", get("model").unwrap_or_default()),
            (None, Some(backbone)) => format!("{} {backbone}", get("model").unwrap_or_default()),
            _ => get("model").unwrap_or_default(),
        }
    }
}

fn curve_panels(run: &TrainRun, kind: &Kind) -> anyhow::Result<Vec<Panel>> {
    let best = run.best_epoch(kind);
    let last = run
        .records
        .last()
        .and_then(|r| r.get("epoch").and_then(Value::as_u64))
        .unwrap_or(0) as usize;
    let stopped = (last > 0 && last < run.planned_epochs()).then_some(last);
    let metrics = run.dir.join("metrics.jsonl");
    Ok(if kind.metric == "val_map" {
        let records = voc_classify::train::read_records(&metrics)?;
        voc_classify::train::curve_panels(&records, best, stopped)
    } else {
        let records = voc_segment::train::read_seg_records(&metrics)?;
        voc_segment::train::seg_curve_panels(&records, best, stopped)
    })
}

/// Sorted bars of the best epoch's per-class scores.
fn per_class_bars(run: &TrainRun, kind: &Kind) -> Option<BarChart> {
    let epoch = run.best_epoch(kind)?;
    let values = run.record(epoch)?.get(kind.per_class)?.as_array()?;
    // A class without a positive validation image (or pixel) has no score: left out, and counted.
    let mut bars: Vec<(String, f64)> = values
        .iter()
        .zip(kind.class_names)
        .filter_map(|(v, n)| v.as_f64().map(|v| (n.to_string(), v)))
        .collect();
    let unscored = kind.class_names.len() - bars.len();
    bars.sort_by(|a, b| b.1.total_cmp(&a.1));
    let absent = if unscored > 0 {
        format!(" ({unscored} classes absent from validation)")
    } else {
        String::new()
    };
    Some(BarChart {
        title: format!(
            "{} per class, epoch {epoch}{absent}",
            if kind.metric == "val_map" {
                "AP"
            } else {
                "IoU"
            }
        ),
        x_label: if kind.metric == "val_map" {
            "average precision"
        } else {
            "IoU"
        }
        .into(),
        bars,
        color: SERIES_COLORS[0],
        x_range: Some((0.0, 1.0)),
    })
}

/// A validation CSV written by the trainers (`val_scores.csv`): header and rows of fields.
/// A CSV's header and rows.
struct Csv {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

fn read_csv(path: &Path) -> anyhow::Result<Option<Csv>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .with_context(|| format!("{}: empty", path.display()))?
        .split(',')
        .map(String::from)
        .collect();
    let mut rows = Vec::new();
    for (i, line) in lines.enumerate() {
        let row: Vec<String> = line.split(',').map(String::from).collect();
        if row.len() != header.len() {
            bail!(
                "{}: line {} has {} fields; the header has {}",
                path.display(),
                i + 2,
                row.len(),
                header.len()
            );
        }
        rows.push(row);
    }
    Ok(Some(Csv { header, rows }))
}

/// Precision-recall points of scores against truth, by decreasing score.
fn pr_curve(mut pairs: Vec<(f32, bool)>) -> Vec<(f64, f64)> {
    let positives = pairs.iter().filter(|p| p.1).count();
    if positives == 0 {
        return Vec::new();
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
    let mut tp = 0usize;
    let mut points = Vec::with_capacity(pairs.len());
    for (i, (_, t)) in pairs.iter().enumerate() {
        if *t {
            tp += 1;
        }
        points.push((tp as f64 / positives as f64, tp as f64 / (i + 1) as f64));
    }
    points
}

/// The split a run validated on, where its example pictures come from: `config.validation.split`, or
/// the train split a validation fraction was drawn from; read from the run's own data folder when it
/// exists, else from `--data`. Ids repeat across splits, so the split must be the run's.
fn validation_split(run: &TrainRun, data: Option<&Path>) -> Option<SplitIndex> {
    let name = run
        .config
        .get("validation")
        .and_then(|v| v.get("split"))
        .and_then(Value::as_str)
        .unwrap_or("train");
    let folder = if run.data.is_dir() {
        Some(run.data.as_path())
    } else {
        data
    }?;
    CompetitionDir::open(folder).ok()?.split(name).ok()
}

/// Ranks rows by `score` (higher is better) and returns the 6 best and the 6 worst.
type Ranked<T> = Vec<(f64, T)>;

fn best_and_worst<T: Clone>(mut rows: Ranked<T>) -> (Ranked<T>, Ranked<T>) {
    rows.sort_by(|a, b| b.0.total_cmp(&a.0));
    let best: Vec<_> = rows.iter().take(6).cloned().collect();
    let worst: Vec<_> = rows
        .iter()
        .rev()
        .take(6.min(rows.len().saturating_sub(best.len())))
        .cloned()
        .collect();
    (best, worst)
}

fn classify_details(
    run: &TrainRun,
    split: Option<&SplitIndex>,
    html: &mut String,
) -> anyhow::Result<()> {
    let Some(Csv { header, rows }) = read_csv(&run.dir.join("val_scores.csv"))? else {
        html.push_str("<p class=\"note\">No val_scores.csv (a run of an older voc): no PR curves or examples.</p>");
        return Ok(());
    };
    if header.len() != 3 + NUM_CLASSES || header[0] != "Id" {
        bail!(
            "{}: expected the header Id,truth,predicted and the 20 class names",
            run.dir.join("val_scores.csv").display()
        );
    }
    let probs: Vec<Vec<f32>> = rows
        .iter()
        .map(|r| {
            r[3..]
                .iter()
                .map(|v| v.parse::<f32>().unwrap_or(f32::NAN))
                .collect()
        })
        .collect();
    let truth: Vec<Vec<bool>> = rows
        .iter()
        .map(|r| {
            let names: Vec<&str> = r[1].split(' ').collect();
            CLASS_NAMES.iter().map(|c| names.contains(c)).collect()
        })
        .collect();
    // PR curves: micro-average and the three best and three worst classes by AP of the best epoch.
    let mut micro = Vec::new();
    for (p, t) in probs.iter().zip(&truth) {
        micro.extend(p.iter().copied().zip(t.iter().copied()));
    }
    let mut series = vec![Series::new("all classes", [0, 0, 0], pr_curve(micro))];
    if let Some(bars) = per_class_bars(run, &CLASSIFY) {
        let ranked: Vec<&String> = bars
            .bars
            .iter()
            .filter(|b| b.1.is_finite())
            .map(|b| &b.0)
            .collect();
        let mut picks: Vec<&String> = ranked.iter().take(3).copied().collect();
        for name in ranked.iter().rev().take(3) {
            if !picks.contains(name) {
                picks.push(name);
            }
        }
        for (i, name) in picks.iter().enumerate() {
            let Some(c) = CLASS_NAMES.iter().position(|n| n == name) else {
                continue;
            };
            let pairs = probs
                .iter()
                .zip(&truth)
                .map(|(p, t)| (p[c], t[c]))
                .collect();
            series.push(Series::new(
                name.as_str(),
                SERIES_COLORS[i % 6],
                pr_curve(pairs),
            ));
        }
    }
    let mut pr = Panel::new(
        "Precision-recall (validation, best epoch)",
        "recall",
        series,
    )
    .with_y_range(0.0, 1.05);
    pr.x_range = Some((0.0, 1.0));
    html.push_str(&svg_block(chart::panels_svg(&[pr], 560, 380))?);

    // Examples: per-image binary cross-entropy, lowest is best.
    let scored: Vec<(f64, usize)> = probs
        .iter()
        .zip(&truth)
        .enumerate()
        .map(|(i, (p, t))| {
            let bce: f64 = p
                .iter()
                .zip(t)
                .map(|(&q, &y)| {
                    let q = f64::from(q).clamp(1e-7, 1.0 - 1e-7);
                    if y {
                        -q.ln()
                    } else {
                        -(1.0 - q).ln()
                    }
                })
                .sum::<f64>()
                / NUM_CLASSES as f64;
            (-bce, i)
        })
        .collect();
    let (best, worst) = best_and_worst(scored);
    for (title, picks) in [
        ("Best validation images", best),
        ("Worst validation images", worst),
    ] {
        let _ = write!(html, "<h4>{title}</h4><div class=\"tiles\">");
        for (score, i) in picks {
            let id = &rows[i][0];
            let picture = match split.filter(|s| s.position(id).is_some()) {
                Some(split) => jpeg_img(&split.read_rgb_image(id)?, 200, id)?,
                None => "<div class=\"missing\">image not in the data folder</div>".into(),
            };
            let _ = write!(
                html,
                "<figure>{picture}<figcaption><b>{}</b> (BCE {:.3})<br>true: {}<br>predicted: {}</figcaption></figure>",
                escape(id),
                -score,
                escape(&rows[i][1]),
                escape(&rows[i][2])
            );
        }
        html.push_str("</div>");
    }
    Ok(())
}

fn segment_details(
    run: &TrainRun,
    split: Option<&SplitIndex>,
    html: &mut String,
) -> anyhow::Result<()> {
    let confusion = run.dir.join("confusion.csv");
    if let Some(Csv { header, rows }) = read_csv(&confusion)? {
        let names: Vec<String> = header[1..].to_vec();
        let counts: Vec<Vec<u64>> = rows
            .iter()
            .map(|r| r[1..].iter().map(|v| v.parse().unwrap_or(0)).collect())
            .collect();
        html.push_str(&svg_block(chart::confusion_svg(
            "Confusion matrix (validation, best epoch)",
            &names,
            &counts,
        ))?);
    }
    let Some(Csv { header, rows }) = read_csv(&run.dir.join("val_scores.csv"))? else {
        html.push_str(
            "<p class=\"note\">No val_scores.csv (a run of an older voc): no examples.</p>",
        );
        return Ok(());
    };
    if header.first().map(String::as_str) != Some("Id") || header.len() != 5 {
        bail!(
            "{}: expected the header Id,pixel_accuracy,miou,truth,predicted",
            run.dir.join("val_scores.csv").display()
        );
    }
    let examples = run.dir.join("val_examples");
    let scored: Vec<(f64, usize)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| examples.join(format!("{}.png", r[0])).is_file())
        .map(|(i, r)| (r[2].parse::<f64>().unwrap_or(f64::NAN), i))
        .collect();
    let (best, worst) = best_and_worst(scored);
    for (title, picks) in [
        ("Best validation images", best),
        ("Worst validation images", worst),
    ] {
        let _ = write!(
            html,
            "<h4>{title} <small>(image | truth | prediction, by the image's mIoU)</small></h4><div class=\"tiles\">"
        );
        for (score, i) in picks {
            let id = &rows[i][0];
            let predicted = Mask::read_png(&examples.join(format!("{id}.png")))?;
            let mut pictures = String::new();
            match split.filter(|s| s.position(id).is_some()) {
                Some(split) => {
                    let image = split.read_rgb_image(id)?;
                    pictures.push_str(&jpeg_img(&image, 160, id)?);
                    if let Ok(truth) = split.read_checked_mask(id) {
                        pictures.push_str(&jpeg_img(&truth.overlay(&image, 0.55)?, 160, "truth")?);
                    }
                    pictures.push_str(&jpeg_img(
                        &predicted.overlay(&image, 0.55)?,
                        160,
                        "prediction",
                    )?);
                }
                None => pictures.push_str(&jpeg_img(&predicted.colorize(), 160, "prediction")?),
            }
            let _ = write!(
                html,
                "<figure class=\"wide\">{pictures}<figcaption><b>{}</b> mIoU {score:.3}, pixel accuracy {}<br>true: {}<br>predicted: {}</figcaption></figure>",
                escape(id),
                escape(&rows[i][1]),
                escape(&rows[i][3]),
                escape(&rows[i][4])
            );
        }
        html.push_str("</div>");
    }
    Ok(())
}

fn config_table(config: &Value) -> String {
    let mut html = String::from("<table class=\"config\">");
    if let Some(map) = config.as_object() {
        for (k, v) in map {
            let v = v
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string());
            let _ = write!(
                html,
                "<tr><th>{}</th><td>{}</td></tr>",
                escape(k),
                escape(&v)
            );
        }
    }
    html.push_str("</table>");
    html
}

fn train_section(
    run: &TrainRun,
    kind: &Kind,
    split: Option<&SplitIndex>,
    anchor: &str,
) -> anyhow::Result<String> {
    let mut html = String::new();
    let task = if kind.metric == "val_map" {
        "classification"
    } else {
        "segmentation"
    };
    let _ = write!(
        html,
        "<section id=\"{anchor}\"><h2>Training run <code>{}</code> <small>({task}, {})</small></h2>",
        escape(&run.name),
        escape(&run.describe())
    );
    let best = run.best_epoch(kind);
    let best_record = best.and_then(|b| run.record(b));
    let _ = write!(
        html,
        "<p>{} epochs of {} planned; best epoch {} with {} {}; {:.0} s in all{}.</p>",
        run.records.len(),
        run.planned_epochs(),
        best.map_or("–".into(), |b| b.to_string()),
        kind.metric_name,
        fmt(best_record.and_then(|r| num(r.get(kind.metric))), 4),
        run.seconds(),
        run.images_per_s()
            .map_or(String::new(), |v| format!(", {v:.1} training images/s"))
    );
    html.push_str("<details><summary>Configuration</summary>");
    html.push_str(&config_table(&run.config));
    html.push_str("</details>");
    if run.records.is_empty() {
        html.push_str(
            "<p class=\"note\">No epoch finished yet (metrics.jsonl is empty).</p></section>",
        );
        return Ok(html);
    }
    html.push_str("<h3>Learning curves</h3>");
    html.push_str(&svg_block(chart::panels_svg(
        &curve_panels(run, kind)?,
        360,
        270,
    ))?);
    if let Some(bars) = per_class_bars(run, kind) {
        html.push_str(&svg_block(chart::bars_svg(&bars, 520))?);
    }
    if kind.metric == "val_map" {
        classify_details(run, split, &mut html)?;
    } else {
        segment_details(run, split, &mut html)?;
    }
    html.push_str("</section>");
    Ok(html)
}

fn comparison_section(runs: &[(&TrainRun, &Kind)]) -> anyhow::Result<String> {
    let mut html = String::from(
        "<section id=\"comparison\"><h2>Runs compared</h2><table><tr><th>run</th><th>task</th><th>model</th>\
         <th>epochs</th><th>best val metric</th><th>best epoch</th><th>time (s)</th><th>images/s</th></tr>",
    );
    let mut by_metric: Vec<(&str, Vec<Series>)> = Vec::new();
    for (i, (run, kind)) in runs.iter().enumerate() {
        let best = run.best_epoch(kind);
        let value = best
            .and_then(|b| run.record(b))
            .and_then(|r| num(r.get(kind.metric)));
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} {}</td><td>{}</td><td>{:.0}</td><td>{}</td></tr>",
            escape(&run.name),
            if kind.metric == "val_map" { "classify" } else { "segment" },
            escape(&run.describe()),
            run.records.len(),
            kind.metric_name,
            fmt(value, 4),
            best.map_or("–".into(), |b| b.to_string()),
            run.seconds(),
            fmt(run.images_per_s(), 1)
        );
        let series = Series::new(
            run.name.clone(),
            SERIES_COLORS[i % 6],
            curve(&run.records, kind.metric),
        );
        match by_metric.iter_mut().find(|(m, _)| *m == kind.metric_name) {
            Some((_, s)) => s.push(series),
            None => by_metric.push((kind.metric_name, vec![series])),
        }
    }
    html.push_str("</table>");
    let panels: Vec<Panel> = by_metric
        .into_iter()
        .map(|(name, series)| Panel::new(name, "epoch", series).with_y_range(0.0, 1.0))
        .collect();
    html.push_str(&svg_block(chart::panels_svg(&panels, 480, 320))?);
    html.push_str("</section>");
    Ok(html)
}

fn attack_section(dir: &Path, report: &Value, anchor: &str) -> anyhow::Result<String> {
    let task = report.get("task").and_then(Value::as_str).unwrap_or("");
    let attack = report.get("attack").cloned().unwrap_or(Value::Null);
    let kind = attack.get("kind").and_then(Value::as_str).unwrap_or("?");
    let target = report
        .get("classifier")
        .or_else(|| report.get("segmenter"))
        .and_then(Value::as_str)
        .unwrap_or("?");
    let mut html = String::new();
    let _ = write!(
        html,
        "<section id=\"{anchor}\"><h2>Attack run <code>{}</code> <small>({task}, {kind}, goal {})</small></h2>\
         <p>{} images, model <code>{}</code>, {:.0} s.</p>",
        escape(&run_name(dir)),
        escape(report.get("goal").and_then(Value::as_str).unwrap_or("untargeted")),
        report.get("images").and_then(Value::as_u64).unwrap_or(0),
        escape(target),
        num(report.get("seconds")).unwrap_or(0.0)
    );
    html.push_str("<details><summary>Attack settings</summary>");
    html.push_str(&config_table(&attack));
    html.push_str("</details>");
    let sweep: Vec<Value> = report
        .get("sweep")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let labelled = sweep.iter().any(|s| {
        s.get("map")
            .or_else(|| s.get("miou"))
            .is_some_and(|v| !v.is_null())
    });
    let metrics = crate::cmd_attack::sweep_metrics(task, labelled);
    html.push_str(&svg_block(chart::panels_svg(
        &crate::cmd_attack::sweep_panels(&sweep, &metrics),
        360,
        270,
    ))?);
    html.push_str("<table><tr><th>eps (1/255)</th>");
    for (_, name) in &metrics {
        let _ = write!(html, "<th>{name}</th>");
    }
    html.push_str(
        "<th>L∞ (1/255)</th><th>L2</th><th>PSNR (dB)</th><th>SSIM</th><th>seconds</th></tr>",
    );
    for s in &sweep {
        let _ = write!(html, "<tr><td>{}</td>", fmt(num(s.get("eps")), 1));
        for (k, _) in &metrics {
            let _ = write!(html, "<td>{}</td>", fmt(num(s.get(*k)), 4));
        }
        let _ = write!(
            html,
            "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            fmt(num(s.get("linf")), 2),
            fmt(num(s.get("l2")), 1),
            fmt(num(s.get("psnr")), 2),
            fmt(num(s.get("ssim")), 4),
            fmt(num(s.get("seconds")), 1)
        );
    }
    html.push_str("</table>");
    let gallery = dir.join("gallery");
    if let Ok(entries) = std::fs::read_dir(&gallery) {
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "png"))
            .collect();
        files.sort();
        let _ = write!(
            html,
            "<h3>Gallery <small>(original | perturbation x10 | adversarial; {} of {})</small></h3>",
            files.len().min(3),
            files.len()
        );
        for file in files.iter().take(3) {
            html.push_str(&format!(
                "<div class=\"gallery\">{}</div>",
                png_file_img(file, 960, &file.display().to_string())?
            ));
        }
    }
    html.push_str("</section>");
    Ok(html)
}

fn data_section(data: &Path) -> anyhow::Result<String> {
    let dir = CompetitionDir::open(data)?;
    let mut html = format!(
        "<section id=\"data\"><h2>Data <small><code>{}</code></small></h2>",
        escape(&data.display().to_string())
    );
    let mut splits = Vec::new();
    for name in ["train", "test"] {
        if let Ok(split) = dir.split(name) {
            splits.push(split);
        }
    }
    if splits.is_empty() {
        bail!("{}: neither a train nor a test split", data.display());
    }
    html.push_str("<table><tr><th>split</th><th>images</th><th>labels</th><th>masks</th></tr>");
    for s in &splits {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s.name),
            s.len(),
            if s.labels.is_some() { "yes" } else { "no" },
            if s.has_masks { "yes" } else { "no" }
        );
    }
    html.push_str("</table>");
    let train = &splits[0];
    let stats = SplitStats::compute(train)?;
    let _ = write!(
        html,
        "<h3>Classes of split '{}' <small>(labels from {})</small></h3><table><tr><th>class</th><th>images</th><th>pixel share</th></tr>",
        escape(&train.name),
        stats.labels_from
    );
    for c in &stats.classes {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.name,
            c.images,
            c.pixel_share
                .map_or("–".into(), |v| format!("{:.2}%", 100.0 * v))
        );
    }
    if let Some(b) = stats.background_pixel_share {
        let _ = write!(
            html,
            "<tr><td>background</td><td></td><td>{:.2}%</td></tr>",
            100.0 * b
        );
    }
    html.push_str("</table>");
    let counts = BarChart {
        title: format!("Images per class ({})", train.name),
        x_label: "images".into(),
        bars: stats
            .classes
            .iter()
            .map(|c| (c.name.to_string(), c.images as f64))
            .collect(),
        color: SERIES_COLORS[0],
        x_range: None,
    };
    html.push_str(&svg_block(chart::bars_svg(&counts, 480))?);
    if stats.classes.iter().any(|c| c.pixel_share.is_some()) {
        let shares = BarChart {
            title: format!(
                "Pixel share per class, background excluded ({})",
                train.name
            ),
            x_label: "% of the labelled pixels".into(),
            bars: stats
                .classes
                .iter()
                .map(|c| {
                    (
                        c.name.to_string(),
                        100.0 * c.pixel_share.unwrap_or(f64::NAN),
                    )
                })
                .collect(),
            color: SERIES_COLORS[2],
            x_range: None,
        };
        html.push_str(&svg_block(chart::bars_svg(&shares, 480))?);
    }
    let (grid, _) = voc_data::preview::class_grid(train, 112, 7)?;
    html.push_str("<h3>One image per class</h3><div class=\"gallery\">");
    let grid = RgbImage::new(
        grid.height() as usize,
        grid.width() as usize,
        grid.into_raw(),
    )?;
    html.push_str(&jpeg_img(&grid, 1100, "one image per class")?);
    html.push_str("</div></section>");
    Ok(html)
}

fn submission_section(data: &Path, split: &str, submission: &Path) -> anyhow::Result<String> {
    let (index, report) = crate::cmd_submit::validation_of(data, split, submission)?;
    let mut html = format!(
        "<section id=\"submission\"><h2>Submission <small><code>{}</code></small></h2>",
        escape(&submission.display().to_string())
    );
    if report.is_valid() {
        let _ = write!(
            html,
            "<p class=\"ok\">Valid: {} rows for the {} images of split '{}'.</p>",
            report.rows,
            index.len(),
            escape(&index.name)
        );
    } else {
        let _ = write!(
            html,
            "<p class=\"bad\">Not valid for split '{}': {} problem(s).</p><pre>{}</pre>",
            escape(&index.name),
            report.problems.len(),
            escape(&voc_submit::list_problems(&report.problems, 20))
        );
    }
    for w in &report.warnings {
        let _ = write!(
            html,
            "<p class=\"note\">warning: {}</p>",
            escape(&w.to_string())
        );
    }
    if report.is_valid() && index.labels.is_some() && index.has_masks {
        let (_, score) = crate::cmd_submit::score_of(data, split, submission)?;
        let _ = write!(
            html,
            "<table><tr><th>mean Dice, all rows</th><td>{:.6}</td></tr><tr><th>classification rows</th><td>{:.6}</td></tr>\
             <tr><th>segmentation rows</th><td>{:.6}</td></tr><tr><th>mean IoU</th><td>{}</td></tr></table>",
            score.dice,
            score.classification_dice,
            score.segmentation_dice,
            fmt(score.mean_iou, 6)
        );
        let bars = BarChart {
            title: "IoU per class (submission)".into(),
            x_label: "IoU".into(),
            bars: CLASS_NAMES
                .iter()
                .zip(&score.class_iou)
                .map(|(n, v)| (n.to_string(), v.unwrap_or(f64::NAN)))
                .collect(),
            color: SERIES_COLORS[1],
            x_range: Some((0.0, 1.0)),
        };
        html.push_str(&svg_block(chart::bars_svg(&bars, 520))?);
    } else if report.is_valid() {
        html.push_str("<p class=\"note\">The split has no ground truth here: not scored.</p>");
    }
    html.push_str("</section>");
    Ok(html)
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;margin:0 auto;padding:0 16px 40px;color:#111}\
h1{margin:18px 0 4px}h2{border-top:2px solid #ddd;padding-top:14px;margin-top:30px}small{color:#666;font-weight:normal}\
table{border-collapse:collapse;margin:8px 0;font-size:14px}th,td{border:1px solid #ddd;padding:3px 8px;text-align:left}\
th{background:#f4f4f4}.chart{display:inline-block;vertical-align:top;max-width:100%;margin:4px 8px 4px 0}.chart svg{max-width:100%;height:auto}.tiles{display:flex;flex-wrap:wrap;gap:10px}\
figure{margin:0;width:200px;font-size:12px}figure.wide{width:490px}figure img{margin-right:2px}.gallery img{max-width:100%;height:auto}\
.note{color:#666}.ok{color:#06610f;font-weight:bold}.bad{color:#a00;font-weight:bold}nav a{margin-right:12px}\
details{margin:6px 0}code{background:#f4f4f4;padding:0 3px}.missing{width:200px;height:60px;background:#eee}\
@media print{section{break-inside:avoid-page}details{display:block}}";

/// The report as one HTML document, and the names of its sections.
pub fn build_report(args: &ReportArgs) -> anyhow::Result<(String, Vec<String>)> {
    if args.runs.is_empty() && args.data.is_none() && args.submission.is_none() {
        bail!("nothing to report: give run folders, --data or --submission");
    }
    let runs: Vec<Run> = args
        .runs
        .iter()
        .map(|d| open_run(d))
        .collect::<anyhow::Result<_>>()?;
    let data = args.data.clone().or_else(|| {
        runs.iter().find_map(|r| match r {
            Run::Classify(t) | Run::Segment(t) if t.data.is_dir() => Some(t.data.clone()),
            _ => None,
        })
    });
    if args.submission.is_some() && data.is_none() {
        bail!("--submission needs --data (the folder with the split it is for)");
    }
    let mut sections: Vec<(String, String, String)> = Vec::new();
    if let Some(d) = &args.data {
        sections.push(("data".into(), "Data".into(), data_section(d)?));
    }
    let mut trained: Vec<(&TrainRun, &Kind)> = Vec::new();
    for (i, run) in runs.iter().enumerate() {
        let anchor = format!("run-{}", i + 1);
        match run {
            Run::Classify(t) => {
                sections.push((
                    anchor.clone(),
                    t.name.clone(),
                    train_section(
                        t,
                        &CLASSIFY,
                        validation_split(t, data.as_deref()).as_ref(),
                        &anchor,
                    )?,
                ));
                trained.push((t, &CLASSIFY));
            }
            Run::Segment(t) => {
                sections.push((
                    anchor.clone(),
                    t.name.clone(),
                    train_section(
                        t,
                        &SEGMENT,
                        validation_split(t, data.as_deref()).as_ref(),
                        &anchor,
                    )?,
                ));
                trained.push((t, &SEGMENT));
            }
            Run::Attack { dir, report } => {
                sections.push((
                    anchor.clone(),
                    run_name(dir),
                    attack_section(dir, report, &anchor)?,
                ));
            }
        }
    }
    if trained.len() >= 2 {
        let at = usize::from(args.data.is_some());
        sections.insert(
            at,
            (
                "comparison".into(),
                "Comparison".into(),
                comparison_section(&trained)?,
            ),
        );
    }
    if let (Some(sub), Some(d)) = (&args.submission, &data) {
        sections.push((
            "submission".into(),
            "Submission".into(),
            submission_section(d, &args.split, sub)?,
        ));
    }
    let mut html = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{STYLE}</style></head><body><h1>{}</h1><p class=\"note\">Written by voc {} from {} run folder(s).</p><nav>",
        escape(&args.title),
        escape(&args.title),
        env!("CARGO_PKG_VERSION"),
        runs.len()
    );
    for (anchor, name, _) in &sections {
        let _ = write!(html, "<a href=\"#{anchor}\">{}</a>", escape(name));
    }
    html.push_str("</nav>");
    for (_, _, body) in &sections {
        html.push_str(body);
    }
    html.push_str("</body></html>\n");
    Ok((html, sections.into_iter().map(|s| s.0).collect()))
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    crate::outputs::check_file(&args.out, None, "--out")?;
    let (html, sections) = build_report(&args)?;
    voc_core::write_atomic(&args.out, |f| std::io::Write::write_all(f, html.as_bytes()))
        .with_context(|| format!("writing {}", args.out.display()))?;
    let seconds = t0.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "report": args.out.display().to_string(),
                "bytes": html.len(),
                "sections": sections,
                "seconds": seconds,
            })
        );
    } else {
        println!(
            "wrote {} ({:.1} MB, {} sections) in {seconds:.1} s",
            args.out.display(),
            html.len() as f64 / 1e6,
            sections.len()
        );
    }
    Ok(())
}
