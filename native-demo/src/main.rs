//! `adore`: generate, chat, perplexity and bench on the command line. Generated text goes to
//! stdout; progress, statistics and the adapter go to stderr.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use adore::controller::Controller;
use adore::generate::{apply_chat_template, perplexity, GenerateOptions, Message};
use adore::kv::{CacheUpdate, Policy, PolicyKind};
use adore::{Context, ContextOptions, Model, Sampling, Session, SessionOptions};
use anyhow::{bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

mod eval;
mod serve;
mod soak;
#[cfg(feature = "train")]
mod train;

#[derive(Parser)]
#[command(name = "adore", version, about = "WebGPU inference for Llama-family models with adaptive KV-cache token release")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Continue a prompt, streaming the text to stdout.
    Generate {
        #[command(flatten)]
        model: ModelArgs,
        /// The prompt text (special tokens such as <|im_start|> are recognised).
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 128)]
        max_tokens: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Print one JSON object at the end (text, token ids, statistics) instead of streaming.
        #[arg(long)]
        json: bool,
    },
    /// Interactive chat with the model's chat template.
    Chat {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long, default_value_t = 512)]
        max_tokens: usize,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// System prompt (the template's default when omitted).
        #[arg(long)]
        system: Option<String>,
    },
    /// Perplexity over non-overlapping windows from the start of a text file.
    Perplexity {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        file: PathBuf,
        #[arg(long, default_value_t = 512)]
        window: usize,
        /// Most windows to score (all that fit by default).
        #[arg(long)]
        windows: Option<usize>,
        /// Print {"ppl": .., "tokens_scored": ..} on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Prefill and decode tokens/s per context length: each policy prefills once, growing
    /// through the contexts in ascending order, and decodes at each.
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Context lengths (prompt tokens before the measured decode).
        #[arg(long, value_delimiter = ',', default_value = "256,2048")]
        contexts: Vec<usize>,
        /// Decode tokens measured per repeat.
        #[arg(long, default_value_t = 16)]
        decode_tokens: usize,
        /// Measured decode repeats per context (after one warm-up token).
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Write the rows as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Policies to compare (each with --budget); defaults to --policy.
        #[arg(long, value_delimiter = ',')]
        policies: Vec<String>,
        /// Cache updates to compare for h2o, tova and adore (scatter, matmul); defaults to
        /// --cache-update.
        #[arg(long, value_delimiter = ',')]
        cache_updates: Vec<String>,
    },
    /// One long generation checked every --every tokens (tokens/s, resident memory, KV size,
    /// finite logits): a budgeted cache should keep all of them flat.
    Soak {
        #[command(flatten)]
        model: ModelArgs,
        /// Tokens to generate (end-of-sequence does not stop the soak).
        #[arg(long, default_value_t = 8192)]
        tokens: usize,
        /// Tokens between samples.
        #[arg(long, default_value_t = 256)]
        every: usize,
        #[arg(long, default_value = "Once upon a time")]
        prompt: String,
        #[command(flatten)]
        sampling: SamplingArgs,
        /// Write the samples as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Download (if needed) and verify the default model; print its path.
    Fetch,
    /// Serve the browser demo and a model on 127.0.0.1; prints the URL to open.
    Serve {
        /// Port (0 = any free port).
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// A .gguf file; without it the default model is fetched once into the cache directory.
        #[arg(long)]
        model: Option<PathBuf>,
        /// The demo's directory (default: web/ with its built package, see web/build.sh).
        #[arg(long)]
        web: Option<PathBuf>,
    },
    /// Each policy against full attention on a text, teacher-forced token by token: top-1
    /// agreement, mean KL divergence and perplexity per policy and budget.
    Eval {
        #[command(flatten)]
        model: ModelArgs,
        /// Plain text to score (its first --tokens tokens).
        #[arg(long)]
        text: PathBuf,
        #[arg(long, default_value_t = 2048)]
        tokens: usize,
        #[arg(long, value_delimiter = ',', default_value = "full,window,sink,h2o,tova,adore,oracle")]
        policies: Vec<String>,
        #[arg(long, value_delimiter = ',', default_value = "64,128,256,512")]
        budgets: Vec<usize>,
        /// JSON lines with a "prompt" each: greedy generations compared with full attention's
        /// (ROUGE-L, BLEU).
        #[arg(long)]
        prompts: Option<PathBuf>,
        /// Tokens generated per prompt.
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// Write the rows as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Write an SVG chart of top-1 agreement against budget per policy.
        #[arg(long)]
        plot: Option<PathBuf>,
        /// With --speed-plot: an `adore bench --json` file to chart decode tokens/s against context.
        #[arg(long)]
        bench: Option<PathBuf>,
        #[arg(long)]
        speed_plot: Option<PathBuf>,
    },
    /// Teacher data for controller training: full attention over the texts (on the CPU), the
    /// attention distribution of sampled queries averaged over heads and layers, or the keys'
    /// contributions to the attention outputs (feature `train`).
    Collect {
        #[command(flatten)]
        model: ModelPath,
        /// Plain-text files, cut into windows of --seq-len tokens.
        #[arg(long, num_args = 1.., required = true)]
        text: Vec<PathBuf>,
        /// Output directory (a repeated run resumes where it stopped).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 2048)]
        seq_len: usize,
        /// Query positions sampled per sequence.
        #[arg(long, default_value_t = 32)]
        queries: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// What the teacher distribution measures: `attention` (averaged over heads and layers)
        /// or `contribution` (attention times the size of what each key's value adds to the
        /// head's output, summed over heads and layers) or `future-H` (the averaged attention of
        /// the query and the H - 1 queries after it, on the keys up to the query).
        #[arg(long, default_value = "attention")]
        teacher: String,
        /// Also store the residual stream after these layers (numbered from 1), for
        /// controllers that read the model's state (`train-controller --input-layer`).
        #[arg(long, value_delimiter = ',')]
        features_after: Vec<usize>,
    },
    /// Train an ADORE controller on `collect` data (feature `train`).
    TrainController {
        #[command(flatten)]
        model: ModelPath,
        /// Training data (a `collect` directory).
        #[arg(long)]
        data: PathBuf,
        /// Held-out data (a `collect` directory of other texts); default: the last tenth of --data.
        #[arg(long)]
        heldout: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 40)]
        epochs: usize,
        /// Controller width d_c.
        #[arg(long, default_value_t = 64)]
        width: usize,
        /// Distance buckets of the score bias.
        #[arg(long, default_value_t = 128)]
        buckets: usize,
        #[arg(long, default_value_t = 3e-3)]
        lr: f64,
        /// Sequences per optimizer step.
        #[arg(long, default_value_t = 4)]
        batch: usize,
        /// Budgets m at which recall of the teacher's top-m is reported.
        #[arg(long, value_delimiter = ',', default_value = "64,128,256,512")]
        budgets: Vec<usize>,
        /// Protected first and most recent tokens of the policies compared.
        #[arg(long, default_value_t = 4)]
        sinks: usize,
        #[arg(long, default_value_t = 16)]
        recent: usize,
        /// Write the report (losses per epoch, recall table) as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
        /// Which keys the loss covers: all of them, or only those the policy decides on
        /// (unprotected: the sinks and recent window left out).
        #[arg(long, default_value = "unprotected")]
        loss_keys: String,
        /// What the controller learns to match per query: `distribution` (the teacher's
        /// attention) or `top-M` (membership in the teacher's top M keys, what a budget of M keeps).
        #[arg(long, default_value = "top-128")]
        target: String,
        /// What the controller reads per token: 0, its embedding; L, the model's residual
        /// stream after layer L (collected with `collect --features-after L`).
        #[arg(long, default_value_t = 0)]
        input_layer: usize,
    },
    /// ADORE controller files.
    Controller {
        #[command(subcommand)]
        action: ControllerCommand,
    },
}

#[derive(Subcommand)]
enum ControllerCommand {
    /// Write a seeded random (untrained) controller for a model.
    Init {
        #[command(flatten)]
        model: ModelArgs,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Controller width d_c.
        #[arg(long, default_value_t = 64)]
        width: usize,
        /// Distance buckets of the score bias.
        #[arg(long, default_value_t = 128)]
        buckets: usize,
    },
}

#[derive(Args)]
struct ModelPath {
    /// A .gguf file or a Hugging Face directory; the default model without it.
    #[arg(long)]
    model: Option<PathBuf>,
}

#[derive(Args)]
struct ModelArgs {
    /// A .gguf file or a Hugging Face directory (config.json, *.safetensors, tokenizer.json).
    /// Without it the default model is fetched once into the cache directory.
    #[arg(long)]
    model: Option<PathBuf>,
    /// KV slots (longest sequence); defaults to what the job needs, at most the model's context.
    #[arg(long)]
    context: Option<usize>,
    /// Prompt tokens per GPU submit.
    #[arg(long, default_value_t = 256)]
    chunk: usize,
    /// KV-cache policy: full, window, sink (StreamingLLM), h2o, tova, adore (the controller shipped for the default model, or --controller)
    /// or oracle (evaluation only: full memory, two passes per step).
    #[arg(long, default_value = "full")]
    policy: String,
    /// KV slots kept by a budgeted policy.
    #[arg(long, default_value_t = 256)]
    budget: usize,
    /// Protected first tokens (sink, h2o, tova, adore).
    #[arg(long, default_value_t = 4)]
    sinks: usize,
    /// Protected most recent tokens (h2o, tova, adore) [default: half the budget for h2o, three
    /// quarters for adore, 16 for tova].
    #[arg(long)]
    recent: Option<usize>,
    /// Released tokens recomputed with each generated token (adore; 0 = release only).
    #[arg(long, default_value_t = 0)]
    rebuild: usize,
    /// How kept rows reach their KV slots: scatter (written into free slots) or matmul (staged,
    /// then moved by a selection-matrix product: the paper's technique, as an ablation).
    #[arg(long, default_value = "scatter")]
    cache_update: String,
    /// ADORE controller file (safetensors) for the adore policy.
    #[arg(long)]
    controller: Option<PathBuf>,
}

impl ModelArgs {
    fn policy(&self, name: &str) -> Result<Policy> {
        let kind: PolicyKind = name.parse()?;
        // --rebuild belongs to adore; comparisons across policies keep it there.
        let rebuild = if kind == PolicyKind::Adore { self.rebuild } else { 0 };
        let p = Policy { kind, budget: self.budget, sinks: self.sinks, recent: self.recent(kind, self.budget), rebuild };
        p.validate()?;
        Ok(p)
    }

    /// --recent, or the policy's default for this budget.
    fn recent(&self, kind: PolicyKind, budget: usize) -> usize {
        self.recent.unwrap_or_else(|| Policy::default_recent(kind, budget, self.sinks))
    }

    fn session(&self, model: &Arc<Model>, context: usize, all_logits: bool) -> Result<Session> {
        let policy = self.policy(&self.policy)?;
        if self.rebuild > 0 && policy.kind != PolicyKind::Adore {
            bail!("--rebuild applies to the adore policy only, not {}", self.policy);
        }
        let options = SessionOptions {
            context,
            chunk: self.chunk,
            all_logits,
            policy,
            controller: self.controller(model)?,
            cache_update: self.cache_update.parse()?,
        };
        Ok(Session::new(model.clone(), options)?)
    }

    /// The controller named by --controller, checked against the model.
    fn controller(&self, model: &Model) -> Result<Option<Arc<Controller>>> {
        let Some(path) = &self.controller else { return Ok(None) };
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(Arc::new(Controller::from_bytes(&path.display().to_string(), &bytes, &model.fingerprint)?)))
    }
}

#[derive(Args, Clone)]
struct SamplingArgs {
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    temperature: f32,
    /// 0 = off.
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// 1 = off.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    fn sampling(&self) -> Result<Sampling> {
        let s = Sampling { temperature: self.temperature, top_k: self.top_k, top_p: self.top_p, seed: self.seed };
        s.validate()?;
        Ok(s)
    }
}

fn main() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        std::env::set_var("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Fetch => {
            let path = fetch_default()?;
            println!("{}", path.display());
            Ok(())
        }
        Command::Soak { model, tokens, every, prompt, sampling, json } => {
            let m = load(&model)?;
            let ids = m.tokenizer.encode(&prompt)?;
            let context = model.context.unwrap_or(ids.len() + tokens);
            let mut session = model.session(&m, context, false)?;
            soak::soak(&mut session, &ids, tokens, every, sampling.sampling()?, json)
        }
        Command::Serve { port, model, web } => {
            let web = serve::web_dir(web)?;
            let model = model_path(&model)?;
            if model.is_dir() {
                bail!(
                    "{}: serve takes one .gguf file (the page also accepts a Hugging Face directory's files from its file picker)",
                    model.display()
                );
            }
            serve::serve(port, &web, &model)
        }
        Command::Eval { model, text, tokens, policies, budgets, prompts, max_tokens, json, plot, bench, speed_plot } => {
            if budgets.is_empty() || budgets.contains(&0) || tokens < 2 {
                bail!("--budgets must list positive budgets and --tokens be at least 2");
            }
            if speed_plot.is_some() != bench.is_some() {
                bail!("--speed-plot and --bench go together");
            }
            let m = load(&model)?;
            let body = std::fs::read_to_string(&text).with_context(|| format!("reading {}", text.display()))?;
            let mut ids = m.tokenizer.encode(&body)?;
            if ids.len() < tokens {
                eprintln!("eval: {} holds {} tokens, fewer than --tokens {tokens}; scoring them all", text.display(), ids.len());
            }
            ids.truncate(tokens.min(m.config.context));
            let mut runs = Vec::new();
            for name in &policies {
                let base = model.policy(name)?;
                if base.kind == PolicyKind::Full {
                    runs.push(base);
                    continue;
                }
                for &b in &budgets {
                    let p = Policy { budget: b, recent: model.recent(base.kind, b), ..base };
                    p.validate()?;
                    runs.push(p);
                }
            }
            let e = eval::Eval { model: &m, policies: &runs, controller: model.controller(&m)?, cache_update: model.cache_update.parse()? };
            eprintln!("eval: {} tokens of {}, {} policy runs", ids.len(), text.display(), runs.len());
            let mut rows = e.teacher_forced(&ids)?;
            if let Some(path) = &prompts {
                let lines = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let mut list = Vec::new();
                for (i, line) in lines.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                    let v: serde_json::Value =
                        serde_json::from_str(line).with_context(|| format!("{}:{}: not JSON", path.display(), i + 1))?;
                    let Some(p) = v["prompt"].as_str() else { bail!("{}:{}: no \"prompt\" string", path.display(), i + 1) };
                    list.push(m.tokenizer.encode(p)?);
                }
                e.generations(&list, max_tokens, &mut rows)?;
            }
            print!("{}", eval::markdown(&rows));
            if let Some(path) = &json {
                let doc = serde_json::json!({"model": m.name, "text": text.display().to_string(), "tokens": ids.len(), "rows": rows});
                std::fs::write(path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(path) = &plot {
                let svg = eval::svg_chart(
                    &format!("Agreement with full attention, {} tokens", ids.len()),
                    "budget m (KV slots)",
                    "top-1 agreement",
                    &eval::fidelity_series(&rows),
                    true,
                );
                std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
            }
            if let (Some(path), Some(b)) = (&speed_plot, &bench) {
                let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(b).with_context(|| format!("reading {}", b.display()))?)
                    .with_context(|| format!("{} is not JSON", b.display()))?;
                let svg = eval::svg_chart("Decode speed", "context (tokens)", "decode tokens/s", &eval::speed_series(&doc)?, true);
                std::fs::write(path, svg).with_context(|| format!("writing {}", path.display()))?;
            }
            Ok(())
        }
        #[cfg(feature = "train")]
        Command::Collect { model, text, out, seq_len, queries, seed, teacher, features_after } => {
            let kind: train::data::TeacherKind = teacher.parse()?;
            let path = model_path(&model.model)?;
            let files = adore::model::files::Files::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let spec = adore::ModelSpec::read(files.source())?;
            let teacher = train::teacher::Teacher::new(&spec)?;
            let fingerprint = spec.fingerprint()?;
            train::data::collect(&train::data::Collect {
                teacher: &teacher,
                tokenizer: &spec.tokenizer,
                fingerprint: &fingerprint,
                texts: &text,
                out: &out,
                seq_len,
                queries,
                seed,
                kind,
                features_after: &features_after,
            })
        }
        #[cfg(feature = "train")]
        Command::TrainController {
            model,
            data,
            heldout,
            out,
            seed,
            epochs,
            width,
            buckets,
            lr,
            batch,
            budgets,
            sinks,
            recent,
            json,
            loss_keys,
            target,
            input_layer,
        } => {
            let target: train::fit::Target = target.parse()?;
            let unprotected_only = match loss_keys.as_str() {
                "all" => false,
                "unprotected" => true,
                other => bail!("--loss-keys is all or unprotected, not {other:?}"),
            };
            let path = model_path(&model.model)?;
            let files = adore::model::files::Files::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let spec = adore::ModelSpec::read(files.source())?;
            let fingerprint = spec.fingerprint()?;
            let embed = spec.get("token_embd.weight")?.to_f32();
            let mut train_seqs = train::data::read_dir(&data)?;
            let held = match &heldout {
                Some(dir) => train::data::read_dir(dir)?,
                None => {
                    let keep = train_seqs.len() - (train_seqs.len() / 10).max(1).min(train_seqs.len() - 1);
                    if train_seqs.len() < 2 {
                        bail!("{} holds one sequence: give --heldout or collect more", data.display());
                    }
                    train_seqs.split_off(keep)
                }
            };
            let o = train::fit::FitOptions {
                d_c: width,
                buckets,
                epochs,
                seed,
                lr,
                batch,
                sinks,
                recent,
                budgets,
                unprotected_only,
                target,
                input_layer,
            };
            eprintln!("train-controller: {} training and {} held-out sequences, {epochs} epochs", train_seqs.len(), held.len());
            let bar = ProgressBar::new(epochs as u64);
            bar.set_style(
                ProgressStyle::with_template("train {bar:40} epoch {pos}/{len}, {eta} left {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            let t0 = std::time::Instant::now();
            let (mut c, report) = train::fit::fit(&embed, spec.config.hidden, &fingerprint, &train_seqs, &held, &o, &mut |e| {
                // One line per epoch, above the bar (or alone when stderr is not a terminal).
                let line = format!(
                    "epoch {:>3}: training loss {:.4}, held-out loss {:.4} ({:.0} s)",
                    e.epoch,
                    e.train_loss,
                    e.heldout_loss,
                    t0.elapsed().as_secs_f64()
                );
                if bar.is_hidden() {
                    eprintln!("{line}");
                } else {
                    bar.println(line);
                }
                bar.inc(1);
            })?;
            bar.finish_and_clear();
            let names = |s: &[train::data::Sequence]| {
                let mut v: Vec<String> = s.iter().map(|q| q.name.splitn(4, '-').nth(3).unwrap_or("").to_string()).collect();
                v.dedup();
                v.join(", ")
            };
            c.training = format!(
                "trained by adore train-controller on {} sequences of {} ({}); held out: {}; {epochs} epochs, lr {lr}, batch {batch}, {buckets} buckets, seed {seed}, target {}, loss over {} keys, input {}; final held-out loss {:.4}",
                train_seqs.len(),
                train_seqs[0].len(),
                names(&train_seqs),
                names(&held),
                match target {
                    train::fit::Target::Distribution => "the teacher's distribution".to_string(),
                    train::fit::Target::TopM(m) => format!("the teacher's top {m}"),
                },
                if unprotected_only { format!("the unprotected ({sinks} sinks, {recent} recent left out)") } else { "all".to_string() },
                if input_layer == 0 { "the token embeddings".to_string() } else { format!("the residual stream after layer {input_layer}") },
                report.epochs.last().map_or(f64::NAN, |e| e.heldout_loss)
            );
            std::fs::write(&out, c.to_bytes()?).with_context(|| format!("writing {}", out.display()))?;
            println!("| m | held-out queries | adore | adore, releases final | h2o | sinks + window |");
            println!("|---:|---:|---:|---:|---:|---:|");
            for r in &report.recall {
                println!("| {} | {} | {:.3} | {:.3} | {:.3} | {:.3} |", r.m, r.queries, r.adore, r.adore_final, r.h2o, r.sink_window);
            }
            if let Some(path) = json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?).with_context(|| format!("writing {}", path.display()))?;
            }
            eprintln!("wrote {}", out.display());
            Ok(())
        }
        #[cfg(not(feature = "train"))]
        Command::Collect { .. } | Command::TrainController { .. } => {
            bail!("this build has no training support: build with `cargo build --release -p native-demo --features train`")
        }
        Command::Controller { action: ControllerCommand::Init { model, out, seed, width, buckets } } => {
            let m = load(&model)?;
            let c = Controller::random(&m.fingerprint, m.config.hidden, width, buckets, seed)?;
            std::fs::write(&out, c.to_bytes()?).with_context(|| format!("writing {}", out.display()))?;
            eprintln!("wrote {} (random controller, width {width}, {buckets} buckets, seed {seed})", out.display());
            Ok(())
        }
        Command::Generate { model, prompt, max_tokens, sampling, json } => {
            let sampling = sampling.sampling()?;
            if max_tokens == 0 {
                bail!("--max-tokens must be at least 1");
            }
            let model_ = load(&model)?;
            let ids = model_.tokenizer.encode(&prompt)?;
            let context = model.context.unwrap_or((ids.len() + max_tokens).min(model_.config.context));
            let mut session = model.session(&model_, context, false)?;
            let opts = GenerateOptions { max_tokens, sampling, stop_at_eos: true };
            let mut stdout = std::io::stdout();
            let mut text = String::new();
            let (tokens, stats) = pollster::block_on(adore::generate(&mut session, &ids, &opts, |_, piece| {
                if json {
                    text.push_str(piece);
                } else {
                    let _ = stdout.write_all(piece.as_bytes());
                    let _ = stdout.flush();
                }
                true
            }))?;
            if json {
                println!("{}", serde_json::json!({ "text": text, "tokens": tokens, "stats": stats }));
            } else {
                println!();
            }
            eprintln!(
                "prompt {} tokens, {:.1} tokens/s prefill; generated {} tokens, {:.1} tokens/s decode; stop: {:?}",
                stats.prompt_tokens,
                stats.prefill_tokens_per_s(),
                stats.generated_tokens,
                stats.decode_tokens_per_s(),
                stats.stop
            );
            Ok(())
        }
        Command::Chat { model, max_tokens, sampling, system } => chat(&model, max_tokens, sampling.sampling()?, system),
        Command::Perplexity { model, file, window, windows, json } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let model_ = load(&model)?;
            let ids = model_.tokenizer.encode(&text)?;
            let context = model.context.unwrap_or(window);
            let mut session = model.session(&model_, context, true)?;
            let n = windows.unwrap_or(usize::MAX);
            let bar = progress_bar((ids.len() / window.max(1)).min(n) as u64, "windows");
            let r = pollster::block_on(perplexity(&mut session, &ids, window, n, |done, _| bar.set_position(done as u64)))?;
            bar.finish_and_clear();
            if json {
                println!("{}", serde_json::json!({"ppl": r.ppl, "tokens_scored": r.tokens_scored}));
            } else {
                println!("perplexity {:.4} over {} tokens ({} windows of {window})", r.ppl, r.tokens_scored, r.windows);
            }
            Ok(())
        }
        Command::Bench { model, contexts, decode_tokens, repeats, json, policies, cache_updates } => {
            let policies = if policies.is_empty() { vec![model.policy.clone()] } else { policies };
            bench(&model, &policies, &cache_updates, &contexts, decode_tokens, repeats, json.as_deref())
        }
    }
}

fn progress_bar(len: u64, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!("{{bar:40}} {{pos}}/{{len}} {unit} ({{eta}} left)"))
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Where the bar cannot draw (stderr is not a terminal, e.g. a log file): a line each time the
/// last `step` crossed a twentieth of the work, so that long runs still show how far they are.
pub fn log_progress(bar: &ProgressBar, step: u64, what: &str, unit: &str) {
    let (pos, len) = (bar.position(), bar.length().unwrap_or(0));
    if bar.is_hidden() && len > 0 && (pos * 20 / len) != (pos.saturating_sub(step) * 20 / len) {
        eprintln!("{what}: {pos}/{len} {unit}, {} left", indicatif::HumanDuration(bar.eta()));
    }
}

/// The default model's path, downloading it (with a progress bar on a terminal) if needed.
fn fetch_default() -> Result<PathBuf> {
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("downloading {bar:40} {bytes}/{total_bytes} ({eta} left)")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let path = adore::fetch::default_model_with(&mut |m| bar.suspend(|| eprintln!("{m}")), &mut |done, total| {
        bar.set_length(total.max(done));
        bar.set_position(done);
    })?;
    bar.finish_and_clear();
    Ok(path)
}

/// The model path given, or the default model (fetched once).
fn model_path(model: &Option<PathBuf>) -> Result<PathBuf> {
    match model {
        Some(p) => Ok(p.clone()),
        None => fetch_default(),
    }
}

fn load(args: &ModelArgs) -> Result<Arc<Model>> {
    let path = model_path(&args.model)?;
    let ctx = Arc::new(Context::new_blocking(ContextOptions::default())?);
    eprintln!("adapter: {}", ctx.describe());
    let bar = if std::io::stderr().is_terminal() {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("loading {bar:40} {bytes}/{total_bytes}").unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let t = std::time::Instant::now();
    let model = adore::model::files::load(ctx, &path, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("loading {}", path.display()))?;
    bar.finish_and_clear();
    let c = &model.config;
    eprintln!(
        "model: {} ({} layers, hidden {}, {} heads / {} KV heads, vocab {}), loaded in {:.2} s",
        display_name(&path),
        c.layers,
        c.hidden,
        c.n_heads,
        c.n_kv_heads,
        c.vocab,
        t.elapsed().as_secs_f64()
    );
    Ok(Arc::new(model))
}

fn display_name(p: &Path) -> String {
    p.file_name().map_or_else(|| p.display().to_string(), |n| n.to_string_lossy().into_owned())
}

fn chat(args: &ModelArgs, max_tokens: usize, sampling: Sampling, system: Option<String>) -> Result<()> {
    let model = load(args)?;
    let context = args.context.unwrap_or(model.config.context.min(4096));
    let mut session = args.session(&model, context, false)?;
    let mut held: Vec<u32> = Vec::new(); // the tokens the session holds
    let mut messages: Vec<Message> = system.into_iter().map(|content| Message { role: "system".into(), content }).collect();
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!("chat: type a message and press Enter; an empty line or Ctrl-D ends the chat.");
    }
    let stdin = std::io::stdin();
    loop {
        if interactive {
            eprint!("> ");
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        messages.push(Message { role: "user".into(), content: line.trim_end().to_string() });
        // The conversation is re-rendered whole; the part the session already holds is kept
        // and only the rest is run.
        let prompt = apply_chat_template(model.chat_template.as_deref(), &messages)?;
        let ids = model.tokenizer.encode(&prompt)?;
        let common = pollster::block_on(adore::generate::reuse_prefix(&mut session, &held, &ids));
        held.truncate(common);
        if ids.len() + max_tokens > context {
            eprintln!("(the conversation no longer fits in {context} tokens; starting over with the last message)");
            messages.drain(..messages.len() - 1);
            session.reset();
            held.clear();
            continue;
        }
        let opts = GenerateOptions { max_tokens, sampling, stop_at_eos: true };
        let mut reply = String::new();
        let mut stdout = std::io::stdout();
        let (out, stats) = pollster::block_on(adore::generate(&mut session, &ids[common..], &opts, |_, text| {
            reply.push_str(text);
            let _ = stdout.write_all(text.as_bytes());
            let _ = stdout.flush();
            true
        }))?;
        println!();
        eprintln!("[{} tokens, {:.1} tokens/s]", stats.generated_tokens, stats.decode_tokens_per_s());
        held.extend_from_slice(&ids[common..]);
        held.extend_from_slice(&out);
        held.truncate(session.len());
        messages.push(Message { role: "assistant".into(), content: reply });
    }
}

#[derive(serde::Serialize)]
struct BenchRow {
    policy: &'static str,
    budget: Option<usize>,
    rebuild: usize,
    cache_update: &'static str,
    context: usize,
    /// Prompt tokens/s of the prefill that grew the sequence to this context.
    prefill_tokens_per_s: Option<f64>,
    decode_tokens_per_s: f64,
    kv_bytes: u64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn bench(
    args: &ModelArgs,
    policies: &[String],
    cache_updates: &[String],
    contexts: &[usize],
    decode_tokens: usize,
    repeats: usize,
    json: Option<&Path>,
) -> Result<()> {
    let policies: Vec<Policy> = policies.iter().map(|p| args.policy(p)).collect::<Result<_>>()?;
    let updates: Vec<CacheUpdate> = if cache_updates.is_empty() {
        vec![args.cache_update.parse()?]
    } else {
        cache_updates.iter().map(|u| u.parse()).collect::<adore::Result<_>>()?
    };
    // Each policy with each cache update that applies to it.
    let runs: Vec<(Policy, CacheUpdate)> = policies
        .iter()
        .flat_map(|p| {
            let ups: Vec<CacheUpdate> = if p.kind.on_gpu() { updates.clone() } else { vec![CacheUpdate::Scatter] };
            ups.into_iter().map(move |u| (*p, u))
        })
        .collect();
    if contexts.is_empty() || contexts.contains(&0) || repeats == 0 || decode_tokens == 0 {
        bail!("--contexts must list positive lengths; --repeats and --decode-tokens must be at least 1");
    }
    let model = load(args)?;
    let mut contexts = contexts.to_vec();
    contexts.sort_unstable();
    contexts.dedup();
    let longest = contexts.last().copied().unwrap_or(0);
    // Decoding at each context adds tokens: the warm-up token and the measured ones.
    let per_context = 1 + repeats * decode_tokens;
    let max_ctx = longest + per_context;
    if max_ctx > model.config.context {
        bail!(
            "context {longest} plus the {per_context} tokens decoded there exceeds the model's context of {} tokens; \
             the longest context that fits is {}",
            model.config.context,
            model.config.context.saturating_sub(per_context)
        );
    }
    eprintln!(
        "bench: adapter {}; at each context 1 warm-up token, then {repeats} x {decode_tokens} decode tokens, median reported",
        model.ctx.describe()
    );
    // A deterministic prompt: the vocabulary walked with a stride, skipping control tokens.
    let prompt: Vec<u32> = (0..max_ctx).map(|i| (100 + (i * 7919) % (model.config.vocab - 100)) as u32).collect();
    let mut rows = Vec::new();
    for (policy, update) in &runs {
        let mut session = Session::new(
            model.clone(),
            SessionOptions {
                context: max_ctx,
                chunk: args.chunk,
                all_logits: false,
                policy: *policy,
                controller: args.controller(&model)?,
                cache_update: *update,
            },
        )?;
        // Warm-up: compile the pipelines of a chunk-sized prefill and of a decode step.
        pollster::block_on(session.prefill(&prompt[..args.chunk.min(contexts[0])]))?;
        pollster::block_on(session.step())?;
        session.reset();
        for &ctx_len in &contexts {
            // Grow the sequence to this context with the prompt (generated tokens stay in it).
            let have = session.len();
            let mut prefill = None;
            if ctx_len > have {
                let t = std::time::Instant::now();
                pollster::block_on(session.prefill(&prompt[have..ctx_len]))?;
                prefill = Some((ctx_len - have) as f64 / t.elapsed().as_secs_f64());
            }
            pollster::block_on(session.step())?;
            let mut dec = Vec::new();
            for _ in 0..repeats {
                let t = std::time::Instant::now();
                for _ in 0..decode_tokens {
                    pollster::block_on(session.step())?;
                }
                dec.push(decode_tokens as f64 / t.elapsed().as_secs_f64());
            }
            let budget = (!policy.kind.keeps_everything()).then_some(policy.budget);
            let row = BenchRow {
                policy: policy.name(),
                budget,
                rebuild: policy.rebuild,
                cache_update: match update {
                    CacheUpdate::Scatter => "scatter",
                    CacheUpdate::Matmul => "matmul",
                },
                context: ctx_len,
                prefill_tokens_per_s: prefill,
                decode_tokens_per_s: median(dec),
                kv_bytes: session.kv_bytes(),
            };
            eprintln!(
                "{:>6} ({}) context {:>6}: prefill {:>9} tokens/s, decode {:>8.2} tokens/s",
                row.policy,
                row.cache_update,
                row.context,
                prefill.map_or("-".to_string(), |p| format!("{p:.1}")),
                row.decode_tokens_per_s
            );
            rows.push(row);
        }
    }
    println!("| policy | budget | rebuild | cache update | context | prefill tokens/s | decode tokens/s | decode vs full | KV bytes |");
    println!("|---|---:|---:|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let budget = r.budget.map_or("-".to_string(), |b| b.to_string());
        // The ratio to full attention at the same context, when full ran too.
        let full = rows.iter().find(|f| f.policy == "full" && f.context == r.context);
        let ratio = full.map_or("-".to_string(), |f| format!("{:.2}", r.decode_tokens_per_s / f.decode_tokens_per_s));
        let prefill = r.prefill_tokens_per_s.map_or("-".to_string(), |p| format!("{p:.1}"));
        println!(
            "| {} | {budget} | {} | {} | {} | {prefill} | {:.2} | {ratio} | {} |",
            r.policy, r.rebuild, r.cache_update, r.context, r.decode_tokens_per_s, r.kv_bytes
        );
    }
    if let Some(path) = json {
        let doc = serde_json::json!({"adapter": model.ctx.describe(), "decode_tokens": decode_tokens, "repeats": repeats, "rows": rows});
        std::fs::write(path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
