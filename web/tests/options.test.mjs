// Argument checks of the adore-webgpu wrapper, in Node (no browser, no wasm needed).
import assert from 'node:assert/strict';
import { test } from 'node:test';

import { ArgumentError, ModelFormatError, PromptError, WebGpuError, errorFromParts, toError } from '../src/errors.js';
import { GENERATE_DEFAULTS, checkGenerateOptions, checkMessages, checkPrompt, checkSource } from '../src/options.js';

test('defaults fill in, and local options stay local', () => {
  const onToken = () => {};
  const signal = new AbortController().signal;
  const { engine, signal: s, onToken: f } = checkGenerateOptions({ maxTokens: 8, onToken, signal });
  assert.deepEqual(engine, { ...GENERATE_DEFAULTS, maxTokens: 8 });
  assert.equal(s, signal);
  assert.equal(f, onToken);
  assert.deepEqual(checkGenerateOptions(undefined).engine, GENERATE_DEFAULTS);
  assert.doesNotThrow(() => JSON.stringify(checkGenerateOptions({ signal, onToken }).engine));
});

test('nonsense options are ArgumentErrors that name the option', () => {
  const bad = [
    [{ maxTokens: 0 }, /maxTokens/],
    [{ maxTokens: 1.5 }, /maxTokens/],
    [{ maxTokens: '8' }, /maxTokens/],
    [{ temperature: -1 }, /temperature/],
    [{ temperature: NaN }, /temperature/],
    [{ temperature: Infinity }, /temperature/],
    [{ topK: -1 }, /topK/],
    [{ topP: 0 }, /topP/],
    [{ topP: 1.01 }, /topP/],
    [{ seed: -1 }, /seed/],
    [{ seed: 2 ** 60 }, /seed/],
    [{ policy: 'lru' }, /policy must be one of full, window/],
    [{ budget: 0 }, /budget/],
    [{ recent: -1 }, /recent/],
    [{ recent: 2.5 }, /recent/],
    [{ rebuild: 2, policy: 'h2o' }, /adore policy only/],
    [{ rebuild: 300, policy: 'adore', rebuildFrom: 'recompute', budget: 256 }, /cannot exceed the budget/],
    [{ rebuild: 2, policy: 'adore' }, /rebuildFrom: 'recompute'/],
    [{ policy: 'adore', rebuildFrom: 'disk' }, /rebuildFrom must be store or recompute/],
    [{ policy: 'adore', ranking: 'guess' }, /ranking must be keys or controller/],
    [{ policy: 'adore', layersPerChoice: 0 }, /layersPerChoice/],
    [{ policy: 'adore', layersPerChoice: 1.5 }, /layersPerChoice/],
    [{ policy: 'sink', layersPerChoice: 2 }, /adore ranked by keys from its store/],
    [{ policy: 'adore', ranking: 'controller', layersPerChoice: 2 }, /adore ranked by keys from its store/],
    [{ kvCache: 'f8' }, /kvCache must be f16 or f32/],
    [{ context: 1 }, /context/],
    [{ trace: 'yes' }, /trace/],
    [{ signal: 'stop' }, /AbortSignal/],
    [{ onToken: 3 }, /onToken/],
    [{ max_tokens: 8 }, /unknown option "max_tokens"/],
    [[], /options must be an object/],
    ['fast', /options must be an object/],
  ];
  for (const [options, message] of bad) {
    assert.throws(() => checkGenerateOptions(options), (e) => e instanceof ArgumentError && e.kind === 'invalid_argument' && message.test(e.message), JSON.stringify(options));
  }
  assert.doesNotThrow(() => checkGenerateOptions({ policy: 'adore', budget: 64, rebuildFrom: 'recompute', ranking: 'controller', rebuild: 4, kvCache: 'f16', context: 512, temperature: 0.7, topK: 40, topP: 0.9, seed: 7 }));
  assert.equal(checkGenerateOptions({ policy: 'h2o', recent: 8 }).engine.recent, 8);
  assert.equal(checkGenerateOptions({ policy: 'h2o', recent: null }).engine.recent, null);
});

test('prompts and messages', () => {
  assert.equal(checkPrompt('hi'), 'hi');
  assert.throws(() => checkPrompt(''), ArgumentError);
  assert.throws(() => checkPrompt(42), /must be a string/);
  assert.deepEqual(checkMessages([{ role: 'user', content: 'hi', extra: 1 }]), [{ role: 'user', content: 'hi' }]);
  assert.throws(() => checkMessages([]), /non-empty array/);
  assert.throws(() => checkMessages('hi'), /non-empty array/);
  assert.throws(() => checkMessages([{ role: 'user' }]), /messages\[0\]/);
  assert.throws(() => checkMessages([{ role: 'user', content: 'a' }, null]), /messages\[1\]/);
  assert.throws(() => checkMessages([{ role: '', content: 'a' }]), /role is empty/);
});

test('model sources', () => {
  assert.deepEqual(checkSource('https://x/m.gguf'), { type: 'url', url: 'https://x/m.gguf' });
  assert.deepEqual(checkSource(new URL('https://x/m.gguf')), { type: 'url', url: 'https://x/m.gguf' });
  const buf = new ArrayBuffer(4);
  assert.deepEqual(checkSource(buf), { type: 'files', files: [{ name: 'model-0.gguf', data: buf }] });
  const blob = new Blob(['GGUF']);
  assert.equal(checkSource(blob).files[0].data, blob);
  const named = [{ name: 'config.json', data: new Uint8Array(2) }, new File(['{}'], 'tokenizer.json')];
  const s = checkSource(named);
  assert.deepEqual(s.files.map((f) => f.name), ['config.json', 'tokenizer.json']);
  assert.throws(() => checkSource(''), /URL is empty/);
  assert.throws(() => checkSource([]), /no model files/);
  assert.throws(() => checkSource(42), (e) => e instanceof ArgumentError && /model source 0/.test(e.message));
  assert.throws(() => checkSource([buf, { name: 'x' }]), /model source 1/);
  assert.throws(() => checkSource(null), ArgumentError);
});

test('engine errors become named classes by kind', () => {
  assert.ok(errorFromParts('truncated', 'm') instanceof ModelFormatError);
  assert.ok(errorFromParts('no_adapter', 'm') instanceof WebGpuError);
  assert.ok(errorFromParts('device_lost', 'm') instanceof WebGpuError);
  assert.ok(errorFromParts('prompt_too_long', 'm') instanceof PromptError);
  const e = toError({ kind: 'bad_magic', message: 'x.gguf: not a GGUF file' });
  assert.equal(e.name, 'ModelFormatError');
  assert.equal(e.kind, 'bad_magic');
  assert.equal(e.message, 'x.gguf: not a GGUF file');
  assert.ok(e instanceof Error);
  assert.equal(toError('boom').name, 'AdoreError');
  const plain = new TypeError('t');
  assert.equal(toError(plain), plain);
});
