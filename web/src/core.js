// The engine API shared by the in-page engine and the Web Worker variant: both drive a
// "backend" (the wasm engine itself, or a proxy to it in a worker) through the same calls.

import { ArgumentError, DownloadError, EngineClosedError, toError } from './errors.js';
import { checkGenerateOptions, checkMessages, checkPrompt, checkSource } from './options.js';

export const CACHE_NAME = 'adore-models-v1';

function report(onProgress, phase, loadedBytes, totalBytes) {
  if (!onProgress) return;
  try {
    onProgress({ phase, loadedBytes, totalBytes });
  } catch (e) {
    console.error('adore: the onProgress callback threw', e);
  }
}

async function readStream(stream, total, phase, onProgress, signal) {
  const reader = stream.getReader();
  const chunks = [];
  let loaded = 0;
  report(onProgress, phase, 0, total);
  for (;;) {
    if (signal?.aborted) {
      reader.cancel().catch(() => {});
      throw signal.reason ?? new DOMException('the load was aborted', 'AbortError');
    }
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    loaded += value.byteLength;
    report(onProgress, phase, loaded, Math.max(total, loaded));
  }
  const bytes = new Uint8Array(loaded);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.byteLength;
  }
  return bytes;
}

async function openCache() {
  if (typeof caches === 'undefined') return null;
  try {
    return await caches.open(CACHE_NAME);
  } catch {
    return null; // e.g. an insecure context: work without the cache
  }
}

/** Deletes the model files the engine cached in this browser; resolves to whether any were. */
export async function clearModelCache() {
  if (typeof caches === 'undefined') return false;
  return caches.delete(CACHE_NAME);
}

async function fetchModel(url, onProgress, signal, useCache) {
  const cache = useCache ? await openCache() : null;
  const cached = cache ? await cache.match(url) : undefined;
  let response = cached;
  if (!response) {
    try {
      response = await fetch(url, { signal });
    } catch (e) {
      if (e?.name === 'AbortError') throw e;
      throw new DownloadError(`cannot fetch ${url}: ${e?.message ?? e} (check the address and that the server allows this page to read it)`);
    }
    if (!response.ok) {
      throw new DownloadError(`cannot fetch ${url}: HTTP ${response.status} ${response.statusText}`.trim());
    }
  }
  const total = Number(response.headers.get('content-length')) || 0;
  const phase = cached ? 'cache' : 'download';
  const bytes = response.body
    ? await readStream(response.body, total, phase, onProgress, signal)
    : new Uint8Array(await response.arrayBuffer());
  if (cache && !cached) {
    try {
      await cache.put(url, new Response(bytes, { headers: { 'content-type': 'application/octet-stream', 'content-length': String(bytes.byteLength) } }));
    } catch (e) {
      console.warn(`adore: could not cache ${url} (${e?.message ?? e}); it will be downloaded again next time`);
    }
  }
  const name = new URL(url, globalThis.location?.href ?? 'http://localhost/').pathname.split('/').pop() || 'model.gguf';
  return [[name, bytes]];
}

/**
 * The model's files as `[name, Uint8Array]` pairs, with progress in bytes (phase `download`,
 * `cache` or `read`).
 */
export async function readSource(source, { onProgress, signal, cache = false } = {}) {
  const s = checkSource(source);
  if (s.type === 'url') return fetchModel(s.url, onProgress, signal, cache);
  const total = s.files.reduce((n, f) => n + (f.data.size ?? f.data.byteLength), 0);
  const out = [];
  let before = 0;
  for (const f of s.files) {
    let bytes;
    if (typeof Blob !== 'undefined' && f.data instanceof Blob) {
      const progress = onProgress && ((p) => report(onProgress, 'read', before + p.loadedBytes, total));
      bytes = await readStream(f.data.stream(), f.data.size, 'read', progress, signal);
    } else if (f.data instanceof ArrayBuffer) {
      bytes = new Uint8Array(f.data);
    } else {
      bytes = new Uint8Array(f.data.buffer, f.data.byteOffset, f.data.byteLength);
    }
    before += bytes.byteLength;
    report(onProgress, 'read', before, total);
    out.push([f.name, bytes]);
  }
  return out;
}

/** A generation in progress: an async iterable of text pieces; `stats` resolves at the end. */
export class Generation {
  #run;
  #used = false;
  #resolve;
  #reject;
  constructor(run) {
    this.#run = run;
    this.stats = new Promise((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.stats.catch(() => {}); // the iterator reports the error too
  }
  async *[Symbol.asyncIterator]() {
    if (this.#used) throw new ArgumentError('a generation can be iterated once');
    this.#used = true;
    try {
      for await (const event of this.#run()) {
        if (event.done) {
          this.#resolve(event.stats);
          return;
        }
        yield event.token.text;
      }
    } catch (e) {
      this.#reject(e);
      throw e;
    }
  }
  /** Collects the whole text. */
  async text() {
    let s = '';
    for await (const piece of this) s += piece;
    return s;
  }
}

/** The public engine over a backend (see the file comment). */
export class Engine {
  #backend;
  #busy = false;
  #closed = null;
  constructor(backend, info) {
    this.#backend = backend;
    /** The model's and device's description. */
    this.info = info;
  }

  #check() {
    if (this.#closed) throw new EngineClosedError(this.#closed);
    if (this.#busy) throw new ArgumentError('a generation is already running on this engine: finish or abort it first');
  }

  async #call(f) {
    try {
      return await f();
    } catch (e) {
      const err = toError(e);
      if (typeof WebAssembly !== 'undefined' && e instanceof WebAssembly.RuntimeError) {
        this.#closed = `the engine stopped after an internal error (${e.message}); create a new engine`;
        throw new EngineClosedError(this.#closed);
      }
      if (err instanceof EngineClosedError) this.#closed = err.message;
      // A lost GPU device takes every buffer with it: the engine closes (the error says so)
      // and later calls say it is closed.
      if (err.kind === 'device_lost') this.#closed = err.message;
      throw err;
    }
  }

  /** Generates from `prompt`; see the README for the options. */
  generate(prompt, options) {
    this.#check();
    checkPrompt(prompt);
    return this.#start(async () => prompt, options);
  }

  /** Applies the model's chat template to `messages` and generates the assistant's reply. */
  chat(messages, options) {
    this.#check();
    const m = JSON.stringify(checkMessages(messages));
    return this.#start(async () => this.#call(() => this.#backend.chatPrompt(m)), options);
  }

  #start(getPrompt, options) {
    const { engine, signal, onToken } = checkGenerateOptions(options);
    const backend = this.#backend;
    const call = (f) => this.#call(f);
    // The engine is claimed when iteration starts, so that an unused generation blocks nothing.
    const claim = () => {
      this.#check();
      this.#busy = true;
    };
    const done = () => {
      this.#busy = false;
    };
    return new Generation(async function* () {
      claim();
      try {
        if (signal?.aborted) {
          throw signal.reason ?? new DOMException('the generation was aborted', 'AbortError');
        }
        const prompt = await getPrompt();
        await call(() => backend.start(prompt, JSON.stringify(engine)));
        let cancelled = false;
        for (;;) {
          if (signal?.aborted && !cancelled) {
            cancelled = true;
            await call(() => backend.cancel());
          }
          const event = JSON.parse(await call(() => backend.next()));
          if (!event.done && onToken) {
            try {
              onToken(event.token);
            } catch (e) {
              console.error('adore: the onToken callback threw', e);
            }
          }
          yield event;
          if (event.done) return;
        }
      } finally {
        done();
      }
    });
  }

  /** The key index adore ranks by (shipped, given or fitted to a prompt) as a file's bytes, or
   * null before there is one: keep a fitted one and give it to a later engine. */
  async keyIndex() {
    this.#check();
    return (await this.#call(() => this.#backend.keyIndex())) ?? null;
  }

  /** Makes `bytes` (from `keyIndex()`, or a file of `adore index fit`) the key index adore ranks
   * by; refused unless fitted for this model. The conversation is forgotten. */
  async setKeyIndex(bytes) {
    this.#check();
    if (bytes instanceof ArrayBuffer) bytes = new Uint8Array(bytes);
    if (!(bytes instanceof Uint8Array)) throw new ArgumentError('setKeyIndex takes the index file as a Uint8Array or an ArrayBuffer');
    await this.#call(() => this.#backend.setKeyIndex(bytes));
  }

  /** Forgets the conversation the engine holds (the model stays loaded). */
  async reset() {
    this.#check();
    await this.#call(() => this.#backend.reset());
  }

  /** Frees the model and the GPU memory; the engine cannot be used afterwards. */
  dispose() {
    if (this.#closed) return;
    this.#closed = 'the engine was disposed; create a new one';
    this.#backend.dispose();
  }
}
