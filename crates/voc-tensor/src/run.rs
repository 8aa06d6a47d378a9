//! The run folder every voc trainer writes, and the bookkeeping they share: the folder's file names,
//! `config.json` (checked on `--resume`), `metrics.jsonl` (one JSON record per epoch), the resume
//! checkpoint (weights, optimiser state and the trainer's counters in one file), how often checkpoints
//! are rewritten, and progress reports.
//!
//! Every file is written to a temporary name and renamed, so a run killed at any moment leaves
//! loadable files; a torn last line of `metrics.jsonl` (a crash of another writer) is dropped on read.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use voc_tensor::run::{self, RunPaths};
//!
//! #[derive(Debug, PartialEq, Serialize, Deserialize)]
//! struct Epoch { epoch: usize, loss: f64 }
//!
//! let dir = tempfile::tempdir()?;
//! let paths = RunPaths::new(dir.path());
//! run::write_jsonl(&paths.metrics(), &[Epoch { epoch: 1, loss: 0.5 }])?;
//! let back: Vec<Epoch> = run::read_jsonl(&paths.metrics())?;
//! assert_eq!(back, [Epoch { epoch: 1, loss: 0.5 }]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointMeta};
use crate::error::{Result, VocError};

/// The files of a run folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPaths {
    /// The folder.
    pub dir: PathBuf,
}

impl RunPaths {
    /// The files of the run in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// `RUN/config.json`: the configuration and the data folder.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// `RUN/metrics.jsonl`: one record per finished epoch.
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }
    /// `RUN/best.safetensors`: the checkpoint of the best validation epoch.
    pub fn best(&self) -> PathBuf {
        self.dir.join("best.safetensors")
    }
    /// `RUN/last.safetensors`: the checkpoint of the last saved epoch.
    pub fn last(&self) -> PathBuf {
        self.dir.join("last.safetensors")
    }
    /// `RUN/resume.safetensors`: weights, optimiser state and counters for `--resume`.
    pub fn resume(&self) -> PathBuf {
        self.dir.join("resume.safetensors")
    }
    /// `RUN/curves.png`: the learning curves.
    pub fn curves(&self) -> PathBuf {
        self.dir.join("curves.png")
    }
    /// `RUN/features.safetensors`: cached backbone features (frozen classifier training).
    pub fn features(&self) -> PathBuf {
        self.dir.join("features.safetensors")
    }
    /// `RUN/val_scores.csv`: the best epoch's per-image validation scores.
    pub fn val_scores(&self) -> PathBuf {
        self.dir.join("val_scores.csv")
    }
    /// `RUN/val_examples/`: the best epoch's predicted masks of its best and worst validation images.
    pub fn val_examples(&self) -> PathBuf {
        self.dir.join("val_examples")
    }
    /// `RUN/confusion.csv`: the best epoch's confusion matrix (segmentation).
    pub fn confusion_csv(&self) -> PathBuf {
        self.dir.join("confusion.csv")
    }
    /// `RUN/confusion.png`: the same, as a picture.
    pub fn confusion_png(&self) -> PathBuf {
        self.dir.join("confusion.png")
    }
}

/// Progress reports from a run (the CLI draws progress bars; tests ignore them).
pub trait TrainObserver {
    /// A stage of `total` steps starts (`what`: e.g. "epoch 3/10").
    fn start(&mut self, _what: &str, _total: usize) {}
    /// `n` more steps of the stage are done; `loss` is the running training loss, when there is one.
    fn advance(&mut self, _n: usize, _loss: Option<f64>) {}
    /// The stage is over.
    fn finish(&mut self) {}
    /// An epoch ended and its files are written; `summary` is its one-line report.
    fn epoch(&mut self, _summary: &str) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl TrainObserver for Quiet {}

/// The version of the run-folder format (`docs/run-folder.md`) this build writes, saved as `format` in
/// `config.json` and attack `report.json`; a folder without it is version 1 too.
pub const RUN_FORMAT: u32 = 1;

fn default_format() -> u32 {
    RUN_FORMAT
}

/// `config.json` of a run: the trainer's configuration and the data folder it trains on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedRun<C> {
    /// The run-folder format version, [`RUN_FORMAT`] when written.
    #[serde(default = "default_format")]
    pub format: u32,
    /// The trainer's configuration.
    pub config: C,
    /// The data folder.
    pub data: PathBuf,
}

/// Checks that a run can start (`resume == false`: RUN holds no run yet) or continue (`resume`: RUN's
/// `config.json` was written for the same data and, by `differences`, the same configuration).
/// `differences(saved, asked)` lists the settings that differ, in words.
pub fn check_run<C: DeserializeOwned>(
    paths: &RunPaths,
    data: &Path,
    config: &C,
    resume: bool,
    differences: impl Fn(&C, &C) -> Vec<String>,
) -> Result<()> {
    if !resume {
        if paths.config().exists() {
            return Err(VocError::BadArgument(format!(
                "{} already holds a training run: continue it with --resume or choose another --out",
                paths.dir.display()
            )));
        }
        return Ok(());
    }
    let text = std::fs::read_to_string(paths.config()).map_err(|e| {
        VocError::BadArgument(format!(
            "--resume {}: no run there ({}: {e})",
            paths.dir.display(),
            paths.config().display()
        ))
    })?;
    let previous: SavedRun<C> = serde_json::from_str(&text).map_err(|e| VocError::BadFile {
        path: paths.config(),
        detail: format!("not a voc training config of this kind: {e}"),
    })?;
    let same_folder = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    };
    if !same_folder(&previous.data, data) {
        return Err(VocError::BadArgument(format!(
            "--resume {}: the run trains on {}, not {}",
            paths.dir.display(),
            previous.data.display(),
            data.display()
        )));
    }
    let diff = differences(&previous.config, config);
    if !diff.is_empty() {
        return Err(VocError::BadArgument(format!(
            "--resume {}: the run was started with another configuration ({}); resume with the same flags or start a new run",
            paths.dir.display(),
            diff.join("; ")
        )));
    }
    Ok(())
}

/// The top-level fields in which two configurations' JSON differ, as `field: old -> new`.
pub fn json_differences<C: Serialize>(saved: &C, asked: &C) -> Vec<String> {
    let (a, b) = (
        serde_json::to_value(saved).unwrap_or_default(),
        serde_json::to_value(asked).unwrap_or_default(),
    );
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return if a == b {
            vec![]
        } else {
            vec![format!("{a} -> {b}")]
        };
    };
    a.iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, v)| format!("{k}: {v} -> {}", b.get(k).cloned().unwrap_or_default()))
        .collect()
}

/// Creates RUN and writes its `config.json` (atomically).
pub fn create_run<C: Serialize>(paths: &RunPaths, saved: &SavedRun<C>) -> Result<()> {
    std::fs::create_dir_all(&paths.dir).map_err(|source| VocError::Io {
        path: paths.dir.clone(),
        source,
    })?;
    let json =
        serde_json::to_string_pretty(saved).map_err(|e| VocError::BadArgument(e.to_string()))?;
    Ok(voc_core::write_atomic(&paths.config(), |f| {
        std::io::Write::write_all(f, json.as_bytes())
    })?)
}

/// The records of a JSON-lines file (none when it does not exist). A last line that does not parse and
/// does not end in a newline is a write that was cut off: it is dropped. Any other line that does not
/// parse is an error naming the file and the line.
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(VocError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let torn_tail = !text.is_empty() && !text.ends_with('\n');
    let lines: Vec<(usize, &str)> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .collect();
    let mut records = Vec::with_capacity(lines.len());
    for (k, (i, line)) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(r) => records.push(r),
            Err(_) if torn_tail && k + 1 == lines.len() => {}
            Err(e) => {
                return Err(VocError::BadFile {
                    path: path.to_path_buf(),
                    detail: format!("line {}: {e}", i + 1),
                })
            }
        }
    }
    Ok(records)
}

/// Writes `records` as JSON lines, replacing the file atomically.
pub fn write_jsonl<T: Serialize>(path: &Path, records: &[T]) -> Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(r).map_err(|e| VocError::BadArgument(e.to_string()))?);
        text.push('\n');
    }
    Ok(voc_core::write_atomic(path, |f| {
        std::io::Write::write_all(f, text.as_bytes())
    })?)
}

const OPTIMIZER_PREFIX: &str = "optimizer::";

/// What `resume.safetensors` holds: the trainer's counters, the weights and the optimiser state.
pub struct Resumed<S> {
    /// The trainer's counters (epoch, best score, schedule state, ...).
    pub state: S,
    /// Every weight by name.
    pub weights: HashMap<String, Tensor>,
    /// The optimiser's state tensors by name.
    pub optimizer: HashMap<String, Tensor>,
}

/// Writes the resume checkpoint: `weights`, the optimiser state (prefixed so names cannot clash) and
/// `state` as the metadata's `extra` (the rest of `meta` describes the weights).
pub fn save_resume<S: Serialize>(
    path: &Path,
    weights: &HashMap<String, Tensor>,
    optimizer: HashMap<String, Tensor>,
    mut meta: CheckpointMeta,
    state: &S,
) -> Result<()> {
    let mut tensors = weights.clone();
    for (k, v) in optimizer {
        tensors.insert(format!("{OPTIMIZER_PREFIX}{k}"), v);
    }
    meta.extra = serde_json::to_value(state).map_err(|e| VocError::BadArgument(e.to_string()))?;
    checkpoint::save_checkpoint_tensors(path, &tensors, &meta)
}

/// Reads what [`save_resume`] wrote; a file without the trainer's state is an error naming it.
pub fn load_resume<S: DeserializeOwned>(path: &Path, device: &Device) -> Result<Resumed<S>> {
    let (tensors, meta) = checkpoint::load_checkpoint(path, device)?;
    let state: S = serde_json::from_value(meta.extra).map_err(|e| VocError::BadFile {
        path: path.to_path_buf(),
        detail: format!("no resume state of this trainer: {e}"),
    })?;
    let (optimizer, weights): (HashMap<_, _>, HashMap<_, _>) = tensors
        .into_iter()
        .partition(|(k, _)| k.starts_with(OPTIMIZER_PREFIX));
    let optimizer = optimizer
        .into_iter()
        .map(|(k, v)| (k[OPTIMIZER_PREFIX.len()..].to_string(), v))
        .collect();
    Ok(Resumed {
        state,
        weights,
        optimizer,
    })
}

/// Between two writes of a run's checkpoints, at least this long (unless the phase ends): a head epoch
/// on cached features takes milliseconds, and rewriting a 0.5 GB checkpoint after each would cost far
/// more than the training. A killed run loses at most this much work.
pub const MIN_SAVE_INTERVAL: Duration = Duration::from_secs(10);

/// When checkpoints are due: after the first epoch (a loadable run as soon as possible), on demand
/// (the phase's last epoch, an early stop), and otherwise at most every [`MIN_SAVE_INTERVAL`].
#[derive(Debug, Default, Clone)]
pub struct SaveThrottle {
    last: Option<Instant>,
}

impl SaveThrottle {
    /// Whether to write now; `force` for a phase's last epoch or an early stop.
    pub fn due(&self, force: bool) -> bool {
        force || self.last.is_none_or(|t| t.elapsed() >= MIN_SAVE_INTERVAL)
    }

    /// Records that the checkpoints were just written.
    pub fn saved(&mut self) {
        self.last = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Rec {
        epoch: usize,
    }

    #[test]
    fn a_torn_last_line_is_dropped_and_a_bad_middle_line_is_an_error() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| VocError::Msg(e.to_string()))?;
        let path = dir.path().join("metrics.jsonl");
        std::fs::write(&path, "{\"epoch\":1}\n{\"epoch\":2}\n{\"epo").unwrap();
        assert_eq!(
            read_jsonl::<Rec>(&path)?,
            [Rec { epoch: 1 }, Rec { epoch: 2 }]
        );
        std::fs::write(&path, "{\"epoch\":1}\n{\"epo\n{\"epoch\":3}\n").unwrap();
        let err = read_jsonl::<Rec>(&path).unwrap_err().to_string();
        assert!(
            err.contains("metrics.jsonl") && err.contains("line 2"),
            "{err}"
        );
        // A complete last line that does not parse is not a torn write.
        std::fs::write(&path, "{\"epoch\":1}\n{\"epo\n").unwrap();
        assert!(read_jsonl::<Rec>(&path).is_err());
        assert!(read_jsonl::<Rec>(&dir.path().join("none.jsonl"))?.is_empty());
        Ok(())
    }

    #[test]
    fn resume_checkpoints_keep_weights_optimizer_state_and_counters_apart() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| VocError::Msg(e.to_string()))?;
        let path = dir.path().join("resume.safetensors");
        let w = Tensor::new(&[1f32, 2.0], &Device::Cpu)?;
        let weights = HashMap::from([("fc.weight".to_string(), w.clone())]);
        let optimizer = HashMap::from([("fc.weight.exp_avg".to_string(), (&w * 3.0)?)]);
        let meta = CheckpointMeta::new("net", vec!["a".into()]);
        save_resume(&path, &weights, optimizer, meta, &Rec { epoch: 7 })?;
        let back: Resumed<Rec> = load_resume(&path, &Device::Cpu)?;
        assert_eq!(back.state, Rec { epoch: 7 });
        assert_eq!(back.weights.keys().collect::<Vec<_>>(), ["fc.weight"]);
        assert_eq!(
            back.optimizer["fc.weight.exp_avg"].to_vec1::<f32>()?,
            [3.0, 6.0]
        );
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Other {
            phase: String,
        }
        let err = load_resume::<Other>(&path, &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("resume.safetensors") && err.contains("no resume state"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn a_run_folder_is_started_once_and_resumed_only_with_its_own_settings() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| VocError::Msg(e.to_string()))?;
        let paths = RunPaths::new(dir.path().join("run"));
        let data = dir.path().to_path_buf();
        let differences = |a: &Rec, b: &Rec| {
            if a == b {
                vec![]
            } else {
                vec![format!("epoch {} vs {}", a.epoch, b.epoch)]
            }
        };
        let err = check_run(&paths, &data, &Rec { epoch: 1 }, true, differences)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no run there"), "{err}");
        check_run(&paths, &data, &Rec { epoch: 1 }, false, differences)?;
        create_run(
            &paths,
            &SavedRun {
                format: RUN_FORMAT,
                config: Rec { epoch: 1 },
                data: data.clone(),
            },
        )?;
        let err = check_run(&paths, &data, &Rec { epoch: 1 }, false, differences)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already holds a training run"), "{err}");
        check_run(&paths, &data, &Rec { epoch: 1 }, true, differences)?;
        let err = check_run(&paths, &data, &Rec { epoch: 2 }, true, differences)
            .unwrap_err()
            .to_string();
        assert!(err.contains("epoch 1 vs 2"), "{err}");
        let err = check_run(
            &paths,
            &dir.path().join("run"),
            &Rec { epoch: 1 },
            true,
            differences,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("trains on"), "{err}");
        Ok(())
    }
}
