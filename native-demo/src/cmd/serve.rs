//! `adore serve`: the browser demo (web/, with the package web/build.sh builds into web/pkg)
//! and one model file, served on 127.0.0.1 so that WebGPU has its secure context.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use clap::Args;

use crate::options::ModelPath;

#[derive(Args)]
pub struct ServeArgs {
    /// Port (0 = any free port).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// A .gguf file; without it the default model is fetched once into the cache directory.
    #[command(flatten)]
    model: ModelPath,
    /// The demo's directory (default: web/ with its built package, see web/build.sh).
    #[arg(long)]
    web: Option<PathBuf>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let web = web_dir(a.web)?;
    let model = a.model.path()?;
    if model.is_dir() {
        bail!(
            "{}: serve takes one .gguf file (the page also accepts a Hugging Face directory's files from its file picker)",
            model.display()
        );
    }
    serve(a.port, &web, &model)
}

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
fn web_dir(given: Option<PathBuf>) -> Result<PathBuf> {
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

/// Answers one connection: one GET or HEAD, then the connection closes (no keep-alive, so a
/// browser never waits on a connection held by an earlier response).
fn answer(mut stream: TcpStream, web: &Path, model: &Path, model_url: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // The headers are not needed; read up to the blank line that ends them.
    let mut header = String::new();
    while reader.read_line(&mut header)? > 2 {
        header.clear();
    }
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or("/"));
    let path = if target.split('?').next() == Some(model_url) { Some(model.to_path_buf()) } else { resolve(web, target) };
    let file = path.as_deref().filter(|p| p.is_file()).and_then(|p| File::open(p).ok().map(|f| (p, f)));
    match (method, file) {
        ("GET" | "HEAD", Some((p, mut f))) => {
            let len = f.metadata()?.len();
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {len}\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n",
                content_type(p)
            )?;
            if method == "GET" {
                std::io::copy(&mut f, &mut stream)?;
            }
        }
        ("GET" | "HEAD", None) => write!(stream, "HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot found")?,
        _ => write!(stream, "HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?,
    }
    stream.flush()
}

/// Serves until killed; prints the demo's URL (with the model) on stdout.
fn serve(port: u16, web: &Path, model: &Path) -> Result<()> {
    let model_name = model
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| !n.contains(['?', '#', '/', '&', ' ']))
        .map(str::to_string)
        .with_context(|| format!("{}: the model file name must be plain text without spaces or URL characters", model.display()))?;
    File::open(model).with_context(|| format!("cannot open the model {}", model.display()))?;
    let listener = TcpListener::bind(("127.0.0.1", port)).with_context(|| format!("cannot listen on 127.0.0.1:{port}"))?;
    let port = listener.local_addr()?.port();
    println!("http://127.0.0.1:{port}/?model=/models/{model_name}");
    std::io::stdout().flush()?;
    eprintln!("serve: {} and {} (Ctrl-C stops)", web.display(), model.display());
    let model_url: &'static str = Box::leak(format!("/models/{model_name}").into_boxed_str());
    let (web, model): (&'static Path, &'static Path) = (Box::leak(web.into()), Box::leak(model.into()));
    for stream in listener.incoming() {
        match stream {
            // One thread per connection: the model download must not hold up the page's files.
            Ok(s) => {
                std::thread::spawn(move || {
                    if let Err(e) = answer(s, web, model, model_url) {
                        if e.kind() != std::io::ErrorKind::BrokenPipe && e.kind() != std::io::ErrorKind::ConnectionReset {
                            eprintln!("serve: {e}");
                        }
                    }
                });
            }
            Err(e) => eprintln!("serve: {e}"),
        }
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
