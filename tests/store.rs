//! adore with its store ranked by the controller: every token's K/V stays, and each step attends
//! to the sinks, the recent window and the rest of the budget re-chosen by the controller among
//! all past tokens (ranked by keys, the default, in tests/keys.rs). Checked against CPU references of the scores, of the choice fed the same
//! scores, and of a forward pass masked to the choices.

mod common;

use std::sync::Arc;

use adore::ops::attention::INVALID_SLOT;
use adore::ops::cache_update;
use adore::policy::{Oracle, OracleRanking, Policy, PolicyKind, Ranking, RebuildFrom};
use adore::{Model, Session, SessionOptions};
use common::assert_close;
use common::sessions::{controller, ids, load, session, tiny_model};
use common::tiny::{Tiny, HIDDEN, VOCAB};
use pollster::block_on as run;

fn store(budget: usize, sinks: usize, recent: usize) -> Policy {
    let ranking = Ranking::Controller;
    Policy { kind: PolicyKind::Adore, budget, sinks, recent, rebuild_from: RebuildFrom::Store, ranking, ..Policy::default() }
}

#[test]
fn adore_re_chooses_from_its_store_at_every_step() {
    // 330 tokens, the first 24 as a prompt in chunks of 8, then one at a time: after every
    // submit the scores equal the CPU recurrence, the attended set equals the reference choice
    // fed the same scores (sinks and recent window protected, the step's rows attending too),
    // nothing is ever released from the store, and released tokens come back (a token left
    // out at one step is chosen again at a later one). The logits equal an f64 forward pass
    // masked to the choices.
    let tiny = Tiny::new(41);
    let m = load(&tiny);
    let c = controller(&m);
    let policy = store(9, 2, 3);
    let tokens = ids(330);
    let mut s = session(&m, policy, 400, 8, false);
    let embd = &tiny.w["token_embd.weight"].1;
    let mut h = vec![0f32; c.d_c];
    let mut keys = Vec::new();
    let (mut chosen_at, mut logits) = (Vec::new(), Vec::new());
    let mut came_back = 0;
    let mut left_out = vec![false; tokens.len()];
    let (mut t0, mut step) = (0, 0);
    while t0 < tokens.len() {
        let n = if t0 < 24 { 8 } else { 1 };
        run(s.prefill(&tokens[t0..t0 + n])).unwrap();
        let last = t0 + n - 1;
        for &tok in &tokens[t0..t0 + n] {
            c.gru_step(&embd[tok as usize * HIDDEN..(tok as usize + 1) * HIDDEN], &mut h);
            keys.push(c.project(&c.w_k, &h));
        }
        let q = c.project(&c.w_q, &h);
        let table = run(s.inspect().slot_table()).unwrap();
        assert_eq!(table[..=last], (0..=last as u32).collect::<Vec<_>>()[..], "the store keeps everything, in order");
        let scores = run(s.inspect().slot_scores()).unwrap();
        let want: Vec<f32> = (0..=last).map(|pos| c.score(&q, &keys[pos], last as u32, pos as u32)).collect();
        assert_close(&format!("controller scores at step {step}"), &scores[..=last], &want, 1e-4, 1e-4);
        let att = run(s.inspect().attended_table()).unwrap();
        let p = cache_update::Params { in_flight: 1, ..cache_update::Params::new(table.len(), &policy) };
        assert_eq!(att, cache_update::reference(&table, &scores, p, last as u32 + 1, n as u32), "choice at step {step}");
        let mut attended: Vec<u32> = att.into_iter().filter(|&x| x != INVALID_SLOT).collect();
        attended.sort_unstable();
        assert_eq!(attended, run(s.attended_positions()).unwrap());
        assert_eq!(attended.len(), (t0.min(policy.budget)) + n, "the budget and the step's rows at step {step}");
        for pos in 0..t0 {
            let here = attended.contains(&(pos as u32));
            came_back += (here && left_out[pos]) as usize;
            left_out[pos] |= !here;
        }
        if n == 1 {
            logits.push(run(s.last_logits()).unwrap());
        }
        for _ in 0..n {
            chosen_at.push(attended.clone());
        }
        t0 += n;
        step += 1;
    }
    assert!(came_back > 20, "released tokens came back {came_back} times in {step} steps");
    let want = tiny.forward_masked(&tokens, &|t, j| chosen_at[t].contains(&(j as u32)));
    for (i, got) in logits.iter().enumerate() {
        let t = 24 + i;
        assert_close(&format!("logits at position {t}"), got, &want[t * VOCAB..(t + 1) * VOCAB], 2e-3, 2e-3);
    }
}

#[test]
fn adore_from_its_store_is_the_oracle_ranked_by_the_controller_with_protection() {
    // The diagnostic that measured the store's value before it existed computes the same thing:
    // the same tokens and the same logits, bit for bit, prompt chunks and generated tokens alike.
    let m = tiny_model(42);
    let policy = store(10, 2, 4);
    let cl = Some(Arc::new(controller(&m)));
    let open = |policy: Policy, oracle: Oracle| {
        let o = SessionOptions { context: 128, chunk: 8, policy, controller: cl.clone(), oracle, ..Default::default() };
        Session::new(m.clone(), o).unwrap()
    };
    let mut adore = open(policy, Oracle::default());
    let mut oracle = open(Policy { kind: PolicyKind::Oracle, ..policy }, Oracle { ranking: OracleRanking::Controller, protect: true });
    let prompt = ids(37);
    assert_eq!(run(adore.prefill(&prompt)).unwrap(), run(oracle.prefill(&prompt)).unwrap());
    for t in 0..60 {
        assert_eq!(run(adore.step()).unwrap(), run(oracle.step()).unwrap(), "token {t}");
        assert_eq!(run(adore.last_logits()).unwrap(), run(oracle.last_logits()).unwrap(), "logits at token {t}");
    }
}

#[test]
fn adore_from_its_store_with_room_for_everything_is_full_attention() {
    let m = tiny_model(43);
    let tokens = ids(50);
    let mut full = session(&m, Policy::full(), 128, 4, false);
    let mut s = session(&m, store(64, 4, 16), 128, 4, false);
    for (t, &tok) in tokens.iter().enumerate() {
        assert_eq!(run(s.feed(tok)).unwrap(), run(full.feed(tok)).unwrap(), "token after position {t}");
        assert_eq!(run(s.last_logits()).unwrap(), run(full.last_logits()).unwrap(), "logits at position {t}");
    }
}

#[test]
fn store_and_recompute_are_told_apart() {
    // The store holds the whole context; recompute holds the budget and one step's rows.
    let m: Arc<Model> = tiny_model(44);
    let s = session(&m, store(16, 2, 4), 256, 8, false);
    let r = session(&m, Policy { rebuild_from: RebuildFrom::Recompute, ..store(16, 2, 4) }, 256, 8, false);
    assert_eq!(s.kv_bytes() / r.kv_bytes(), 256 / (16 + 8));
    assert_eq!(r.options.policy.name(), "adore-recompute");
    assert_eq!(s.options.policy.name(), "adore-controller");
    // Ranked by keys (the default), the store also holds every token's short keys (rank 4,
    // int8: 4 bytes and a 4-byte scale).
    let k = session(&m, Policy { ranking: Ranking::Keys, ..store(16, 2, 4) }, 256, 8, false);
    assert_eq!(k.options.policy.name(), "adore");
    assert_eq!(adore::index::SHORT_KEYS, adore::ops::key_score::ShortKeyType::I8);
    let short = (m.config.layers * m.config.n_kv_heads * (4 + 4) * 256) as u64;
    assert_eq!(k.kv_bytes(), s.kv_bytes() + short);
    let e =
        Session::new(m.clone(), SessionOptions { policy: Policy { rebuild: 2, ..store(16, 2, 4) }, ..Default::default() }).err().unwrap();
    assert!(e.to_string().contains("recompute"), "{e}");
}
