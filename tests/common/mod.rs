//! Shared by the end-to-end tests: where the built `voc` binary is.
use std::path::PathBuf;

/// `target/<profile>/voc`, next to the `deps/` folder this test binary lives in.
pub fn voc_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let voc = profile_dir.join(format!("voc{}", std::env::consts::EXE_SUFFIX));
    assert!(
        voc.exists(),
        "{} does not exist: build it with `cargo build -p voc-cli` first (`make test` does)",
        voc.display()
    );
    voc
}
