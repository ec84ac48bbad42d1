// The Web Worker side of createWorkerEngine: runs the engine off the page's thread and answers
// the client's calls ({ id, op, args }) with { id, ok, value | error } and progress events.

import { readSource } from './core.js';
import { loadBackend } from './index.js';
import { toError } from './errors.js';

let backend = null;

function wire(e) {
  if (typeof WebAssembly !== 'undefined' && e instanceof WebAssembly.RuntimeError) {
    backend = null;
    return { name: 'EngineClosedError', kind: 'closed', message: `the engine stopped after an internal error (${e.message}); create a new engine` };
  }
  const err = toError(e);
  return { name: err.name, kind: err.kind ?? 'internal', message: err.message };
}

self.onmessage = async ({ data }) => {
  const { id, op, args = [] } = data;
  const progress = (p) => self.postMessage({ id, progress: p });
  try {
    let value;
    if (op === 'load') {
      const files = await readSource(args.source, { cache: args.cache, onProgress: progress });
      const loaded = await loadBackend(files, progress);
      backend = loaded.backend;
      value = loaded.info;
    } else if (!backend) {
      throw { kind: 'closed', message: 'the engine is not loaded or has stopped; create a new engine' };
    } else if (op === 'dispose') {
      backend.dispose();
      backend = null;
    } else if (['start', 'next', 'cancel', 'reset', 'chatPrompt', 'keyIndex', 'setKeyIndex'].includes(op)) {
      value = await backend[op](...args);
    } else {
      throw { kind: 'invalid_argument', message: `unknown worker call ${op}` };
    }
    self.postMessage({ id, ok: true, value });
  } catch (e) {
    self.postMessage({ id, ok: false, error: wire(e) });
  }
};
