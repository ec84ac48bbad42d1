//! Sessions on the tiny model, for the policy tests.

use std::sync::Arc;

use adore::controller::Controller;
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
    Session::new(model.clone(), SessionOptions { context, chunk, all_logits, policy, controller, ..Default::default() }).unwrap()
}

pub fn controller(model: &Model) -> Controller {
    Controller::random(&model.fingerprint, model.config.hidden, 16, 8, 5).unwrap()
}

pub fn ids(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 53 + 11) % super::tiny::VOCAB as u32).collect()
}
