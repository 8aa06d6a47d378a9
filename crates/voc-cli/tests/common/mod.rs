//! What the end-to-end tests of `voc` share: running the binary offline, reading its output, and the
//! assertions on its errors. Each test file uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `voc` binary cargo built for these tests.
pub const VOC: &str = env!("CARGO_BIN_EXE_voc");

/// The repository's root (for `assets/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `voc ARGS`, offline against the hub cache `hf` (or an empty one, where nothing can be found and
/// nothing is downloaded), 2 threads, no backtraces in error output.
pub fn command(args: &[&str], hf: Option<&Path>) -> Command {
    let mut cmd = Command::new(VOC);
    cmd.args(args)
        .env("RAYON_NUM_THREADS", "2")
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_BACKTRACE", "0")
        .env_remove("HF_HUB_CACHE");
    match hf {
        Some(dir) => cmd.env("HF_HOME", dir),
        None => cmd.env("HF_HOME", std::env::temp_dir().join("voc-test-no-hf-cache")),
    };
    cmd
}

/// Runs [`command`] to the end.
pub fn voc(args: &[&str], hf: Option<&Path>) -> Output {
    command(args, hf).output().expect("running voc")
}

/// The standard error, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit status, standard output and standard error, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The one JSON line a successful `voc ... --json` printed.
pub fn json_line(out: &Output, what: &str) -> serde_json::Value {
    assert!(out.status.success(), "{what} failed:\n{}", stderr(out));
    let stdout = String::from_utf8(out.stdout.clone()).expect("utf-8 output");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{what} --json prints one line, got {stdout:?}"
    );
    serde_json::from_str(lines[0]).expect("the line is JSON")
}

/// Asserts that `voc` failed without a panic and that its error mentions every one of `needles`;
/// returns the error text.
pub fn assert_fails_naming(out: &Output, needles: &[&str]) -> String {
    let err = stderr(out);
    assert!(
        !out.status.success(),
        "expected a failure, got success; stderr:\n{err}"
    );
    assert!(
        !err.contains("panicked"),
        "a panic instead of an error:\n{err}"
    );
    for needle in needles {
        assert!(
            err.contains(needle),
            "the error does not name {needle:?}:\n{err}"
        );
    }
    err
}

/// A path as `&str` for an argument list.
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// Copies the folder `from` into `to` (created), recursively.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A competition folder whose train split holds `copies` copies of the sample's two labelled images
/// (a person; a chair and a dog), with their masks when `masks`, and the sample's unlabelled test split.
pub fn sample_copies(dir: &Path, copies: usize, masks: bool) -> PathBuf {
    let sample = repo_root().join("assets/voc-sample");
    let data = dir.join("data");
    let kinds: &[&str] = if masks { &["img", "seg"] } else { &["img"] };
    for kind in kinds {
        std::fs::create_dir_all(data.join("train").join(kind)).unwrap();
    }
    let csv = std::fs::read_to_string(sample.join("train/train_set.csv")).unwrap();
    let mut lines = csv.lines();
    let header = lines.next().unwrap();
    let rows: Vec<&str> = lines.collect();
    let mut out = format!("{header}\n");
    for i in 0..copies {
        let (id, labels) = rows[i % rows.len()].split_once(',').unwrap();
        let new_id = format!("{id}{i}");
        for kind in kinds {
            std::fs::copy(
                sample.join(format!("train/{kind}/train_{id}.npy")),
                data.join(format!("train/{kind}/train_{new_id}.npy")),
            )
            .unwrap();
        }
        out.push_str(&format!("{new_id},{labels}\n"));
    }
    std::fs::write(data.join("train/train_set.csv"), out).unwrap();
    copy_dir(&sample.join("test"), &data.join("test"));
    data
}

/// [`sample_copies`] with masks.
pub fn small_seg_data(dir: &Path, copies: usize) -> PathBuf {
    sample_copies(dir, copies, true)
}

/// The epochs a training run has logged in `RUN/metrics.jsonl`, in file order (none when absent).
pub fn metrics_epochs(run: &Path) -> Vec<usize> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            v["epoch"].as_u64().expect("an epoch") as usize
        })
        .collect()
}

/// Starts `voc args` training into `run` and kills it (SIGKILL: no clean-up) `settle` after its first
/// epoch's files are written, mid-way through the next; returns the epochs logged by then. Fails
/// when no epoch is written within `timeout` or the run ends before it is killed.
pub fn kill_after_first_epoch(
    args: &[&str],
    run: &Path,
    timeout: std::time::Duration,
    settle: std::time::Duration,
) -> Vec<usize> {
    use std::process::Stdio;
    let mut child = command(args, None)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawning voc");
    let t0 = std::time::Instant::now();
    while metrics_epochs(run).is_empty() {
        assert!(t0.elapsed() < timeout, "no epoch after {timeout:?}");
        assert!(
            child.try_wait().unwrap().is_none(),
            "voc ended before it was killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(settle);
    child.kill().unwrap();
    child.wait().unwrap();
    metrics_epochs(run)
}
