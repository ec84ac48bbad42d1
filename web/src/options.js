// Argument checks of the public API: pure functions, so that they can be tested without a
// browser. Each failure is an ArgumentError that names the option and what is allowed.

import { ArgumentError } from './errors.js';

export const POLICIES = ['full', 'window', 'sink', 'h2o', 'tova', 'adore', 'quest', 'oracle'];

export const GENERATE_DEFAULTS = Object.freeze({
  maxTokens: 128,
  temperature: 0,
  topK: 0,
  topP: 1,
  seed: 0,
  policy: 'full',
  budget: 256,
  sinks: 4,
  recent: null,
  rebuild: 0,
  rebuildFrom: 'store',
  ranking: 'keys',
  layersPerChoice: 1,
  kvCache: 'f32',
  context: null,
  trace: false,
});

const LOCAL = ['signal', 'onToken'];

function integer(name, v, min, max) {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new ArgumentError(`${name} must be an integer from ${min} to ${max}, got ${describe(v)}`);
  }
  return v;
}

function describe(v) {
  if (typeof v === 'string') return JSON.stringify(v);
  if (v === null) return 'null';
  if (typeof v === 'object') return Array.isArray(v) ? 'an array' : 'an object';
  return String(v);
}

/**
 * Checks generation options and fills in defaults. Returns `{ engine, signal, onToken }`:
 * `engine` is what the engine receives (JSON-safe), the rest stays on the caller's side.
 */
export function checkGenerateOptions(options) {
  if (options === undefined || options === null) options = {};
  if (typeof options !== 'object' || Array.isArray(options)) {
    throw new ArgumentError(`options must be an object, got ${describe(options)}`);
  }
  const known = [...Object.keys(GENERATE_DEFAULTS), ...LOCAL];
  for (const key of Object.keys(options)) {
    if (!known.includes(key)) {
      throw new ArgumentError(`unknown option ${JSON.stringify(key)} (known: ${known.join(', ')})`);
    }
  }
  const o = { ...GENERATE_DEFAULTS };
  for (const [k, v] of Object.entries(options)) {
    if (v !== undefined && !LOCAL.includes(k)) o[k] = v;
  }
  integer('maxTokens', o.maxTokens, 1, 1 << 20);
  if (typeof o.temperature !== 'number' || !Number.isFinite(o.temperature) || o.temperature < 0) {
    throw new ArgumentError(`temperature must be a finite number >= 0 (0 = greedy), got ${describe(o.temperature)}`);
  }
  integer('topK', o.topK, 0, 1 << 20);
  if (typeof o.topP !== 'number' || !(o.topP > 0 && o.topP <= 1)) {
    throw new ArgumentError(`topP must be a number in (0, 1], got ${describe(o.topP)}`);
  }
  integer('seed', o.seed, 0, Number.MAX_SAFE_INTEGER);
  if (!POLICIES.includes(o.policy)) {
    throw new ArgumentError(`policy must be one of ${POLICIES.join(', ')}, got ${describe(o.policy)}`);
  }
  integer('budget', o.budget, 1, 1 << 20);
  integer('sinks', o.sinks, 0, 1 << 20);
  if (o.recent !== null) integer('recent', o.recent, 0, 1 << 20);
  integer('rebuild', o.rebuild, 0, 1 << 20);
  if (o.rebuild > 0 && o.policy !== 'adore') {
    throw new ArgumentError(`rebuild applies to the adore policy only, not ${o.policy}`);
  }
  if (!['store', 'recompute'].includes(o.rebuildFrom)) {
    throw new ArgumentError(`rebuildFrom must be store or recompute, got ${describe(o.rebuildFrom)}`);
  }
  if (!['keys', 'controller'].includes(o.ranking)) {
    throw new ArgumentError(`ranking must be keys or controller, got ${describe(o.ranking)}`);
  }
  integer('layersPerChoice', o.layersPerChoice, 1, 1 << 10);
  if (o.layersPerChoice > 1 && (o.policy !== 'adore' || o.ranking !== 'keys' || o.rebuildFrom !== 'store')) {
    throw new ArgumentError(`layersPerChoice above 1 applies to adore ranked by keys from its store (policy: 'adore', ranking: 'keys', rebuildFrom: 'store')`);
  }
  if (!['f16', 'f32'].includes(o.kvCache)) {
    throw new ArgumentError(`kvCache must be f16 or f32, got ${describe(o.kvCache)}`);
  }
  if (o.rebuild > 0 && o.rebuildFrom !== 'recompute') {
    throw new ArgumentError(`rebuild applies to adore recomputing released tokens (rebuildFrom: 'recompute'); from its store adore gets back every token it chooses`);
  }
  if (o.rebuild > o.budget) {
    throw new ArgumentError(`rebuild (${o.rebuild}) cannot exceed the budget (${o.budget})`);
  }
  if (o.context !== null) integer('context', o.context, 2, 1 << 20);
  if (typeof o.trace !== 'boolean') throw new ArgumentError(`trace must be true or false, got ${describe(o.trace)}`);
  const { signal, onToken } = options;
  if (signal !== undefined && signal !== null && !(typeof signal === 'object' && typeof signal.aborted === 'boolean')) {
    throw new ArgumentError('signal must be an AbortSignal');
  }
  if (onToken !== undefined && onToken !== null && typeof onToken !== 'function') {
    throw new ArgumentError('onToken must be a function');
  }
  return { engine: o, signal: signal ?? null, onToken: onToken ?? null };
}

/** Checks a chat: a non-empty array of `{ role, content }` strings. */
export function checkMessages(messages) {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw new ArgumentError('messages must be a non-empty array of { role, content }');
  }
  messages.forEach((m, i) => {
    if (!m || typeof m !== 'object' || typeof m.role !== 'string' || typeof m.content !== 'string') {
      throw new ArgumentError(`messages[${i}] must be an object with string role and content`);
    }
    if (!m.role) throw new ArgumentError(`messages[${i}].role is empty`);
  });
  return messages.map(({ role, content }) => ({ role, content }));
}

/** Checks a prompt: a non-empty string. */
export function checkPrompt(prompt) {
  if (typeof prompt !== 'string') throw new ArgumentError(`the prompt must be a string, got ${describe(prompt)}`);
  if (prompt.length === 0) throw new ArgumentError('the prompt is empty: give at least one character of text');
  return prompt;
}

function isBlob(v) {
  return typeof Blob !== 'undefined' && v instanceof Blob;
}

/**
 * Classifies a model source: `{ type: 'url', url }`, `{ type: 'files', files: [{ name, data }] }`
 * where data is a Blob, ArrayBuffer or typed array. A single unnamed buffer is taken as GGUF.
 */
export function checkSource(source) {
  if (typeof source === 'string' || (typeof URL !== 'undefined' && source instanceof URL)) {
    const url = String(source);
    if (!url) throw new ArgumentError('the model URL is empty');
    return { type: 'url', url };
  }
  const one = (v, i) => {
    if (isBlob(v)) return { name: v.name || `model-${i}.gguf`, data: v };
    if (v instanceof ArrayBuffer || ArrayBuffer.isView(v)) return { name: `model-${i}.gguf`, data: v };
    if (v && typeof v === 'object' && typeof v.name === 'string' && (isBlob(v.data) || v.data instanceof ArrayBuffer || ArrayBuffer.isView(v.data))) {
      return { name: v.name, data: v.data };
    }
    throw new ArgumentError(
      `model source ${i} must be a URL, a File or Blob, an ArrayBuffer, or { name, data }; got ${describe(v)}`,
    );
  };
  if (source && typeof source === 'object' && typeof source.length === 'number' && !ArrayBuffer.isView(source)) {
    const list = Array.from(source);
    if (list.length === 0) throw new ArgumentError('no model files given');
    return { type: 'files', files: list.map(one) };
  }
  return { type: 'files', files: [one(source, 0)] };
}
