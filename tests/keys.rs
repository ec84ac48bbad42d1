//! Ranking by the key index: each indexed layer scores every past token by its attention over
//! short keys (the layer's rotated keys through the index's key map, its query through the
//! query map) and attends to its best `budget` (or, with candidates, to the best of the
//! nominees by its exact attention); the index's dense layers attend to everything.
//! Checked against CPU references of the scores and of the choice, and against full attention.

mod common;

use std::sync::Arc;

use adore::index::{IndexStats, KeyIndex};
use adore::ops::attention::INVALID_SLOT;
use adore::ops::cache_update;
use adore::policy::{Oracle, OracleRanking, Policy, PolicyKind};
use adore::{Model, Session, SessionOptions};
use common::assert_close;
use common::sessions::{ids, load, session, tiny_model};
use common::tiny::{Tiny, HEADS, HEAD_DIM, KV_HEADS, LAYERS, VOCAB};
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
    keys_session_with(m, policy, protect, index, true)
}

/// [`keys_session`] with the prompt's rows attending densely or to the budget.
fn keys_session_with(m: &Arc<Model>, policy: Policy, protect: bool, index: &KeyIndex, dense_prefill: bool) -> Session {
    let oracle = Oracle { ranking: OracleRanking::Keys, protect };
    let index = Some(Arc::new(index.clone()));
    let options =
        SessionOptions { context: 320, chunk: 4, policy, oracle, index, record_queries: true, dense_prefill, ..Default::default() };
    Session::new(m.clone(), options).unwrap()
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
            let want = layer_scores(&s, l, t, &|h, q, k| index.logit_stored(l, h, q, k), &|_| true);
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

/// Step `t`'s scores by layer `l` on the CPU: the last row's softmax over the past slots that
/// `keep` admits of `logit(head, q, k)` (scaled by 1 / √head_dim), summed over heads, over
/// heads × layers; 0 where `keep` refuses.
fn layer_scores(s: &Session, l: usize, t: usize, logit: &dyn Fn(usize, &[f32], &[f32]) -> f32, keep: &dyn Fn(usize) -> bool) -> Vec<f32> {
    let (q, k) = (run(s.inspect().queries(l)).unwrap(), run(s.inspect().kv_cache(l)).unwrap().0);
    let group = HEADS / KV_HEADS;
    let mut want = vec![0f32; t + 1];
    for h in 0..HEADS {
        let qh = &q[t * HEADS * HEAD_DIM + h * HEAD_DIM..][..HEAD_DIM];
        let logits: Vec<Option<f64>> = (0..=t)
            .map(|j| keep(j).then(|| logit(h, qh, &k[j * KV_HEADS * HEAD_DIM + (h / group) * HEAD_DIM..][..HEAD_DIM]) as f64))
            .map(|x| x.map(|x| x / (HEAD_DIM as f64).sqrt()))
            .collect();
        let mx = logits.iter().flatten().cloned().fold(f64::MIN, f64::max);
        let z: f64 = logits.iter().flatten().map(|x| (x - mx).exp()).sum();
        for (w, x) in want.iter_mut().zip(&logits) {
            *w += x.map_or(0.0, |x| ((x - mx).exp() / z / (HEADS * LAYERS) as f64) as f32);
        }
    }
    want
}

#[test]
fn candidates_are_nominated_by_short_keys_and_chosen_by_exact_attention() {
    // adore with candidates: after each of 200 steps the last layer's scores are its exact
    // attention over the nominees (zero elsewhere), the nominees are the short keys' best
    // (every other unprotected past token scores no higher on the CPU), the choice follows the
    // reference fed the exact scores; the logits differ from the short keys' own choice; a
    // prompt runs one token per step; candidates at or under the budget are refused.
    let m = tiny_model(45);
    let tokens = ids(200);
    let index = fitted(&m, 40, 4, 0);
    let l = LAYERS - 1;
    let policy = Policy { kind: PolicyKind::Adore, budget: 6, sinks: 2, recent: 2, candidates: 14, ..Policy::default() };
    assert!(policy.ranks_by_keys());
    let mut s = keys_session(&m, policy, true, &index);
    let mut plain = keys_session(&m, Policy { candidates: 0, ..policy }, true, &index);
    let mut apart = 0f32;
    let p = cache_update::Params { in_flight: 1, ..cache_update::Params::new(320, &policy) };
    let protected = |t: usize, j: usize| j < policy.sinks || j + policy.recent >= t + 1;
    for (t, &tok) in tokens.iter().enumerate() {
        run(s.feed(tok)).unwrap();
        run(plain.feed(tok)).unwrap();
        let (got, other) = (run(s.last_logits()).unwrap(), run(plain.last_logits()).unwrap());
        apart = apart.max(got.iter().zip(&other).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max));
        let scores = run(s.inspect().slot_scores()).unwrap();
        let nominee = |j: usize| scores[j] > 0.0;
        assert_eq!((0..=t).filter(|&j| nominee(j)).count(), t.min(policy.candidates) + 1, "nominees at step {t}");
        let exact = layer_scores(&s, l, t, &|_, q, k| q.iter().zip(k).map(|(a, b)| a * b).sum(), &nominee);
        assert_close(&format!("exact scores at step {t}"), &scores[..=t], &exact, 1e-5, 1e-3);
        let short = layer_scores(&s, l, t, &|h, q, k| index.logit_stored(l, h, q, k), &|_| true);
        let free = |j: usize| j < t && !protected(t, j);
        let lowest = (0..=t).filter(|&j| free(j) && nominee(j)).map(|j| short[j]).fold(f32::MAX, f32::min);
        for j in (0..=t).filter(|&j| free(j) && !nominee(j)) {
            assert!(short[j] <= lowest * (1.0 + 1e-3) + 1e-7, "step {t}: slot {j} ({}) passed over for one at {lowest}", short[j]);
        }
        let table = run(s.inspect().slot_table()).unwrap();
        let nominated: Vec<u32> = table.iter().enumerate().map(|(j, &x)| if j <= t && nominee(j) { x } else { INVALID_SLOT }).collect();
        let att = run(s.inspect().attended_table()).unwrap();
        assert_eq!(att, cache_update::reference(&nominated, &scores, p, t as u32 + 1, 1), "choice at step {t}");
    }
    assert!(apart > 1e-3, "exact choice among 14 nominees changed no logit from the short keys' (largest difference {apart})");
    let mut prompted = keys_session_with(&m, policy, true, &index, false);
    run(prompted.prefill(&tokens[..40])).unwrap();
    let mut fed = keys_session(&m, policy, true, &index);
    for &tok in &tokens[..40] {
        run(fed.feed(tok)).unwrap();
    }
    assert_eq!(run(prompted.last_logits()).unwrap(), run(fed.last_logits()).unwrap(), "a sparse prompt runs one token per step");
    let e = Policy::new(PolicyKind::Adore, adore::policy::PolicyParts { budget: 6, candidates: 6, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("candidates (6) must exceed the budget (6)"), "{e}");
    let e = Policy { kind: PolicyKind::Sink, budget: 6, candidates: 14, ..Policy::default() }.validate().unwrap_err();
    assert!(e.to_string().contains("not sink"), "{e}");
}

#[test]
fn layers_after_a_ranking_layer_attend_to_its_choice() {
    // adore with two layers per choice: in the tiny model layer 0 ranks and layer 1 attends to
    // its choice. After each of 200 steps the scores are layer 0's short-key attention and the
    // choice the reference fed them; the logits equal an f64 forward pass with both layers
    // masked to the choices (layer 1 choosing for itself, or attending to every token, fails
    // it); a step has fewer dispatches than with a choice per layer; zero layers per choice,
    // and sharing by a policy that does not rank by keys, are refused.
    let tiny = Tiny::new(46);
    let m = load(&tiny);
    let tokens = ids(200);
    let index = fitted(&m, 40, 4, 0);
    let policy = Policy { kind: PolicyKind::Adore, budget: 6, sinks: 2, recent: 2, layers_per_choice: 2, ..Policy::default() };
    policy.validate().unwrap();
    let mut s = keys_session(&m, policy, true, &index);
    let p = cache_update::Params { in_flight: 1, ..cache_update::Params::new(320, &policy) };
    let (mut chosen_at, mut logits) = (Vec::new(), Vec::new());
    for (t, &tok) in tokens.iter().enumerate() {
        run(s.feed(tok)).unwrap();
        let scores = run(s.inspect().slot_scores()).unwrap();
        let want = layer_scores(&s, 0, t, &|h, q, k| index.logit_stored(0, h, q, k), &|_| true);
        assert_close(&format!("layer 0's short-key scores at step {t}"), &scores[..=t], &want, 1e-5, 1e-3);
        let table = run(s.inspect().slot_table()).unwrap();
        let att = run(s.inspect().attended_table()).unwrap();
        assert_eq!(att, cache_update::reference(&table, &scores, p, t as u32 + 1, 1), "choice at step {t}");
        chosen_at.push(run(s.attended_positions()).unwrap());
        logits.push(run(s.last_logits()).unwrap());
    }
    let want = tiny.forward_masked(&tokens, &|t, j| chosen_at[t].contains(&(j as u32)));
    for (t, got) in logits.iter().enumerate() {
        assert_close(&format!("logits at position {t}"), got, &want[t * VOCAB..(t + 1) * VOCAB], 2e-3, 2e-3);
    }
    let dispatches = |policy: Policy| {
        let mut s = keys_session(&m, policy, true, &index);
        run(s.prefill(&tokens[..24])).unwrap();
        run(s.profile_step(adore::profile::Timing::best(&m.ctx))).unwrap().1.dispatches.len()
    };
    let (each, shared) = (dispatches(Policy { layers_per_choice: 1, ..policy }), dispatches(policy));
    assert!(shared < each, "two layers per choice: {shared} dispatches a step, against {each} with a choice per layer");
    // A step reads one layer's short keys, not two (rank 4 in int8 and a 4-byte scale a KV head).
    let read = |policy: Policy| {
        let mut s = keys_session(&m, policy, true, &index);
        run(s.prefill(&tokens[..24])).unwrap();
        s.attended_kv_bytes()
    };
    assert_eq!(read(Policy { layers_per_choice: 1, ..policy }) - read(policy), (24 * KV_HEADS * (4 + 4)) as u64);
    let e = Policy { layers_per_choice: 0, ..policy }.validate().unwrap_err();
    assert!(e.to_string().contains("at least 1"), "{e}");
    let e = Policy { kind: PolicyKind::Tova, ..policy }.validate().unwrap_err();
    assert!(e.to_string().contains("not tova"), "{e}");
}

#[test]
fn ranking_ahead_predicts_a_layers_query_before_the_previous_feed_forward() {
    // Ranking ahead, layer 1 ranks with its query made from the residual stream before layer
    // 0's feed-forward (layer 0, first, ranks by its own). With layer 0's down projection zero
    // that stream is layer 1's input, so every step's scores, choice, token and logits equal
    // ranking by layer 1's own query (a prediction from another layer's weights, norm or
    // position fails it). With the model's own down projection the scores differ (the
    // prediction is not layer 1's input) and the choice is the reference's fed them; a step
    // has more dispatches (the prediction's own product, rotation and short queries); other
    // policies refuse it.
    let tokens = ids(120);
    let policy = Policy { kind: PolicyKind::Adore, budget: 6, sinks: 2, recent: 2, ..Policy::default() };
    let ahead = Policy { rank_ahead: true, ..policy };
    ahead.validate().unwrap();
    let p = cache_update::Params { in_flight: 1, ..cache_update::Params::new(320, &policy) };
    let mut no_ffn = Tiny::new(47);
    no_ffn.w.get_mut("blk.0.ffn_down.weight").unwrap().1.fill(0.0);
    let m = load(&no_ffn);
    let index = fitted(&m, 40, 4, 0);
    let (mut a, mut b) = (keys_session(&m, ahead, true, &index), keys_session(&m, policy, true, &index));
    for (t, &tok) in tokens.iter().enumerate() {
        assert_eq!(run(a.feed(tok)).unwrap(), run(b.feed(tok)).unwrap(), "no feed-forward: token after position {t}");
        let (sa, sb) = (run(a.inspect().slot_scores()).unwrap(), run(b.inspect().slot_scores()).unwrap());
        assert_close(&format!("no feed-forward: scores at step {t}"), &sa[..=t], &sb[..=t], 1e-7, 1e-6);
        let (ta, tb) = (run(a.inspect().attended_table()).unwrap(), run(b.inspect().attended_table()).unwrap());
        assert_eq!(ta, tb, "no feed-forward: choice at step {t}");
        assert_close(
            &format!("no feed-forward: logits at {t}"),
            &run(a.last_logits()).unwrap(),
            &run(b.last_logits()).unwrap(),
            1e-6,
            1e-6,
        );
    }
    let tiny = Tiny::new(47);
    let m = load(&tiny);
    let index = fitted(&m, 40, 4, 0);
    let (mut a, mut b) = (keys_session(&m, ahead, true, &index), keys_session(&m, policy, true, &index));
    let mut apart = 0f32;
    for (t, &tok) in tokens.iter().enumerate() {
        run(a.feed(tok)).unwrap();
        run(b.feed(tok)).unwrap();
        let (scores, own) = (run(a.inspect().slot_scores()).unwrap(), run(b.inspect().slot_scores()).unwrap());
        apart = apart.max(scores[..=t].iter().zip(&own[..=t]).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max));
        let table = run(a.inspect().slot_table()).unwrap();
        let att = run(a.inspect().attended_table()).unwrap();
        assert_eq!(att, cache_update::reference(&table, &scores, p, t as u32 + 1, 1), "choice at step {t}");
    }
    assert!(apart > 1e-3, "ranking ahead gave layer 1's own scores (largest difference {apart})");
    let dispatches = |policy: Policy| {
        let mut s = keys_session(&m, policy, true, &index);
        run(s.prefill(&tokens[..24])).unwrap();
        run(s.profile_step(adore::profile::Timing::best(&m.ctx))).unwrap().1.dispatches.len()
    };
    let (own, more) = (dispatches(policy), dispatches(ahead));
    assert!(more > own, "ranking ahead: {more} dispatches a step, against {own} by each layer's own query");
    let e = Policy { kind: PolicyKind::Tova, ..ahead }.validate().unwrap_err();
    assert!(e.to_string().contains("not tova"), "{e}");
}

#[test]
fn prompts_attend_densely_and_store_their_short_keys() {
    // A prompt's rows attend to every token held: with a budget of 6, a prompt of 40 or 41
    // tokens (the last chunk one token) in chunks of 4 gives full attention's token and logits.
    // Its short keys are stored all the same: the step after it scores every past token as the
    // CPU does from the keys the prompt wrote. With dense prefill off, a chunk's rows share
    // one choice and the logits leave full attention's.
    let m = tiny_model(46);
    let index = fitted(&m, 40, 4, 0);
    let l = LAYERS - 1;
    let policy = Policy { kind: PolicyKind::Adore, budget: 6, sinks: 2, recent: 2, ..Policy::default() };
    let tokens = ids(41);
    for n in [40, 41] {
        let mut s = keys_session(&m, policy, true, &index);
        let mut full = session(&m, Policy::full(), 320, 4, false);
        assert_eq!(run(s.prefill(&tokens[..n])).unwrap(), run(full.prefill(&tokens[..n])).unwrap(), "the token after a prompt of {n}");
        let (got, want) = (run(s.last_logits()).unwrap(), run(full.last_logits()).unwrap());
        assert_close(&format!("logits after a prompt of {n}"), &got, &want, 1e-4, 1e-4);
        run(s.step()).unwrap();
        let scores = run(s.inspect().slot_scores()).unwrap();
        let want = layer_scores(&s, l, n, &|h, q, k| index.logit_stored(l, h, q, k), &|_| true);
        assert_close(&format!("short-key scores after a prompt of {n}"), &scores[..=n], &want, 1e-5, 1e-3);
    }
    let mut sparse = keys_session_with(&m, policy, true, &index, false);
    let mut full = session(&m, Policy::full(), 320, 4, false);
    run(sparse.prefill(&tokens[..40])).unwrap();
    run(full.prefill(&tokens[..40])).unwrap();
    let (got, want) = (run(sparse.last_logits()).unwrap(), run(full.last_logits()).unwrap());
    let apart = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(apart > 1e-3, "a sparse prompt gave full attention's logits (largest difference {apart})");
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
    // One indexed layer's short keys: rank 8 in int8 and a 4-byte scale per KV head.
    assert_eq!(index.bytes_per_token(), (LAYERS - (LAYERS - 1)) * KV_HEADS * (8 + 4));
    let other = tiny_model(44);
    let oracle = Oracle { ranking: OracleRanking::Keys, protect: true };
    let foreign = SessionOptions { context: 64, chunk: 4, policy, oracle, index: Some(Arc::new(index)), ..Default::default() };
    let e = Session::new(other.clone(), foreign).err().unwrap();
    assert!(e.to_string().contains("another model"), "{e}");
    let none = SessionOptions { context: 64, chunk: 4, policy, oracle, ..Default::default() };
    let e = Session::new(other, none).err().unwrap();
    assert!(e.to_string().contains("key index"), "{e}");
}
