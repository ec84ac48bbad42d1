// createWorkerEngine: the same engine, run in a Web Worker so that the page never freezes while
// the model loads or a step runs.

import { Engine } from './core.js';
import { EngineClosedError, errorFromParts } from './errors.js';
import { checkSource } from './options.js';

function fromWire(e) {
  if (e.name === 'AbortError') return new DOMException(e.message, 'AbortError');
  return errorFromParts(e.kind, e.message);
}

/**
 * Like createEngine, but the engine runs in a module Web Worker. Options as createEngine's, plus
 * `workerUrl` to serve worker.js from elsewhere. Aborting the load terminates the worker.
 */
export async function createWorkerEngine(source, { onProgress, signal, cache = false, workerUrl } = {}) {
  const s = checkSource(source);
  const wireSource = s.type === 'url' ? s.url : s.files;
  const worker = new Worker(workerUrl ?? new URL('./worker.js', import.meta.url), { type: 'module' });
  const pending = new Map();
  let nextId = 0;
  let dead = null;
  const failAll = (err) => {
    dead = err;
    for (const p of pending.values()) p.reject(err);
    pending.clear();
  };
  worker.onmessage = ({ data }) => {
    const p = pending.get(data.id);
    if (!p) return;
    if (data.progress) {
      try {
        p.onProgress?.(data.progress);
      } catch (e) {
        console.error('adore: the onProgress callback threw', e);
      }
      return;
    }
    pending.delete(data.id);
    if (data.ok) p.resolve(data.value);
    else p.reject(fromWire(data.error));
  };
  worker.onerror = (e) => {
    e.preventDefault?.();
    failAll(new EngineClosedError(`the engine's worker failed: ${e.message ?? 'unknown error'}; create a new engine`));
  };
  const call = (op, args, progress) =>
    new Promise((resolve, reject) => {
      if (dead) return reject(dead);
      const id = nextId++;
      pending.set(id, { resolve, reject, onProgress: progress });
      worker.postMessage({ id, op, args });
    });
  const onAbort = () => {
    worker.terminate();
    failAll(signal.reason ?? new DOMException('the load was aborted', 'AbortError'));
  };
  if (signal?.aborted) onAbort();
  signal?.addEventListener('abort', onAbort, { once: true });
  let info;
  try {
    info = await call('load', { source: wireSource, cache }, onProgress);
  } catch (e) {
    worker.terminate();
    throw e;
  } finally {
    signal?.removeEventListener('abort', onAbort);
  }
  const backend = {
    start: (prompt, options) => call('start', [prompt, options]),
    next: () => call('next'),
    cancel: () => call('cancel'),
    reset: () => call('reset'),
    chatPrompt: (messages) => call('chatPrompt', [messages]),
    keyIndex: () => call('keyIndex'),
    setKeyIndex: (bytes) => call('setKeyIndex', [bytes]),
    dispose: () => {
      call('dispose')
        .catch(() => {})
        .finally(() => worker.terminate());
    },
  };
  return new Engine(backend, info);
}
