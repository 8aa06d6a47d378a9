//! Finding the shared reference folder (`../shared` next to the checkout) from tests, examples and
//! benches, without any tensor library.
//!
//! Tests that need a file from it start with
//!
//! ```no_run
//! # fn test() {
//! let Some(golden) = voc_core::testing::shared_file("my_test", "reference/attack.safetensors") else {
//!     return;
//! };
//! # }
//! ```
//!
//! When the folder or the file is absent the test prints `SKIPPED my_test: ...` on stderr (uncaptured, so
//! it shows in `cargo test`'s output), naming the file and where it was looked for, and returns. With
//! `VOC_REQUIRE_SHARED=1` (what CI sets) it panics instead, so a missing file fails the run rather than
//! passing it silently.
//!
//! [`shared_with`] checks several files (and [`hub_model`] names a model of the offline hub cache) and
//! returns the folder itself; [`shared_files`] returns the paths. Small goldens a crate needs are better
//! vendored into its `tests/data/`, so that its tests always run.
use std::io::Write;
use std::path::{Path, PathBuf};

/// The environment variable that points at the shared folder, overriding the search above the checkout.
pub const SHARED_ENV: &str = "VOC_SHARED";

/// The environment variable that turns a missing shared file from a skipped test into a failed one
/// (any value but empty or `0`).
pub const REQUIRE_ENV: &str = "VOC_REQUIRE_SHARED";

/// The shared data folder: `$VOC_SHARED` when set (and `None` when that is not a folder), otherwise the
/// first ancestor of `start` that holds `shared/reference`.
pub fn shared_dir_from(start: &Path) -> Option<PathBuf> {
    locate(start).ok()
}

/// [`shared_dir_from`] starting at the current directory (cargo runs tests in the crate's folder).
pub fn shared_dir() -> Option<PathBuf> {
    shared_dir_from(&std::env::current_dir().ok()?)
}

/// Whether a missing shared file must fail the test (`VOC_REQUIRE_SHARED` set, and not empty or `0`).
pub fn require_shared() -> bool {
    std::env::var_os(REQUIRE_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// `shared/<relative>` (a file or a folder), or `None` after printing why test `test` is skipped.
///
/// Panics instead of skipping when [`require_shared`] holds: the message names the missing path.
#[track_caller]
pub fn shared_file(test: &str, relative: impl AsRef<Path>) -> Option<PathBuf> {
    let [path] = shared_files(test, [relative])?;
    Some(path)
}

/// [`shared_file`] for several paths at once: all of them, in order, or `None` (or a panic) naming
/// every one that is missing.
#[track_caller]
pub fn shared_files<P: AsRef<Path>, const N: usize>(
    test: &str,
    relative: [P; N],
) -> Option<[PathBuf; N]> {
    let dir = shared_with(test, &relative)?;
    Some(relative.map(|p| dir.join(p)))
}

/// The shared folder, once every path of `needs` (relative to it) exists; otherwise `None` after
/// printing why test `test` is skipped (or a panic under [`require_shared`]), naming the missing paths.
#[track_caller]
pub fn shared_with<P: AsRef<Path>>(test: &str, needs: &[P]) -> Option<PathBuf> {
    let start = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let why = match locate(&start) {
        Ok(dir) => {
            let missing: Vec<String> = needs
                .iter()
                .map(|p| dir.join(p))
                .filter(|p| !p.exists())
                .map(|p| p.display().to_string())
                .collect();
            if missing.is_empty() {
                return Some(dir);
            }
            format!("missing {}", missing.join(", "))
        }
        Err(why) => {
            let names: Vec<String> = needs
                .iter()
                .map(|p| format!("shared/{}", p.as_ref().display()))
                .collect();
            let names = if names.is_empty() {
                "the shared folder".to_string()
            } else {
                names.join(", ")
            };
            format!("needs {names} but {why}")
        }
    };
    if require_shared() {
        panic!("{test}: {why} ({REQUIRE_ENV} is set: a missing shared file is an error)");
    }
    // Straight to the stderr handle: libtest captures `eprintln!` of passing tests, and this line must show.
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED {test}: {why} (set {REQUIRE_ENV}=1 to make this an error)"
    );
    None
}

/// The folder of hub model `repo_id` (`org/name`) in the shared offline hub cache, relative to the shared
/// folder: `hf/hub/models--org--name`, for [`shared_with`] and [`shared_file`].
pub fn hub_model(repo_id: &str) -> String {
    format!("hf/hub/models--{}", repo_id.replace('/', "--"))
}

/// The first ancestor of `start` holding `shared/reference`, as `.../shared`.
fn find_above(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|a| a.join("shared"))
        .find(|d| d.join("reference").is_dir())
}

/// The shared folder, or why it was not found.
fn locate(start: &Path) -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os(SHARED_ENV).map(PathBuf::from) {
        return if dir.is_dir() {
            Ok(dir)
        } else {
            Err(format!("{SHARED_ENV}={} is not a folder", dir.display()))
        };
    }
    find_above(start).ok_or_else(|| {
        format!(
            "no ancestor of {} holds shared/reference (set {SHARED_ENV} to the shared folder)",
            start.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_shared_above_the_start() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tmp.path().join("shared/reference")).unwrap();
        let deep = tmp.path().join("main/crates/x");
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(
            find_above(&deep).unwrap(),
            tmp.path().join("shared"),
            "the first ancestor holding shared/reference"
        );
        let elsewhere = tempfile::tempdir().unwrap();
        assert_eq!(find_above(elsewhere.path()), None);
    }

    #[test]
    fn hub_model_folder() {
        assert_eq!(
            hub_model("google/mobilenet_v2_1.0_224"),
            "hf/hub/models--google--mobilenet_v2_1.0_224"
        );
    }
}
