// The demo page in headless Chromium (WebGPU on SwiftShader), driven by Playwright, against the
// native engine on the same machine:
//  - greedy output for each golden prompt equals the native `adore generate` token for token
//    (full attention, and the adore policy under a small budget);
//  - load progress events arrive in order (phases in order, bytes never going back);
//  - a corrupt model file shows a readable error in the page, and the page keeps working;
//  - a model with no shipped key index gets one fitted to a long prompt, as natively, which a
//    second engine can be given;
//  - every case of the malformed-input corpus (tests/corpus) gives its error kind through the
//    JS API, naming what it refuses where the case says, as natively (tests/corpus.rs);
//  - no panic message appears in any console output;
//  - a screenshot of the demo after a generation is written to web/test-output/demo.png.
// Timings (wasm size, load time, tokens/s in the browser and natively) go to
// web/test-output/browser-report.json and the console.
//
// Usage: node web/tests/browser.mjs [--adore target/release/adore] [--model FILE.gguf]
//        [--prompts PROMPTS.json]
// (the model defaults to the one `adore fetch` keeps). With --prompts (a prompts file of
// tests/llama-cpp), only the greedy outputs of those prompts are compared, under full
// attention: another model's check. Needs web/build.sh to have run, and /usr/bin/chromium
// (apt-get install chromium).

import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../..');
const outDir = join(repo, 'web/test-output');
const TOKENS = 8;
const PHASES = ['download', 'cache', 'read', 'parse', 'upload', 'ready'];

function arg(name, fallback) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : fallback;
}

function fail(message) {
  console.error(`browser test: FAIL: ${message}`);
  process.exitCode = 1;
  throw new Error(message);
}

const adore = resolve(arg('--adore', join(repo, 'target/release/adore')));
if (!existsSync(adore)) fail(`${adore} is missing: build it with cargo build --release`);
if (!existsSync(join(repo, 'web/pkg/adore_bg.wasm'))) fail('web/pkg is missing: run web/build.sh');
if (!existsSync('/usr/bin/chromium')) fail('/usr/bin/chromium is missing: apt-get install chromium');
const model = resolve(arg('--model', execFileSync(adore, ['fetch'], { encoding: 'utf8' }).trim()));
const promptsFile = arg('--prompts', null);
mkdirSync(outDir, { recursive: true });

// Cases: every golden prompt under full attention, and one under adore with a budget smaller
// than the prompt (so that tokens are released in the browser too); or the prompts given.
let cases;
if (promptsFile) {
  const prompts = JSON.parse(readFileSync(promptsFile, 'utf8'));
  cases = prompts.map((p) => ({ prompt: typeof p === 'string' ? p : p.text, policy: 'full', budget: 256 }));
} else {
  const golden = JSON.parse(readFileSync(join(repo, '../shared/golden/smollm2-135m-instruct.json'), 'utf8'));
  cases = golden.cases.map((c) => ({ prompt: c.prompt, policy: 'full', budget: 256 }));
  cases.push({ prompt: golden.cases.at(-1).prompt, policy: 'adore', budget: 24 });
  cases.push({ prompt: golden.cases.at(-1).prompt, policy: 'adore', budget: 24, layersPerChoice: 2 });
}

function native(c) {
  const out = execFileSync(
    adore,
    ['generate', '--model', model, '--prompt', c.prompt, '--max-tokens', String(TOKENS), '--policy', c.policy, '--budget', String(c.budget), '--json',
      ...(c.layersPerChoice ? ['--layers-per-choice', String(c.layersPerChoice)] : [])],
    { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] },
  );
  return JSON.parse(out);
}

function checkProgress(events, label) {
  if (events.length === 0) fail(`${label}: no progress events`);
  let phase = -1;
  let loaded = 0;
  for (const e of events) {
    const p = PHASES.indexOf(e.phase);
    if (p < 0) fail(`${label}: unknown progress phase ${e.phase}`);
    if (p < phase) fail(`${label}: progress went back from ${PHASES[phase]} to ${e.phase}`);
    if (p > phase) loaded = 0;
    if (e.loadedBytes < loaded) fail(`${label}: ${e.phase} bytes went back (${loaded} -> ${e.loadedBytes})`);
    if (e.loadedBytes > e.totalBytes) fail(`${label}: ${e.phase} loaded ${e.loadedBytes} of ${e.totalBytes}`);
    phase = p;
    loaded = e.loadedBytes;
  }
  const last = events.at(-1);
  if (last.phase !== 'ready' || last.loadedBytes !== last.totalBytes) fail(`${label}: the last progress event is ${JSON.stringify(last)}`);
  const seen = [...new Set(events.map((e) => e.phase))];
  if (!seen.includes('parse') || !seen.includes('upload')) fail(`${label}: phases ${seen} lack parse or upload`);
  return seen;
}

// Native first: blocking the event loop while the browser runs can stall it.
const expectations = cases.map(native);
const server = spawn(adore, ['serve', '--port', '0', '--model', model, '--web', join(repo, 'web')], { stdio: ['ignore', 'pipe', 'inherit'] });
const base = await new Promise((ok, bad) => {
  server.stdout.once('data', (d) => ok(String(d).trim().split('\n')[0]));
  server.once('exit', (code) => bad(new Error(`adore serve exited with ${code}`)));
});
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--no-sandbox', '--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader', '--use-webgpu-adapter=swiftshader', '--enable-unsafe-swiftshader'],
});
const consoleLines = [];
const report = { wasmBytes: statSync(join(repo, 'web/pkg/adore_bg.wasm')).size, tokens: TOKENS, cases: [] };

async function newPage() {
  const page = await browser.newPage({ viewport: { width: 1100, height: 1100 } });
  page.on('console', (m) => consoleLines.push(m.text()));
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`));
  page.on('worker', (w) => w.on('console', (m) => consoleLines.push(m.text())));
  page.pending = new Set();
  page.on('request', (r) => page.pending.add(r.url()));
  page.on('requestfinished', (r) => page.pending.delete(r.url()));
  page.on('requestfailed', (r) => page.pending.delete(r.url()));
  return page;
}

// Opens `url` in a fresh page. A navigation that stalls (seen rarely with headless Chromium
// after several WebGPU pages) is reported with its pending requests and tried once more.
async function open(url) {
  for (let attempt = 1; ; attempt++) {
    const page = await newPage();
    try {
      await page.goto(url, { timeout: 60_000 });
      return page;
    } catch (e) {
      console.error(`browser test: navigation to ${url} stalled (attempt ${attempt}); pending: ${[...page.pending].join(', ') || 'none'}`);
      await page.close().catch(() => {});
      if (attempt === 2) throw e;
    }
  }
}

try {
  // 0. Every kernel compiles under the browser's WGSL compiler (Tint's uniformity analysis
  // is stricter than naga's), not only those the cases below reach.
  if (!promptsFile) {
    const page = await open(base);
    const errors = await page.evaluate(async () => {
      const glue = await import('./pkg/adore.js');
      await glue.default();
      const adapter = await navigator.gpu.requestAdapter();
      const device = await adapter.requestDevice({ requiredFeatures: [...adapter.features].filter((f) => f === 'shader-f16' || f === 'subgroups') });
      const out = [];
      for (const { name, source } of JSON.parse(glue.shaderSources())) {
        const module = device.createShaderModule({ code: source, label: name });
        const info = await module.getCompilationInfo();
        for (const m of info.messages.filter((m) => m.type === 'error')) out.push(`${name}:${m.lineNum}: ${m.message}`);
      }
      return out;
    });
    if (errors.length) fail(`kernels the browser rejects:\n${errors.join('\n')}`);
    console.log('browser test: ok every kernel compiles in the browser');
    await page.close();
  }

  // 1. Golden prompts: page output against native output.
  for (const [i, c] of cases.entries()) {
    const expected = expectations[i];
    const q = new URLSearchParams({ prompt: c.prompt, max_tokens: String(TOKENS), policy: c.policy, budget: String(c.budget), autorun: '1' });
    if (c.layersPerChoice) q.set('layers_per_choice', String(c.layersPerChoice));
    const t0 = Date.now();
    const page = await open(`${base}&${q}`);
    await page.waitForSelector('#output[data-done="1"]', { state: 'attached', timeout: 300_000 });
    const got = await page.$eval('#output', (e) => ({ text: e.textContent, tokens: e.dataset.tokens, error: e.dataset.error, stats: e.dataset.stats }));
    const label = `${c.policy}/${c.budget}${c.layersPerChoice ? `, ${c.layersPerChoice} layers per choice` : ''} ${JSON.stringify(c.prompt.slice(0, 30))}`;
    if (got.error) fail(`${label}: the page reported ${got.error}`);
    const tokens = got.tokens.split(',').map(Number);
    if (JSON.stringify(tokens) !== JSON.stringify(expected.tokens)) {
      fail(`${label}: browser tokens ${tokens} differ from native ${expected.tokens}`);
    }
    if (got.text !== expected.text) fail(`${label}: browser text ${JSON.stringify(got.text)} differs from native ${JSON.stringify(expected.text)}`);
    const phases = checkProgress(await page.evaluate(() => window.adoreProgress), label);
    const stats = JSON.parse(got.stats);
    const loadSeconds = Number(await page.$eval('#status', (e) => e.dataset.loadSeconds));
    // Both test models ship a key index, so the page keeps adore where it is asked for.
    const keyIndex = await page.$eval('#status', (e) => e.dataset.keyIndex);
    if (keyIndex !== 'true') fail(`${label}: the engine reports no key index for a model that ships one (${keyIndex})`);
    const row = {
      policy: c.policy,
      budget: c.budget,
      prompt: c.prompt.slice(0, 40),
      tokens,
      phases,
      loadSeconds,
      browserDecodeTokensPerS: stats.decodeTokensPerS,
      browserPrefillTokensPerS: stats.prefillTokensPerS,
      nativeDecodeTokensPerS: expected.stats.generated_tokens > 1 ? (expected.stats.generated_tokens - 1) / expected.stats.decode_seconds : null,
      nativePrefillTokensPerS: expected.stats.prompt_tokens / expected.stats.prefill_seconds,
      wallSeconds: (Date.now() - t0) / 1000,
    };
    report.cases.push(row);
    console.log(`browser test: ok ${label}: ${JSON.stringify(got.text)} (${phases.join(' > ')}; load ${loadSeconds.toFixed(1)} s; decode ${row.browserDecodeTokensPerS.toFixed(2)} tokens/s browser, ${row.nativeDecodeTokensPerS?.toFixed(2)} native)`);
    await page.close();
  }

  if (!promptsFile) await pageChecks();

  // 4. No panic anywhere.
  const panics = consoleLines.filter((l) => /panicked|internal error|RuntimeError|unreachable/i.test(l));
  if (panics.length) fail(`panic messages in the console: ${panics.join(' | ')}`);
  const reportFile = promptsFile ? `browser-report-${model.split('/').pop().replace(/\.gguf$/, '')}.json` : 'browser-report.json';
  writeFileSync(join(outDir, reportFile), JSON.stringify(report, null, 2));
  console.log(`browser test: all passed; wasm ${(report.wasmBytes / 1e6).toFixed(2)} MB; report web/test-output/${reportFile}`);
} catch (e) {
  process.exitCode = 1;
  if (!String(e.message).startsWith('browser test')) console.error(e);
} finally {
  await browser.close();
  server.kill();
}

// The default run's page checks: a corrupt file, the corpus through the JS API.
async function pageChecks() {
  // 2. A corrupt model file: a readable error in the page, and the page keeps working.
  const corrupt = join(outDir, 'corrupt.gguf');
  writeFileSync(corrupt, readFileSync(model).subarray(0, 2 << 20));
  const page = await open(base);
  await page.setInputFiles('#model-file', corrupt);
  await page.waitForSelector('#error:not([hidden])', { timeout: 120_000 });
  const error = await page.$eval('#error', (e) => e.textContent);
  if (!/ModelFormatError: .*corrupt\.gguf.*truncated/.test(error)) fail(`the corrupt file's error reads ${JSON.stringify(error)}`);
  console.log(`browser test: ok corrupt file: ${error}`);
  await page.click('#load-url'); // the model URL from ?model=
  await page.waitForSelector('#prompt:not([disabled])', { timeout: 120_000 });
  if (!(await page.$eval('#error', (e) => e.hidden))) fail('the error stayed after a good model loaded');
  await page.fill('#max-tokens', '4');
  await page.fill('#budget', '24');
  await page.fill('#prompt', 'What is the capital of France?');
  await page.click('#send');
  await page.waitForFunction(() => /tokens\/s/.test(document.getElementById('speed').textContent), null, { timeout: 300_000 });
  const reply = await page.$eval('.msg.assistant', (e) => e.textContent);
  if (!reply.trim()) fail('the chat reply after the corrupt file is empty');
  const cells = await page.$$eval('#transcript .tok', (s) => s.length);
  if (cells === 0) fail('the transcript shows no tokens');
  await page.screenshot({ path: join(outDir, 'demo.png'), fullPage: true });
  console.log(`browser test: ok chat after the corrupt file: ${JSON.stringify(reply)}; screenshot web/test-output/demo.png`);
  await page.close();

  // 3. The malformed-input corpus through the JS API: each case's error kind, as natively.
  {
    const corpusDir = join(repo, 'tests/corpus');
    const entries = JSON.parse(readFileSync(join(corpusDir, 'expected.json'), 'utf8'));
    const payload = entries.map((e) => ({
      name: e.name,
      kind: e.kind,
      says: e.says,
      files: e.files.map((f) => ({ name: f, base64: readFileSync(join(corpusDir, f)).toString('base64') })),
    }));
    const page = await open(base);
    const results = await page.evaluate(async (cases) => {
      const { createEngine } = await import('./pkg/index.js');
      const decode = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
      const out = [];
      for (const c of cases) {
        const files = c.files.map((f) => ({ name: f.name, data: decode(f.base64) }));
        try {
          const engine = await createEngine(files.length === 1 ? files[0] : files);
          engine.dispose();
          out.push({ name: c.name, expected: c.kind, got: 'accepted' });
        } catch (e) {
          out.push({ name: c.name, expected: c.kind, says: c.says, got: e.kind, error: `${e.name}: ${e.message}` });
        }
      }
      return out;
    }, payload);
    const wrong = results.filter((r) => r.got !== r.expected);
    if (wrong.length) fail(`corpus cases with the wrong error in the browser:\n${wrong.map((r) => `${r.name}: expected ${r.expected}, got ${r.got} (${r.error})`).join('\n')}`);
    const vague = results.filter((r) => r.says && !r.error.includes(r.says));
    if (vague.length) fail(`corpus errors that do not name what they refuse:\n${vague.map((r) => `${r.name}: ${JSON.stringify(r.says)} not in ${r.error}`).join('\n')}`);
    const unnamed = results.filter((r) => !/^(ModelFormatError|DownloadError|ArgumentError): /.test(r.error));
    if (unnamed.length) fail(`corpus errors without a named class: ${unnamed.map((r) => r.error).join(' | ')}`);
    console.log(`browser test: ok ${results.length} corpus cases give their error kinds through the JS API`);
    await page.close();
  }

  // 4. A model with no shipped key index (the default model with another context length, so
  // another fingerprint): adore refuses a short prompt naming the key index, then fits one to
  // a long prompt and gives the native engine's tokens (which fits its own to the same prompt).
  {
    const bytes = Buffer.from(readFileSync(model));
    const key = Buffer.from('llama.context_length');
    const at = bytes.indexOf(key);
    if (at < 0 || bytes.readUInt32LE(at + key.length) !== 4) fail(`${model}: no u32 llama.context_length to change`);
    bytes.writeUInt32LE(bytes.readUInt32LE(at + key.length + 4) / 2, at + key.length + 4);
    writeFileSync(join(outDir, 'no-index.gguf'), bytes);
    const prompt = readFileSync(join(repo, 'ARCHITECTURE.md'), 'utf8').slice(0, 1500);
    const cache = join(outDir, 'no-index-cache');
    rmSync(cache, { recursive: true, force: true });
    const args = ['generate', '--model', join(outDir, 'no-index.gguf'), '--prompt', prompt, '--max-tokens', String(TOKENS), '--policy', 'adore', '--budget', '64', '--json'];
    const expected = JSON.parse(execFileSync(adore, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ADORE_CACHE: cache } }));
    const page = await open(base);
    const got = await page.evaluate(async (prompt) => {
      const { createEngine } = await import('./pkg/index.js');
      const engine = await createEngine('/test-output/no-index.gguf');
      const out = { info: engine.info };
      const options = { maxTokens: 8, policy: 'adore', budget: 64 };
      try {
        for await (const _ of engine.generate('The capital of France is', options));
        out.short = 'accepted';
      } catch (e) {
        out.short = `${e.name}: ${e.message}`;
      }
      const run = engine.generate(prompt, options);
      for await (const _ of run);
      out.tokens = (await run.stats).tokens;
      const again = engine.generate('The capital of France is', options);
      for await (const _ of again);
      out.again = (await again.stats).tokens;
      // The fitted index, kept and given to a second engine: no fit, the same tokens.
      const saved = await engine.keyIndex();
      engine.dispose();
      const second = await createEngine('/test-output/no-index.gguf');
      out.before = await second.keyIndex();
      try {
        await second.setKeyIndex(saved.slice(0, 100));
        out.garbage = 'accepted';
      } catch (e) {
        out.garbage = `${e.name}: ${e.message}`;
      }
      await second.setKeyIndex(saved);
      const given = second.generate(prompt, options);
      for await (const _ of given);
      out.given = (await given.stats).tokens;
      second.dispose();
      return out;
    }, prompt);
    if (got.info.keyIndex !== false || got.info.keyIndexMinTokens !== 128) fail(`the derived model's info: ${JSON.stringify(got.info)}`);
    if (!/^ArgumentError: .*key index.*128 tokens/.test(got.short)) fail(`adore on a short prompt without a key index: ${got.short}`);
    if (JSON.stringify(got.tokens) !== JSON.stringify(expected.tokens)) fail(`adore with a fitted key index: browser tokens ${got.tokens} differ from native ${expected.tokens}`);
    if (!got.again.length) fail('adore on a short prompt after the fit gave no tokens');
    if (got.before !== null) fail(`a fresh engine of a model with no shipped index has a key index: ${got.before}`);
    if (!/^(ModelFormatError|ArgumentError): .*key index/.test(got.garbage)) fail(`a truncated key index: ${got.garbage}`);
    if (JSON.stringify(got.given) !== JSON.stringify(got.tokens)) fail(`the kept index given to a second engine: ${got.given} against ${got.tokens}`);
    rmSync(cache, { recursive: true, force: true });
    await page.close();
    // The page: a short first message with adore is answered with sink, saying why.
    const demo = await open(`${base.split('?')[0]}?model=/test-output/no-index.gguf`);
    await demo.click('#load-url');
    await demo.waitForSelector('#prompt:not([disabled])', { timeout: 120_000 });
    await demo.fill('#max-tokens', '2');
    await demo.fill('#prompt', 'Hello');
    await demo.click('#send');
    await demo.waitForFunction(() => /tokens\/s/.test(document.getElementById('speed').textContent), null, { timeout: 300_000 });
    const speed = await demo.$eval('#speed', (e) => e.textContent);
    if (!/policy sink: adore fits a key index/.test(speed) || !(await demo.$eval('#error', (e) => e.hidden))) fail(`the page's short first message without a key index: ${speed}`);
    await demo.close();
    console.log(`browser test: ok a key index fitted to a ${expected.stats.prompt_tokens}-token prompt gives native's tokens; a short prompt before it is refused (${got.short}); kept and given to a second engine, the same tokens; the page answers a short prompt with sink`);
  }
}
