//! The bodies of the fuzz targets, shared with the regression test (tests/fuzz_regressions.rs)
//! that replays every saved input. Each reader must return `Ok` or a typed error for any bytes:
//! never panic, hang, or allocate more than the input can justify.

use adore::controller::Controller;
use adore::model::config::Config;
use adore::model::gguf::Gguf;
use adore::model::{ModelSpec, Source, Tokenizer};

/// The GGUF reader: header, metadata, tensor table, every tensor's bytes and block scales, the
/// dequantization of every format (tensors up to 64 KiB); then the whole model check
/// (configuration, tokenizer, shapes, unused tensors) as a browser upload would run it.
pub fn gguf(data: &[u8]) {
    if let Ok(g) = Gguf::parse("fuzz.gguf", data) {
        for t in &g.tensors {
            let h = g.tensor(t);
            if h.data.len() <= 1 << 16 {
                let _ = h.to_f32();
            }
        }
    }
    let _ = ModelSpec::read(Source::Gguf { name: "fuzz.gguf".into(), bytes: data });
}

/// Splits `data` into `n` parts at the lengths its first 4 (n - 1) bytes give (little-endian
/// u32 each; the rest goes to the last part).
fn split(data: &[u8], n: usize) -> Vec<&[u8]> {
    let (head, mut rest) = data.split_at(data.len().min(4 * (n - 1)));
    let mut parts = Vec::with_capacity(n);
    for word in head.chunks(4) {
        let mut le = [0u8; 4];
        le[..word.len()].copy_from_slice(word);
        let len = (u32::from_le_bytes(le) as usize).min(rest.len());
        let (part, r) = rest.split_at(len);
        parts.push(part);
        rest = r;
    }
    parts.resize(n - 1, &[]);
    parts.push(rest);
    parts
}

/// A Hugging Face directory: config.json, tokenizer.json and two safetensors shards.
pub fn hf_dir(data: &[u8]) {
    let p = split(data, 4);
    let _ = ModelSpec::read(Source::HfDir {
        config_json: ("config.json".into(), p[0]),
        safetensors: vec![("a.safetensors".into(), p[2]), ("b.safetensors".into(), p[3])],
        tokenizer_json: ("tokenizer.json".into(), p[1]),
    });
}

/// config.json, and a GGUF file's configuration metadata.
pub fn config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Config::from_hf_json("config.json", text);
    }
    if let Ok(g) = Gguf::parse("fuzz.gguf", data) {
        let _ = Config::from_gguf(&g);
    }
}

/// The tokenizer built from GGUF metadata, then used on text from the same input.
pub fn tokenizer_gguf(data: &[u8]) {
    let p = split(data, 2);
    if let Ok(g) = Gguf::parse("fuzz.gguf", p[1]) {
        if let Ok(t) = Tokenizer::from_gguf(&g) {
            if let Ok(ids) = t.encode(&String::from_utf8_lossy(p[0])) {
                let _ = t.decode(&ids);
            }
        }
    }
}

/// A controller file (safetensors with the model fingerprint in its metadata), checked against
/// the fingerprint it claims, so that the fuzzer reaches the tensors.
pub fn controller(data: &[u8]) {
    let claimed = safetensors::SafeTensors::read_metadata(data)
        .ok()
        .and_then(|(_, header)| header.metadata().as_ref()?.get("model_fingerprint").cloned())
        .unwrap_or_default();
    let _ = Controller::from_bytes("fuzz.safetensors", data, &claimed);
}
