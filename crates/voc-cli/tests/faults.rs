//! Output faults found before any work: an --out that is a file, a folder where a file is expected, a
//! folder that cannot be created or written, an output among the data (a split folder). Each is a clear error
//! naming the path, a non-zero exit, nothing written, and never a panic.
mod common;
use common::{assert_fails_naming, path_str, repo_root, voc};

#[test]
fn unwritable_outputs_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = repo_root().join("assets/voc-sample");
    let data_s = path_str(&data);
    let afile = dir.path().join("afile");
    std::fs::write(&afile, "x").unwrap();
    let afile_s = path_str(&afile);
    let train = |out: &str| {
        voc(
            &[
                "train",
                "classify",
                "--data",
                data_s,
                "--model",
                "scratch",
                "--epochs",
                "1",
                "--val-split",
                "train",
                "--device",
                "cpu",
                "--out",
                out,
            ],
            None,
        )
    };
    let out = train(afile_s);
    assert_fails_naming(&out, &[afile_s, "is a file"]);
    // Under /proc nothing can be created, not even by root.
    let out = train("/proc/voc-no-such-run");
    assert_fails_naming(
        &out,
        &["/proc/voc-no-such-run", "cannot create the output folder"],
    );
    // Among the data it reads: inside a split folder, or the data folder itself.
    let inside = data.join("train").join("runs-here");
    let out = train(path_str(&inside));
    assert_fails_naming(&out, &["is among the data of"]);
    assert!(!inside.exists(), "a folder was created inside the data");
    assert_fails_naming(&train(data_s), &["is among the data of"]);

    // A file output whose name is a folder, or whose folder is a file.
    let out = voc(
        &["predict", "--data", data_s, "--out", path_str(dir.path())],
        None,
    );
    assert_fails_naming(&out, &["is a folder"]);
    let nested = afile.join("report.html");
    let out = voc(
        &["report", "--data", data_s, "--out", path_str(&nested)],
        None,
    );
    assert_fails_naming(&out, &[afile_s, "is a file"]);
    let out = voc(
        &[
            "attack",
            "classify",
            "--classifier",
            "imagenet:mobilenet_v2",
            "--data",
            data_s,
            "--eps",
            "0",
            "--out",
            afile_s,
        ],
        None,
    );
    assert_fails_naming(&out, &[afile_s, "is a file"]);
    assert_eq!(
        std::fs::read_to_string(&afile).unwrap(),
        "x",
        "the file was touched"
    );
}

#[test]
fn symlinks_in_a_run_folder_are_replaced_not_written_through() {
    let dir = tempfile::tempdir().unwrap();
    let data = repo_root().join("assets/voc-sample");
    let run = dir.path().join("run");
    let victim = dir.path().join("victim.txt");
    std::fs::write(&victim, "keep").unwrap();
    let args = |epochs: &str| {
        vec![
            "train".to_string(),
            "classify".into(),
            "--data".into(),
            path_str(&data).into(),
            "--model".into(),
            "scratch".into(),
            "--image-size".into(),
            "108".into(),
            "--batch".into(),
            "2".into(),
            "--val-split".into(),
            "train".into(),
            "--epochs".into(),
            epochs.into(),
            "--device".into(),
            "cpu".into(),
            "--out".into(),
            path_str(&run).into(),
        ]
    };
    let first = args("1");
    let out = voc(&first.iter().map(String::as_str).collect::<Vec<_>>(), None);
    assert!(out.status.success(), "{}", common::text(&out));
    // Every file of the run becomes a link to a file outside it.
    for name in [
        "last.safetensors",
        "best.safetensors",
        "metrics.jsonl",
        "curves.png",
    ] {
        let p = run.join(name);
        std::fs::remove_file(&p).unwrap();
        std::os::unix::fs::symlink(&victim, &p).unwrap();
    }
    let _ = voc(
        &[
            "train",
            "classify",
            "--resume",
            path_str(&run),
            "--epochs",
            "2",
            "--device",
            "cpu",
        ],
        None,
    );
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "keep",
        "written through a link"
    );
}

#[test]
fn a_data_file_removed_while_predicting_is_a_clear_error_and_no_submission() {
    let Some(shared) = voc_core::testing::shared_with(
        "a data file removed while predicting",
        &[voc_core::testing::hub_model(
            "google/deeplabv3_mobilenet_v2_1.0_513",
        )],
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = common::small_seg_data(dir.path(), 12);
    let sub = dir.path().join("submission.csv");
    let child = common::command(
        &[
            "predict",
            "--data",
            path_str(&data),
            "--split",
            "train",
            "--device",
            "cpu",
            "--out",
            path_str(&sub),
        ],
        Some(&shared.join("hf")),
    )
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // The last image goes while the segmenter loads or the first images are segmented.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let csv = std::fs::read_to_string(data.join("train/train_set.csv")).unwrap();
    let last_id = csv
        .lines()
        .last()
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let removed = data.join(format!("train/img/train_{last_id}.npy"));
    std::fs::remove_file(&removed).unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "succeeded without train_{last_id}.npy"
    );
    assert!(err.contains(&format!("train_{last_id}.npy")), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(!sub.exists(), "a submission was written");
}

#[test]
fn broken_files_through_the_commands_are_errors_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let data = common::small_seg_data(dir.path(), 2);
    let data_s = path_str(&data).to_string();
    let csv = data.join("train/train_set.csv");
    let first_id = std::fs::read_to_string(&csv)
        .unwrap()
        .lines()
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let img = data.join(format!("train/img/train_{first_id}.npy"));
    let seg = data.join(format!("train/seg/train_{first_id}.npy"));
    let junk = dir.path().join("junk.safetensors");
    std::fs::write(&junk, b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":{\"dtype\":").unwrap();
    let sub = dir.path().join("sub.csv");
    std::fs::write(
        &sub,
        "Id,Predicted\n0_classification,1 2 3\n0_segmentation,9 -4 x\n",
    )
    .unwrap();
    let run = dir.path().join("run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("config.json"),
        "{\"format\": 1, \"config\": {\"mode\": 3}, \"data\": 7",
    )
    .unwrap();
    let out = dir.path().join("out");
    let o = |p: &str| out.join(p).to_string_lossy().into_owned();
    // Each case: how to break the data first (or nothing), and the command that must fail cleanly.
    type Case = (Box<dyn Fn()>, Vec<String>);
    let cases: Vec<Case> = vec![
        // A truncated image, then a mask with an out-of-range value.
        (
            Box::new({
                let img = img.clone();
                move || {
                    let b = std::fs::read(&img).unwrap();
                    std::fs::write(&img, &b[..b.len() / 3]).unwrap();
                }
            }),
            vec![
                "data".into(),
                "check".into(),
                "--data".into(),
                data_s.clone(),
            ],
        ),
        (
            Box::new({
                let seg = seg.clone();
                move || {
                    let mut b = std::fs::read(&seg).unwrap();
                    let n = b.len();
                    b[n - 1] = 77;
                    std::fs::write(&seg, &b).unwrap();
                }
            }),
            vec![
                "data".into(),
                "stats".into(),
                "--data".into(),
                data_s.clone(),
            ],
        ),
        (
            Box::new(|| {}),
            vec![
                "eval".into(),
                "classify".into(),
                "--data".into(),
                data_s.clone(),
                "--split".into(),
                "train".into(),
                "--classifier".into(),
                path_str(&junk).into(),
            ],
        ),
        (
            Box::new(|| {}),
            vec![
                "validate".into(),
                "--data".into(),
                data_s.clone(),
                "--split".into(),
                "train".into(),
                "--submission".into(),
                path_str(&sub).into(),
            ],
        ),
        (
            Box::new(|| {}),
            vec![
                "score".into(),
                "--data".into(),
                data_s.clone(),
                "--split".into(),
                "train".into(),
                "--submission".into(),
                path_str(&sub).into(),
            ],
        ),
        (
            Box::new(|| {}),
            vec![
                "report".into(),
                path_str(&run).into(),
                "--out".into(),
                o("r.html"),
            ],
        ),
        (
            Box::new(|| {}),
            vec![
                "train".into(),
                "classify".into(),
                "--resume".into(),
                path_str(&run).into(),
            ],
        ),
        (
            Box::new(|| {}),
            vec![
                "segment".into(),
                "--image".into(),
                path_str(&junk).into(),
                "--out".into(),
                o("m.png"),
            ],
        ),
    ];
    for (break_it, args) in cases {
        break_it();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = voc(&args, None);
        let err = common::stderr(&r);
        assert!(!r.status.success(), "voc {args:?} succeeded");
        assert!(!err.contains("panicked"), "voc {args:?} panicked:\n{err}");
        assert!(
            err.starts_with("Error:") || err.contains("\nError:") || err.contains("error:"),
            "voc {args:?}: {err}"
        );
    }
}

#[test]
fn a_read_only_output_folder_is_a_clear_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ro = dir.path().join("read-only");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let target = ro.join("report.html");
    let args = ["report", "--out", path_str(&target)];
    // Root writes anywhere: run voc as `nobody` then, where setpriv can.
    let uid = std::process::Command::new("id").arg("-u").output().unwrap();
    let root = String::from_utf8_lossy(&uid.stdout).trim() == "0";
    let out = if root {
        let r = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(common::VOC)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output();
        match r {
            Ok(o) if String::from_utf8_lossy(&o.stderr).contains("Error:") => o,
            _ => {
                println!(
                    "SKIPPED read-only folder: running as root and voc cannot run as nobody here"
                );
                return;
            }
        }
    } else {
        voc(&args, None)
    };
    assert_fails_naming(
        &out,
        &[
            "cannot write in the output folder",
            path_str(&ro),
            "Permission denied",
        ],
    );
    assert!(!target.exists());
}
