//! Unit tests of the policy parts, defaults and the CPU slot map.

use super::*;

#[test]
fn default_recent_window() {
    assert_eq!(Policy::default_recent(PolicyKind::Adore, 128, 4), 96);
    assert_eq!(Policy::default_recent(PolicyKind::Adore, 256, 4), 192);
    assert_eq!(Policy::default_recent(PolicyKind::H2o, 256, 4), 128);
    assert_eq!(Policy::default_recent(PolicyKind::Tova, 256, 4), 16);
    // Never past what the sinks leave.
    assert_eq!(Policy::default_recent(PolicyKind::Adore, 6, 4), 2);
    assert_eq!(Policy::default_recent(PolicyKind::Adore, 8, 4), 4);
    assert_eq!(Policy::default_recent(PolicyKind::Tova, 10, 4), 6);
    assert_eq!(Policy::default_recent(PolicyKind::H2o, 3, 4), 0);
    for kind in [PolicyKind::H2o, PolicyKind::Tova, PolicyKind::Adore] {
        for budget in 1..300 {
            let p = Policy { kind, budget, sinks: 4, recent: Policy::default_recent(kind, budget, 4), rebuild: 0, ..Policy::default() };
            assert!(budget < 4 || p.validate().is_ok(), "{p:?}");
        }
    }
}

#[test]
fn slot_map_follows_the_reference_for_window_and_sink() {
    for policy in [
        Policy { kind: PolicyKind::Window, budget: 5, sinks: 0, recent: 0, rebuild: 0, ..Policy::default() },
        Policy { kind: PolicyKind::Sink, budget: 7, sinks: 3, recent: 0, rebuild: 0, ..Policy::default() },
        Policy::full(),
    ] {
        let mut map = SlotMap::new(64);
        let mut n = 0;
        for chunk in [1usize, 4, 9, 1, 1, 3, 1, 1, 1, 8] {
            let pos: Vec<u32> = (n..n + chunk).map(|p| p as u32).collect();
            map.assign(&pos).unwrap();
            n += chunk;
            map.release(&policy, n);
            assert_eq!(map.positions(), policy.reference_keep(n), "{policy:?} after {n} tokens");
            if policy.kind != PolicyKind::Full {
                assert!(map.high_water() <= policy.budget + 9, "slots stay within budget + one chunk");
            }
        }
    }
}

#[test]
fn policy_arguments() {
    assert_eq!("oracle".parse::<PolicyKind>().unwrap(), PolicyKind::Oracle);
    assert!("nonsense".parse::<PolicyKind>().is_err());
    assert!(Policy { kind: PolicyKind::Tova, budget: 16, sinks: 0, recent: 0, rebuild: 2, ..Policy::default() }.validate().is_err());
    assert!(Policy {
        kind: PolicyKind::Adore,
        budget: 4,
        sinks: 0,
        recent: 0,
        rebuild: 5,
        rebuild_from: RebuildFrom::Recompute,
        ..Policy::default()
    }
    .validate()
    .is_err());
    assert!(Policy {
        kind: PolicyKind::Adore,
        budget: 16,
        sinks: 4,
        recent: 4,
        rebuild: 4,
        rebuild_from: RebuildFrom::Recompute,
        ..Policy::default()
    }
    .validate()
    .is_ok());
    let store = Policy {
        kind: PolicyKind::Adore,
        budget: 16,
        sinks: 4,
        recent: 4,
        rebuild: 4,
        rebuild_from: RebuildFrom::Store,
        ..Policy::default()
    };
    assert!(store.validate().unwrap_err().to_string().contains("recompute"));
    assert!(store.keeps_everything() && !store.releases_on_gpu());
    assert_eq!(
        Policy::shared(PolicyKind::Adore, PolicyParts { rebuild: 4, ..Default::default() }).unwrap_err().to_string(),
        store.validate().unwrap_err().to_string()
    );
    assert_eq!("recompute".parse::<RebuildFrom>().unwrap(), RebuildFrom::Recompute);
    assert!(Policy { kind: PolicyKind::Sink, budget: 4, sinks: 4, recent: 0, rebuild: 0, ..Policy::default() }.validate().is_err());
    assert!(Policy { kind: PolicyKind::Window, budget: 0, sinks: 0, recent: 0, rebuild: 0, ..Policy::default() }.validate().is_err());
    assert!(Policy { kind: PolicyKind::H2o, budget: 16, sinks: 4, recent: 13, rebuild: 0, ..Policy::default() }.validate().is_err());
}
