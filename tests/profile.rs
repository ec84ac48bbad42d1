//! The per-kernel profile of a step: it times every dispatch of the step it replaces, names
//! each kernel, and changes nothing the step computes.

mod common;

use adore::policy::{Policy, PolicyKind, RebuildFrom};
use adore::profile::Timing;
use common::sessions::{ids, session, tiny_model};

fn policies() -> Vec<Policy> {
    vec![
        Policy::full(),
        Policy { kind: PolicyKind::Sink, budget: 16, sinks: 4, recent: 0, rebuild: 0, ..Policy::default() },
        Policy {
            kind: PolicyKind::Adore,
            budget: 16,
            sinks: 4,
            recent: 4,
            rebuild: 0,
            rebuild_from: RebuildFrom::Store,
            ..Policy::default()
        },
    ]
}

#[test]
fn a_profiled_step_times_every_dispatch_and_computes_what_a_plain_step_does() {
    let ctx = common::ctx();
    assert!(
        ctx.features.contains(wgpu::Features::TIMESTAMP_QUERY),
        "adapter {} offers no timestamp queries, so the timestamp path cannot be tested here (Mesa's lavapipe offers them)",
        ctx.describe()
    );
    let m = tiny_model(31);
    let layers = m.config.layers;
    for policy in policies() {
        for timing in [Timing::Timestamps, Timing::SingleSubmits] {
            let mut plain = session(&m, policy, 96, 8, false);
            let mut timed = session(&m, policy, 96, 8, false);
            let prompt = ids(40);
            let a = pollster::block_on(plain.prefill(&prompt)).unwrap();
            let b = pollster::block_on(timed.prefill(&prompt)).unwrap();
            assert_eq!(a, b);
            for step in 0..6 {
                let want = pollster::block_on(plain.step()).unwrap();
                let (got, profile) = pollster::block_on(timed.profile_step(timing)).unwrap();
                let what = format!("{} with {}, step {step}", policy.name(), timing.name());
                assert_eq!(got, want, "{what}: the profiled step chose another token");
                let logits = (pollster::block_on(plain.last_logits()).unwrap(), pollster::block_on(timed.last_logits()).unwrap());
                assert_eq!(logits.0, logits.1, "{what}: logits differ");
                assert_eq!(profile.timing, timing);
                assert!(profile.dispatches.iter().all(|d| d.seconds.is_finite() && d.seconds >= 0.0), "{what}: a time is not a duration");
                assert!(profile.seconds() > 0.0, "{what}: no time measured at all");
                assert!(profile.dispatches.iter().all(|d| &*d.kernel != "unnamed"), "{what}: a dispatch has no kernel name");
                let rows = profile.by_kernel();
                assert_eq!(rows.iter().map(|r| r.dispatches).sum::<usize>(), profile.dispatches.len(), "{what}");
                assert!((rows.iter().map(|r| r.seconds).sum::<f64>() - profile.seconds()).abs() < 1e-9, "{what}");
                assert!(rows.windows(2).all(|w| w[0].seconds >= w[1].seconds), "{what}: rows not sorted by time");
                let attention = profile.dispatches.iter().filter(|d| d.kernel.starts_with("attention::")).count();
                assert!(attention >= layers, "{what}: {attention} attention dispatches for {layers} layers");
                assert!(profile.dispatches.iter().any(|d| d.kernel.starts_with("sample::")), "{what}: no sampler");
            }
            assert_eq!(plain.len(), timed.len());
        }
    }
}

#[test]
fn profiling_without_a_prefill_is_refused() {
    let m = tiny_model(32);
    let mut s = session(&m, Policy::full(), 32, 8, false);
    assert!(pollster::block_on(s.profile_step(Timing::best(&common::ctx()))).is_err());
}
