//! Pretrained weights from the Hugging Face hub: local cache first, offline-safe.
//!
//! Files are looked up in the standard hub cache layout
//! (`CACHE/models--ORG--NAME/{refs/REVISION, snapshots/COMMIT/FILE}`) where `CACHE` is, as in the Python
//! `huggingface_hub`, `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`. Only a file
//! missing from the cache is downloaded (through the `hf-hub` crate), and never when `HF_HUB_OFFLINE` is
//! set to a true value (`1`, `true`, `yes`, `on`): then a missing file is an error that says where it was
//! looked for and which variable to set.
//!
//! ```no_run
//! use voc_tensor::hub::{self, WeightsSource};
//! # fn main() -> voc_tensor::Result<()> {
//! let src = WeightsSource::hub("google/mobilenet_v2_1.0_224", None);
//! let path = hub::resolve_weights(&src)?;
//! let tensors = hub::load_tensors(&path, &voc_tensor::Device::Cpu)?;
//! let config = hub::read_config("google/mobilenet_v2_1.0_224", None)?;
//! # Ok(()) }
//! ```
use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Result, VocError};

/// The weight files a model repo is searched for, in order of preference.
pub const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

const DEFAULT_REVISION: &str = "main";

/// Where hub files live on this machine and whether the network may be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubCache {
    /// The hub cache folder: the one holding `models--ORG--NAME` folders.
    pub dir: PathBuf,
    /// Where `dir` came from (`HF_HUB_CACHE`, `HF_HOME` or the default), for error messages.
    pub dir_origin: String,
    /// No download is ever attempted when set.
    pub offline: bool,
    /// The hub's address for downloads (`HF_ENDPOINT`; `None`: huggingface.co).
    pub endpoint: Option<String>,
    /// The longest a download may take before it is abandoned with an error (`VOC_HUB_TIMEOUT`, in
    /// seconds; default 1800): a server that stops answering must not hang a job forever.
    pub timeout: std::time::Duration,
}

/// [`HubCache::timeout`] unless `VOC_HUB_TIMEOUT` says otherwise.
const DEFAULT_DOWNLOAD_TIMEOUT_S: u64 = 1800;

fn download_timeout_from_env() -> std::time::Duration {
    let secs = std::env::var("VOC_HUB_TIMEOUT")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v > 0.0)
        .unwrap_or(DEFAULT_DOWNLOAD_TIMEOUT_S as f64);
    std::time::Duration::from_secs_f64(secs)
}

impl HubCache {
    /// A cache at an explicit folder (the one holding `models--ORG--NAME`).
    pub fn new(dir: impl Into<PathBuf>, offline: bool) -> Self {
        Self {
            dir: dir.into(),
            dir_origin: "given explicitly".to_string(),
            offline,
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|v| !v.is_empty()),
            timeout: download_timeout_from_env(),
        }
    }

    /// This cache, downloading from `endpoint` (e.g. a mirror, or a local test server).
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = Some(endpoint.into());
        self
    }

    /// This cache, abandoning a download after `timeout`.
    pub fn with_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The cache the environment selects: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`; offline when `HF_HUB_OFFLINE` is true.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let (dir, dir_origin) = if let Some(dir) = var("HF_HUB_CACHE") {
            (PathBuf::from(dir), "HF_HUB_CACHE".to_string())
        } else if let Some(home) = var("HF_HOME") {
            (PathBuf::from(home).join("hub"), "HF_HOME/hub".to_string())
        } else {
            let base = var("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"));
            (
                base.join("huggingface").join("hub"),
                "default, HF_HOME unset".to_string(),
            )
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| is_truthy(&v))
            .unwrap_or(false);
        Self {
            dir,
            dir_origin,
            offline,
            endpoint: std::env::var("HF_ENDPOINT").ok().filter(|v| !v.is_empty()),
            timeout: download_timeout_from_env(),
        }
    }

    /// The cached copy of `filename`, if there is one. `revision` is a branch/tag name (looked up in
    /// `refs/`) or a commit hash (a `snapshots/` folder).
    pub fn cached(&self, repo_id: &str, revision: Option<&str>, filename: &str) -> Option<PathBuf> {
        let revision = revision.unwrap_or(DEFAULT_REVISION);
        check_hub_names(repo_id, revision, filename).ok()?;
        let repo_dir = self.dir.join(repo_folder_name(repo_id));
        let snapshot = match std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
            Ok(commit) => commit.trim().to_string(),
            Err(_) => revision.to_string(),
        };
        // A refs file names a commit: one plain folder name, never a way out of the cache.
        if !is_plain_name(&snapshot) {
            return None;
        }
        let path = repo_dir.join("snapshots").join(snapshot).join(filename);
        // `is_file` follows the snapshot symlink into blobs/, so a dangling link counts as missing.
        path.is_file().then_some(path)
    }

    /// The local path of `filename` in `repo_id` at `revision` (default `main`): the cached copy, or a
    /// fresh download into this cache when not offline.
    pub fn resolve_file(
        &self,
        repo_id: &str,
        revision: Option<&str>,
        filename: &str,
    ) -> Result<PathBuf> {
        let rev = revision.unwrap_or(DEFAULT_REVISION);
        check_hub_names(repo_id, rev, filename)?;
        if let Some(path) = self.cached(repo_id, revision, filename) {
            return Ok(path);
        }
        let searched = self.dir.join(repo_folder_name(repo_id));
        let error = |detail: String| VocError::HubFile {
            repo_id: repo_id.to_string(),
            revision: rev.to_string(),
            filename: filename.to_string(),
            detail,
        };
        if self.offline {
            return Err(error(format!(
                "not in the local hub cache {} (from {}; looked in {}/snapshots/) and HF_HUB_OFFLINE is set, \
                 so nothing was downloaded. Set HF_HOME to a folder whose hub/ holds models--{}, or \
                 HF_HUB_CACHE to that hub folder itself (e.g. HF_HOME=../shared/hf), or pass the weights \
                 file with --weights FILE",
                self.dir.display(),
                self.dir_origin,
                searched.display(),
                repo_id.replace('/', "--"),
            )));
        }
        self.download(repo_id, rev, filename).map_err(|e| {
            error(format!(
                "not in the local hub cache {} (from {}) and the download failed: {e}. Offline, set HF_HOME \
                 to a folder whose hub/ holds models--{} (or HF_HUB_CACHE to that hub folder) and \
                 HF_HUB_OFFLINE=1, or pass the weights file with --weights FILE",
                self.dir.display(),
                self.dir_origin,
                repo_id.replace('/', "--"),
            ))
        })
    }

    fn download(
        &self,
        repo_id: &str,
        revision: &str,
        filename: &str,
    ) -> std::result::Result<PathBuf, String> {
        use hf_hub::api::sync::ApiBuilder;
        let mut builder = ApiBuilder::from_cache(hf_hub::Cache::new(self.dir.clone()))
            // Two retries resume a transfer that was cut off, from where it stopped.
            .with_retries(2);
        if let Some(endpoint) = &self.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if let Ok(token) = std::env::var("HF_TOKEN") {
            builder = builder.with_token(Some(token));
        }
        let api = builder.build().map_err(|e| e.to_string())?;
        let repo = hf_hub::Repo::with_revision(
            repo_id.to_string(),
            hf_hub::RepoType::Model,
            revision.to_string(),
        );
        // hf-hub's HTTP client has no timeout: the transfer runs on its own thread and is abandoned
        // (the process goes on, the partial file stays as hf-hub's resumable `.part`) when it takes
        // longer than the limit.
        let filename_owned = filename.to_string();
        let (send, receive) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = send.send(
                api.repo(repo)
                    .get(&filename_owned)
                    .map_err(|e| e.to_string()),
            );
        });
        let path = match receive.recv_timeout(self.timeout) {
            Ok(result) => result?,
            Err(_) => {
                return Err(format!(
                    "no complete answer from {} within {:.0} s (VOC_HUB_TIMEOUT sets the limit)",
                    self.endpoint.as_deref().unwrap_or("https://huggingface.co"),
                    self.timeout.as_secs_f64()
                ))
            }
        };
        check_downloaded(&path, filename)?;
        Ok(path)
    }
}

/// A downloaded weights file must be whole: hf-hub renames a transfer into the cache when the server
/// closes the connection, also when that happens early. A safetensors file whose header does not
/// account for its length is removed (with its snapshot link), so the next run downloads it again.
fn check_downloaded(path: &Path, filename: &str) -> std::result::Result<(), String> {
    if !filename.ends_with(".safetensors") {
        return Ok(());
    }
    let ok = std::fs::read(path)
        .ok()
        .is_some_and(|bytes| safetensors::SafeTensors::read_metadata(&bytes).is_ok());
    if ok {
        return Ok(());
    }
    let blob = std::fs::canonicalize(path).ok();
    let _ = std::fs::remove_file(path);
    if let Some(blob) = blob {
        let _ = std::fs::remove_file(blob);
    }
    Err(format!(
        "the downloaded {filename} is incomplete or corrupt (removed from the cache; run again to download it anew)"
    ))
}

fn is_truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// A path component that stays where it is joined: not empty, not `.` or `..`, no separator.
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\\', '\0'])
}

/// Hub names become paths in the cache: a repo id is `name` or `owner/name` of letters, digits, `-`,
/// `_` and `.`; a revision and a file name are relative paths of plain components. Anything else
/// (`..`, an absolute path) could read or write outside the cache, and is refused.
pub fn check_hub_names(repo_id: &str, revision: &str, filename: &str) -> Result<()> {
    let bad = |what: &str, value: &str, expected: &str| {
        Err(VocError::BadArgument(format!(
            "hub {what} '{value}' is not valid: expected {expected}"
        )))
    };
    let parts: Vec<&str> = repo_id.split('/').collect();
    let id_part = |p: &&str| {
        is_plain_name(p)
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    if parts.len() > 2 || !parts.iter().all(id_part) {
        return bad(
            "repo id",
            repo_id,
            "NAME or OWNER/NAME of letters, digits, '-', '_' and '.'",
        );
    }
    for (what, value) in [("revision", revision), ("file name", filename)] {
        if value.starts_with('/') || !value.split('/').all(is_plain_name) {
            return bad(
                what,
                value,
                "a relative path without '.' or '..' components",
            );
        }
    }
    Ok(())
}

fn repo_folder_name(repo_id: &str) -> String {
    format!("models--{}", repo_id.replace('/', "--"))
}

/// [`HubCache::resolve_file`] on the cache the environment selects ([`HubCache::from_env`]).
pub fn resolve_file(repo_id: &str, revision: Option<&str>, filename: &str) -> Result<PathBuf> {
    HubCache::from_env().resolve_file(repo_id, revision, filename)
}

/// Where a model's weights come from: a hub repo, or a local file (`--weights FILE`) that overrides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsSource {
    /// A file of a hub repo, resolved through the cache.
    Hub {
        /// The hub repo, e.g. `google/mobilenet_v2_1.0_224`.
        repo_id: String,
        /// Branch, tag or commit; `None` is `main`.
        revision: Option<String>,
    },
    /// A local weights file.
    File(PathBuf),
}

impl WeightsSource {
    /// [`WeightsSource::Hub`] for `repo_id` at `revision` (`None`: `main`).
    pub fn hub(repo_id: impl Into<String>, revision: Option<&str>) -> Self {
        Self::Hub {
            repo_id: repo_id.into(),
            revision: revision.map(str::to_string),
        }
    }

    /// The `--weights FILE` override when given, else the hub repo.
    pub fn from_args(weights: Option<&Path>, repo_id: &str, revision: Option<&str>) -> Self {
        match weights {
            Some(file) => Self::File(file.to_path_buf()),
            None => Self::hub(repo_id, revision),
        }
    }
}

impl fmt::Display for WeightsSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hub {
                repo_id,
                revision: Some(rev),
            } => write!(f, "hub:{repo_id}@{rev}"),
            Self::Hub {
                repo_id,
                revision: None,
            } => write!(f, "hub:{repo_id}"),
            Self::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// [`resolve_weights_in`] on the cache the environment selects.
pub fn resolve_weights(src: &WeightsSource) -> Result<PathBuf> {
    resolve_weights_in(&HubCache::from_env(), src)
}

/// The weights file of `src`: the given file (which must exist), or the repo's `model.safetensors`,
/// falling back to `pytorch_model.bin`. The cache is searched for both before anything is downloaded.
pub fn resolve_weights_in(cache: &HubCache, src: &WeightsSource) -> Result<PathBuf> {
    match src {
        WeightsSource::File(path) => {
            if path.is_file() {
                Ok(path.clone())
            } else {
                Err(VocError::bad_file(
                    path,
                    "weights file (--weights) does not exist or is not a file",
                ))
            }
        }
        WeightsSource::Hub { repo_id, revision } => {
            let revision = revision.as_deref();
            if let Some(path) = WEIGHT_FILES
                .iter()
                .find_map(|f| cache.cached(repo_id, revision, f))
            {
                return Ok(path);
            }
            // Offline, the cache check above already covered every candidate: one error suffices.
            let candidates = if cache.offline {
                &WEIGHT_FILES[..1]
            } else {
                &WEIGHT_FILES[..]
            };
            let mut first_error = None;
            for file in candidates {
                match cache.resolve_file(repo_id, revision, file) {
                    Ok(path) => return Ok(path),
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            Err(match first_error {
                Some(VocError::HubFile {
                    repo_id,
                    revision,
                    filename,
                    detail,
                }) => VocError::HubFile {
                    repo_id,
                    revision,
                    filename,
                    detail: format!(
                        "{detail} (the fallback {} is not available either)",
                        WEIGHT_FILES[1..].join(", ")
                    ),
                },
                Some(other) => other,
                None => VocError::Msg("no weight file names to try".into()),
            })
        }
    }
}

/// The file formats [`load_tensors`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFormat {
    /// A safetensors file.
    Safetensors,
    /// A PyTorch `torch.save` zip archive (`pytorch_model.bin`, `.pt`, `.pth`).
    PyTorchZip,
}

/// Tells the format from the file's first bytes: a zip archive is PyTorch, an 8-byte header length
/// followed by `{` is safetensors.
pub fn sniff_format(path: &Path) -> Result<WeightsFormat> {
    let mut head = [0u8; 9];
    let mut file = std::fs::File::open(path).map_err(|e| VocError::io(path, e))?;
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(VocError::io(path, e)),
        }
    }
    if n >= 4 && head[..4] == *b"PK\x03\x04" {
        return Ok(WeightsFormat::PyTorchZip);
    }
    if n == 9 && head[8] == b'{' {
        return Ok(WeightsFormat::Safetensors);
    }
    if n >= 1 && head[0] == 0x80 {
        return Err(VocError::bad_file(
            path,
            "a legacy (non-zip) PyTorch pickle, which cannot be read; re-save it with torch.save (zip \
             format, the default since PyTorch 1.6) or convert it to safetensors",
        ));
    }
    Err(VocError::bad_file(
        path,
        format!(
            "not a weights file: expected safetensors or a PyTorch zip archive ({n} bytes read)"
        ),
    ))
}

/// Every tensor of a weights file (safetensors, or a PyTorch zip `.bin`/`.pt`), by name, on `device`,
/// in the stored dtype.
pub fn load_tensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    match sniff_format(path)? {
        WeightsFormat::Safetensors => {
            let bytes = std::fs::read(path).map_err(|e| VocError::io(path, e))?;
            candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
                VocError::bad_file(
                    path,
                    format!("not a valid safetensors file (truncated or corrupt?): {e}"),
                )
            })
        }
        WeightsFormat::PyTorchZip => {
            check_torch_pickles(path)?;
            let tensors = candle_core::pickle::read_all(path).map_err(|e| {
                VocError::bad_file(path, format!("not a readable PyTorch weights archive: {e}"))
            })?;
            tensors
                .into_iter()
                .map(|(name, t)| Ok((name, t.to_device(device)?)))
                .collect()
        }
    }
}

/// The largest `data.pkl` of a PyTorch archive voc reads (its tensors are stored beside it; the pickle
/// itself is a few kilobytes to a few megabytes).
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// Checks the pickles of a PyTorch zip archive before candle's reader sees them: candle allocates
/// whatever length a string opcode claims (4 GB from a 5-byte opcode), so every length-prefixed
/// argument must fit in the bytes that are there. Opcodes candle does not know are left to its error.
fn check_torch_pickles(path: &Path) -> Result<()> {
    let bad = |msg: String| {
        VocError::bad_file(
            path,
            format!("not a readable PyTorch weights archive: {msg}"),
        )
    };
    let file = std::fs::File::open(path).map_err(|e| VocError::io(path, e))?;
    let mut archive =
        zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| bad(e.to_string()))?;
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).map_err(|e| bad(e.to_string()))?;
        let name = entry.name().map_err(|e| bad(e.to_string()))?.into_owned();
        if !name.ends_with("data.pkl") {
            continue;
        }
        if entry.size() > MAX_PICKLE_BYTES {
            return Err(bad(format!(
                "{name} claims {} bytes; at most {MAX_PICKLE_BYTES} are read",
                entry.size()
            )));
        }
        let mut bytes = Vec::new();
        // A checksum error comes at the end, with every byte read: the opcodes are checked first, so
        // a hostile length is reported as such whether or not the archive's checksum was forged.
        let read = (&mut entry).take(MAX_PICKLE_BYTES).read_to_end(&mut bytes);
        scan_pickle(&bytes).map_err(|msg| bad(format!("{name}: {msg}")))?;
        read.map_err(|e| bad(format!("{name}: {e}")))?;
    }
    Ok(())
}

/// How deep pickled objects may nest. Dropping a nested value recurses, so a pickle of a million nested
/// lists would overflow the stack in candle's reader; real checkpoints nest a handful of levels.
const MAX_PICKLE_DEPTH: usize = 256;

/// Walks a protocol-2 pickle's opcodes (those candle reads), checking that every argument fits in the
/// bytes there and that no value nests deeper than [`MAX_PICKLE_DEPTH`]: the stack machine is replayed
/// with each value's nesting depth in place of the value.
fn scan_pickle(p: &[u8]) -> std::result::Result<(), String> {
    #[derive(Clone, Copy)]
    enum Slot {
        Mark,
        Value(usize),
    }
    let mut stack: Vec<Slot> = Vec::new();
    let mut memo: HashMap<u32, usize> = HashMap::new();
    let mut i = 0usize;
    let need = |i: usize, n: usize, what: &str| {
        if p.len().saturating_sub(i) < n {
            Err(format!(
                "{what} at byte {i} needs {n} bytes, {} are left",
                p.len().saturating_sub(i)
            ))
        } else {
            Ok(())
        }
    };
    let underflow =
        |i: usize| format!("the opcode at byte {i} takes a value the stack does not hold");
    let pop = |stack: &mut Vec<Slot>, i: usize| match stack.pop() {
        Some(Slot::Value(d)) => Ok(d),
        _ => Err(underflow(i)),
    };
    // Pops the values down to the last mark (and the mark): their deepest depth (0 when none).
    let pop_to_mark = |stack: &mut Vec<Slot>, i: usize| {
        let mut deepest = 0;
        loop {
            match stack.pop() {
                Some(Slot::Mark) => return Ok(deepest),
                Some(Slot::Value(d)) => deepest = deepest.max(d),
                None => return Err(underflow(i)),
            }
        }
    };
    let push = |stack: &mut Vec<Slot>, depth: usize, at: usize| {
        if depth > MAX_PICKLE_DEPTH {
            return Err(format!(
                "values nest more than {MAX_PICKLE_DEPTH} deep (byte {at})"
            ));
        }
        stack.push(Slot::Value(depth));
        Ok(())
    };
    // A container on the stack takes in values of `depth`.
    let fill = |stack: &mut Vec<Slot>, depth: usize, at: usize| match stack.last_mut() {
        Some(Slot::Value(d)) => {
            *d = (*d).max(depth + 1);
            if *d > MAX_PICKLE_DEPTH {
                Err(format!(
                    "values nest more than {MAX_PICKLE_DEPTH} deep (byte {at})"
                ))
            } else {
                Ok(())
            }
        }
        _ => Err(underflow(at)),
    };
    // A memo index: 1 byte (BINPUT, BINGET) or 4 little-endian bytes (LONG_BINPUT, LONG_BINGET).
    let memo_key = |bytes: &[u8]| {
        bytes
            .iter()
            .rev()
            .fold(0u32, |k, &b| (k << 8) | u32::from(b))
    };
    while i < p.len() {
        let at = i;
        let op = p[i];
        i += 1;
        let arg = |n: usize| need(i, n, "an opcode's argument").map(|_| &p[i..i + n]);
        match op {
            0x80 => i += arg(1).map(|_| 1)?,
            b'c' => {
                let mut end = i;
                for _ in 0..2 {
                    let nl = p[end..]
                        .iter()
                        .position(|&b| b == b'\n')
                        .ok_or("an unterminated global")?;
                    end += nl + 1;
                }
                i = end;
                push(&mut stack, 1, at)?;
            }
            b'q' | b'r' => {
                let n = if op == b'q' { 1 } else { 4 };
                let key = memo_key(arg(n)?);
                i += n;
                match stack.last() {
                    Some(Slot::Value(d)) => {
                        memo.insert(key, *d);
                    }
                    _ => return Err(underflow(at)),
                }
            }
            b'h' | b'j' => {
                let n = if op == b'h' { 1 } else { 4 };
                let key = memo_key(arg(n)?);
                i += n;
                let depth = memo.get(&key).copied().unwrap_or(1);
                push(&mut stack, depth, at)?;
            }
            b'X' => {
                let len = arg(4)?;
                let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                need(i + 4, len, "a string")?;
                i += 4 + len;
                push(&mut stack, 1, at)?;
            }
            0x8a => {
                let n = arg(1)?[0] as usize;
                need(i + 1, n, "a long")?;
                i += 1 + n;
                push(&mut stack, 1, at)?;
            }
            b'J' | b'K' | b'M' | b'G' => {
                let n = match op {
                    b'J' => 4,
                    b'K' => 1,
                    b'M' => 2,
                    _ => 8,
                };
                arg(n)?;
                i += n;
                push(&mut stack, 1, at)?;
            }
            b')' | 0x88 | 0x89 | b'N' | b'}' | b']' => push(&mut stack, 1, at)?,
            b'(' => stack.push(Slot::Mark),
            b't' | b'd' => {
                let d = pop_to_mark(&mut stack, at)?;
                push(&mut stack, d + 1, at)?;
            }
            b'Q' => {
                let d = pop(&mut stack, at)?;
                push(&mut stack, d + 1, at)?;
            }
            0x85..=0x87 => {
                let mut d = 0;
                for _ in 0..(op - 0x84) {
                    d = d.max(pop(&mut stack, at)?);
                }
                push(&mut stack, d + 1, at)?;
            }
            b'R' | b'b' | 0x81 => {
                let d = pop(&mut stack, at)?.max(pop(&mut stack, at)?);
                push(&mut stack, d + 1, at)?;
            }
            b'a' => {
                let d = pop(&mut stack, at)?;
                fill(&mut stack, d, at)?;
            }
            b's' => {
                let d = pop(&mut stack, at)?.max(pop(&mut stack, at)?);
                fill(&mut stack, d, at)?;
            }
            b'e' | b'u' => {
                let d = pop_to_mark(&mut stack, at)?;
                fill(&mut stack, d, at)?;
            }
            // STOP, or an opcode candle does not read (its own error follows).
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// [`read_config_in`] on the cache the environment selects.
pub fn read_config(repo_id: &str, revision: Option<&str>) -> Result<serde_json::Value> {
    read_config_in(&HubCache::from_env(), repo_id, revision)
}

/// The repo's `config.json`, parsed.
pub fn read_config_in(
    cache: &HubCache,
    repo_id: &str,
    revision: Option<&str>,
) -> Result<serde_json::Value> {
    let path = cache.resolve_file(repo_id, revision, "config.json")?;
    let text = std::fs::read_to_string(&path).map_err(|e| VocError::io(&path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| VocError::bad_file(&path, format!("config.json is not valid JSON: {e}")))
}

/// How a set of loaded tensors differs from what a model expects, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameReport {
    /// Expected by the model, absent from the file.
    pub missing: Vec<String>,
    /// In the file, not expected by the model.
    pub unexpected: Vec<String>,
    /// `(name, expected shape, loaded shape)`.
    pub shape_mismatches: Vec<(String, Vec<usize>, Vec<usize>)>,
}

impl NameReport {
    /// True when every expected tensor is present with its shape and nothing else is there.
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.shape_mismatches.is_empty()
    }

    /// True when the model can be built: nothing missing and no shape mismatch (extra tensors are fine).
    pub fn is_loadable(&self) -> bool {
        self.missing.is_empty() && self.shape_mismatches.is_empty()
    }

    /// `Ok` when [`Self::is_loadable`], else an error naming `path` with this report.
    pub fn ensure_loadable(&self, path: &Path) -> Result<()> {
        if self.is_loadable() {
            Ok(())
        } else {
            Err(VocError::bad_file(
                path,
                format!("weights do not fit the model: {self}"),
            ))
        }
    }
}

impl fmt::Display for NameReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return write!(f, "all tensor names and shapes match");
        }
        const SHOWN: usize = 20;
        let list = |f: &mut fmt::Formatter<'_>, what: &str, names: &[String]| -> fmt::Result {
            if names.is_empty() {
                return Ok(());
            }
            write!(f, "\n  {} {what}:", names.len())?;
            for name in names.iter().take(SHOWN) {
                write!(f, " {name}")?;
            }
            if names.len() > SHOWN {
                write!(f, " ... ({} more)", names.len() - SHOWN)?;
            }
            Ok(())
        };
        write!(
            f,
            "{} missing, {} unexpected, {} shape mismatches",
            self.missing.len(),
            self.unexpected.len(),
            self.shape_mismatches.len()
        )?;
        list(f, "missing", &self.missing)?;
        list(f, "unexpected", &self.unexpected)?;
        if !self.shape_mismatches.is_empty() {
            write!(f, "\n  {} shape mismatches:", self.shape_mismatches.len())?;
            for (name, expected, found) in self.shape_mismatches.iter().take(SHOWN) {
                write!(f, " {name} (expected {expected:?}, found {found:?})")?;
            }
            if self.shape_mismatches.len() > SHOWN {
                write!(f, " ... ({} more)", self.shape_mismatches.len() - SHOWN)?;
            }
        }
        Ok(())
    }
}

/// Compares the tensors a model expects, `(name, shape)`, with the ones loaded. Lists are sorted by name.
pub fn check_names(
    expected: &[(String, Vec<usize>)],
    loaded: &HashMap<String, Tensor>,
) -> NameReport {
    let mut report = NameReport::default();
    let mut expected_names = BTreeSet::new();
    for (name, shape) in expected {
        expected_names.insert(name.as_str());
        match loaded.get(name) {
            None => report.missing.push(name.clone()),
            Some(t) if t.dims() != shape.as_slice() => {
                report
                    .shape_mismatches
                    .push((name.clone(), shape.clone(), t.dims().to_vec()))
            }
            Some(_) => {}
        }
    }
    report.unexpected = loaded
        .keys()
        .filter(|k| !expected_names.contains(k.as_str()))
        .cloned()
        .collect();
    report.missing.sort();
    report.unexpected.sort();
    report.shape_mismatches.sort();
    report
}
