//! Controller training (feature `train`): the teacher data `collect` writes, against an f64
//! computation of the averaged attention on a tiny model; and training on a synthetic task
//! whose answer is known, reaching near-perfect held-out recall, deterministically.
#![cfg(feature = "train")]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::tiny::Tiny;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

fn dir(name: &str) -> PathBuf {
    // Under the build's temporary folder, emptied first: runs leave nothing behind elsewhere.
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("train-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn adore(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_adore")).args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out
}

fn read(path: &Path) -> HashMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, t)| (n, (t.shape().to_vec(), t.data().to_vec()))).collect()
}

fn u32s(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn f32s(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn seq_files(d: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> =
        std::fs::read_dir(d).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
    v.sort();
    v
}

#[test]
#[cfg(feature = "research")]
fn collect_targets_equal_the_averaged_attention() {
    collect_matches("attention");
}

#[test]
#[cfg(feature = "research")]
fn collect_targets_equal_the_summed_contributions() {
    collect_matches("contribution");
}

#[test]
#[cfg(feature = "research")]
fn collect_targets_equal_the_attention_of_the_queries_ahead() {
    collect_matches("future-5");
}

/// `collect --teacher KIND --features-after 1,2` (feature `research`) on a tiny model against the f64 reference: the teacher rows are
/// KIND's, H2O's accumulation is always the averaged attention's.
#[cfg(feature = "research")]
fn collect_matches(kind: &str) {
    let d = dir(&format!("collect-{kind}"));
    let tiny = Tiny::new(41);
    let model = d.join("tiny.gguf");
    std::fs::write(&model, tiny.gguf_bytes()).unwrap();
    let text = d.join("text.txt");
    std::fs::write(&text, "the cat sat on the mat and then the hat in the sun ".repeat(12)).unwrap();
    let out = d.join("data");
    let args = [
        "collect",
        "--model",
        model.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--seq-len",
        "48",
        "--queries",
        "7",
        "--features-after",
        "1,2",
        "--teacher",
        kind,
    ];
    adore(&args);
    let files = seq_files(&out);
    assert!(files.len() >= 2, "{files:?}");
    for f in &files {
        let t = read(f);
        let ids = u32s(&t["ids"].1);
        let queries = u32s(&t["queries"].1);
        let (teacher, h2o) = (f32s(&t["teacher"].1), f32s(&t["h2o"].1));
        assert_eq!((ids.len(), queries.len()), (48, 7));
        let positions: Vec<u32> = (0..48).collect();
        let run = tiny.run(&ids, &positions, &[], &|r, j| j <= r);
        let (want, rows) = (&run.attention, if kind == "attention" { &run.attention } else { &run.contribution });
        // The two teachers must differ on this model, or the test could not tell them apart.
        let apart = run.attention.iter().flatten().zip(run.contribution.iter().flatten()).map(|(a, c)| (a - c).abs()).fold(0.0, f64::max);
        assert!(apart > 1e-3, "attention and contribution agree to {apart}");
        for (qi, &q) in queries.iter().enumerate() {
            let q = q as usize;
            let got = &teacher[qi * 48..(qi + 1) * 48];
            let w: Vec<f32> = match kind.strip_prefix("future-").map(|h| h.parse::<usize>().unwrap()) {
                // The mean of rows q..q+h (clipped) on keys 0..=q, normalised.
                Some(h) => {
                    let sums: Vec<f64> =
                        (0..48).map(|j| if j <= q { (q..(q + h).min(48)).map(|r| want[r][j]).sum() } else { 0.0 }).collect();
                    let z: f64 = sums.iter().sum();
                    sums.iter().map(|&x| (x / z) as f32).collect()
                }
                None => rows[q].iter().map(|&x| x as f32).collect(),
            };
            common::assert_close(&format!("{f:?} teacher row {q}"), got, &w, 1e-5, 1e-4);
            let acc: Vec<f32> = (0..48).map(|j| (0..=q).map(|r| want[r][j]).sum::<f64>() as f32).collect();
            common::assert_close(&format!("{f:?} h2o at {q}"), &h2o[qi * 48..(qi + 1) * 48], &acc, 1e-5, 1e-4);
        }
        // The residual stream after each layer asked for, every row.
        for layer in [1, 2] {
            let (shape, bytes) = &t[&format!("features.{layer}")];
            assert_eq!(shape, &vec![48, common::tiny::HIDDEN]);
            let w: Vec<f32> = run.residuals[layer - 1].iter().map(|&x| x as f32).collect();
            common::assert_close(&format!("{f:?} residual stream after layer {layer}"), &f32s(bytes), &w, 1e-4, 1e-4);
        }
    }
    // A repeated run finds the work done and changes nothing.
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    let out2 = adore(&args);
    assert!(String::from_utf8_lossy(&out2.stderr).contains(&format!("{} already done", files.len())));
    assert_eq!(before, files.iter().map(|f| std::fs::read(f).unwrap()).collect::<Vec<_>>());
    // The other teacher's data never joins this directory.
    let other = if kind == "attention" { "contribution" } else { "attention" };
    let mut mixed = args.to_vec();
    *mixed.last_mut().unwrap() = other;
    let refused = Command::new(env!("CARGO_BIN_EXE_adore")).args(&mixed).env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("other settings"), "{}", String::from_utf8_lossy(&refused.stderr));
    if kind == "attention" {
        // A controller reading the residual stream trains on the stored layers, and the engine
        // runs it; a layer not collected is refused.
        let train = |layer: &str| {
            Command::new(env!("CARGO_BIN_EXE_adore"))
                .args(["train-controller", "--model", model.to_str().unwrap(), "--data", out.to_str().unwrap()])
                .args(["--out", d.join("ctl.safetensors").to_str().unwrap(), "--epochs", "2", "--width", "8", "--buckets", "8"])
                .args(["--budgets", "8", "--recent", "2", "--target", "top-8", "--input-layer", layer])
                .env("XDG_RUNTIME_DIR", std::env::temp_dir())
                .output()
                .unwrap()
        };
        let trained = train("2");
        assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
        let prompt = "the cat sat on the mat and then the hat in the sun";
        // It has no input for a step's new rows before the layers run, so adore recomputing
        // runs it, and adore choosing from its store (before the layers) refuses it.
        let gen = generate_with(&model, prompt, &d.join("ctl.safetensors"), "recompute");
        assert!(!gen.stdout.is_empty(), "{}", String::from_utf8_lossy(&gen.stderr));
        let refused = Command::new(env!("CARGO_BIN_EXE_adore"))
            .args(["generate", "--model", model.to_str().unwrap(), "--prompt", prompt, "--policy", "adore"])
            .args([
                "--budget",
                "8",
                "--recent",
                "2",
                "--ranking",
                "controller",
                "--controller",
                d.join("ctl.safetensors").to_str().unwrap(),
            ])
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .output()
            .unwrap();
        let why = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && why.contains("reads token embeddings"), "{why}");
        let missing = train("3");
        assert!(!missing.status.success());
        assert!(String::from_utf8_lossy(&missing.stderr).contains("--features-after 3"), "{}", String::from_utf8_lossy(&missing.stderr));
        // A manifest from before the teacher could be chosen is the averaged attention's.
        let path = out.join("manifest.json");
        let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        m.as_object_mut().unwrap().remove("teacher");
        std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
        let out3 = adore(&args);
        assert!(String::from_utf8_lossy(&out3.stderr).contains(&format!("{} already done", files.len())));
    }
}

/// Sequences whose teacher attends uniformly to the K marker tokens placed early on.
fn synthetic(d: &Path, count: usize, seed: u64) {
    let mut rng = common::Rng::new(seed);
    let (n, k, marker) = (64usize, 6usize, 7u32);
    for s in 0..count {
        let mut ids: Vec<u32> = (0..n).map(|_| 10 + rng.below(290) as u32).collect();
        let mut slots: Vec<usize> = (0..16).collect();
        for i in (1..16).rev() {
            slots.swap(i, rng.below(i as u64 + 1) as usize);
        }
        for &p in &slots[..k] {
            ids[p] = marker;
        }
        let queries: Vec<u32> = (32..64).step_by(4).collect();
        let mut teacher = vec![0f32; queries.len() * n];
        for (qi, _) in queries.iter().enumerate() {
            for &p in &slots[..k] {
                teacher[qi * n + p] = 1.0 / k as f32;
            }
        }
        let h2o = vec![0f32; queries.len() * n];
        let b = |v: &[u32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let f = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let parts = [
            ("ids", Dtype::U32, vec![n], b(&ids)),
            ("queries", Dtype::U32, vec![queries.len()], b(&queries)),
            ("teacher", Dtype::F32, vec![queries.len(), n], f(&teacher)),
            ("h2o", Dtype::F32, vec![queries.len(), n], f(&h2o)),
        ];
        let views: Vec<(String, TensorView)> =
            parts.iter().map(|(name, dt, shape, bytes)| (name.to_string(), TensorView::new(*dt, shape.clone(), bytes).unwrap())).collect();
        std::fs::write(d.join(format!("seq-000-{s:04}-synthetic.safetensors")), safetensors::serialize(views, None).unwrap()).unwrap();
    }
}

#[test]
fn training_finds_the_tokens_a_synthetic_teacher_attends_to() {
    let d = dir("fit");
    let model = d.join("tiny.gguf");
    std::fs::write(&model, Tiny::new(42).gguf_bytes()).unwrap();
    let (train, held) = (d.join("train"), d.join("held"));
    std::fs::create_dir_all(&train).unwrap();
    std::fs::create_dir_all(&held).unwrap();
    synthetic(&train, 24, 1);
    synthetic(&held, 6, 2);
    let run = |out: &Path, json: &Path, target: &str| {
        adore(&[
            "train-controller",
            "--target",
            target,
            "--model",
            model.to_str().unwrap(),
            "--data",
            train.to_str().unwrap(),
            "--heldout",
            held.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "40",
            "--width",
            "16",
            "--buckets",
            "8",
            "--lr",
            "0.02",
            "--batch",
            "4",
            "--budgets",
            "6",
            "--sinks",
            "0",
            "--recent",
            "0",
            "--seed",
            "3",
            "--json",
            json.to_str().unwrap(),
        ])
    };
    // Both targets: membership in the teacher's top 6 (the default kind) and, with the
    // feature `research`, its distribution.
    let targets = [("top-6", "a"), ("distribution", "dist")];
    for (target, name) in targets.into_iter().take(if cfg!(feature = "research") { 2 } else { 1 }) {
        let json = d.join(format!("{name}.json"));
        run(&d.join(format!("{name}.safetensors")), &json, target);
        let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let epochs = report["epochs"].as_array().unwrap();
        let first = epochs[0]["heldout_loss"].as_f64().unwrap();
        let last = epochs.last().unwrap()["heldout_loss"].as_f64().unwrap();
        assert!(last < first, "{target}: held-out loss did not fall: {first} -> {last}");
        let r = &report["recall"][0];
        assert!(r["adore"].as_f64().unwrap() > 0.95, "{target}: held-out recall@6 of the trained controller: {report}");
        // The markers score highest at every step, so releasing for good loses none of them.
        assert!(r["adore_final"].as_f64().unwrap() > 0.95, "{target}: recall@6 with final releases: {report}");
        assert!(r["sink_window"].as_f64().unwrap() < 0.5, "the synthetic task is too easy for a window: {report}");
    }
    // The same seed gives the same controller, bit for bit (the header's key order may vary).
    run(&d.join("b.safetensors"), &d.join("b.json"), "top-6");
    let (a, b) = (read(&d.join("a.safetensors")), read(&d.join("b.safetensors")));
    let mut names: Vec<&String> = a.keys().collect();
    names.sort();
    assert_eq!(names.len(), 8);
    for n in names {
        assert!(a[n] == b[n], "tensor {n} differs between two runs with the same seed");
    }
    // The file is a controller for this model: the engine accepts it.
    generate_with(&model, "the cat", &d.join("a.safetensors"), "store");
}

/// `adore generate` with the adore policy (budget 8, 2 recent) and `controller`.
/// Greedy generation with adore and `controller`, released tokens coming back `from` its store
/// or recomputed.
fn generate_with(model: &Path, prompt: &str, controller: &Path, from: &str) -> Output {
    let (m, c) = (model.to_str().unwrap(), controller.to_str().unwrap());
    adore(&[
        "generate",
        "--rebuild-from",
        from,
        "--model",
        m,
        "--prompt",
        prompt,
        "--max-tokens",
        "8",
        "--policy",
        "adore",
        "--budget",
        "8",
        "--recent",
        "2",
        "--ranking",
        "controller",
        "--controller",
        c,
    ])
}
