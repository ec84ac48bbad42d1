//! Sessions on the tiny model, for the policy tests.

use std::sync::Arc;

use adore::controller::Controller;
use adore::index::{IndexStats, KeyIndex};
use adore::policy::{Policy, PolicyKind};
use adore::{Model, Session, SessionOptions};

use super::tiny::Tiny;

pub fn tiny_model(seed: u64) -> Arc<Model> {
    load(&Tiny::new(seed))
}

pub fn load(tiny: &Tiny) -> Arc<Model> {
    let bytes = tiny.gguf_bytes();
    let spec = adore::ModelSpec::read(adore::Source::Gguf { name: "tiny.gguf".into(), bytes: &bytes }).unwrap();
    Arc::new(Model::load(super::ctx(), spec, &mut |_, _| {}).unwrap())
}

pub fn session(model: &Arc<Model>, policy: Policy, context: usize, chunk: usize, all_logits: bool) -> Session {
    let controller = (policy.kind == PolicyKind::Adore).then(|| Arc::new(controller(model)));
    let index = policy.ranks_by_keys().then(|| Arc::new(index(model)));
    Session::new(model.clone(), SessionOptions { context, chunk, all_logits, policy, controller, index, ..Default::default() }).unwrap()
}

/// A key index of rank 4 fitted to seeded random queries and keys of the model's shape.
pub fn index(model: &Model) -> KeyIndex {
    let c = &model.config;
    let mut stats = IndexStats::new(c.layers, c.n_heads, c.n_kv_heads, c.head_dim);
    let mut rng = super::Rng::new(9);
    for l in 0..c.layers {
        stats.add_queries(l, &rng.vec(64 * c.q_dim(), 1.0));
        stats.add_keys(l, &rng.vec(64 * c.kv_dim(), 1.0));
    }
    KeyIndex::fit(&model.fingerprint, &stats, 4, 0, "random".into()).unwrap()
}

pub fn controller(model: &Model) -> Controller {
    Controller::random(&model.fingerprint, model.config.hidden, 16, 8, 5).unwrap()
}

pub fn ids(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 53 + 11) % super::tiny::VOCAB as u32).collect()
}
