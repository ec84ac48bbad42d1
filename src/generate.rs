//! Generation on top of a session: stop conditions, streaming, statistics, chat templates and
//! perplexity.

use serde::Serialize;
use web_time::Instant;

use crate::error::{Error, Result};
use crate::model::tokenizer::TextStream;
use crate::ops::sample::Sampling;
use crate::session::Session;

/// What to generate.
#[derive(Clone, Debug)]
pub struct GenerateOptions {
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Stop at the model's end-of-sequence token.
    pub stop_at_eos: bool,
    /// Keep the GPU busy between tokens: each token's step is queued before the token is
    /// returned, and where the session can undo a step ([`Session::can_rewind_step`]) the one
    /// after it is queued before the token is read, undone if the token ends the generation.
    /// Off, each step runs after the previous token was returned, so the session can be
    /// inspected token by token.
    pub overlap: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self { max_tokens: 128, sampling: Sampling::default(), stop_at_eos: true, overlap: true }
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

/// A generation in progress, pulled one token at a time (the browser streams from it; native
/// programs use [`generate`]). The session must not be used for anything else meanwhile.
pub struct Generation {
    options: GenerateOptions,
    /// Tokens that end the generation (end-of-sequence and end-of-turn), unless told not to stop.
    stops: Vec<u32>,
    prompt_tokens: usize,
    out: Vec<u32>,
    text: TextStream,
    /// The token sampled by the last step, not yet returned.
    pending: Option<u32>,
    /// A step that feeds the last returned token is queued, its token unread.
    ahead: bool,
    prefill_seconds: f64,
    decode_start: Instant,
    decode_seconds: f64,
    stop: Option<StopReason>,
}

impl Generation {
    /// Checks the options and runs the prompt (the prefill); the first token is ready after it.
    pub async fn start(session: &mut Session, prompt: &[u32], options: &GenerateOptions) -> Result<Self> {
        if options.max_tokens == 0 {
            return Err(Error::arg("max tokens must be at least 1"));
        }
        session.set_sampling(options.sampling)?;
        let t0 = Instant::now();
        let first = session.prefill(prompt).await?;
        Ok(Self {
            options: options.clone(),
            stops: if options.stop_at_eos { session.model.tokenizer.stop_ids() } else { Vec::new() },
            prompt_tokens: prompt.len(),
            out: Vec::new(),
            text: TextStream::default(),
            pending: Some(first),
            ahead: false,
            prefill_seconds: t0.elapsed().as_secs_f64(),
            decode_start: Instant::now(),
            decode_seconds: 0.0,
            stop: None,
        })
    }

    /// The next token and the text it completes (empty while a character is incomplete), or
    /// `None` once generation has stopped.
    pub async fn next(&mut self, session: &mut Session) -> Result<Option<(u32, String)>> {
        if self.stop.is_some() {
            // Cancelled with a step queued: it fed the last returned token, which the session
            // then holds; its own token is never read.
            if std::mem::take(&mut self.ahead) {
                session.read_step().await?;
            }
            return Ok(None);
        }
        let token = match self.pending.take() {
            Some(t) => t,
            None => {
                if !std::mem::take(&mut self.ahead) {
                    session.submit_step()?;
                }
                // The step after this one, queued before this one's token is known, where it
                // can be undone should that token end the generation.
                let more = self.out.len() + 1 < self.options.max_tokens && session.len() < session.options.context;
                if self.options.overlap && more && session.can_rewind_step() {
                    session.submit_step()?;
                    self.ahead = true;
                }
                session.read_step().await?
            }
        };
        if self.stops.contains(&token) {
            if std::mem::take(&mut self.ahead) {
                session.rewind_step(token)?;
            }
            self.finish(StopReason::EndOfSequence);
            return Ok(None);
        }
        self.out.push(token);
        let piece = self.text.push(&session.model.tokenizer, token)?;
        // Tokens the session holds, not counting a step queued ahead.
        let held = session.len() - self.ahead as usize;
        if self.out.len() >= self.options.max_tokens {
            self.finish(StopReason::MaxTokens);
        } else if held >= session.options.context {
            self.finish(StopReason::ContextFull);
        } else if self.options.overlap && !self.ahead {
            // The step that feeds this token runs while the caller handles it.
            session.submit_step()?;
            self.ahead = true;
        }
        Ok(Some((token, piece)))
    }

    /// Stops before the next token.
    pub fn cancel(&mut self) {
        self.finish(StopReason::Cancelled);
    }

    fn finish(&mut self, reason: StopReason) {
        if self.stop.is_none() {
            self.stop = Some(reason);
            self.decode_seconds = self.decode_start.elapsed().as_secs_f64();
        }
    }

    /// The tokens generated so far.
    pub fn tokens(&self) -> &[u32] {
        &self.out
    }

    /// Timings, once generation has stopped.
    pub fn stats(&self) -> Option<Stats> {
        Some(Stats {
            prompt_tokens: self.prompt_tokens,
            generated_tokens: self.out.len(),
            prefill_seconds: self.prefill_seconds,
            decode_seconds: self.decode_seconds,
            stop: self.stop?,
        })
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
    let mut g = Generation::start(session, prompt, options).await?;
    while let Some((token, piece)) = g.next(session).await? {
        if !on_token(token, &piece) {
            g.cancel();
        }
    }
    let stats = g.stats().ok_or_else(|| Error::Gpu("generation ended without a stop reason".into()))?;
    Ok((g.out, stats))
}

/// Prepares a session that holds the tokens `held` to continue with `ids` (a chat re-rendered
/// whole each turn): keeps the prefix they share where the cache can be rewound, otherwise
/// starts over, and returns how many tokens of `ids` the session keeps. Run the rest; at least
/// the last token of `ids` is always left to run.
pub async fn reuse_prefix(session: &mut Session, held: &[u32], ids: &[u32]) -> usize {
    let common = held.iter().zip(ids).take_while(|(a, b)| a == b).count().min(ids.len().saturating_sub(1));
    if held.len() != session.len() || session.truncate(common).await.is_err() {
        // Some caches (the adore controller's state) cannot be rewound.
        session.reset();
        return 0;
    }
    common
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
    // What templates written for Hugging Face's Jinja expect: Python's string methods
    // (`content.startswith(...)`, `.split`, `.strip`) and `raise_exception(message)`.
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", |message: String| -> std::result::Result<String, minijinja::Error> {
        Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
    });
    // Today's date, which Llama 3's templates put in the system header (as Hugging Face and
    // llama.cpp do; without it they fall back to a fixed date).
    env.add_function("strftime_now", |format: String| {
        let now = web_time::SystemTime::now().duration_since(web_time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        strftime(&format, now)
    });
    env.add_template("chat", template.unwrap_or(CHATML))
        .map_err(|e| Error::Tokenizer(format!("the model's chat template does not parse: {e}")))?;
    let tmpl = env.get_template("chat").map_err(|e| Error::Tokenizer(e.to_string()))?;
    tmpl.render(minijinja::context! { messages => messages, add_generation_prompt => true, bos_token => "", eos_token => "" })
        .map_err(|e| Error::Tokenizer(format!("rendering the chat template: {e}")))
}

/// `format` with C's strftime conversions for the UTC time `secs` after 1970: %Y %y %m %d %e %j
/// %H %M %S %b %B %a %A and %%; any other conversion is kept as written.
pub fn strftime(format: &str, secs: i64) -> String {
    const MONTHS: [&str; 12] =
        ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November", "December"];
    const DAYS: [&str; 7] = ["Sunday", "Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"];
    let (days, rest) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // The civil date of a day count (the proleptic Gregorian calendar in 400-year eras).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy_march = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy_march + 2) / 153;
    let day = doy_march - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + (month <= 2) as i64;
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334][month as usize - 1];
    let yday = before + day + (leap && month > 2) as i64;
    let weekday = (days + 4).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => out += &year.to_string(),
            Some('y') => out += &format!("{:02}", year.rem_euclid(100)),
            Some('m') => out += &format!("{month:02}"),
            Some('d') => out += &format!("{day:02}"),
            Some('e') => out += &format!("{day:2}"),
            Some('j') => out += &format!("{yday:03}"),
            Some('H') => out += &format!("{:02}", rest / 3600),
            Some('M') => out += &format!("{:02}", rest / 60 % 60),
            Some('S') => out += &format!("{:02}", rest % 60),
            Some('B') => out += MONTHS[month as usize - 1],
            Some('b') => out += &MONTHS[month as usize - 1][..3],
            Some('A') => out += DAYS[weekday],
            Some('a') => out += &DAYS[weekday][..3],
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::{apply_chat_template, Message};

    fn msgs(pairs: &[(&str, &str)]) -> Vec<Message> {
        pairs.iter().map(|(r, c)| Message { role: r.to_string(), content: c.to_string() }).collect()
    }

    /// The constructs of current templates (Qwen3's, Llama 3's) that plain Jinja in Rust lacks:
    /// Python string methods, reversed slices with a namespace, loop controls, tojson.
    #[test]
    fn chat_templates_may_use_python_string_methods_and_loop_controls() {
        let template = "{%- set ns = namespace(last_user=-1) %}\
            {%- for m in messages[::-1] %}{%- if m.role == 'user' and not m.content.startswith('<tool') %}\
            {%- set ns.last_user = messages|length - 1 - loop.index0 %}{%- break %}{%- endif %}{%- endfor %}\
            {%- for m in messages %}{%- set c = m.content %}\
            {%- if '</think>' in c %}{%- set c = c.split('</think>')[-1].lstrip('\\n') %}{%- endif %}\
            [{{ m.role | tojson }}:{{ c.strip() | upper if loop.index0 == ns.last_user else c.strip() }}]\
            {%- endfor %}";
        let m = msgs(&[("user", " hello "), ("assistant", "<think>\nhm\n</think>\n\nhi"), ("user", "<tool_response>x")]);
        assert_eq!(apply_chat_template(Some(template), &m).unwrap(), "[\"user\":HELLO][\"assistant\":hi][\"user\":<tool_response>x]");
    }

    /// Against Python's time.strftime over time.gmtime for the same instants.
    #[test]
    fn strftime_formats_dates_as_c_does() {
        let f = "%d %b %Y|%Y-%m-%d %H:%M:%S|%B %e, %y|%a %A %j|%%|%Q";
        let want = [
            (0, "01 Jan 1970|1970-01-01 00:00:00|January  1, 70|Thu Thursday 001|%|%Q"),
            (1_721_952_000, "26 Jul 2024|2024-07-26 00:00:00|July 26, 24|Fri Friday 208|%|%Q"),
            (1_709_210_096, "29 Feb 2024|2024-02-29 12:34:56|February 29, 24|Thu Thursday 060|%|%Q"),
            (1_798_761_599, "31 Dec 2026|2026-12-31 23:59:59|December 31, 26|Thu Thursday 365|%|%Q"),
            (951_782_400, "29 Feb 2000|2000-02-29 00:00:00|February 29, 00|Tue Tuesday 060|%|%Q"),
        ];
        for (secs, text) in want {
            assert_eq!(super::strftime(f, secs), text, "at {secs}");
        }
        // Templates test whether it is defined, then call it.
        let t = "{% if strftime_now is defined %}{{ strftime_now('%Y') }}{% else %}none{% endif %}";
        let year: i64 = apply_chat_template(Some(t), &[]).unwrap().parse().unwrap();
        assert!((2024..2200).contains(&year), "{year}");
    }

    #[test]
    fn raise_exception_in_a_template_is_an_error_with_its_message() {
        let template =
            "{%- if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user turn') }}{%- endif %}ok";
        assert_eq!(apply_chat_template(Some(template), &msgs(&[("user", "a")])).unwrap(), "ok");
        let e = apply_chat_template(Some(template), &msgs(&[("assistant", "a")])).unwrap_err().to_string();
        assert!(e.contains("Conversations must start with a user turn"), "{e}");
    }
}
