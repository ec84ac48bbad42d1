//! Generation on top of a session: stop conditions, streaming, statistics, chat templates and
//! perplexity.

use serde::Serialize;
use web_time::Instant;

use crate::error::{Error, Result};
use crate::ops::sample::Sampling;
use crate::session::Session;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Stop at the model's end-of-sequence token.
    pub stop_at_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_tokens: 128, sampling: Sampling::default(), stop_at_eos: true }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    MaxTokens,
    EndOfSequence,
    ContextFull,
    Cancelled,
}

/// Timings of one generation.
#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_seconds: f64,
    pub decode_seconds: f64,
    pub stop: StopReason,
}

impl Stats {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        self.prompt_tokens as f64 / self.prefill_seconds.max(1e-9)
    }
    /// Decode speed over the tokens after the first (the first comes from the prefill).
    pub fn decode_tokens_per_s(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / self.decode_seconds.max(1e-9)
    }
}

/// Runs the prompt and generates up to `max_tokens` tokens, calling `on_token(id, text)` for each
/// (text may be empty while a character is incomplete); `on_token` returns false to stop.
pub async fn generate(
    session: &mut Session,
    prompt: &[u32],
    options: &GenerateOptions,
    mut on_token: impl FnMut(u32, &str) -> bool,
) -> Result<(Vec<u32>, Stats)> {
    if options.max_tokens == 0 {
        return Err(Error::arg("max tokens must be at least 1"));
    }
    session.set_sampling(options.sampling)?;
    let eos = if options.stop_at_eos { session.model.tokenizer.eos } else { None };
    let t0 = Instant::now();
    let mut token = session.prefill(prompt).await?;
    let prefill_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let mut out = Vec::new();
    let model = session.model.clone();
    let mut text = model.tokenizer.stream();
    let stop = loop {
        if Some(token) == eos {
            break StopReason::EndOfSequence;
        }
        out.push(token);
        let piece = text.push(token)?;
        if !on_token(token, &piece) {
            break StopReason::Cancelled;
        }
        if out.len() >= options.max_tokens {
            break StopReason::MaxTokens;
        }
        if session.len() >= session.options.context {
            break StopReason::ContextFull;
        }
        token = session.step().await?;
    };
    let stats = Stats {
        prompt_tokens: prompt.len(),
        generated_tokens: out.len(),
        prefill_seconds,
        decode_seconds: t1.elapsed().as_secs_f64(),
        stop,
    };
    Ok((out, stats))
}

/// One chat message.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// ChatML, used when a model carries no template.
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Renders `messages` with the model's chat template (Jinja), ending with the assistant's turn.
pub fn apply_chat_template(template: Option<&str>, messages: &[Message]) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.add_template("chat", template.unwrap_or(CHATML))
        .map_err(|e| Error::Tokenizer(format!("the model's chat template does not parse: {e}")))?;
    let tmpl = env.get_template("chat").map_err(|e| Error::Tokenizer(e.to_string()))?;
    tmpl.render(minijinja::context! { messages => messages, add_generation_prompt => true, bos_token => "", eos_token => "" })
        .map_err(|e| Error::Tokenizer(format!("rendering the chat template: {e}")))
}

/// Perplexity result.
#[derive(Clone, Debug, Serialize)]
pub struct Perplexity {
    pub ppl: f64,
    pub tokens_scored: usize,
    pub windows: usize,
}

/// Perplexity over up to `max_windows` non-overlapping windows of `window` tokens from the start
/// of `tokens`; each window starts a fresh sequence and scores its last window - 1 predictions.
/// The session must have been created with `all_logits`.
pub async fn perplexity(
    session: &mut Session,
    tokens: &[u32],
    window: usize,
    max_windows: usize,
    mut progress: impl FnMut(usize, usize),
) -> Result<Perplexity> {
    if window < 2 {
        return Err(Error::arg("the perplexity window must be at least 2 tokens"));
    }
    if window > session.options.context {
        return Err(Error::PromptTooLong { tokens: window, context: session.options.context });
    }
    let n_windows = (tokens.len() / window).min(max_windows);
    if n_windows == 0 {
        return Err(Error::arg(format!("the text has {} tokens, fewer than one window of {window}", tokens.len())));
    }
    let vocab = session.model.config.vocab;
    let (mut nll, mut scored) = (0f64, 0usize);
    for w in 0..n_windows {
        let ids = &tokens[w * window..(w + 1) * window];
        session.reset();
        let logits = session.prefill_logits(ids).await?;
        for t in 0..window - 1 {
            let row = &logits[t * vocab..(t + 1) * vocab];
            nll += crate::eval::logsumexp(row) - row[ids[t + 1] as usize] as f64;
            scored += 1;
        }
        progress(w + 1, n_windows);
    }
    let ppl = (nll / scored as f64).exp();
    if !ppl.is_finite() {
        return Err(Error::Gpu("perplexity is not finite: the forward pass produced NaN or infinity".into()));
    }
    Ok(Perplexity { ppl, tokens_scored: scored, windows: n_windows })
}
