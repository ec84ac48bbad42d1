// adore-webgpu: LLM inference on WebGPU with an adaptive fixed-size KV cache (ADORE).
//
//   import { createEngine } from 'adore-webgpu';
//   const engine = await createEngine(url, { onProgress: (p) => console.log(p) });
//   for await (const piece of engine.generate('The capital of France is', { maxTokens: 16 })) ...

import init, { loadModel } from './adore.js';
import { Engine, readSource } from './core.js';
import { EngineClosedError, WebGpuError, toError } from './errors.js';

export * from './errors.js';
export { Engine, Generation, clearModelCache } from './core.js';
export { GENERATE_DEFAULTS, POLICIES } from './options.js';
export { createWorkerEngine } from './worker-client.js';

let wasmReady = null;

function checkWebGpu() {
  if (typeof navigator === 'undefined' || !navigator.gpu) {
    throw new WebGpuError(
      'this browser does not offer WebGPU: use a current Chrome or Edge, or Firefox / Safari with WebGPU enabled, and serve the page over https or from localhost',
      'no_adapter',
    );
  }
}

/** The wasm engine over the raw module's calls, with JSON results. */
class PageBackend {
  #raw;
  constructor(raw) {
    this.#raw = raw;
  }
  start(prompt, options) {
    return this.#raw.start(prompt, options);
  }
  next() {
    return this.#raw.next();
  }
  cancel() {
    this.#raw.cancel();
  }
  reset() {
    this.#raw.reset();
  }
  chatPrompt(messages) {
    return this.#raw.chatPrompt(messages);
  }
  keyIndex() {
    return this.#raw.keyIndex() ?? null;
  }
  setKeyIndex(bytes) {
    this.#raw.setKeyIndex(bytes);
  }
  dispose() {
    this.#raw.free();
  }
}

/**
 * Loads the module (once) and a model from `files` (`[name, Uint8Array]` pairs) on this thread.
 * Returns the raw backend and the model's description.
 */
export async function loadBackend(files, onProgress) {
  checkWebGpu();
  wasmReady ??= init();
  try {
    await wasmReady;
  } catch (e) {
    wasmReady = null;
    throw new EngineClosedError(`the engine's WebAssembly module did not load: ${e?.message ?? e}`, 'closed');
  }
  const total = files.reduce((n, [, b]) => n + b.byteLength, 0);
  const progress = onProgress && ((phase, loadedBytes, totalBytes) => onProgress({ phase, loadedBytes, totalBytes }));
  let raw;
  try {
    raw = await loadModel(files, progress);
  } catch (e) {
    if (e instanceof WebAssembly.RuntimeError) {
      wasmReady = null; // a trapped instance is unusable: load a fresh one next time
      throw new EngineClosedError(`the engine stopped after an internal error (${e.message}); try again`);
    }
    throw toError(e);
  }
  onProgress?.({ phase: 'ready', loadedBytes: total, totalBytes: total });
  return { backend: new PageBackend(raw), info: JSON.parse(raw.info()) };
}

/**
 * Creates an engine on this thread. `source`: a URL, a File / Blob, an ArrayBuffer, or the files
 * of a Hugging Face directory (config.json, tokenizer.json, *.safetensors). Options:
 * `onProgress({ loadedBytes, totalBytes, phase })`, `signal`, and `cache` (keep downloads in the
 * browser's Cache API).
 */
export async function createEngine(source, { onProgress, signal, cache = false } = {}) {
  checkWebGpu();
  const files = await readSource(source, { onProgress, signal, cache });
  const { backend, info } = await loadBackend(files, onProgress);
  return new Engine(backend, info);
}
