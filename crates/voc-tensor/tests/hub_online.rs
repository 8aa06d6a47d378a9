//! The online path of the hub cache, for real, against a mock hub on the loopback interface: a small
//! HTTP server in the test that answers the way huggingface.co does (a relative redirect from
//! `resolve/`, `ETag` and `X-Repo-Commit` headers, `Content-Range` on ranged requests). A cold cache
//! downloads and loads; a transfer cut off mid-file leaves nothing loadable in the cache and the next
//! run recovers; a 404, a 500 and a server that stalls each fail with a clear error in bounded time.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use voc_tensor::hub::{self, HubCache};

const REPO: &str = "voc-test/tiny";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Normal,
    /// Every transfer sends half of what it announces, then closes.
    CutOff,
    NotFound,
    ServerError,
    /// Accepts and never answers.
    Stall,
}

struct MockHub {
    url: String,
    mode: Arc<Mutex<Mode>>,
}

fn respond(mut stream: TcpStream, files: &HashMap<String, Vec<u8>>, mode: Mode) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    let mut range_start: Option<usize> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("range: bytes=") {
            range_start = v.trim().split('-').next().and_then(|s| s.parse().ok());
        }
    }
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or("/")
        .to_string();
    let status = |stream: &mut TcpStream, code: &str| {
        let _ = write!(
            stream,
            "HTTP/1.1 {code}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    };
    match mode {
        Mode::Stall => {
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        Mode::NotFound => return status(&mut stream, "404 Not Found"),
        Mode::ServerError => return status(&mut stream, "500 Internal Server Error"),
        _ => {}
    }
    // huggingface.co answers `resolve/` with a relative redirect to where the file is served.
    let resolve = format!("/{REPO}/resolve/main/");
    if let Some(file) = path.strip_prefix(&resolve) {
        let _ = write!(
            stream,
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: /files/{COMMIT}/{file}\r\nX-Repo-Commit: {COMMIT}\r\n\
             ETag: \"etag-{file}\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        return;
    }
    let Some(file) = path.strip_prefix(&format!("/files/{COMMIT}/")) else {
        return status(&mut stream, "404 Not Found");
    };
    let Some(body) = files.get(file) else {
        return status(&mut stream, "404 Not Found");
    };
    let start = range_start.unwrap_or(0).min(body.len());
    let rest = &body[start..];
    let header = format!(
        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\n\
         ETag: \"etag-{file}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
        rest.len(),
        body.len().saturating_sub(1),
        body.len()
    );
    let _ = stream.write_all(header.as_bytes());
    let send = if mode == Mode::CutOff && rest.len() > 1 {
        &rest[..rest.len() / 2]
    } else {
        rest
    };
    let _ = stream.write_all(send);
    let _ = stream.flush();
}

fn serve(files: HashMap<String, Vec<u8>>) -> MockHub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mode = Arc::new(Mutex::new(Mode::Normal));
    let files = Arc::new(files);
    let shared = mode.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let files = files.clone();
            let mode = *shared.lock().unwrap();
            std::thread::spawn(move || respond(stream, &files, mode));
        }
    });
    MockHub { url, mode }
}

fn weights() -> (Vec<u8>, Tensor) {
    let t = Tensor::arange(0f32, 4096.0, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.safetensors");
    candle_core::safetensors::save(&HashMap::from([("w".to_string(), t.clone())]), &path).unwrap();
    (std::fs::read(&path).unwrap(), t)
}

#[test]
fn a_cold_cache_downloads_then_loads_and_a_cut_transfer_is_recovered() {
    let (bytes, tensor) = weights();
    let hub = serve(HashMap::from([("model.safetensors".to_string(), bytes)]));
    let dir = tempfile::tempdir().unwrap();
    let cache = HubCache::new(dir.path(), false)
        .with_endpoint(hub.url.clone())
        .with_timeout(Duration::from_secs(30));

    // Cut off mid-file, every attempt: an error, and nothing loadable left in the cache.
    *hub.mode.lock().unwrap() = Mode::CutOff;
    let e = cache
        .resolve_file(REPO, None, "model.safetensors")
        .unwrap_err();
    assert!(e.to_string().contains("download failed"), "{e}");
    assert!(cache.cached(REPO, None, "model.safetensors").is_none());

    // The next run, the server well again: downloads (resuming or anew) and loads the right tensor.
    *hub.mode.lock().unwrap() = Mode::Normal;
    let path = cache.resolve_file(REPO, None, "model.safetensors").unwrap();
    let loaded = hub::load_tensors(&path, &Device::Cpu).unwrap();
    let diff = (loaded["w"].clone() - &tensor)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    // Now cached: found without the server.
    assert_eq!(cache.cached(REPO, None, "model.safetensors"), Some(path));
}

#[test]
fn missing_repos_server_errors_and_stalls_fail_in_bounded_time() {
    let hub = serve(HashMap::new());
    let dir = tempfile::tempdir().unwrap();
    let cache = HubCache::new(dir.path(), false)
        .with_endpoint(hub.url.clone())
        .with_timeout(Duration::from_secs(2));
    for (mode, needle) in [
        (Mode::NotFound, "404"),
        (Mode::ServerError, "500"),
        (Mode::Stall, "within 2 s"),
    ] {
        *hub.mode.lock().unwrap() = mode;
        let t0 = Instant::now();
        let e = cache
            .resolve_file("voc-test/nothing", None, "model.safetensors")
            .unwrap_err()
            .to_string();
        let took = t0.elapsed();
        assert!(e.contains(needle), "{mode:?}: {e}");
        assert!(
            e.contains("voc-test/nothing"),
            "{mode:?}: the error names no repo: {e}"
        );
        assert!(took < Duration::from_secs(10), "{mode:?} took {took:?}");
    }
}
