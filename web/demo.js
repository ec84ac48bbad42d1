// The demo page: load a model (URL or files, cached in the browser), chat with streaming, and
// watch the KV cache: each generated token coloured as cached, released or rebuilt, and a
// chart of the slots in use against the tokens seen.
//
// URL parameters run one generation on load, for tests and shareable links:
//   ?model=URL&prompt=TEXT&max_tokens=N&temperature=T&policy=P&budget=M&rebuild_from=store|recompute&ranking=keys|controller&rebuild=R&layers_per_choice=N&autorun=1
// The output text goes into #output (data-tokens: the token ids), which gets data-done="1".

import { clearModelCache, createWorkerEngine } from './pkg/index.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
let engine = null;
let abort = null;
let messages = [];
// Whether adore ranked by keys can run: an index ships for the model or was fitted to a prompt.
let indexReady = false;
// Tokens of this conversation: { position, span }; the cache state after the last step.
let tokens = [];
let series = [];
// Every progress event of the last load, in order (tests read it).
window.adoreProgress = [];

function showError(e) {
  const box = $('error');
  box.textContent = `${e?.name ?? 'Error'}: ${e?.message ?? e}`;
  box.hidden = false;
  console.error(e);
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

function mb(bytes) {
  return (bytes / 1e6).toFixed(1);
}

function setBusy(busy) {
  const ready = engine !== null;
  $('prompt').disabled = !ready || busy;
  $('send').disabled = !ready || busy;
  $('new-chat').disabled = !ready || busy;
  $('stop').disabled = !busy;
  $('load-url').disabled = busy;
  $('model-file').disabled = busy;
}

function onProgress(p) {
  window.adoreProgress.push(p);
  const bar = $('progress');
  bar.hidden = false;
  bar.max = Math.max(p.totalBytes, 1);
  bar.value = p.loadedBytes;
  const label = { download: 'Downloading', cache: 'Reading from the browser cache', read: 'Reading files', parse: 'Parsing', upload: 'Uploading weights to the GPU', ready: 'Ready' }[p.phase] ?? p.phase;
  $('status').textContent = `${label}: ${mb(p.loadedBytes)} / ${mb(p.totalBytes)} MB`;
}

async function load(source) {
  clearError();
  setBusy(true);
  window.adoreProgress = [];
  if (engine) {
    engine.dispose();
    engine = null;
  }
  const t0 = performance.now();
  try {
    engine = await createWorkerEngine(source, { onProgress, cache: $('use-cache').checked });
    const i = engine.info;
    const seconds = (performance.now() - t0) / 1000;
    $('status').textContent = `${i.name}: ${i.layers} layers, ${mb(i.weightBytes)} MB of weights, loaded in ${seconds.toFixed(1)} s on ${i.adapter}`;
    $('status').dataset.loadSeconds = seconds.toFixed(3);
    $('status').dataset.keyIndex = String(i.keyIndex);
    indexReady = i.keyIndex;
    if (!i.keyIndex) {
      // adore ranks by a key index fitted to each model; none ships for this one.
      $('status').textContent += `; no key index ships for this model: adore fits one to the first prompt of ${i.keyIndexMinTokens} tokens or more, and uses sink before`;
    }
    newChat();
  } catch (e) {
    engine = null;
    $('progress').hidden = true;
    $('status').textContent = 'No model loaded.';
    showError(e);
  } finally {
    setBusy(false);
  }
}

function options(extra = {}) {
  const policy = $('policy').value;
  return {
    maxTokens: Number($('max-tokens').value),
    temperature: Number($('temperature').value),
    policy,
    budget: Number($('budget').value),
    rebuildFrom: $('rebuild-from').value,
    ranking: $('ranking').value,
    rebuild: policy === 'adore' && $('rebuild-from').value === 'recompute' ? Number($('rebuild').value) : 0,
    trace: true,
    ...(params.has('layers_per_choice') ? { layersPerChoice: Number(params.get('layers_per_choice')) } : {}),
    ...extra,
  };
}

function newChat() {
  messages = [];
  tokens = [];
  series = [];
  $('messages').replaceChildren();
  $('transcript').replaceChildren();
  $('speed').textContent = '';
  drawChart();
}

function addMessage(role, text) {
  const div = document.createElement('div');
  div.className = `msg ${role}`;
  div.textContent = text;
  $('messages').append(div);
  div.scrollIntoView({ block: 'end' });
  return div;
}

function onToken(t) {
  const span = document.createElement('span');
  span.textContent = t.text;
  span.title = `position ${t.position}, token ${t.id}`;
  $('transcript').append(span);
  tokens.push({ position: t.position, span });
  const kept = t.kept ? new Set(t.kept) : null;
  const rebuilt = new Set(t.rebuilt ?? []);
  for (const tok of tokens) {
    // The newest token is sampled but not yet run: it enters the cache with the next step.
    const cached = !kept || kept.has(tok.position) || tok.position === t.position;
    const state = rebuilt.has(tok.position) ? 'rebuilt' : cached ? 'cached' : 'released';
    tok.span.className = `tok ${state}`;
  }
  if (series.length === 0) series.push([0, 0]);
  series.push([t.position, kept ? kept.size : t.position]);
  drawChart();
}

function drawChart() {
  const canvas = $('chart');
  const g = canvas.getContext('2d');
  const w = canvas.width;
  const h = canvas.height;
  g.clearRect(0, 0, w, h);
  g.font = '11px system-ui';
  g.fillStyle = '#555';
  g.fillText('KV slots used against tokens seen', 8, 14);
  if (series.length === 0) return;
  const maxX = Math.max(...series.map((p) => p[0]));
  const maxY = Math.max(maxX, 1);
  const x = (v) => 30 + (v / maxX) * (w - 40);
  const y = (v) => h - 20 - (v / maxY) * (h - 40);
  g.strokeStyle = '#ccc';
  g.beginPath();
  g.moveTo(x(0), y(0));
  g.lineTo(x(maxX), y(maxX));
  g.stroke();
  g.strokeStyle = '#2d5bd0';
  g.lineWidth = 2;
  g.beginPath();
  series.forEach(([sx, sy], i) => (i ? g.lineTo(x(sx), y(sy)) : g.moveTo(x(sx), y(sy))));
  g.stroke();
  g.lineWidth = 1;
  g.fillText(`${series.at(-1)[1]} slots / ${maxX} tokens`, w - 150, 14);
}

function showStats(s, policy = $('policy').value) {
  $('speed').textContent =
    `${s.generatedTokens} tokens, ${s.decodeTokensPerS.toFixed(2)} tokens/s decode, ` +
    `${s.prefillTokensPerS.toFixed(1)} tokens/s prefill (${s.promptTokens} prompt tokens), ` +
    `KV cache ${mb(s.kvBytes)} MB, stop: ${s.stop}`;
  if (policy !== $('policy').value) {
    $('speed').textContent += `; policy ${policy}: adore fits a key index to a conversation of ${engine.info.keyIndexMinTokens} tokens or more`;
  }
}

async function send(text) {
  clearError();
  messages.push({ role: 'user', content: text });
  addMessage('user', text);
  const reply = addMessage('assistant', '');
  abort = new AbortController();
  setBusy(true);
  let content = '';
  try {
    let opts = options({ signal: abort.signal, onToken });
    const fits = !indexReady && opts.policy === 'adore' && opts.ranking === 'keys';
    if (fits) $('speed').textContent = 'adore: fitting a key index to the conversation if it is long enough…';
    let run = engine.chat(messages, opts);
    let stats;
    try {
      for await (const piece of run) {
        content += piece;
        reply.textContent = content;
      }
      stats = await run.stats;
      if (fits) indexReady = true;
    } catch (e) {
      // Too short to fit a key index to: this reply runs sink (said under the reply).
      if (!fits || content || !/key index/.test(e.message)) throw e;
      opts = { ...opts, policy: 'sink' };
      run = engine.chat(messages, opts);
      for await (const piece of run) {
        content += piece;
        reply.textContent = content;
      }
      stats = await run.stats;
    }
    showStats(stats, opts.policy);
    messages.push({ role: 'assistant', content });
  } catch (e) {
    showError(e);
    messages.pop();
  } finally {
    abort = null;
    setBusy(false);
  }
}

async function autorun() {
  const out = $('output');
  out.hidden = false;
  await load(params.get('model'));
  if (!engine) {
    out.dataset.error = $('error').textContent;
    out.dataset.done = '1';
    return;
  }
  const prompt = params.get('prompt') ?? 'The capital of France is';
  try {
    const run = engine.generate(prompt, options({ onToken }));
    let text = '';
    for await (const piece of run) {
      text += piece;
      out.textContent = text;
    }
    const stats = await run.stats;
    showStats(stats);
    out.dataset.tokens = stats.tokens.join(',');
    out.dataset.stats = JSON.stringify(stats);
  } catch (e) {
    showError(e);
    out.dataset.error = `${e.name}: ${e.message}`;
  }
  out.dataset.done = '1';
}

$('load-url').addEventListener('click', () => {
  const url = $('model-url').value.trim();
  if (!url) return showError(new Error('enter a model URL, or pick files'));
  load(url);
});
$('model-file').addEventListener('change', (e) => {
  const files = [...e.target.files];
  if (files.length) load(files.length === 1 ? files[0] : files);
  e.target.value = '';
});
$('clear-cache').addEventListener('click', async () => {
  const had = await clearModelCache();
  $('status').textContent = had ? 'Cached models deleted.' : 'No cached models.';
});
$('chat-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const text = $('prompt').value.trim();
  if (!text || !engine) return;
  $('prompt').value = '';
  send(text);
});
$('prompt').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey) {
    e.preventDefault();
    $('chat-form').requestSubmit();
  }
});
$('stop').addEventListener('click', () => abort?.abort());
$('new-chat').addEventListener('click', async () => {
  newChat();
  await engine?.reset().catch(showError);
});

for (const [param, id] of [['policy', 'policy'], ['budget', 'budget'], ['rebuild_from', 'rebuild-from'], ['ranking', 'ranking'], ['rebuild', 'rebuild'], ['max_tokens', 'max-tokens'], ['temperature', 'temperature']]) {
  if (params.has(param)) $(id).value = params.get(param);
}
if (params.has('model')) $('model-url').value = params.get('model');
if (!navigator.gpu) showError(new Error('this browser does not offer WebGPU: use a current Chrome or Edge, or enable WebGPU in Firefox or Safari'));
setBusy(false);
drawChart();
if (params.get('autorun') === '1') autorun();
