//! A tiny random model written as GGUF (quantized, llama.cpp row order) and as a safetensors
//! directory gives, through the GPU forward pass, the logits of the f64 reference forward.

mod common;

use std::sync::Arc;

use adore::{Model, Session, SessionOptions};
use common::{assert_close, ctx, tiny::Tiny};

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("adore-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn load(path: &std::path::Path) -> Arc<Model> {
    Arc::new(adore::model::files::load(ctx(), path, &mut |_, _| {}).unwrap())
}

fn tokens() -> Vec<u32> {
    // Long enough for several prefill chunks; ids cover specials, bytes and merges.
    (0..70u32).map(|i| (i * 37 + 5) % common::tiny::VOCAB as u32).collect()
}

fn check_all_logits(model: Arc<Model>, tiny: &Tiny, what: &str) {
    let ids = tokens();
    let want = tiny.forward(&ids);
    for chunk in [256, 16] {
        let mut s = Session::new(model.clone(), SessionOptions { context: 128, chunk, all_logits: true, ..Default::default() }).unwrap();
        let got = pollster::block_on(s.prefill_logits(&ids)).unwrap();
        assert_close(&format!("{what}: all logits, chunk {chunk}"), &got, &want, 2e-3, 2e-3);
    }
}

/// `tiny` written under `dir` as a GGUF file and as a Hugging Face directory (its tokenizer.json
/// converted from the GGUF's tokenizer), each loaded: (from GGUF, from safetensors).
fn load_both(tiny: &Tiny, dir: &std::path::Path) -> (Arc<Model>, Arc<Model>) {
    let path = dir.join("tiny.gguf");
    let gguf = tiny.gguf_bytes();
    std::fs::write(&path, &gguf).unwrap();
    let g = adore::model::gguf::Gguf::parse("tiny.gguf", &gguf).unwrap();
    let tok = adore::model::Tokenizer::from_gguf(&g).unwrap();
    let hf = dir.join("hf");
    tiny.write_hf_dir(&hf, &tok.to_json().unwrap());
    (load(&path), load(&hf))
}

/// Whether two reference models' logits over [`tokens`] differ somewhere by more than 0.1 (so
/// that a test telling them apart can fail).
fn references_differ(a: &Tiny, b: &Tiny) -> bool {
    let (a, b) = (a.forward(&tokens()), b.forward(&tokens()));
    a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 0.1)
}

#[test]
fn gguf_forward_matches_reference() {
    let tiny = Tiny::new(7);
    let dir = temp_dir("gguf");
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, tiny.gguf_bytes()).unwrap();
    let model = load(&path);
    assert!(model.config.rope_interleaved);
    // q, k, v (Q4_0, Q4_1, Q8_0) and gate, up (Q8_0, Q4_0) differ in type: each its own product.
    let layer = &model.weights.layers[0];
    assert_eq!((layer.qkv.len(), layer.gate_up.len()), (3, 2), "matrices of different types are not stacked");
    check_all_logits(model.clone(), &tiny, "gguf");

    // Decode path: prefill part of the sequence in chunks, then one token per step.
    let ids = tokens();
    let want = tiny.forward(&ids);
    let vocab = common::tiny::VOCAB;
    let mut s = Session::new(model, SessionOptions { context: 128, chunk: 8, all_logits: false, ..Default::default() }).unwrap();
    let split = 60;
    let mut next = pollster::block_on(s.prefill(&ids[..split])).unwrap();
    for t in split..ids.len() {
        let logits = pollster::block_on(s.last_logits()).unwrap();
        let row = &want[(t - 1) * vocab..t * vocab];
        assert_close(&format!("gguf: decode logits at position {}", t - 1), &logits, row, 2e-3, 2e-3);
        let argmax = row.iter().enumerate().fold(0, |b, (i, v)| if *v > row[b] { i } else { b });
        assert_eq!(next as usize, argmax, "greedy token after position {}", t - 1);
        next = pollster::block_on(s.feed(ids[t])).unwrap();
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn safetensors_dir_forward_matches_reference() {
    let tiny = Tiny::new(7);
    let dir = temp_dir("hf");
    // The tokenizer.json comes from the GGUF's own tokenizer, converted.
    let gguf = tiny.gguf_bytes();
    let g = adore::model::gguf::Gguf::parse("tiny.gguf", &gguf).unwrap();
    let tok = adore::model::Tokenizer::from_gguf(&g).unwrap();
    tiny.write_hf_dir(&dir, &tok.to_json().unwrap());
    let model = load(&dir);
    assert!(!model.config.rope_interleaved);
    // One type throughout: q, k, v stacked in one product, gate and up in another.
    let layer = &model.weights.layers[0];
    assert_eq!((layer.qkv.len(), layer.gate_up.len()), (1, 1), "matrices of one type are stacked");
    check_all_logits(model.clone(), &tiny, "safetensors");
    // Both tokenizers agree on text with merges and special tokens.
    let text = "<|im_start|>the cat in the hat<|im_end|>";
    assert_eq!(model.tokenizer.encode(text).unwrap(), tok.encode(text).unwrap());
    assert_eq!(model.tokenizer.encode(text).unwrap()[0], 1, "special token recognised in text");
    let _ = std::fs::remove_dir_all(dir);
}

/// Qwen2 (q/k/v biases, rotate-half RoPE in GGUF rows, Q5_0 and Q5_1 matrices) from GGUF and from a
/// Hugging Face directory, against the f64 reference with the biases; without its biases the
/// reference must disagree (the biases matter in this model).
#[test]
fn qwen2_forward_matches_reference() {
    let tiny = Tiny::qwen2(8);
    let dir = temp_dir("qwen2");
    let (model, hf) = load_both(&tiny, &dir);
    assert!(!model.config.rope_interleaved && model.config.family.qkv_bias);
    assert!(model.weights.layers.iter().all(|l| l.qkv_bias.is_some()));
    check_all_logits(model, &tiny, "qwen2 gguf");
    check_all_logits(hf, &tiny, "qwen2 safetensors");
    let mut unbiased = Tiny::qwen2(8);
    unbiased.w.iter_mut().filter(|(n, _)| n.ends_with(".bias")).for_each(|(_, (_, v))| v.iter_mut().for_each(|x| *x = 0.0));
    assert!(references_differ(&tiny, &unbiased), "the biases change nothing: the test could not fail");
    let _ = std::fs::remove_dir_all(dir);
}

/// Qwen3 (rotate-half RoPE, an RMSNorm of each head's q and k, no biases) from GGUF and from
/// a safetensors directory against the f64 reference; the norms must matter.
#[test]
fn qwen3_forward_matches_reference() {
    let tiny = Tiny::qwen3(11);
    let dir = temp_dir("qwen3");
    let (model, hf) = load_both(&tiny, &dir);
    assert!(!model.config.rope_interleaved && model.config.family.qk_norm && !model.config.family.qkv_bias);
    check_all_logits(model, &tiny, "qwen3 gguf");
    check_all_logits(hf, &tiny, "qwen3 safetensors");
    let mut flat = Tiny::qwen3(11);
    let qk_norm = |n: &str| n.ends_with("attn_q_norm.weight") || n.ends_with("attn_k_norm.weight");
    flat.w.iter_mut().filter(|(n, _)| qk_norm(n)).for_each(|(_, (_, v))| v.iter_mut().for_each(|x| *x = 1.0));
    assert!(references_differ(&tiny, &flat), "the q/k norms' weights change nothing: the test could not fail");
    let _ = std::fs::remove_dir_all(dir);
}

/// Linear RoPE scaling in GGUF metadata divides every frequency by its factor, and combines
/// with a `rope_freqs.weight` (the corpus has the refused types).
#[test]
fn linear_rope_scaling_divides_every_frequency() {
    use adore::model::gguf::Value;
    let read = |bytes: Vec<u8>| adore::ModelSpec::read(adore::Source::Gguf { name: "t.gguf".into(), bytes: &bytes }).map(|s| s.config);
    let linear = |m: &mut Vec<(&'static str, Value)>| {
        m.push(("llama.rope.scaling.type", Value::String("linear".into())));
        m.push(("llama.rope.scaling.factor", Value::F32(2.0)));
    };
    let half = common::tiny::HEAD_DIM / 2;
    let c = read(common::malformed::tiny_with(|m, _| linear(m))).unwrap();
    assert_eq!(c.rope_factors, vec![2.0; half]);
    let c = read(common::malformed::tiny_with(|m, ts| {
        linear(m);
        let f: Vec<f32> = (0..half).map(|i| 1.0 + i as f32).collect();
        ts.push(adore::tensor::HostTensor {
            name: "rope_freqs.weight".into(),
            dtype: adore::tensor::DType::F32,
            shape: vec![half],
            data: bytemuck::cast_slice(&f).to_vec().into(),
        });
    }))
    .unwrap();
    assert_eq!(c.rope_factors, (0..half).map(|i| 2.0 * (1.0 + i as f32)).collect::<Vec<_>>());
    let none = read(common::malformed::tiny_with(|m, _| m.push(("llama.rope.scaling.type", Value::String("none".into()))))).unwrap();
    assert!(none.rope_factors.is_empty());
}

/// Llama 3's RoPE scaling, from a GGUF file's `rope_freqs.weight` and from a Hugging Face
/// config's `rope_scaling`, against the reference's frequencies scaled as Hugging Face scales
/// them (an original context of 32, so that pairs are kept, interpolated and divided); the
/// scaling must change the logits.
#[test]
fn llama3_rope_scaling_matches_reference() {
    let mut tiny = Tiny::new(10);
    tiny.llama3_rope = Some([4.0, 1.0, 4.0, 32.0]);
    let dir = temp_dir("llama3-rope");
    let (model, hf) = load_both(&tiny, &dir);
    assert_eq!(model.config.rope_factors.len(), common::tiny::HEAD_DIM / 2);
    check_all_logits(model, &tiny, "llama3 rope gguf");
    let f = &hf.config.rope_factors;
    assert!(f[0] == 1.0 && f[1] > 1.0 && f[1] < 4.0 && f[2..].iter().all(|&x| x == 4.0), "factors {f:?}");
    check_all_logits(hf, &tiny, "llama3 rope safetensors");
    assert!(references_differ(&tiny, &Tiny::new(10)), "the scaling changes nothing: the test could not fail");
    let _ = std::fs::remove_dir_all(dir);
}

/// Gemma 3 (scaled embeddings, q/k norms, post-norms, GeGLU, a sliding window shorter than the
/// sequence) from GGUF, in both kernel shapes, against the f64 reference; the window must matter.
#[test]
fn gemma3_forward_matches_reference() {
    let tiny = Tiny::gemma3(9);
    let dir = temp_dir("gemma3");
    let path = dir.join("tiny-gemma3.gguf");
    std::fs::write(&path, tiny.gguf_bytes()).unwrap();
    let model = load(&path);
    let f = &model.config.family;
    assert!(f.qk_norm && f.post_norms && f.gelu && !model.config.rope_interleaved);
    assert_eq!((model.config.window(0), model.config.window(1)), (common::tiny::GEMMA_WINDOW, common::tiny::GEMMA_WINDOW));
    check_all_logits(model.clone(), &tiny, "gemma3 gguf");
    // The GPU kernel shape (fused GeGLU epilogue, split attention off at this capacity).
    let options = adore::ContextOptions { kernel_shape: Some(adore::gpu::KernelShape::Gpu), ..Default::default() };
    let gpu = Arc::new(adore::Context::new_blocking(options).unwrap());
    let on_gpu = Arc::new(adore::model::files::load(gpu, &path, &mut |_, _| {}).unwrap());
    check_all_logits(on_gpu, &tiny, "gemma3 gguf, GPU kernel shape");
    // Without the window the reference disagrees: the window is seen by the test.
    let mut unwindowed = Tiny::gemma3(9);
    unwindowed.window = 0;
    let (a, b) = (tiny.forward(&tokens()), unwindowed.forward(&tokens()));
    assert!(a.iter().zip(&b).any(|(x, y)| (x - y).abs() > 0.1), "the window changes nothing: the test could not fail");
    let _ = std::fs::remove_dir_all(dir);
}

/// The GPU kernel shape on any adapter: chunks of at most 8 rows and decode steps run the fused
/// products (RMSNorm in the prologue, SwiGLU in the epilogue) and still give the reference's
/// logits, for stacked (safetensors) and unstacked (GGUF of mixed types) projections.
#[test]
fn gpu_shaped_fused_forward_matches_reference() {
    let options = adore::ContextOptions { kernel_shape: Some(adore::gpu::KernelShape::Gpu), ..Default::default() };
    let gpu = Arc::new(adore::Context::new_blocking(options).unwrap());
    let tiny = Tiny::new(7);
    let dir = temp_dir("gpu-shaped");
    let gguf = tiny.gguf_bytes();
    let g = adore::model::gguf::Gguf::parse("tiny.gguf", &gguf).unwrap();
    let tok = adore::model::Tokenizer::from_gguf(&g).unwrap();
    tiny.write_hf_dir(&dir.join("hf"), &tok.to_json().unwrap());
    std::fs::write(dir.join("tiny.gguf"), &gguf).unwrap();
    let ids = tokens();
    let want = tiny.forward(&ids);
    let vocab = common::tiny::VOCAB;
    for (what, path) in [("safetensors", dir.join("hf")), ("gguf", dir.join("tiny.gguf"))] {
        let model = Arc::new(adore::model::files::load(gpu.clone(), &path, &mut |_, _| {}).unwrap());
        let mut s = Session::new(model.clone(), SessionOptions { context: 128, chunk: 4, all_logits: true, ..Default::default() }).unwrap();
        let got = pollster::block_on(s.prefill_logits(&ids)).unwrap();
        assert_close(&format!("{what}, GPU shape: all logits, chunk 4"), &got, &want, 2e-3, 2e-3);
        let mut s = Session::new(model, SessionOptions { context: 128, chunk: 8, all_logits: false, ..Default::default() }).unwrap();
        pollster::block_on(s.prefill(&ids[..60])).unwrap();
        for t in 60..ids.len() {
            let logits = pollster::block_on(s.last_logits()).unwrap();
            assert_close(
                &format!("{what}, GPU shape: decode logits at position {}", t - 1),
                &logits,
                &want[(t - 1) * vocab..t * vocab],
                2e-3,
                2e-3,
            );
            pollster::block_on(s.feed(ids[t])).unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// An f16 KV cache against the reference with keys and values rounded to f16: every row's logits
/// (prefill in chunks) and decode, in both kernel shapes (the GPU shape's decode through split
/// attention, from a capacity of 1024); and not the f32 cache's logits.
#[test]
fn f16_kv_cache_matches_reference_with_rounded_kv() {
    let tiny = Tiny { kv_f16: true, ..Tiny::new(7) };
    let dir = temp_dir("f16-kv");
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, tiny.gguf_bytes()).unwrap();
    let ids = tokens();
    let want = tiny.forward(&ids);
    let vocab = common::tiny::VOCAB;
    let kv_cache = adore::ops::KvType::F16;
    for shape in [adore::gpu::KernelShape::Cpu, adore::gpu::KernelShape::Gpu] {
        let options = adore::ContextOptions { kernel_shape: Some(shape), ..Default::default() };
        let ctx = Arc::new(adore::Context::new_blocking(options).unwrap());
        let model = Arc::new(adore::model::files::load(ctx, &path, &mut |_, _| {}).unwrap());
        let all = |kv_cache| SessionOptions { context: 128, chunk: 16, all_logits: true, kv_cache, ..Default::default() };
        let got = pollster::block_on(Session::new(model.clone(), all(kv_cache)).unwrap().prefill_logits(&ids)).unwrap();
        assert_close(&format!("{shape:?} shape, f16 KV: all logits"), &got, &want, 2e-3, 2e-3);
        let f32_kv = pollster::block_on(Session::new(model.clone(), all(adore::ops::KvType::F32)).unwrap().prefill_logits(&ids)).unwrap();
        let apart = got.iter().zip(&f32_kv).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        assert!(apart > 1e-5, "{shape:?}: the f16 cache gave the f32 cache's logits (largest difference {apart})");
        let options = SessionOptions { context: 1100, chunk: 8, kv_cache, ..Default::default() };
        let mut s = Session::new(model, options).unwrap();
        pollster::block_on(s.prefill(&ids[..60])).unwrap();
        for t in 60..ids.len() {
            let logits = pollster::block_on(s.last_logits()).unwrap();
            let row = &want[(t - 1) * vocab..t * vocab];
            assert_close(&format!("{shape:?} shape, f16 KV: decode logits at position {}", t - 1), &logits, row, 2e-3, 2e-3);
            pollster::block_on(s.feed(ids[t])).unwrap();
        }
        let (k, _) = pollster::block_on(s.inspect().kv_cache(0)).unwrap();
        assert!(
            k[..ids.len() * common::tiny::KV_HEADS * common::tiny::HEAD_DIM].iter().all(|&x| x == kv_cache.round(x)),
            "keys read back are f16 values"
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn truncate_then_continue_equals_a_fresh_sequence() {
    let tiny = Tiny::new(9);
    let dir = temp_dir("trunc");
    let path = dir.join("tiny.gguf");
    std::fs::write(&path, tiny.gguf_bytes()).unwrap();
    let model = load(&path);
    let ids = tokens();
    let (a, b, c) = (&ids[..20], &ids[20..35], &ids[40..50]);
    let opts = SessionOptions { context: 64, chunk: 8, all_logits: false, ..Default::default() };
    let mut s = Session::new(model.clone(), opts.clone()).unwrap();
    pollster::block_on(s.prefill(&[a, b].concat())).unwrap();
    pollster::block_on(s.truncate(a.len())).unwrap();
    assert_eq!(s.len(), a.len());
    let t1 = pollster::block_on(s.prefill(c)).unwrap();
    let l1 = pollster::block_on(s.last_logits()).unwrap();
    let mut fresh = Session::new(model, opts).unwrap();
    let t2 = pollster::block_on(fresh.prefill(&[a, c].concat())).unwrap();
    let l2 = pollster::block_on(fresh.last_logits()).unwrap();
    assert_eq!(t1, t2);
    assert_close("logits after truncate + continue vs fresh", &l1, &l2, 1e-5, 1e-5);
    let _ = std::fs::remove_dir_all(dir);
}
