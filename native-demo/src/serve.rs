//! `adore serve`: the browser demo (web/, with the package web/build.sh builds into web/pkg)
//! and one model file, served on 127.0.0.1 so that WebGPU has its secure context.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context as _, Result};

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()).unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" => "application/json",
        "wasm" => "application/wasm",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "ts" | "md" | "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// The web directory: `--web`, else `web/` under the current directory or next to the
/// repository the binary was built in.
pub fn web_dir(given: Option<PathBuf>) -> Result<PathBuf> {
    let candidates: Vec<PathBuf> = match given {
        Some(p) => vec![p],
        None => {
            let mut c = vec![PathBuf::from("web")];
            if let Ok(exe) = std::env::current_exe() {
                // target/release/adore -> the repository's web/
                if let Some(repo) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
                    c.push(repo.join("web"));
                }
            }
            c
        }
    };
    for dir in &candidates {
        if dir.join("index.html").is_file() {
            if !dir.join("pkg/index.js").is_file() {
                bail!("{} has no built package (pkg/): run web/build.sh first", dir.display());
            }
            return Ok(dir.clone());
        }
    }
    bail!("cannot find the demo page (looked for index.html in {:?}); give --web DIR", candidates)
}

/// Maps a request path to a file under `root`, refusing anything that leaves it.
fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let path = url_path.split(['?', '#']).next().unwrap_or("/");
    let rel = Path::new(path.trim_start_matches('/'));
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return None;
    }
    let full = root.join(rel);
    if full.is_dir() {
        Some(full.join("index.html"))
    } else {
        Some(full)
    }
}

/// Serves until killed; prints the demo's URL (with the model) on stdout.
pub fn serve(port: u16, web: &Path, model: &Path) -> Result<()> {
    let model_name = model
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.contains(['?', '#', '/', '&', ' ']))
        .map(str::to_string)
        .with_context(|| format!("{}: the model file name must be plain text without spaces or URL characters", model.display()))?;
    File::open(model).with_context(|| format!("cannot open the model {}", model.display()))?;
    let server = tiny_http::Server::http(("127.0.0.1", port)).map_err(|e| anyhow::anyhow!("cannot listen on 127.0.0.1:{port}: {e}"))?;
    let port = server.server_addr().to_ip().map_or(port, |a| a.port());
    println!("http://127.0.0.1:{port}/?model=/models/{model_name}");
    eprintln!("serve: {} and {} (Ctrl-C stops)", web.display(), model.display());
    let model_url = format!("/models/{model_name}");
    for request in server.incoming_requests() {
        let path = if request.url().split('?').next() == Some(model_url.as_str()) {
            Some(model.to_path_buf())
        } else {
            resolve(web, request.url())
        };
        // One thread per request: the model download must not hold up the page's other files.
        std::thread::spawn(move || {
            let response = match path.as_deref().map(|p| (p, File::open(p))) {
                Some((p, Ok(file))) if p.is_file() => {
                    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], content_type(p).as_bytes());
                    let cache = tiny_http::Header::from_bytes(&b"Cache-Control"[..], &b"no-cache"[..]);
                    // Content-Length rather than chunks, so that the page can show download progress.
                    let mut r = tiny_http::Response::from_file(file).with_chunked_threshold(usize::MAX);
                    for h in [header, cache].into_iter().flatten() {
                        r.add_header(h);
                    }
                    request.respond(r)
                }
                _ => request.respond(tiny_http::Response::from_string("not found").with_status_code(404)),
            };
            if let Err(e) = response {
                eprintln!("serve: {e}");
            }
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_under_the_root() {
        let root = Path::new("/srv/web");
        assert_eq!(resolve(root, "/pkg/index.js?x=1"), Some(PathBuf::from("/srv/web/pkg/index.js")));
        assert_eq!(resolve(root, "/../etc/passwd"), None);
        assert_eq!(resolve(root, "/pkg/../../x"), None);
        assert_eq!(content_type(Path::new("a/adore_bg.wasm")), "application/wasm");
        assert_eq!(content_type(Path::new("demo.js")), "text/javascript; charset=utf-8");
    }
}
