//! Host memory stays flat while decoding with every policy. Alone in its test binary, because
//! it reads the process's resident memory, which concurrent tests would disturb.
//!
//! On a software GPU (lavapipe) the device's memory is the process's, so this also catches a
//! driver that keeps something per dispatch: Mesa 22.3's lavapipe recompiled the controller
//! kernel at every step when its loop bounds came from a uniform buffer, and kept each copy
//! (0.3 MB per token).

#![cfg(target_os = "linux")]

mod common;

use std::sync::Arc;

use adore::controller::Controller;
use adore::policy::{Policy, PolicyKind, Ranking, RebuildFrom};
use adore::{Model, Session, SessionOptions};
use common::tiny::Tiny;
use pollster::block_on as run;

fn rss_mb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: f64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("statm's second field");
    pages * 4096.0 / 1e6
}

#[test]
fn decoding_keeps_host_memory_flat_for_every_policy() {
    let bytes = Tiny::new(31).gguf_bytes();
    let spec = adore::ModelSpec::read(adore::Source::Gguf { name: "tiny.gguf".into(), bytes: &bytes }).unwrap();
    let model = Arc::new(Model::load(common::ctx(), spec, &mut |_, _| {}).unwrap());
    let controller = Arc::new(Controller::random(&model.fingerprint, model.config.hidden, 16, 8, 5).unwrap());
    let index = Arc::new(common::sessions::index(&model));
    let policy = |kind, rebuild| {
        let rebuild_from = if rebuild > 0 { RebuildFrom::Recompute } else { RebuildFrom::Store };
        Policy { kind, budget: 32, sinks: 2, recent: 4, rebuild, rebuild_from, ..Policy::default() }
    };
    let (warm, measured) = (64, 400);
    let mut report = Vec::new();
    for p in [
        Policy::full(),
        policy(PolicyKind::Window, 0),
        policy(PolicyKind::Sink, 0),
        policy(PolicyKind::H2o, 0),
        policy(PolicyKind::Tova, 0),
        policy(PolicyKind::Adore, 0),
        Policy { ranking: Ranking::Controller, ..policy(PolicyKind::Adore, 0) },
        Policy { rebuild_from: RebuildFrom::Recompute, ..policy(PolicyKind::Adore, 0) },
        policy(PolicyKind::Adore, 2),
        policy(PolicyKind::Quest, 0),
        policy(PolicyKind::Oracle, 0),
    ] {
        let options = SessionOptions {
            context: 8 + warm + measured,
            chunk: 8,
            policy: p,
            controller: Some(controller.clone()),
            index: Some(index.clone()),
            ..Default::default()
        };
        let mut s = Session::new(model.clone(), options).unwrap();
        run(s.prefill(&[3, 4, 5, 6, 7, 8, 9, 10])).unwrap();
        // Warm-up: every plan built, every pipeline compiled, allocator pools settled.
        for _ in 0..warm {
            run(s.step()).unwrap();
        }
        let before = rss_mb();
        for _ in 0..measured {
            run(s.step()).unwrap();
        }
        let growth = rss_mb() - before;
        report.push(format!("{}{}: {growth:+.1} MB", p.name(), if p.rebuild > 0 { " (rebuild)" } else { "" }));
        // The bug this guards against grew by 0.3 MB per token (120 MB here).
        assert!(growth < 24.0, "resident memory grew by {growth:.1} MB over {measured} tokens with {}: {report:?}", p.name());
    }
    println!("{}", report.join(", "));
}
