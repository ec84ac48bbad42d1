//! Bad input gets a typed error that names what is wrong, and never a panic.

mod common;

use std::sync::Arc;

use adore::model::gguf::{Gguf, Value};
use adore::model::{ModelSpec, Source};
use adore::tensor::{DType, HostTensor};
use adore::{Error, GenerateOptions, Model, Sampling, Session, SessionOptions};
use common::malformed::{header, tensor_entry, tiny_with};
use common::tiny::Tiny;

fn read(bytes: &[u8]) -> adore::Result<ModelSpec<'_>> {
    ModelSpec::read(Source::Gguf { name: "bad.gguf".into(), bytes })
}

fn err(bytes: &[u8]) -> Error {
    match read(bytes) {
        Ok(_) => panic!("a malformed file was accepted"),
        Err(e) => e,
    }
}

#[test]
fn missing_file() {
    let e = adore::model::files::load(common::ctx(), std::path::Path::new("/nonexistent/model.gguf"), &mut |_, _| {}).err().unwrap();
    assert!(matches!(e, Error::Io { .. }), "{e}");
    assert!(e.to_string().contains("/nonexistent/model.gguf"), "{e}");
}

#[test]
fn empty_file() {
    assert!(matches!(err(&[]), Error::EmptyFile { .. }));
}

#[test]
fn wrong_magic() {
    let e = err(b"GGML\x03\x00\x00\x00rest of a file");
    assert!(matches!(e, Error::BadMagic { .. }), "{e}");
}

#[test]
fn wrong_version() {
    for v in [0, 1, 4, 99] {
        let e = err(&header(v, 0, 0, &[]));
        assert!(matches!(e, Error::UnsupportedVersion { version, .. } if version == v), "{e}");
    }
}

#[test]
fn counts_past_the_end_are_rejected_before_allocating() {
    for (t, kv) in [(1u64 << 40, 0u64), (0, 1 << 40), (u64::MAX, u64::MAX), (3, 0)] {
        let e = err(&header(3, t, kv, &[0; 16]));
        assert!(matches!(e, Error::Truncated { .. }), "{t} tensors, {kv} keys: {e}");
    }
    // An array claiming more elements than bytes remain.
    let mut body = (4u64).to_le_bytes().to_vec();
    body.extend_from_slice(b"toks");
    body.extend_from_slice(&9u32.to_le_bytes()); // array
    body.extend_from_slice(&8u32.to_le_bytes()); // of strings
    body.extend_from_slice(&(1u64 << 50).to_le_bytes());
    let e = err(&header(3, 0, 1, &body));
    assert!(matches!(e, Error::Truncated { .. }), "{e}");
}

#[test]
fn offsets_past_the_end() {
    let body = tensor_entry("token_embd.weight", &[32, 4], 0, 1 << 20);
    let e = err(&header(3, 1, 0, &body));
    assert!(matches!(&e, Error::Truncated { what, .. } if what.contains("token_embd.weight")), "{e}");
    let body = tensor_entry("x", &[32], 0, u64::MAX - 8);
    assert!(matches!(err(&header(3, 1, 0, &body)), Error::Truncated { .. }));
}

#[test]
fn truncated_at_every_offset() {
    let bytes = Tiny::new(1).gguf_bytes();
    let mut step = 1;
    let mut cut = 0;
    while cut < bytes.len() {
        assert!(read(&bytes[..cut]).is_err(), "a file cut at byte {cut} of {} was accepted", bytes.len());
        cut += step;
        step = (step * 5 / 4).max(step + 1);
    }
    assert!(read(&bytes).is_ok());
}

#[test]
fn unknown_dtype() {
    let body = tensor_entry("blk.0.attn_q.weight", &[256, 4], 10, 0); // Q2_K
    let e = err(&header(3, 1, 0, &body));
    assert!(matches!(&e, Error::UnknownDtype { tensor, dtype, .. } if tensor == "blk.0.attn_q.weight" && dtype.contains("Q2_K")), "{e}");
    let body = tensor_entry("t", &[32], 1000, 0);
    assert!(matches!(err(&header(3, 1, 0, &body)), Error::UnknownDtype { .. }));
}

#[test]
fn shape_disagrees_with_config() {
    let bytes = tiny_with(|_, ts| {
        let t = ts.iter_mut().find(|t| t.name == "blk.1.ffn_up.weight").unwrap();
        t.shape = vec![64, 96];
    });
    let e = err(&bytes);
    assert!(matches!(&e, Error::ShapeMismatch { tensor, .. } if tensor == "blk.1.ffn_up.weight"), "{e}");
}

#[test]
fn config_nonsense() {
    for (key, value) in [
        ("llama.attention.head_count_kv", Value::U32(3)),
        ("llama.embedding_length", Value::U32(0)),
        ("llama.rope.freq_base", Value::F32(-1.0)),
        // 64 / 32 = head dimension 2: not a multiple of 4
        ("llama.attention.head_count", Value::U32(32)),
    ] {
        let bytes = tiny_with(|m, _| m.iter_mut().find(|(k, _)| *k == key).unwrap().1 = value.clone());
        let e = err(&bytes);
        assert!(matches!(e, Error::Config(_)), "{key}: {e}");
    }
    let bytes = tiny_with(|m, _| m.retain(|(k, _)| *k != "llama.block_count"));
    assert!(matches!(err(&bytes), Error::Config(ref s) if s.contains("block_count")));
}

#[test]
fn missing_tensor() {
    let bytes = tiny_with(|_, ts| ts.retain(|t| t.name != "blk.0.attn_v.weight"));
    let e = err(&bytes);
    assert!(matches!(&e, Error::MissingTensor { tensor } if tensor == "blk.0.attn_v.weight"), "{e}");
}

#[test]
fn bad_utf8_in_metadata() {
    let bytes = tiny_with(|m, _| m.push(("general.name", Value::String("x".into()))));
    let pos = bytes.windows(12).position(|w| w == b"general.name").unwrap();
    let mut bad = bytes.clone();
    // The value's single byte follows the key, its type (4 bytes) and its length (8 bytes).
    bad[pos + 12 + 4 + 8] = 0xff;
    let e = err(&bad);
    assert!(matches!(&e, Error::Malformed { what, .. } if what.contains("UTF-8")), "{e}");
}

#[test]
fn tensor_over_the_binding_limit() {
    let ctx = Arc::new(adore::Context::new_blocking(adore::ContextOptions { max_binding_size: Some(4096), ..Default::default() }).unwrap());
    let bytes = Tiny::new(1).gguf_bytes();
    let spec = read(&bytes).unwrap();
    let e = Model::load(ctx, spec, &mut |_, _| {}).err().unwrap();
    // The embedding table (40 KiB) is split in row ranges; a layer's matrix is not.
    assert!(matches!(&e, Error::TensorTooLarge { tensor, limit: 4096, .. } if tensor == "blk.0.ffn_gate.weight"), "{e}");
}

#[test]
fn unknown_safetensors_dtype_and_bad_config() {
    let cfg = br#"{"hidden_size": 64}"#;
    let e = ModelSpec::read(Source::HfDir {
        config_json: ("config.json".into(), cfg),
        safetensors: vec![],
        tokenizer_json: ("tokenizer.json".into(), b"{}"),
    })
    .err()
    .unwrap();
    assert!(matches!(&e, Error::Malformed { file, .. } if file == "config.json"), "{e}");
    let e = ModelSpec::read(Source::HfDir {
        config_json: ("config.json".into(), b"not json"),
        safetensors: vec![],
        tokenizer_json: ("t".into(), b"{}"),
    })
    .err()
    .unwrap();
    assert!(matches!(e, Error::Malformed { .. }), "{e}");
    // A corrupt safetensors file.
    let tiny = Tiny::new(2);
    let dir = std::env::temp_dir().join(format!("adore-bad-{}", std::process::id()));
    let g = tiny.gguf_bytes();
    let tok = adore::model::Tokenizer::from_gguf(&Gguf::parse("t", &g).unwrap()).unwrap();
    tiny.write_hf_dir(&dir, &tok.to_json().unwrap());
    let shard = dir.join("model-00001-of-00002.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&shard, &bytes).unwrap();
    let e = adore::model::files::load(common::ctx(), &dir, &mut |_, _| {}).err().unwrap();
    assert!(matches!(&e, Error::Malformed { file, .. } if file.contains("00001")), "{e}");
    // An integer tensor.
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![2], &[0u8; 16]).unwrap();
    let st = safetensors::serialize([("model.norm.weight".to_string(), view)], None).unwrap();
    std::fs::write(&shard, st).unwrap();
    let e = adore::model::files::load(common::ctx(), &dir, &mut |_, _| {}).err().unwrap();
    assert!(matches!(&e, Error::UnknownDtype { dtype, .. } if dtype.contains("I64")), "{e}");
    let _ = std::fs::remove_dir_all(dir);
}

fn tiny_model() -> Arc<Model> {
    let bytes = Tiny::new(1).gguf_bytes();
    let spec = read(&bytes).unwrap();
    Arc::new(Model::load(common::ctx(), spec, &mut |_, _| {}).unwrap())
}

#[test]
fn prompt_longer_than_the_context() {
    let m = tiny_model();
    let mut s = Session::new(m, SessionOptions { context: 16, chunk: 8, all_logits: false, ..Default::default() }).unwrap();
    let e = pollster::block_on(s.prefill(&[5; 17])).err().unwrap();
    assert!(matches!(e, Error::PromptTooLong { tokens: 17, context: 16 }), "{e}");
    // The session is still usable afterwards.
    pollster::block_on(s.prefill(&[5; 16])).unwrap();
    let e = pollster::block_on(s.step()).err().unwrap();
    assert!(matches!(e, Error::PromptTooLong { .. }), "{e}");
}

#[test]
fn nonsense_arguments() {
    let m = tiny_model();
    let mut s = Session::new(m.clone(), SessionOptions { context: 16, chunk: 8, all_logits: false, ..Default::default() }).unwrap();
    for bad in [
        Sampling { temperature: -1.0, ..Default::default() },
        Sampling { temperature: f32::NAN, ..Default::default() },
        Sampling { top_p: 1.5, ..Default::default() },
        Sampling { top_p: 0.0, ..Default::default() },
    ] {
        let e = s.set_sampling(bad).err().unwrap();
        assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e}");
    }
    let opts = GenerateOptions { max_tokens: 0, ..Default::default() };
    let e = pollster::block_on(adore::generate(&mut s, &[5], &opts, |_, _| true)).err().unwrap();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let e = pollster::block_on(s.prefill(&[])).err().unwrap();
    assert!(matches!(e, Error::EmptyPrompt), "{e}");
    let e = pollster::block_on(s.prefill(&[100_000])).err().unwrap();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    assert!(Session::new(m, SessionOptions { context: 0, chunk: 8, all_logits: false, ..Default::default() }).is_err());
}

#[test]
fn quantized_rows_must_be_whole_blocks() {
    let ctx = common::ctx();
    let t = HostTensor { name: "odd".into(), dtype: DType::Q8_0, shape: vec![1, 32], data: vec![0u8; 34].into() };
    assert!(adore::tensor::GpuWeight::upload(&ctx, &t).is_ok());
    let body = tensor_entry("odd", &[48, 2], 8, 0); // 48 is not a multiple of 32
    let e = err(&header(3, 1, 0, &body));
    assert!(matches!(e, Error::Malformed { .. }), "{e}");
}

#[test]
fn allocations_over_the_device_limits_fail_cleanly_and_the_engine_stays_usable() {
    let m = tiny_model();
    let limits = &m.ctx.limits;
    // A KV cache whose per-layer buffer exceeds what the device allows in one buffer.
    let kv_row = (m.config.kv_dim() * 4) as u64;
    let context = (limits.max_buffer_size.max(limits.max_storage_buffer_binding_size) / kv_row + 1) as usize;
    let e = Session::new(m.clone(), SessionOptions { context, chunk: 8, ..Default::default() }).err().unwrap();
    assert!(matches!(e, Error::TensorTooLarge { .. }), "context {context}: {e}");
    assert!(e.to_string().contains("max_storage_buffer_binding_size"), "{e}");
    // An activation buffer over the limit: a prompt chunk of absurd size.
    let e = Session::new(m.clone(), SessionOptions { context: 1 << 30, chunk: 1 << 30, ..Default::default() }).err().unwrap();
    assert!(matches!(e, Error::TensorTooLarge { .. }), "{e}");
    // Nothing was left half-made: the device reports no error and the model still generates.
    m.ctx.take_error().unwrap();
    let mut s = Session::new(m, SessionOptions { context: 32, chunk: 8, ..Default::default() }).unwrap();
    let opts = GenerateOptions { max_tokens: 4, ..Default::default() };
    let (out, _) = pollster::block_on(adore::generate(&mut s, &[5, 6, 7], &opts, |_, _| true)).unwrap();
    assert!(!out.is_empty());
}

#[test]
fn a_lost_device_gives_an_error_and_no_panic() {
    // A context of its own: the shared one must survive for the other tests.
    let ctx = Arc::new(adore::gpu::Context::new_blocking(adore::gpu::ContextOptions::default()).unwrap());
    let bytes = Tiny::new(1).gguf_bytes();
    let m = Arc::new(Model::load(ctx.clone(), read(&bytes).unwrap(), &mut |_, _| {}).unwrap());
    let mut s = Session::new(m.clone(), SessionOptions { context: 32, chunk: 8, ..Default::default() }).unwrap();
    let opts = GenerateOptions { max_tokens: 4, ..Default::default() };
    pollster::block_on(adore::generate(&mut s, &[5, 6, 7], &opts, |_, _| true)).unwrap();
    // What a driver reset or an unplugged GPU does to a running engine.
    ctx.device.destroy();
    s.reset();
    let lost = |e: Option<Error>, what: &str| match e {
        Some(e @ Error::DeviceLost(_)) => assert!(e.to_string().contains("load the model again"), "{e}"),
        other => panic!("{what} on a lost device: {other:?}"),
    };
    lost(pollster::block_on(adore::generate(&mut s, &[5, 6, 7], &opts, |_, _| true)).err(), "generating");
    lost(Session::new(m, SessionOptions { context: 32, chunk: 8, ..Default::default() }).err(), "a new session");
    lost(Model::load(ctx, read(&bytes).unwrap(), &mut |_, _| {}).err(), "loading a model");
}
