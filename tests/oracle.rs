//! The oracle and its diagnostic rankings (the top of the last row's full attention, of one
//! layer's, of each layer's own, or of the controller's scores, re-chosen every step) against
//! references of their choices and masked forward passes.

mod common;

use std::sync::Arc;

use adore::ops::attention::INVALID_SLOT;
use adore::ops::cache_update;
use adore::policy::{Oracle, OracleRanking, Policy, PolicyKind};
use adore::{Model, Session, SessionOptions};
use common::assert_close;
use common::sessions::{controller, ids, load, session, tiny_model};
use common::tiny::{gguf_k_dim, Tiny, HEAD_DIM, KV_HEADS, LAYERS};
use pollster::block_on as run;

#[test]
fn oracle_attends_to_the_top_of_its_full_attention() {
    // Each step ranks the cache by the new row's full attention (averaged over heads and
    // layers), then attends to the top `budget` and itself. Checked three ways: the ranking
    // against an f64 full-attention pass over the same cache, the selection against the
    // reference, and the logits against a forward pass masked to the selections.
    let tiny = Tiny::new(31);
    let m = load(&tiny);
    let policy = Policy { kind: PolicyKind::Oracle, budget: 8, sinks: 4, recent: 16, rebuild: 0, ..Policy::default() };
    let mut s = session(&m, policy, 128, 4, false);
    let tokens = ids(40);
    let kvd = KV_HEADS * HEAD_DIM;
    let vocab = common::tiny::VOCAB;
    let (mut attended, mut logits) = (Vec::new(), Vec::new());
    for (t, &tok) in tokens.iter().enumerate() {
        let cache: Vec<(Vec<f64>, Vec<f64>)> = (0..LAYERS)
            .map(|l| {
                let (k, v) = run(s.inspect().kv_cache(l)).unwrap();
                let k = (0..t * kvd).map(|x| k[x / kvd * kvd + gguf_k_dim(x % kvd)] as f64).collect();
                let v = v[..t * kvd].iter().map(|&x| x as f64).collect();
                (k, v)
            })
            .collect();
        run(s.feed(tok)).unwrap();
        logits.push(run(s.last_logits()).unwrap());
        let table = run(s.inspect().slot_table()).unwrap();
        assert_eq!(table[..=t], (0..=t as u32).collect::<Vec<_>>()[..], "the oracle keeps everything, in order");
        let scores = run(s.inspect().slot_scores()).unwrap();
        let want = tiny.run(&[tok], &[t as u32], &cache, &|_, _| true);
        let want: Vec<f32> = want.attention[0].iter().map(|&x| x as f32).collect();
        assert_close(&format!("oracle ranking at step {t}"), &scores[..=t], &want, 1e-5, 1e-3);
        let att = run(s.inspect().attended_table()).unwrap();
        let p = cache_update::Params { sinks: 0, recent: 0, in_flight: 1, ..cache_update::Params::new(table.len(), &policy) };
        assert_eq!(att, cache_update::reference(&table, &scores, p, t as u32 + 1, 1), "oracle selection at step {t}");
        let kept: Vec<u32> = att.into_iter().filter(|&x| x != INVALID_SLOT).collect();
        assert_eq!(kept.len(), t.min(policy.budget) + 1);
        attended.push(kept);
    }
    let want = tiny.forward_masked(&tokens, &|t, j| attended[t].contains(&(j as u32)));
    for (t, got) in logits.iter().enumerate() {
        assert_close(&format!("oracle logits at position {t}"), got, &want[t * vocab..(t + 1) * vocab], 2e-3, 2e-3);
    }
}

/// An oracle session with a diagnostic ranking (and the controller it may need).
fn oracle_session(m: &Arc<Model>, policy: Policy, oracle: Oracle) -> Session {
    let controller = Some(Arc::new(controller(m)));
    Session::new(m.clone(), SessionOptions { context: 128, chunk: 4, policy, controller, oracle, ..Default::default() }).unwrap()
}

/// The scores and the attended table after step `t`, the choice checked against the reference
/// fed the same scores.
fn checked_choice(s: &Session, policy: &Policy, protect: bool, t: usize) -> (Vec<f32>, Vec<u32>) {
    let table = run(s.inspect().slot_table()).unwrap();
    let scores = run(s.inspect().slot_scores()).unwrap();
    let att = run(s.inspect().attended_table()).unwrap();
    let base = cache_update::Params { in_flight: 1, ..cache_update::Params::new(table.len(), policy) };
    let p = if protect { base } else { cache_update::Params { sinks: 0, recent: 0, ..base } };
    assert_eq!(att, cache_update::reference(&table, &scores, p, t as u32 + 1, 1), "selection at step {t} (protect {protect})");
    (scores, att)
}

/// `s` gives full attention's tokens and logits, bit for bit, over `tokens`.
fn assert_equals_full(m: &Arc<Model>, s: &mut Session, tokens: &[u32]) {
    let mut full = session(m, Policy::full(), 128, 4, false);
    for (t, &tok) in tokens.iter().enumerate() {
        assert_eq!(run(s.feed(tok)).unwrap(), run(full.feed(tok)).unwrap(), "token after position {t}");
        assert_eq!(run(s.last_logits()).unwrap(), run(full.last_logits()).unwrap(), "logits at position {t}");
    }
}

/// Feeds `tok` to `s` and to `full`; returns the largest difference of their logits.
fn feed_beside_full(s: &mut Session, full: &mut Session, tok: u32) -> f32 {
    run(s.feed(tok)).unwrap();
    run(full.feed(tok)).unwrap();
    let (got, want) = (run(s.last_logits()).unwrap(), run(full.last_logits()).unwrap());
    got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
}

#[test]
fn oracle_ranked_by_the_controller_re_chooses_by_its_scores_every_step() {
    // Every past token is scored by the controller (as adore scores its cache), the top
    // `budget` (with or without adore's protection) are attended at every layer: scores
    // against the CPU recurrence, the selection against the reference, the logits against a
    // forward pass masked to the selections.
    let tiny = Tiny::new(33);
    let m = load(&tiny);
    let c = controller(&m);
    let embd = &tiny.w["token_embd.weight"].1;
    let (hidden, vocab) = (common::tiny::HIDDEN, common::tiny::VOCAB);
    let tokens = ids(36);
    for protect in [false, true] {
        let policy = Policy { kind: PolicyKind::Oracle, budget: 9, sinks: 2, recent: 3, rebuild: 0, ..Policy::default() };
        let mut s = oracle_session(&m, policy, Oracle { ranking: OracleRanking::Controller, protect });
        let mut h = vec![0f32; c.d_c];
        let mut keys = Vec::new();
        let (mut attended, mut logits) = (Vec::new(), Vec::new());
        for (t, &tok) in tokens.iter().enumerate() {
            run(s.feed(tok)).unwrap();
            logits.push(run(s.last_logits()).unwrap());
            c.gru_step(&embd[tok as usize * hidden..(tok as usize + 1) * hidden], &mut h);
            keys.push(c.project(&c.w_k, &h));
            let q = c.project(&c.w_q, &h);
            let (scores, att) = checked_choice(&s, &policy, protect, t);
            let want: Vec<f32> = (0..=t).map(|pos| c.score(&q, &keys[pos], t as u32, pos as u32)).collect();
            assert_close(&format!("controller scores at step {t} (protect {protect})"), &scores[..=t], &want, 1e-4, 1e-4);
            let kept: Vec<u32> = att.into_iter().filter(|&x| x != INVALID_SLOT).collect();
            assert_eq!(kept.len(), t.min(policy.budget) + 1);
            attended.push(kept);
        }
        let want = tiny.forward_masked(&tokens, &|t, j| attended[t].contains(&(j as u32)));
        for (t, got) in logits.iter().enumerate() {
            assert_close(&format!("logits at position {t} (protect {protect})"), got, &want[t * vocab..(t + 1) * vocab], 2e-3, 2e-3);
        }
    }
}

#[test]
fn oracle_ranked_by_one_layer_records_that_layer_alone() {
    // Layer 0's attention alone ranks (its scores sum to 1 / LAYERS: one layer of mass, averaged
    // as the full ranking averages over all); the selection follows the reference. Ranked by the
    // last layer, every layer attends densely: exactly full attention's logits.
    let m = tiny_model(34);
    let tokens = ids(30);
    let policy = Policy { kind: PolicyKind::Oracle, budget: 7, sinks: 4, recent: 16, rebuild: 0, ..Policy::default() };
    let mut s = oracle_session(&m, policy, Oracle { ranking: OracleRanking::Layer(0), protect: false });
    for (t, &tok) in tokens.iter().enumerate() {
        run(s.feed(tok)).unwrap();
        let (scores, _) = checked_choice(&s, &policy, false, t);
        let total: f32 = scores[..=t].iter().sum();
        assert!((total - 1.0 / LAYERS as f32).abs() < 1e-4, "layer-0 scores sum to {total} at step {t}");
    }
    let mut last = oracle_session(&m, policy, Oracle { ranking: OracleRanking::Layer(LAYERS - 1), protect: true });
    assert_equals_full(&m, &mut last, &tokens);
    let too_deep = Oracle { ranking: OracleRanking::Layer(LAYERS), protect: false };
    let options = SessionOptions { context: 64, chunk: 4, policy, oracle: too_deep, ..Default::default() };
    let e = Session::new(m.clone(), options).err().unwrap();
    assert!(e.to_string().contains("layer-2"), "{e}");
}

#[test]
fn per_layer_oracle_chooses_by_each_layer_s_own_attention() {
    // After a step the scores are the last layer's (one layer of mass) and its choice follows
    // the reference; with a budget that holds everything, full attention's logits exactly.
    let m = tiny_model(35);
    let tokens = ids(30);
    let oracle = Oracle { ranking: OracleRanking::PerLayer, protect: false };
    let policy = Policy { kind: PolicyKind::Oracle, budget: 6, sinks: 4, recent: 16, rebuild: 0, ..Policy::default() };
    let mut s = oracle_session(&m, policy, oracle);
    let mut full = session(&m, Policy::full(), 128, 4, false);
    let mut apart = 0f32;
    for (t, &tok) in tokens.iter().enumerate() {
        apart = apart.max(feed_beside_full(&mut s, &mut full, tok));
        let (scores, _) = checked_choice(&s, &policy, false, t);
        let total: f32 = scores[..=t].iter().sum();
        assert!((total - 1.0 / LAYERS as f32).abs() < 1e-4, "the last layer's scores sum to {total} at step {t}");
    }
    assert!(apart > 1e-3, "a budget of 6 over 30 tokens changed no logit (largest difference {apart})");
    let mut all = oracle_session(&m, Policy { budget: 64, ..policy }, oracle);
    assert_equals_full(&m, &mut all, &tokens);
}

#[test]
fn quest_chooses_whole_pages_by_their_key_bounds_at_every_layer() {
    // After a step the scores are the last layer's page bounds (equal within each page of 16)
    // and its choice follows the reference fed them (no protection: Quest chooses pages alone);
    // a budget that holds everything gives full attention's logits exactly.
    let m = tiny_model(36);
    let tokens = ids(70);
    let policy = Policy { kind: PolicyKind::Quest, budget: 20, sinks: 4, recent: 16, rebuild: 0, ..Policy::default() };
    let mut s = session(&m, policy, 128, 4, false);
    let mut full = session(&m, Policy::full(), 128, 4, false);
    let mut apart = 0f32;
    for (t, &tok) in tokens.iter().enumerate() {
        apart = apart.max(feed_beside_full(&mut s, &mut full, tok));
        let (scores, att) = checked_choice(&s, &policy, false, t);
        for j in 0..=t {
            assert_eq!(scores[j], scores[j / 16 * 16], "page scores at step {t}, slot {j}");
        }
        assert_eq!(att.iter().filter(|&&x| x != INVALID_SLOT).count(), t.min(policy.budget) + 1);
    }
    assert!(apart > 1e-3, "a budget of 20 over 70 tokens changed no logit (largest difference {apart})");
    let mut all = session(&m, Policy { budget: 128, ..policy }, 128, 4, false);
    assert_equals_full(&m, &mut all, &tokens);
}

#[test]
fn quest_with_dense_first_layers_chooses_by_pages_only_after_them() {
    // With its first layer dense, the last layer still chooses whole pages (its choice against
    // the reference), and the logits differ from both every-layer Quest's and full attention's;
    // with every layer dense they are full attention's exactly, and more layers are refused.
    let m = tiny_model(37);
    let tokens = ids(70);
    let policy = Policy { kind: PolicyKind::Oracle, budget: 20, sinks: 4, recent: 16, rebuild: 0, ..Policy::default() };
    let dense = |n, protect| Oracle { ranking: OracleRanking::Quest(n), protect };
    assert_eq!("quest-dense-1-protected".parse::<Oracle>().unwrap(), dense(1, true));
    assert_eq!(dense(1, false).name(), "quest-dense-1");
    let mut s = oracle_session(&m, policy, dense(1, false));
    let mut every = oracle_session(&m, policy, dense(0, false));
    let mut full = session(&m, Policy::full(), 128, 4, false);
    let (mut from_full, mut from_every) = (0f32, 0f32);
    for (t, &tok) in tokens.iter().enumerate() {
        from_full = from_full.max(feed_beside_full(&mut s, &mut full, tok));
        run(every.feed(tok)).unwrap();
        let (got, want) = (run(s.last_logits()).unwrap(), run(every.last_logits()).unwrap());
        from_every = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(from_every, f32::max);
        let (scores, _) = checked_choice(&s, &policy, false, t);
        for j in 0..=t {
            assert_eq!(scores[j], scores[j / 16 * 16], "page scores at step {t}, slot {j}");
        }
    }
    assert!(from_full > 1e-3, "a dense first layer and a budget of 20 over 70 tokens gave full's logits (largest difference {from_full})");
    assert!(from_every > 1e-3, "the dense first layer changed no logit from every-layer Quest's (largest difference {from_every})");
    let mut all = oracle_session(&m, policy, dense(LAYERS, true));
    assert_equals_full(&m, &mut all, &tokens);
    let options = SessionOptions { context: 64, chunk: 4, policy, oracle: dense(LAYERS + 1, false), ..Default::default() };
    let e = Session::new(m.clone(), options).err().unwrap();
    assert!(e.to_string().contains("quest-dense-3"), "{e}");
}
