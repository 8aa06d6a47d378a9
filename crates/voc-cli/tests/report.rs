//! End-to-end tests of `voc report`: tiny classification and segmentation training runs and an attack
//! run on a folder built from the bundled sample, reported together with the data and a submission; the
//! page is parsed as HTML and checked to be self-contained. With Chromium installed, the page is also
//! rendered headless and the screenshot checked (`make report-check`); without it that test says SKIPPED.
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{json_line, path_str, small_seg_data, text, voc};

/// Trains the three runs the report shows; returns (data, [classify run, segment run, attack run]).
fn runs(dir: &Path) -> (PathBuf, [PathBuf; 3]) {
    let data = small_seg_data(dir, 8);
    let data_s = path_str(&data);
    let classify = dir.join("classify");
    let out = voc(
        &[
            "train",
            "classify",
            "--data",
            data_s,
            "--out",
            path_str(&classify),
            "--model",
            "scratch",
            "--image-size",
            "108",
            "--batch",
            "4",
            "--val-fraction",
            "0.25",
            "--epochs",
            "2",
            "--device",
            "cpu",
            "--seed",
            "3",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let segment = dir.join("segment");
    let out = voc(
        &[
            "train",
            "segment",
            "--data",
            data_s,
            "--out",
            path_str(&segment),
            "--model",
            "deeplabv3plus",
            "--backbone",
            "random",
            "--crop",
            "65",
            "--batch",
            "2",
            "--val-fraction",
            "0.25",
            "--val-size",
            "resize:65",
            "--epochs",
            "2",
            "--device",
            "cpu",
            "--seed",
            "5",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let attack = dir.join("attack");
    let out = voc(
        &[
            "attack",
            "classify",
            "--classifier",
            path_str(&classify.join("best.safetensors")),
            "--data",
            data_s,
            "--split",
            "train",
            "--attack",
            "fgsm",
            "--eps",
            "0,4",
            "--out",
            path_str(&attack),
            "--device",
            "cpu",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    (data, [classify, segment, attack])
}

/// Every element named `tag` of the document.
fn elements<'a>(dom: &'a tl::VDom<'a>, tag: &str) -> Vec<&'a tl::HTMLTag<'a>> {
    let parser = dom.parser();
    dom.query_selector(tag)
        .expect("a selector")
        .filter_map(|h| h.get(parser).and_then(|n| n.as_tag()))
        .collect()
}

fn attr(tag: &tl::HTMLTag<'_>, name: &str) -> Option<String> {
    tag.attributes()
        .get(name)
        .flatten()
        .map(|v| v.as_utf8_str().into_owned())
}

#[test]
fn the_report_is_one_self_contained_page_with_every_section() {
    let dir = tempfile::tempdir().unwrap();
    let (data, [classify, segment, attack]) = runs(dir.path());
    // The classifier trainer and the segmenter trainer leave the best epoch's validation outputs.
    assert!(classify.join("val_scores.csv").is_file());
    assert!(segment.join("val_scores.csv").is_file());
    let examples = std::fs::read_dir(segment.join("val_examples"))
        .unwrap()
        .count();
    assert!(examples >= 1, "no example masks");

    let submission = dir.path().join("truth.csv");
    let out = voc(
        &[
            "encode",
            "--data",
            path_str(&data),
            "--split",
            "train",
            "--out",
            path_str(&submission),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let report = dir.path().join("report.html");
    let out = voc(
        &[
            "report",
            path_str(&classify),
            path_str(&segment),
            path_str(&attack),
            "--data",
            path_str(&data),
            "--submission",
            path_str(&submission),
            "--split",
            "train",
            "--out",
            path_str(&report),
            "--json",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let summary = json_line(&out, "report summary");
    let sections: Vec<&str> = summary["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(
        sections,
        [
            "data",
            "comparison",
            "run-1",
            "run-2",
            "run-3",
            "submission"
        ]
    );

    let html = std::fs::read_to_string(&report).unwrap();
    let dom = tl::parse(&html, tl::ParserOptions::default()).expect("parses as HTML");
    for id in &sections {
        let found = elements(&dom, "section")
            .iter()
            .any(|s| attr(s, "id").as_deref() == Some(id));
        assert!(found, "no <section id=\"{id}\">");
    }
    let images = elements(&dom, "img");
    assert!(images.len() >= 8, "{} images", images.len());
    for img in &images {
        let src = attr(img, "src").unwrap_or_default();
        assert!(
            src.starts_with("data:image/") && src.len() > 200,
            "an <img> that is empty or not inline: {}",
            &src[..src.len().min(80)]
        );
    }
    let svgs = elements(&dom, "svg");
    assert!(svgs.len() >= 8, "{} charts", svgs.len());
    for svg in &svgs {
        assert!(svg.children().top().len() > 3, "an empty <svg>");
    }
    for tag in ["a", "link", "script", "iframe", "source"] {
        for e in elements(&dom, tag) {
            for name in ["href", "src"] {
                if let Some(v) = attr(e, name) {
                    assert!(
                        v.starts_with('#') || v.starts_with("data:"),
                        "<{tag} {name}=\"{v}\"> leaves the file"
                    );
                }
            }
        }
    }
    for needle in [
        "Learning curves",
        "AP per class",
        "Precision-recall",
        "Confusion matrix",
        "Best validation images",
        "Worst validation images",
        "Robustness",
        "Gallery",
        "Images per class",
        "Valid: ",
        "mean Dice, all rows",
    ] {
        assert!(html.contains(needle), "the report lacks '{needle}'");
    }

    // Bad input: a folder that is no run, and a run of a future format.
    let out = voc(
        &["report", path_str(&data), "--out", path_str(&report)],
        None,
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("not a voc run folder"),
        "{}",
        text(&out)
    );
    let config = std::fs::read_to_string(classify.join("config.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert_eq!(v["format"], 1);

    // Rendered in a real browser, where there is one.
    let Some(browser) = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
    else {
        println!("SKIPPED browser check: no chromium installed");
        return;
    };
    let shot = dir.path().join("report.png");
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg("--window-size=1280,2400")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", report.display()))
        .output()
        .unwrap();
    assert!(
        shot.is_file(),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shot = image::open(&shot).unwrap().to_rgb8();
    let px = shot.as_raw();
    let dark = px
        .chunks(3)
        .filter(|p| p.iter().map(|&c| u32::from(c)).sum::<u32>() < 300)
        .count();
    let coloured = px.chunks(3).filter(|p| p[0].abs_diff(p[2]) > 60).count();
    assert!(
        dark > 5_000 && coloured > 5_000,
        "a blank render: {dark} dark, {coloured} coloured pixels"
    );
    let dom = Command::new(browser)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("file://{}", report.display()))
        .output()
        .unwrap();
    let rendered = String::from_utf8_lossy(&dom.stdout).to_lowercase();
    assert!(
        rendered.contains("learning curves"),
        "the browser's DOM lacks the report"
    );
    for bad in ["error", "panicked", "nan"] {
        let visible = rendered.replace("data:image/", "");
        assert!(
            !visible
                .split(['<', '>'])
                .any(|t| t.split_whitespace().any(|w| w == bad)),
            "the rendered page says '{bad}'"
        );
    }
}
