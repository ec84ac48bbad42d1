//! Budgeted KV caches on the slot table: window and sink (StreamingLLM) against plain-Rust
//! references of their decisions, exactness when the budget holds everything, and a long
//! generation at a fixed memory size.

mod common;

use std::sync::Arc;

use adore::controller::Controller;
use adore::kv::{Policy, PolicyKind};
use adore::ops::attention::INVALID_SLOT;
use adore::ops::cache_update;
use adore::{Model, Session, SessionOptions};
use common::{assert_close, tiny::Tiny};

fn tiny_model(seed: u64) -> Arc<Model> {
    let bytes = Tiny::new(seed).gguf_bytes();
    let spec = adore::ModelSpec::read(adore::Source::Gguf { name: "tiny.gguf".into(), bytes: &bytes }).unwrap();
    Arc::new(Model::load(common::ctx(), spec, &mut |_, _| {}).unwrap())
}

fn session(model: &Arc<Model>, policy: Policy, context: usize, chunk: usize, all_logits: bool) -> Session {
    let controller = (policy.kind == PolicyKind::Adore).then(|| Arc::new(controller(model)));
    Session::new(model.clone(), SessionOptions { context, chunk, all_logits, policy, controller }).unwrap()
}

fn controller(model: &Model) -> Controller {
    Controller::random(&model.fingerprint, model.config.hidden, 16, 8, 5).unwrap()
}

fn ids(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 53 + 11) % common::tiny::VOCAB as u32).collect()
}

fn budgeted() -> Vec<Policy> {
    vec![
        Policy { kind: PolicyKind::Window, budget: 16, sinks: 0, recent: 0 },
        Policy { kind: PolicyKind::Sink, budget: 16, sinks: 4, recent: 0 },
        Policy { kind: PolicyKind::Sink, budget: 9, sinks: 1, recent: 0 },
    ]
}

#[test]
fn every_policy_equals_full_when_the_budget_holds_everything() {
    let m = tiny_model(21);
    let tokens = ids(70);
    let mut full = session(&m, Policy::full(), 128, 16, true);
    let want = pollster::block_on(full.prefill_logits(&tokens)).unwrap();
    for kind in [PolicyKind::Window, PolicyKind::Sink, PolicyKind::H2o, PolicyKind::Tova, PolicyKind::Adore] {
        let policy = Policy { kind, budget: 70, sinks: 4, recent: 16 };
        let mut s = session(&m, policy, 128, 16, true);
        let got = pollster::block_on(s.prefill_logits(&tokens)).unwrap();
        assert_close(&format!("{kind:?} with budget >= n vs full"), &got, &want, 0.0, 0.0);
    }
}

#[test]
fn kept_sets_follow_the_reference_for_300_steps() {
    let m = tiny_model(22);
    for policy in budgeted() {
        let mut s = session(&m, policy, 1024, 8, false);
        let prompt = ids(40); // longer than the budget: chunked prefill with updates between chunks
        pollster::block_on(s.prefill(&prompt)).unwrap();
        for step in 0..320 {
            let n = s.len();
            let want = policy.reference_keep(n);
            assert_eq!(pollster::block_on(s.kept_positions()).unwrap(), want, "{policy:?}: GPU slot table after {n} tokens (step {step})");
            pollster::block_on(s.step()).unwrap();
        }
    }
}

#[test]
fn token_by_token_logits_equal_a_masked_reference() {
    // Fed one token at a time, row t sees exactly the tokens the policy kept after t tokens,
    // plus itself: a causal forward pass with that mask is the reference.
    let tiny = Tiny::new(23);
    let bytes = tiny.gguf_bytes();
    let spec = adore::ModelSpec::read(adore::Source::Gguf { name: "tiny.gguf".into(), bytes: &bytes }).unwrap();
    let m = Arc::new(Model::load(common::ctx(), spec, &mut |_, _| {}).unwrap());
    let tokens = ids(40);
    let vocab = common::tiny::VOCAB;
    for policy in budgeted() {
        let want = tiny.forward_masked(&tokens, &|t, j| j == t || policy.reference_keep(t).contains(&(j as u32)));
        let mut s = session(&m, policy, 128, 1, false);
        for (t, &tok) in tokens.iter().enumerate() {
            pollster::block_on(s.feed(tok)).unwrap();
            let got = pollster::block_on(s.last_logits()).unwrap();
            assert_close(&format!("{policy:?}: logits at position {t}"), &got, &want[t * vocab..(t + 1) * vocab], 2e-3, 2e-3);
        }
    }
}

#[test]
fn long_generation_at_a_fixed_kv_size() {
    let m = tiny_model(24);
    let policy = Policy { kind: PolicyKind::Sink, budget: 256, sinks: 4, recent: 0 };
    let mut s = session(&m, policy, 8192, 64, false);
    let bytes = s.kv_bytes();
    pollster::block_on(s.prefill(&ids(300))).unwrap();
    while s.len() < 4096 {
        let t = pollster::block_on(s.step()).unwrap();
        assert!((t as usize) < common::tiny::VOCAB);
        if s.len() % 512 == 0 {
            let logits = pollster::block_on(s.last_logits()).unwrap();
            assert!(logits.iter().all(|v| v.is_finite()), "NaN or infinity after {} tokens", s.len());
            assert_eq!(s.kv_bytes(), bytes, "KV memory changed");
            assert_eq!(pollster::block_on(s.kept_positions()).unwrap().len(), 256);
        }
    }
    assert_eq!(pollster::block_on(s.kept_positions()).unwrap(), policy.reference_keep(4096));
    assert_eq!(s.kv_bytes(), bytes);
    let per_slot = (common::tiny::KV_HEADS * common::tiny::HEAD_DIM * 4 * 2 * common::tiny::LAYERS) as u64;
    assert_eq!(bytes, (256 + 64) * per_slot);
    // Prefill chunks larger than the budget are cut to it: at most twice the budget in slots.
    let big = session(&m, policy, 8192, 1024, false);
    assert_eq!(big.kv_bytes(), 512 * per_slot);
}

#[test]
fn gpu_policies_release_as_the_reference_does_with_the_same_scores() {
    let m = tiny_model(25);
    for policy in [
        Policy { kind: PolicyKind::H2o, budget: 16, sinks: 4, recent: 4 },
        Policy { kind: PolicyKind::H2o, budget: 12, sinks: 0, recent: 0 },
        Policy { kind: PolicyKind::Tova, budget: 16, sinks: 4, recent: 4 },
        Policy { kind: PolicyKind::Tova, budget: 9, sinks: 1, recent: 2 },
        Policy { kind: PolicyKind::Adore, budget: 16, sinks: 4, recent: 4 },
        Policy { kind: PolicyKind::Adore, budget: 10, sinks: 0, recent: 1 },
    ] {
        let mut s = session(&m, policy, 1024, 8, false);
        pollster::block_on(s.prefill(&ids(40))).unwrap();
        assert_eq!(pollster::block_on(s.kept_positions()).unwrap().len(), policy.budget, "{policy:?} after the prefill");
        let params =
            cache_update::Params { capacity: 0, budget: policy.budget as u32, sinks: policy.sinks as u32, recent: policy.recent as u32 };
        let mut table = pollster::block_on(s.slot_table()).unwrap();
        for step in 0..310 {
            let n = s.len();
            pollster::block_on(s.step()).unwrap();
            // Before the update the new token sat in the lowest free slot.
            let mut before = table.clone();
            let slot = cache_update::reference_assign(&table, 1)[0];
            before[slot as usize] = n as u32;
            let scores = pollster::block_on(s.slot_scores()).unwrap();
            let after = pollster::block_on(s.slot_table()).unwrap();
            let p = cache_update::Params { capacity: table.len() as u32, ..params };
            let want = cache_update::reference(&before, &scores, p, n as u32 + 1);
            assert_eq!(after, want, "{policy:?}: slot table after step {step} ({} tokens)", n + 1);
            assert_eq!(after.iter().filter(|&&x| x != INVALID_SLOT).count(), policy.budget);
            table = after;
        }
        // Unlike sinks + window, these policies keep older tokens by their attention.
        let kept = pollster::block_on(s.kept_positions()).unwrap();
        let streaming =
            Policy { kind: PolicyKind::Sink, budget: policy.budget, sinks: policy.sinks.max(1), recent: 0 }.reference_keep(s.len());
        assert_ne!(kept, streaming, "{policy:?} kept exactly sinks + the most recent tokens");
    }
}

#[test]
fn adore_controller_scores_equal_a_cpu_recurrence() {
    let tiny = Tiny::new(26);
    let bytes = tiny.gguf_bytes();
    let spec = adore::ModelSpec::read(adore::Source::Gguf { name: "tiny.gguf".into(), bytes: &bytes }).unwrap();
    let m = Arc::new(Model::load(common::ctx(), spec, &mut |_, _| {}).unwrap());
    let c = controller(&m);
    let policy = Policy { kind: PolicyKind::Adore, budget: 12, sinks: 2, recent: 2 };
    let mut s = session(&m, policy, 256, 8, false);
    let mut tokens = ids(30);
    let mut next = pollster::block_on(s.prefill(&tokens)).unwrap();
    let embd = &tiny.w["token_embd.weight"].1;
    let hidden = common::tiny::HIDDEN;
    for step in 0..40 {
        // CPU: the recurrence over every token so far.
        let mut h = vec![0f32; c.d_c];
        let mut keys = Vec::new();
        for &t in &tokens {
            c.gru_step(&embd[t as usize * hidden..(t as usize + 1) * hidden], &mut h);
            keys.push(c.project(&c.w_k, &h));
        }
        let q = c.project(&c.w_q, &h);
        let n = tokens.len() as u32;
        let table = pollster::block_on(s.slot_table()).unwrap();
        let scores = pollster::block_on(s.slot_scores()).unwrap();
        let (mut got, mut want) = (Vec::new(), Vec::new());
        for (j, &pos) in table.iter().enumerate() {
            if pos != INVALID_SLOT {
                got.push(scores[j]);
                want.push(c.score(&q, &keys[pos as usize], n - 1, pos));
            }
        }
        assert_eq!(got.len(), 12.min(tokens.len()));
        assert_close(&format!("controller scores after {n} tokens (step {step})"), &got, &want, 1e-4, 1e-4);
        tokens.push(next);
        next = pollster::block_on(s.step()).unwrap();
    }
}

#[test]
fn controller_files_are_checked() {
    let m = tiny_model(27);
    let c = controller(&m);
    let bytes = c.to_bytes().unwrap();
    let back = Controller::from_bytes("c.safetensors", &bytes, &m.fingerprint).unwrap();
    assert_eq!((back.d_c, back.buckets, &back.w_q, &back.bucket_bias), (c.d_c, c.buckets, &c.w_q, &c.bucket_bias));
    // Made for another model.
    let other = tiny_model(28);
    assert_ne!(other.fingerprint, m.fingerprint);
    let e = Controller::from_bytes("c.safetensors", &bytes, &other.fingerprint).err().unwrap();
    assert!(matches!(e, adore::Error::Config(ref s) if s.contains("another model")), "{e}");
    let e = Session::new(
        other.clone(),
        SessionOptions {
            policy: Policy { kind: PolicyKind::Adore, budget: 16, sinks: 4, recent: 4 },
            controller: Some(Arc::new(c)),
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(e, adore::Error::Config(_)), "{e}");
    // Truncated and missing.
    assert!(Controller::from_bytes("c.safetensors", &bytes[..bytes.len() / 2], &m.fingerprint).is_err());
    assert!(Controller::from_bytes("c.safetensors", b"", &m.fingerprint).is_err());
    let e = Session::new(
        m,
        SessionOptions { policy: Policy { kind: PolicyKind::Adore, budget: 16, sinks: 4, recent: 4 }, ..Default::default() },
    )
    .err()
    .unwrap();
    assert!(e.to_string().contains("controller"), "{e}");
}
