//! The malformed-input corpus (tests/corpus): small model files and directories that are each
//! wrong in one way, with the error kind (`Error::kind`) each must produce. The same files go
//! through the browser API in web/tests/browser.mjs. The builders below made them;
//! `ADORE_WRITE_CORPUS=1 cargo test --test corpus -- --test-threads=1` writes them again after a
//! change.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use adore::model::gguf::{Gguf, Value};
use adore::model::{ModelSpec, Source, Tokenizer};
use adore::tensor::{DType, HostTensor};
use common::malformed::{header, tensor_entry, tiny_with};
use common::tiny::{self, Tiny};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Entry {
    name: String,
    /// Paths under tests/corpus.
    files: Vec<String>,
    kind: String,
    /// What the error message must name, where that matters (a refused feature).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    says: Option<String>,
}

struct Case {
    name: &'static str,
    files: Vec<(String, Vec<u8>)>,
    kind: &'static str,
    says: Option<&'static str>,
}

impl Case {
    fn says(mut self, what: &'static str) -> Self {
        self.says = Some(what);
        self
    }
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn gguf(name: &'static str, kind: &'static str, bytes: Vec<u8>) -> Case {
    Case { name, files: vec![(format!("{name}.gguf"), bytes)], kind, says: None }
}

/// A Hugging Face directory of the tiny model with `edit` applied to its files.
fn hf(name: &'static str, kind: &'static str, edit: impl Fn(&mut Vec<(String, Vec<u8>)>)) -> Case {
    let tiny = Tiny::new(2);
    let g = tiny.gguf_bytes();
    let tok = Tokenizer::from_gguf(&Gguf::parse("t", &g).unwrap()).unwrap();
    let tmp = std::env::temp_dir().join(format!("adore-corpus-{}-{name}", std::process::id()));
    tiny.write_hf_dir(&tmp, &tok.to_json().unwrap());
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap())
        })
        .collect();
    std::fs::remove_dir_all(&tmp).unwrap();
    files.sort();
    edit(&mut files);
    Case { name, files: files.into_iter().map(|(n, b)| (format!("{name}/{n}"), b)).collect(), kind, says: None }
}

fn file<'a>(files: &'a mut [(String, Vec<u8>)], name: &str) -> &'a mut Vec<u8> {
    &mut files.iter_mut().find(|(n, _)| n == name || n.ends_with(name)).unwrap().1
}

/// config.json of a Hugging Face case with `key` set to `value`.
fn hf_config(files: &mut [(String, Vec<u8>)], key: &str, value: serde_json::Value) {
    let mut c: serde_json::Value = serde_json::from_slice(file(files, "config.json")).unwrap();
    c[key] = value;
    *file(files, "config.json") = c.to_string().into_bytes();
}

/// A GGUF file of one tensor (`entry`, offset 0) whose data is `data`.
fn with_data(entry: Vec<u8>, data: Vec<u8>) -> Vec<u8> {
    let mut v = header(3, 1, 0, &entry);
    v.resize(v.len().next_multiple_of(32), 0);
    v.extend(data);
    v
}

/// `n` blocks of `size` bytes with small finite f16 scales everywhere (0x1400, about 0.001)
/// and the f16 at byte `at` of block `bad` set to `bits`.
fn k_blocks(size: usize, n: usize, bad: usize, at: usize, bits: u16) -> Vec<u8> {
    let mut v: Vec<u8> = (0..n * size).map(|i| (i * 37 % 251) as u8).collect();
    for b in 0..n {
        for at in [0, 2, 208].into_iter().filter(|a| a + 2 <= size) {
            v[b * size + at..b * size + at + 2].copy_from_slice(&0x1400u16.to_le_bytes());
        }
    }
    v[bad * size + at..bad * size + at + 2].copy_from_slice(&bits.to_le_bytes());
    v
}

/// The tiny model with one more F32 tensor.
fn with_tensor(name: &'static str, shape: Vec<usize>) -> Vec<u8> {
    tiny_with(move |_, ts| {
        let n: usize = shape.iter().product();
        ts.push(HostTensor { name: name.into(), dtype: DType::F32, shape: shape.clone(), data: vec![0u8; 4 * n].into() })
    })
}

/// The tiny model with one more metadata key.
fn with_meta(key: &'static str, value: Value) -> Vec<u8> {
    tiny_with(move |m, _| m.push((key, value.clone())))
}

fn cases() -> Vec<Case> {
    let tiny = Tiny::new(1).gguf_bytes();
    let cut = |n: usize| tiny[..n].to_vec();
    let mut array_lie = 4u64.to_le_bytes().to_vec();
    array_lie.extend_from_slice(b"toks");
    array_lie.extend_from_slice(&9u32.to_le_bytes()); // array
    array_lie.extend_from_slice(&8u32.to_le_bytes()); // of strings
    array_lie.extend_from_slice(&(1u64 << 50).to_le_bytes());
    let mut bad_utf8 = tiny_with(|m, _| m.push(("general.name", Value::String("x".into()))));
    let at = bad_utf8.windows(12).position(|w| w == b"general.name").unwrap();
    bad_utf8[at + 12 + 4 + 8] = 0xff;
    let meta = |key: &'static str, value: Value| tiny_with(move |m, _| m.iter_mut().find(|(k, _)| *k == key).unwrap().1 = value.clone());
    vec![
        gguf("empty", "empty_file", vec![]),
        gguf("bad-magic", "bad_magic", b"GGML\x03\x00\x00\x00rest of a file".to_vec()),
        gguf("version-1", "unsupported_version", header(1, 0, 0, &[])),
        gguf("version-99", "unsupported_version", header(99, 0, 0, &[])),
        gguf("tensor-count-2e40", "truncated", header(3, 1 << 40, 0, &[0; 16])),
        gguf("key-count-2e40", "truncated", header(3, 0, 1 << 40, &[0; 16])),
        gguf("array-length-2e50", "truncated", header(3, 0, 1, &array_lie)),
        gguf("tensor-offset-past-end", "truncated", header(3, 1, 0, &tensor_entry("token_embd.weight", &[32, 4], 0, 1 << 20))),
        gguf("tensor-offset-overflow", "truncated", header(3, 1, 0, &tensor_entry("x", &[32], 0, u64::MAX - 8))),
        gguf("tensor-dims-overflow", "malformed", header(3, 1, 0, &tensor_entry("x", &[1 << 40, 1 << 40], 0, 0))),
        gguf("tensor-1000-dims", "malformed", header(3, 1, 0, &tensor_entry("x", &[2; 1000], 0, 0))),
        gguf("dtype-iq2-xxs", "unknown_dtype", header(3, 1, 0, &tensor_entry("blk.0.attn_q.weight", &[256, 4], 16, 0))),
        gguf("q4k-row-not-whole-super-blocks", "malformed", header(3, 1, 0, &tensor_entry("odd", &[320, 2], 12, 0))),
        gguf("q6k-cut-in-super-block", "truncated", with_data(tensor_entry("t", &[256, 2], 14, 0), vec![0; 300])),
        gguf("q4k-scale-nan", "malformed", with_data(tensor_entry("t", &[256, 2], 12, 0), k_blocks(144, 2, 1, 0, 0x7e00)))
            .says("block 1 has d = NaN"),
        gguf("q5k-dmin-inf", "malformed", with_data(tensor_entry("t", &[256, 1], 13, 0), k_blocks(176, 1, 0, 2, 0x7c00)))
            .says("block 0 has dmin = inf"),
        gguf("q6k-scale-inf", "malformed", with_data(tensor_entry("t", &[256, 3], 14, 0), k_blocks(210, 3, 2, 208, 0xfc00)))
            .says("block 2 has d = -inf"),
        gguf("q5-0-scale-nan", "malformed", with_data(tensor_entry("t", &[64, 1], 6, 0), k_blocks(22, 2, 1, 0, 0x7e01)))
            .says("block 1 has d = NaN"),
        gguf("dtype-1000", "unknown_dtype", header(3, 1, 0, &tensor_entry("t", &[32], 1000, 0))),
        gguf("q8-row-not-whole-blocks", "malformed", header(3, 1, 0, &tensor_entry("odd", &[48, 2], 8, 0))),
        gguf("cut-in-header", "truncated", cut(20)),
        gguf("cut-in-metadata", "truncated", cut(300)),
        gguf("cut-in-tensor-data", "truncated", cut(tiny.len() - 1)),
        gguf(
            "shape-mismatch",
            "shape_mismatch",
            tiny_with(|_, ts| ts.iter_mut().find(|t| t.name == "blk.1.ffn_up.weight").unwrap().shape = vec![64, 96]),
        ),
        gguf("missing-tensor", "missing_tensor", tiny_with(|_, ts| ts.retain(|t| t.name != "blk.0.attn_v.weight"))),
        gguf("heads-not-divisible", "config", meta("llama.attention.head_count_kv", Value::U32(3))),
        gguf("hidden-zero", "config", meta("llama.embedding_length", Value::U32(0))),
        gguf("rope-theta-negative", "config", meta("llama.rope.freq_base", Value::F32(-1.0))),
        gguf("no-block-count", "config", tiny_with(|m, _| m.retain(|(k, _)| *k != "llama.block_count"))),
        gguf("bad-utf8-in-metadata", "malformed", bad_utf8),
        gguf("llama-qkv-bias", "unsupported", with_tensor("blk.0.attn_q.bias", vec![tiny::HIDDEN]))
            .says("tensor blk.0.attn_q.bias (a bias"),
        gguf("rope-freqs-zero", "config", with_tensor("rope_freqs.weight", vec![tiny::HEAD_DIM / 2]))
            .says("RoPE frequency factor 0 must be"),
        gguf("rope-freqs-one-per-dim", "malformed", with_tensor("rope_freqs.weight", vec![tiny::HEAD_DIM]))
            .says("rope_freqs.weight is F32 of shape"),
        gguf("rope-scaling-yarn", "unsupported", with_meta("llama.rope.scaling.type", Value::String("yarn".into())))
            .says("RoPE scaling type \"yarn\""),
        gguf("mixture-of-experts", "unsupported", with_meta("llama.expert_count", Value::U32(8))).says("mixture of 8 experts"),
        gguf("sliding-window", "unsupported", with_meta("llama.attention.sliding_window", Value::U32(64)))
            .says("sliding-window attention of 64 tokens"),
        gguf("value-length-not-key-length", "unsupported", with_meta("llama.attention.value_length", Value::U32(32)))
            .says("llama.attention.value_length = 32"),
        gguf("architecture-phi3", "config", meta("general.architecture", Value::String("phi3".into()))).says("\"phi3\""),
        hf("hf-config-not-json", "malformed", |f| *file(f, "config.json") = b"{ this is not json".to_vec()),
        hf("hf-config-not-utf8", "malformed", |f| *file(f, "config.json") = vec![0xff, 0xfe, b'{', b'}']),
        hf("hf-config-negative-hidden", "malformed", |f| {
            let c = String::from_utf8(file(f, "config.json").clone()).unwrap();
            *file(f, "config.json") = c.replacen("\"hidden_size\":", "\"hidden_size\":-", 1).into_bytes();
        }),
        hf("hf-config-absurd-layers", "config", |f| {
            let mut c: serde_json::Value = serde_json::from_slice(file(f, "config.json")).unwrap();
            c["num_hidden_layers"] = serde_json::json!(1u64 << 40);
            *file(f, "config.json") = c.to_string().into_bytes();
        }),
        hf("hf-safetensors-truncated", "malformed", |f| {
            let st = file(f, "model-00001-of-00002.safetensors");
            st.truncate(st.len() / 2);
        }),
        hf("hf-safetensors-header-lies", "malformed", |f| {
            file(f, "model-00002-of-00002.safetensors")[..8].copy_from_slice(&(1u64 << 40).to_le_bytes());
        }),
        hf("hf-safetensors-i64", "unknown_dtype", |f| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![2], &[0u8; 16]).unwrap();
            *file(f, "model-00001-of-00002.safetensors") = safetensors::serialize([("model.norm.weight".to_string(), view)], None).unwrap();
        }),
        hf("hf-tokenizer-garbage", "tokenizer", |f| *file(f, "tokenizer.json") = b"{\"model\": 42}".to_vec()),
        hf("hf-rope-scaling-llama3-incomplete", "config", |f| {
            hf_config(
                f,
                "rope_scaling",
                serde_json::json!({"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 8192}),
            )
        })
        .says("needs low_freq_factor"),
        hf("hf-rope-scaling-yarn", "unsupported", |f| {
            hf_config(f, "rope_scaling", serde_json::json!({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}))
        })
        .says("RoPE scaling \"yarn\""),
        hf("hf-model-type-gemma3", "unsupported", |f| hf_config(f, "model_type", serde_json::json!("gemma3")))
            .says("model_type \"gemma3\""),
        hf("hf-attention-bias", "unsupported", |f| hf_config(f, "attention_bias", serde_json::json!(true))).says("attention_bias: true"),
        hf("hf-hidden-act-gelu", "unsupported", |f| hf_config(f, "hidden_act", serde_json::json!("gelu_pytorch_tanh")))
            .says("\"gelu_pytorch_tanh\""),
        hf("hf-q-proj-bias-tensor", "unsupported", |f| {
            let bias = vec![0u8; 4 * tiny::HIDDEN];
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![tiny::HIDDEN], &bias).unwrap();
            let name = "model.layers.0.self_attn.q_proj.bias".to_string();
            f.push(("model-extra.safetensors".into(), safetensors::serialize([(name, view)], None).unwrap()));
        })
        .says("tensor blk.0.attn_q.bias (a bias"),
    ]
}

fn manifest(cases: &[Case]) -> Vec<Entry> {
    cases
        .iter()
        .map(|c| Entry {
            name: c.name.into(),
            files: c.files.iter().map(|(n, _)| n.clone()).collect(),
            kind: c.kind.into(),
            says: c.says.map(str::to_string),
        })
        .collect()
}

fn read_manifest() -> Vec<Entry> {
    let path = dir().join("expected.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_corpus_on_disk_is_what_its_builders_make() {
    let cases = cases();
    if std::env::var_os("ADORE_WRITE_CORPUS").is_some() {
        let _ = std::fs::remove_dir_all(dir());
        for (name, bytes) in cases.iter().flat_map(|c| &c.files) {
            let p = dir().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        std::fs::write(dir().join("expected.json"), serde_json::to_string_pretty(&manifest(&cases)).unwrap() + "\n").unwrap();
    }
    assert!(cases.len() >= 20);
    assert_eq!(
        read_manifest(),
        manifest(&cases),
        "tests/corpus/expected.json is stale: ADORE_WRITE_CORPUS=1 cargo test --test corpus -- --test-threads=1"
    );
    for (name, bytes) in cases.iter().flat_map(|c| &c.files) {
        let on_disk = std::fs::read(dir().join(name)).unwrap_or_else(|e| panic!("tests/corpus/{name}: {e}"));
        // safetensors headers are JSON objects whose key order is not fixed: compare GGUF and text.
        if !name.ends_with(".safetensors") {
            assert!(
                on_disk == *bytes,
                "tests/corpus/{name} differs from its builder: ADORE_WRITE_CORPUS=1 cargo test --test corpus -- --test-threads=1"
            );
        }
    }
}

#[test]
fn every_corpus_case_gives_its_error_kind() {
    let mut failures = Vec::new();
    for entry in read_manifest() {
        let files: Vec<(String, Vec<u8>)> = entry.files.iter().map(|f| (f.clone(), std::fs::read(dir().join(f)).unwrap())).collect();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            // The way the browser reads files.
            match Source::from_files(&files).and_then(ModelSpec::read) {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("{}: {e}", e.kind())),
            }
        }));
        match outcome {
            Err(_) => failures.push(format!("{}: PANICKED", entry.name)),
            Ok(Ok(())) => failures.push(format!("{}: accepted", entry.name)),
            Ok(Err(got)) if got.split(':').next() != Some(entry.kind.as_str()) => {
                failures.push(format!("{}: expected {}, got {got}", entry.name, entry.kind))
            }
            Ok(Err(got)) if entry.says.as_ref().is_some_and(|s| !got.contains(s.as_str())) => {
                failures.push(format!("{}: the error does not name {:?}: {got}", entry.name, entry.says.as_ref().unwrap()))
            }
            Ok(Err(_)) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn empty_files_are_refused_by_the_readers_too() {
    let e = adore::model::files::Files::read(Path::new(&dir().join("empty.gguf"))).err().unwrap();
    assert_eq!(e.kind(), "empty_file", "{e}");
}
