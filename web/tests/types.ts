// Compiled with tsc --noEmit by the test command: the package's types describe real use.
import { ArgumentError, clearModelCache, createEngine, createWorkerEngine, type Progress, type Stats, type TokenInfo } from '../src/index.js';

async function example(file: File): Promise<Stats> {
  const progress: Progress[] = [];
  const engine = await createWorkerEngine(file, { onProgress: (p) => progress.push(p), cache: true });
  const other = await createEngine(new URL('https://example.org/m.gguf'), { signal: new AbortController().signal });
  other.dispose();
  const seen: TokenInfo[] = [];
  const run = engine.chat([{ role: 'user', content: 'hi' }], { maxTokens: 8, policy: 'adore', budget: 64, rebuildFrom: 'recompute', ranking: 'controller', rebuild: 2, kvCache: 'f16', trace: true, onToken: (t) => seen.push(t) });
  let text = '';
  for await (const piece of run) text += piece;
  const stats = await run.stats;
  const again: string = await engine.generate(text, { temperature: 0.7, topK: 40, topP: 0.9, seed: 1, policy: 'adore', layersPerChoice: 2 }).text();
  void again;
  const index: Uint8Array | null = await engine.keyIndex();
  if (index) await engine.setKeyIndex(index.buffer as ArrayBuffer);
  await engine.reset();
  engine.dispose();
  await clearModelCache();
  try {
    engine.generate('x');
  } catch (e) {
    if (e instanceof ArgumentError) console.log(e.kind, e.message);
  }
  return stats;
}
void example;
