//! The `adore` program: text on stdout, errors as one readable line with a non-zero exit.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The tiny model, written once per run (the tests share it) into a directory under the
/// build's own temporary folder, emptied first, so that runs leave nothing behind elsewhere.
fn tiny_model() -> PathBuf {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli");
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("tiny.gguf");
            std::fs::write(&path, common::tiny::Tiny::new(11).gguf_bytes()).unwrap();
            path
        })
        .clone()
}

/// A key index fitted to the tiny model by `adore index fit`.
fn tiny_index() -> PathBuf {
    static INDEX: OnceLock<PathBuf> = OnceLock::new();
    INDEX
        .get_or_init(|| {
            let m = tiny_model();
            let (text, out) = (m.with_extension("index.txt"), m.with_extension("index.safetensors"));
            std::fs::write(&text, "the cat in the hat sat on the mat, and the hat sat on the cat. ".repeat(8)).unwrap();
            let args = ["index", "fit", "--model", m.to_str().unwrap(), "--text", text.to_str().unwrap(), "--tokens", "80", "--rank", "4"];
            let run = adore(&[&args[..], &["--out", out.to_str().unwrap()]].concat());
            assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
            // The recall table covers every layer.
            let table = String::from_utf8_lossy(&run.stdout);
            assert!(table.contains("| 1 |") && table.contains("| mean |"), "{table}");
            out
        })
        .clone()
}

fn adore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_adore")).args(args).env("XDG_RUNTIME_DIR", std::env::temp_dir()).output().unwrap()
}

fn fails_with(args: &[&str], needle: &str) {
    let out = adore(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} succeeded");
    assert!(!stderr.contains("panicked"), "{args:?} panicked: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: expected {needle:?} in stderr: {stderr}");
}

#[test]
fn generates_text_on_stdout_and_stats_on_stderr() {
    let m = tiny_model();
    let out = adore(&["generate", "--model", m.to_str().unwrap(), "--prompt", "the", "--max-tokens", "5"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("adapter:") && stderr.contains("tokens/s"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("adapter"));
    // Sampling with a seed is repeatable across processes.
    let args = [
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "the",
        "--max-tokens",
        "8",
        "--temperature",
        "1.0",
        "--top-p",
        "0.9",
        "--seed",
        "42",
    ];
    assert_eq!(adore(&args).stdout, adore(&args).stdout);
    // A budgeted cache generates past its budget.
    let out = adore(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "the cat",
        "--max-tokens",
        "40",
        "--policy",
        "sink",
        "--budget",
        "8",
        "--chunk",
        "4",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // An ADORE controller made for this model, then used.
    let ctl = m.with_extension("controller.safetensors");
    let out =
        adore(&["controller", "init", "--model", m.to_str().unwrap(), "--out", ctl.to_str().unwrap(), "--seed", "3", "--width", "16"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = adore(&[
        "generate",
        "--model",
        m.to_str().unwrap(),
        "--prompt",
        "the cat",
        "--max-tokens",
        "30",
        "--policy",
        "adore",
        "--budget",
        "12",
        "--recent",
        "4",
        "--chunk",
        "4",
        "--ranking",
        "controller",
        "--controller",
        ctl.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Ranked by keys (the default), with an index fitted to this model.
    let index = tiny_index();
    let args = ["generate", "--model", m.to_str().unwrap(), "--prompt", "the cat", "--max-tokens", "30", "--budget", "12"];
    let out = adore(&[&args[..], &["--recent", "4", "--chunk", "4", "--index", index.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("short keys"), "{}", String::from_utf8_lossy(&out.stderr));
    // The benchmark compares policies and cache updates in one run.
    let json = m.with_extension("bench.json");
    let out = adore(&[
        "bench",
        "--model",
        m.to_str().unwrap(),
        "--contexts",
        "40",
        "--decode-tokens",
        "4",
        "--repeats",
        "1",
        "--policies",
        "full,adore,oracle",
        "--budget",
        "12",
        "--recent",
        "4",
        "--chunk",
        "8",
        "--rebuild",
        "2",
        "--adore-modes",
        "store,recompute",
        "--cache-updates",
        "scatter,matmul",
        "--controller",
        ctl.to_str().unwrap(),
        "--index",
        index.to_str().unwrap(),
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows: Vec<(String, String, u64)> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["policy"].as_str().unwrap().into(), r["cache_update"].as_str().unwrap().into(), r["rebuild"].as_u64().unwrap()))
        .collect();
    let want = [
        ("full", "scatter", 0),
        ("adore", "scatter", 0),
        ("adore-recompute", "scatter", 2),
        ("adore-recompute", "matmul", 2),
        ("oracle", "scatter", 0),
    ];
    assert_eq!(rows, want.map(|(a, b, c)| (a.to_string(), b.to_string(), c)), "{v}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("| decode vs full | KV bytes held | KV bytes read per step |"));
    // The store holds the whole context, and reads the rows recompute reads and every token's
    // short keys.
    let bytes = |i: usize, key: &str| v["rows"][i][key].as_u64().unwrap();
    assert!(bytes(1, "kv_bytes") > bytes(2, "kv_bytes"), "{v}");
    assert!(bytes(1, "attended_kv_bytes") > bytes(2, "attended_kv_bytes"), "{v}");
    // With every context in a session of its own, interleaved: a row per policy and context,
    // each prefilled from empty to its context.
    let out = adore(&[
        "bench",
        "--model",
        m.to_str().unwrap(),
        "--contexts",
        "40,20",
        "--decode-tokens",
        "2",
        "--repeats",
        "2",
        "--policies",
        "full,adore",
        "--budget",
        "12",
        "--recent",
        "4",
        "--index",
        index.to_str().unwrap(),
        "--interleave-contexts",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["interleave_contexts"], true, "{v}");
    let rows: Vec<(String, u64, u64)> = v["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["policy"].as_str().unwrap().into(), r["context"].as_u64().unwrap(), r["prefill_tokens"].as_u64().unwrap()))
        .collect();
    let want = [("full", 20, 20), ("full", 40, 40), ("adore", 20, 20), ("adore", 40, 40)];
    assert_eq!(rows, want.map(|(a, b, c)| (a.to_string(), b, c)), "{v}");
    // Each larger context's speed as a share of its policy's smallest, paired repeat by repeat.
    for (i, row) in v["rows"].as_array().unwrap().iter().enumerate() {
        let share = row.get("decode_vs_first_context").and_then(|x| x.as_f64());
        assert_eq!(share.is_some(), i % 2 == 1, "{v}");
        assert!(share.is_none_or(|x| x > 0.0 && x.is_finite()), "{v}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("adore at context 40: ") && stdout.contains("of its decode speed at context 20 (median of 2 repeats"),
        "{stdout}"
    );
    for policy in ["h2o", "tova", "oracle"] {
        let out = adore(&[
            "generate",
            "--model",
            m.to_str().unwrap(),
            "--prompt",
            "the cat",
            "--max-tokens",
            "30",
            "--policy",
            policy,
            "--budget",
            "12",
            "--recent",
            "4",
            "--chunk",
            "4",
        ]);
        assert!(out.status.success(), "{policy}: {}", String::from_utf8_lossy(&out.stderr));
    }
}

#[test]
fn perplexity_json() {
    let m = tiny_model();
    let text = m.with_file_name("perplexity.txt");
    std::fs::write(&text, "the cat in the hat sat on the mat. ".repeat(20)).unwrap();
    let out = adore(&["perplexity", "--model", m.to_str().unwrap(), "--file", text.to_str().unwrap(), "--window", "64", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["ppl"].as_f64().unwrap() > 1.0 && v["tokens_scored"].as_u64().unwrap() > 0, "{v}");
}

#[test]
fn bad_arguments_and_files() {
    let m = tiny_model();
    let m = m.to_str().unwrap();
    fails_with(&["generate", "--model", m, "--prompt", "x", "--temperature", "-1"], "temperature");
    fails_with(&["generate", "--model", m, "--prompt", "x", "--top-p", "1.5"], "top-p");
    fails_with(&["generate", "--model", m, "--prompt", "x", "--max-tokens", "0"], "max-tokens");
    fails_with(&["generate", "--model", "/nonexistent.gguf", "--prompt", "x"], "/nonexistent.gguf");
    // The cause is said once, not again by the error chain.
    let out = adore(&["generate", "--model", "/nonexistent.gguf", "--prompt", "x"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("os error").count(), 1, "{stderr}");
    fails_with(&["generate", "--model", m, "--prompt", &"the ".repeat(300)], "context");
    fails_with(&["generate", "--model", m, "--prompt", ""], "empty");
    let bad = Path::new(m).with_file_name("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00\xff\xff\xff\xff\xff\xff\xff\xff").unwrap();
    fails_with(&["generate", "--model", bad.to_str().unwrap(), "--prompt", "x"], "truncated");
    fails_with(&["bench", "--model", m, "--contexts", "0"], "contexts");
    // The tiny model's context is 256 tokens: 250 plus 1 + 3 x 16 decoded ones does not fit.
    fails_with(&["bench", "--model", m, "--contexts", "250"], "longest context that fits is 207");
    fails_with(&["generate", "--model", m, "--prompt", "x", "--policy", "sink", "--rebuild", "2"], "adore policy only");
    fails_with(&["generate", "--model", m, "--prompt", "x", "--policy", "adore", "--rebuild", "2"], "rebuild from recompute");
    fails_with(&["generate", "--model", m, "--prompt", "x", "--rebuild-from", "disk"], "invalid value 'disk'");
    // The cache-update ablation is a bench and eval option only.
    fails_with(&["bench", "--model", m, "--policies", "window", "--cache-updates", "matmul"], "matmul applies");
    fails_with(&["bench", "--model", m, "--cache-updates", "gather"], "invalid value 'gather'");
    fails_with(&["generate", "--model", m, "--prompt", "x", "--cache-update", "matmul"], "unexpected argument '--cache-update'");
    fails_with(&["generate", "--model", m, "--prompt", "x", "--policy", "sink", "--budget", "4", "--sinks", "4"], "sink");
    fails_with(&["generate", "--model", m, "--prompt", "x", "--policy", "lru"], "invalid value 'lru'");
    fails_with(&["generate", "--model", m, "--prompt", "x", "--policy", "adore"], "key index");
    fails_with(&["generate", "--model", m, "--prompt", "x", "--policy", "adore", "--ranking", "controller"], "controller");
    fails_with(&["generate", "--model", m, "--prompt", "x", "--ranking", "guess"], "invalid value 'guess'");
}

#[test]
fn eval_compares_every_policy_with_full_attention() {
    let m = tiny_model();
    let d = m.parent().unwrap().to_path_buf();
    let text = d.join("eval.txt");
    std::fs::write(&text, "the cat in the hat sat on the mat, and the hat sat on the cat. ".repeat(8)).unwrap();
    let prompts = d.join("prompts.jsonl");
    std::fs::write(&prompts, "{\"prompt\": \"the cat\"}\n\n{\"prompt\": \"on the mat\"}\n").unwrap();
    let (json, plot, speed) = (d.join("eval.json"), d.join("eval.svg"), d.join("speed.svg"));
    let bench = d.join("bench-for-plot.json");
    std::fs::write(&bench, r#"{"rows": [{"policy": "full", "context": 256, "decode_tokens_per_s": 3.0}, {"policy": "full", "context": 1024, "decode_tokens_per_s": 2.0}]}"#).unwrap();
    let out = adore(&[
        "eval",
        "--model",
        m.to_str().unwrap(),
        "--text",
        text.to_str().unwrap(),
        "--tokens",
        "60",
        "--policies",
        "full,sink,h2o,oracle",
        "--budgets",
        "8,64",
        "--recent",
        "2",
        "--prompts",
        prompts.to_str().unwrap(),
        "--max-tokens",
        "6",
        "--json",
        json.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        "--bench",
        bench.to_str().unwrap(),
        "--speed-plot",
        speed.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1 + 3 * 2, "{v}");
    for r in rows {
        let (agree, kl) = (r["top1_agreement"].as_f64().unwrap(), r["mean_kl"].as_f64().unwrap());
        assert_eq!(r["positions"].as_u64(), Some(59), "{r}");
        assert!(r["ppl"].as_f64().unwrap().is_finite() && (0.0..=1.0).contains(&agree) && kl >= 0.0, "{r}");
        assert!(r["rouge_l"].as_f64().is_some() && r["bleu"].as_f64().is_some(), "{r}");
        // With a budget above the text's length, nothing is released: the same predictions.
        if r["policy"] == "full" || r["budget"] == 64 {
            assert_eq!(agree, 1.0, "{r}");
            assert!(kl < 1e-6, "{r}");
            assert_eq!(r["rouge_l"].as_f64(), Some(1.0), "{r}");
        }
    }
    let small = rows.iter().find(|r| r["policy"] == "sink" && r["budget"] == 8).unwrap();
    assert!(small["mean_kl"].as_f64().unwrap() > 1e-4, "a budget of 8 changed nothing: {small}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("| top-1 agreement |"));
    for svg in [&plot, &speed] {
        let s = std::fs::read_to_string(svg).unwrap();
        assert!(s.starts_with("<svg") && s.contains("polyline"), "{s}");
    }
    fails_with(&["eval", "--model", m.to_str().unwrap(), "--text", text.to_str().unwrap(), "--budgets", "0"], "budgets");
}

#[test]
fn eval_runs_the_diagnostic_oracles() {
    let m = tiny_model();
    let d = m.parent().unwrap().to_path_buf();
    let text = d.join("eval-oracles.txt");
    std::fs::write(&text, "the cat in the hat sat on the mat, and the hat sat on the cat. ".repeat(8)).unwrap();
    let ctl = d.join("eval-oracles.controller.safetensors");
    let out = adore(&["controller", "init", "--model", m.to_str().unwrap(), "--out", ctl.to_str().unwrap(), "--width", "16"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json = d.join("eval-oracles.json");
    let index = tiny_index();
    let args = |oracles: &str| {
        let base = ["eval", "--model", m.to_str().unwrap(), "--text", text.to_str().unwrap(), "--tokens", "60"];
        let rest = [
            "--policies",
            "full",
            "--budgets",
            "8,64",
            "--recent",
            "2",
            "--controller",
            ctl.to_str().unwrap(),
            "--index",
            index.to_str().unwrap(),
        ];
        let mut v: Vec<String> = base.iter().chain(&rest).map(|s| s.to_string()).collect();
        v.extend(["--oracles".to_string(), oracles.to_string(), "--json".to_string(), json.to_str().unwrap().to_string()]);
        v
    };
    let a = args("attention-protected,controller,controller-protected,layer-0,keys");
    let out = adore(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Without a terminal, progress comes as log lines.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("eval: 590/590 token steps"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    let labels: Vec<&str> = rows.iter().map(|r| r["policy"].as_str().unwrap()).collect();
    let want = ["attention-protected", "controller", "controller-protected", "layer-0", "keys"];
    let want: Vec<String> =
        std::iter::once("full".to_string()).chain(want.iter().flat_map(|o| [format!("oracle/{o}"), format!("oracle/{o}")])).collect();
    assert_eq!(labels, want, "{v}");
    for r in rows {
        let hits = r["agreement_by_position"].as_str().unwrap();
        assert_eq!(hits.len(), 59, "{r}");
        let agree = hits.chars().filter(|&c| c == '1').count() as f64 / 59.0;
        assert!((agree - r["top1_agreement"].as_f64().unwrap()).abs() < 1e-12, "{r}");
        // A budget above the text's length attends to everything: full attention's predictions.
        if r["policy"] == "full" || r["budget"] == 64 {
            assert!(hits.chars().all(|c| c == '1') && r["mean_kl"].as_f64().unwrap() < 1e-6, "{r}");
        }
    }
    let bad = args("layer-9");
    fails_with(&bad.iter().map(String::as_str).collect::<Vec<_>>(), "layer-9");
    let bad = args("heads");
    fails_with(&bad.iter().map(String::as_str).collect::<Vec<_>>(), "unknown oracle ranking");
}

/// For a model with no shipped key index, `--budget` falls back to sink on a short prompt and
/// says why; a prompt of 128 tokens or more gets an index fitted to it, kept in the cache and
/// used by later runs (then whatever the prompt).
#[test]
fn adore_fits_a_key_index_to_a_long_prompt_and_keeps_it() {
    let m = tiny_model();
    let cache = m.with_extension("fit-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let run = |prompt: &str| {
        let args = ["generate", "--model", m.to_str().unwrap(), "--prompt", prompt, "--max-tokens", "8", "--budget", "12", "--chunk", "16"];
        let out = Command::new(env!("CARGO_BIN_EXE_adore"))
            .args(args)
            .env("XDG_RUNTIME_DIR", std::env::temp_dir())
            .env("ADORE_CACHE", &cache)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{stderr}");
        stderr
    };
    let short = run("the cat");
    assert!(short.contains("so sink") && short.contains("gets one fitted to it"), "{short}");
    let long = run(&"the cat in the hat sat on the mat, and the hat sat on the cat. ".repeat(4));
    assert!(
        long.contains("fitting one to the prompt's first")
            && long.contains("rank 16 fitted to rotated queries and keys of a prompt")
            && long.contains("policy: adore"),
        "{long}"
    );
    let kept: Vec<_> = std::fs::read_dir(cache.join("indexes")).unwrap().collect();
    assert_eq!(kept.len(), 1, "{long}");
    let again = run("the cat");
    assert!(again.contains("fitted to rotated queries and keys of a prompt") && again.contains("policy: adore"), "{again}");
    let _ = std::fs::remove_dir_all(&cache);
}

/// `chat` on a model with no key index starts with sink and moves to adore, with an index
/// fitted to the conversation, once the conversation is long enough to fit one to; a
/// conversation that outgrows the context starts over and answers its last message.
#[test]
fn chat_moves_to_adore_when_the_conversation_is_long_enough() {
    let m = tiny_model();
    let cache = m.with_extension("chat-cache");
    let _ = std::fs::remove_dir_all(&cache);
    let mut child = Command::new(env!("CARGO_BIN_EXE_adore"))
        .args(["chat", "--model", m.to_str().unwrap(), "--max-tokens", "4", "--budget", "12", "--chunk", "16"])
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("ADORE_CACHE", &cache)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let long = "the cat in the hat sat on the mat, and the hat sat on the cat. ".repeat(3);
    // Then a conversation grown past the context (it starts over from its last message, which
    // is answered) and a message too long on its own (refused; the chat goes on).
    let input = format!("the cat\n{long}\nthe hat\n{long}\n{long}{long}\nthe end\n\n");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let sink = stderr.find("so sink").unwrap_or_else(|| panic!("{stderr}"));
    let fit = stderr.find("fitting one to the prompt's first").unwrap_or_else(|| panic!("{stderr}"));
    let adore = stderr.find("policy: adore").unwrap_or_else(|| panic!("{stderr}"));
    assert!(sink < fit && fit < adore, "{stderr}");
    assert_eq!(stderr.matches("fitting one").count(), 1, "{stderr}");
    assert!(stderr.contains("starting over with the last message") && stderr.contains("send a shorter one"), "{stderr}");
    assert_eq!(stderr.matches("tokens/s]").count(), 5, "a reply to each message but the too long one: {stderr}");
    let _ = std::fs::remove_dir_all(&cache);
}
