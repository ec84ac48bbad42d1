//! `adore chat`: an interactive conversation with the model's chat template. The session
//! keeps the conversation; each turn runs only what the previous turns did not.

use std::io::{BufRead, IsTerminal, Write};

use adore::generate::{apply_chat_template, GenerateOptions, Message};
use adore::index::FIT_MIN_TOKENS;
use adore::policy::PolicyKind;
use adore::SessionOptions;
use anyhow::Result;
use clap::Args;

use crate::options::{DefaultPolicy, ModelArgs, PolicyArgs, SamplingArgs};

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    #[arg(long, default_value_t = 512)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// System prompt (the template's default when omitted).
    #[arg(long)]
    system: Option<String>,
}

pub fn run(a: ChatArgs) -> Result<()> {
    let sampling = a.sampling.sampling()?;
    let model = a.model.load()?;
    let context = a.policy.context.unwrap_or(SessionOptions::default_context(&model.config));
    let mut session = a.policy.session(&model, &a.model, DefaultPolicy::Adore, context, false, None)?;
    // Sink in place of the default adore (no key index for the model): once the conversation is
    // long enough to fit one to, the chat moves to adore, running the conversation again.
    let mut fallback = a.policy.policy.is_none() && session.options.policy.kind == PolicyKind::Sink;
    let mut held: Vec<u32> = Vec::new(); // the tokens the session holds
    let mut messages: Vec<Message> = a.system.into_iter().map(|content| Message { role: "system".into(), content }).collect();
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
        // and only the rest is run. One that no longer fits starts over from the last message.
        let fits = loop {
            let prompt = apply_chat_template(model.chat_template.as_deref(), &messages)?;
            let ids = model.tokenizer.encode(&prompt)?;
            if fallback && ids.len() >= FIT_MIN_TOKENS && ids.len() + a.max_tokens <= context {
                fallback = false;
                drop(session); // its buffers first
                session = a.policy.session(&model, &a.model, DefaultPolicy::Adore, context, false, Some(&ids))?;
                held.clear();
            }
            let common = pollster::block_on(adore::generate::reuse_prefix(&mut session, &held, &ids));
            held.truncate(common);
            if ids.len() + a.max_tokens <= context {
                break Some((ids, common));
            }
            session.reset();
            held.clear();
            if messages.len() == 1 {
                eprintln!("(the message and its reply do not fit in {context} tokens; send a shorter one)");
                messages.clear();
                break None;
            }
            eprintln!("(the conversation no longer fits in {context} tokens; starting over with the last message)");
            messages.drain(..messages.len() - 1);
        };
        let Some((ids, common)) = fits else { continue };
        let opts = GenerateOptions { max_tokens: a.max_tokens, sampling, stop_at_eos: true, overlap: true };
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
