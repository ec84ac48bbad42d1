//! Ranking by the key index: each indexed layer scores every past token by its attention over
//! short keys (the layer's rotated keys through the index's key map, its query through the
//! query map) and attends to its best `budget`; the index's dense layers attend to everything.
//! Checked against CPU references of the scores and of the choice, and against full attention.

mod common;

use std::sync::Arc;

use adore::index::{IndexStats, KeyIndex};
use adore::ops::attention::INVALID_SLOT;
use adore::ops::cache_update;
use adore::policy::{Oracle, OracleRanking, Policy, PolicyKind};
use adore::{Model, Session, SessionOptions};
use common::assert_close;
use common::sessions::{ids, session, tiny_model};
use common::tiny::{HEADS, HEAD_DIM, KV_HEADS, LAYERS};
use pollster::block_on as run;

/// An index of `rank` fitted to the model's queries and keys over `n` tokens.
fn fitted(m: &Arc<Model>, n: usize, rank: usize, dense_layers: usize) -> KeyIndex {
    let options = SessionOptions { context: 128, chunk: 8, record_queries: true, ..Default::default() };
    let mut s = Session::new(m.clone(), options).unwrap();
    run(s.prefill(&ids(n))).unwrap();
    let mut stats = IndexStats::new(LAYERS, HEADS, KV_HEADS, HEAD_DIM);
    for l in 0..LAYERS {
        stats.add_queries(l, &run(s.inspect().queries(l)).unwrap()[..n * HEADS * HEAD_DIM]);
        stats.add_keys(l, &run(s.inspect().kv_cache(l)).unwrap().0[..n * KV_HEADS * HEAD_DIM]);
    }
    KeyIndex::fit(&m.fingerprint, &stats, rank, dense_layers, "test".into()).unwrap()
}

fn keys_session(m: &Arc<Model>, policy: Policy, protect: bool, index: &KeyIndex) -> Session {
    let oracle = Oracle { ranking: OracleRanking::Keys, protect };
    let index = Some(Arc::new(index.clone()));
    Session::new(m.clone(), SessionOptions { context: 320, chunk: 4, policy, oracle, index, record_queries: true, ..Default::default() })
        .unwrap()
}

#[test]
fn recorded_queries_and_keys_fit_an_exact_full_rank_index() {
    // At full rank the maps reproduce every logit difference, so the short-key attention of
    // the last layer is its true attention.
    let m = tiny_model(41);
    let index = fitted(&m, 48, HEAD_DIM, 0);
    let mut s = Session::new(m.clone(), SessionOptions { context: 128, chunk: 8, record_queries: true, ..Default::default() }).unwrap();
    run(s.prefill(&ids(20))).unwrap();
    let (q, k) = (run(s.inspect().queries(1)).unwrap(), run(s.inspect().kv_cache(1)).unwrap().0);
    let group = HEADS / KV_HEADS;
    for h in 0..HEADS {
        let qh = &q[19 * HEADS * HEAD_DIM + h * HEAD_DIM..][..HEAD_DIM];
        let key = |j: usize| &k[j * KV_HEADS * HEAD_DIM + (h / group) * HEAD_DIM..][..HEAD_DIM];
        let exact = |j: usize| qh.iter().zip(key(j)).map(|(a, b)| a * b).sum::<f32>();
        for j in 1..20 {
            let (want, got) = (exact(j) - exact(0), index.logit(1, h, qh, key(j)) - index.logit(1, h, qh, key(0)));
            assert!((want - got).abs() < 1e-3 * (1.0 + want.abs()), "head {h}, key {j}: {got} vs {want}");
        }
    }
    let e = run(s.inspect().queries(LAYERS)).unwrap_err();
    assert!(e.to_string().contains("not recorded"), "{e}");
}

#[test]
fn each_indexed_layer_chooses_by_its_short_key_attention() {
    // After every one of 300 steps the scores are the last layer's attention over its short
    // keys (from the recorded query and keys through the maps), and the choice follows the
    // reference fed them; a budget of 6 changes the logits; one that holds everything gives
    // full attention's exactly (over the first 36 tokens).
    let m = tiny_model(42);
    let tokens = ids(300);
    let index = fitted(&m, 40, 4, 0);
    let l = LAYERS - 1;
    let group = HEADS / KV_HEADS;
    for protect in [false, true] {
        let policy = Policy { kind: PolicyKind::Oracle, budget: 6, sinks: 2, recent: 2, rebuild: 0, ..Policy::default() };
        let mut s = keys_session(&m, policy, protect, &index);
        let mut full = session(&m, Policy::full(), 320, 4, false);
        let mut apart = 0f32;
        for (t, &tok) in tokens.iter().enumerate() {
            run(s.feed(tok)).unwrap();
            run(full.feed(tok)).unwrap();
            let (got, want) = (run(s.last_logits()).unwrap(), run(full.last_logits()).unwrap());
            apart = apart.max(got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max));
            let (q, k) = (run(s.inspect().queries(l)).unwrap(), run(s.inspect().kv_cache(l)).unwrap().0);
            let mut want = vec![0f32; t + 1];
            for h in 0..HEADS {
                let qh = &q[t * HEADS * HEAD_DIM + h * HEAD_DIM..][..HEAD_DIM];
                let logits: Vec<f64> = (0..=t)
                    .map(|j| index.logit(l, h, qh, &k[j * KV_HEADS * HEAD_DIM + (h / group) * HEAD_DIM..][..HEAD_DIM]) as f64)
                    .map(|x| x / (HEAD_DIM as f64).sqrt())
                    .collect();
                let mx = logits.iter().cloned().fold(f64::MIN, f64::max);
                let z: f64 = logits.iter().map(|x| (x - mx).exp()).sum();
                for (w, x) in want.iter_mut().zip(&logits) {
                    *w += ((x - mx).exp() / z / (HEADS * LAYERS) as f64) as f32;
                }
            }
            let table = run(s.inspect().slot_table()).unwrap();
            let scores = run(s.inspect().slot_scores()).unwrap();
            assert_close(&format!("short-key scores at step {t} (protect {protect})"), &scores[..=t], &want, 1e-5, 1e-3);
            let att = run(s.inspect().attended_table()).unwrap();
            let base = cache_update::Params { in_flight: 1, ..cache_update::Params::new(table.len(), &policy) };
            let p = if protect { base } else { cache_update::Params { sinks: 0, recent: 0, ..base } };
            assert_eq!(att, cache_update::reference(&table, &scores, p, t as u32 + 1, 1), "choice at step {t} (protect {protect})");
            assert_eq!(att.iter().filter(|&&x| x != INVALID_SLOT).count(), t.min(policy.budget) + 1);
        }
        assert!(apart > 1e-3, "a budget of 6 over 300 tokens changed no logit (largest difference {apart})");
        let mut all = keys_session(&m, Policy { budget: 64, ..policy }, protect, &index);
        let mut full = session(&m, Policy::full(), 128, 4, false);
        for (t, &tok) in tokens[..36].iter().enumerate() {
            assert_eq!(run(all.feed(tok)).unwrap(), run(full.feed(tok)).unwrap(), "token after position {t}");
            assert_eq!(run(all.last_logits()).unwrap(), run(full.last_logits()).unwrap(), "logits at position {t}");
        }
    }
}

#[test]
fn dense_layers_attend_to_everything_and_a_foreign_index_is_refused() {
    // With every layer but the last dense, the first layer's K/V reads are full attention's:
    // prompt chunks and single tokens give the same choices as the reference; an index fitted
    // for another model, or none where none is shipped, is refused by name.
    let m = tiny_model(43);
    let index = fitted(&m, 40, 8, LAYERS - 1);
    let policy = Policy { kind: PolicyKind::Oracle, budget: 5, sinks: 1, recent: 2, rebuild: 0, ..Policy::default() };
    let mut s = keys_session(&m, policy, true, &index);
    let tokens = ids(30);
    run(s.prefill(&tokens[..9])).unwrap();
    for &tok in &tokens[9..] {
        run(s.feed(tok)).unwrap();
    }
    let att = run(s.inspect().attended_table()).unwrap();
    assert_eq!(att.iter().filter(|&&x| x != INVALID_SLOT).count(), policy.budget + 1);
    assert_eq!(index.bytes_per_token(), (LAYERS - 1) * KV_HEADS * 8 * 4);
    let other = tiny_model(44);
    let oracle = Oracle { ranking: OracleRanking::Keys, protect: true };
    let foreign = SessionOptions { context: 64, chunk: 4, policy, oracle, index: Some(Arc::new(index)), ..Default::default() };
    let e = Session::new(other.clone(), foreign).err().unwrap();
    assert!(e.to_string().contains("another model"), "{e}");
    let none = SessionOptions { context: 64, chunk: 4, policy, oracle, ..Default::default() };
    let e = Session::new(other, none).err().unwrap();
    assert!(e.to_string().contains("key index"), "{e}");
}
