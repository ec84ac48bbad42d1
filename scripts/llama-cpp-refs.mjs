#!/usr/bin/env node
// Reference outputs of llama.cpp for a GGUF file, through the npm package node-llama-cpp (its
// prebuilt CPU binary; nothing is built). For each prompt: llama.cpp's tokens, then 16 greedy
// tokens with the top two logits at each step (so that a tie can be told from a bug); and the
// perplexity over the first 512 tokens of a text, with each position's log-probability.
//
//   mkdir -p /tmp/nlc && cd /tmp/nlc && NODE_LLAMA_CPP_SKIP_DOWNLOAD=true \
//     npm install --omit=optional node-llama-cpp@3.22.1 @node-llama-cpp/linux-x64@3.22.1
//   NODE_PATH=/tmp/nlc/node_modules node scripts/llama-cpp-refs.mjs MODEL.gguf PROMPTS.json TEXT OUT.json
//
// PROMPTS.json: an array of strings, each tokenized with special tokens recognised, or of
// { chat, text } for a user message and its rendering in the model's chat template (the test
// checks that adore renders the message so).
import { createRequire } from 'node:module';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const [modelPath, promptsPath, textPath, outPath] = process.argv.slice(2);
if (!outPath) {
  console.error('usage: llama-cpp-refs.mjs MODEL.gguf PROMPTS.json TEXT OUT.json');
  process.exit(2);
}
const require = createRequire(join(process.env.NODE_PATH ?? process.cwd(), 'noop.js'));
const { getLlama } = await import(require.resolve('node-llama-cpp'));

const GENERATE = 16;
const PPL_TOKENS = 512;

const sha256 = createHash('sha256').update(readFileSync(modelPath)).digest('hex');
const llama = await getLlama({ gpu: false, build: 'never' });
const model = await llama.loadModel({ modelPath });
const context = await model.createContext({ contextSize: 1024, batchSize: 512, threads: 2 });

// Top two logits after the last input token, and the log-probability of `next` (if given).
function asked(next) {
  const tokens = next === undefined ? [] : [next];
  return { generateNext: { logits: { filter: { tokens, includeTop: 2 } }, totalLogitWeight: true } };
}
function top2(out) {
  return [...out.next.logits.entries()].sort((a, b) => b[1] - a[1]).slice(0, 2);
}

const sequence = context.getSequence();
const bos = model.tokens.shouldPrependBosToken && model.tokens.bos !== null ? [model.tokens.bos] : [];
const prompts = [];
for (const entry of JSON.parse(readFileSync(promptsPath, 'utf8'))) {
  const text = typeof entry === 'string' ? entry : entry.text;
  const chat = typeof entry === 'string' ? undefined : entry.chat;
  await sequence.clearHistory();
  // BOS first where the model asks for it, as llama.cpp's own tools do.
  const promptTokens = [...bos, ...model.tokenize(text, true)];
  const tokens = [];
  const steps = [];
  let input = promptTokens.map((t, i) => (i === promptTokens.length - 1 ? [t, asked()] : t));
  for (let n = 0; n < GENERATE; n++) {
    const out = await sequence.controlledEvaluate(input);
    const best = top2(out[input.length - 1]);
    steps.push(best.map(([id, logit]) => ({ id, logit })));
    tokens.push(best[0][0]);
    input = [[best[0][0], asked()]];
  }
  prompts.push({ text, chat, prompt_tokens: promptTokens, tokens, text_out: model.detokenize(tokens), top2: steps });
  console.error(`prompt ${prompts.length}: ${JSON.stringify(model.detokenize(tokens))}`);
}

// Perplexity: every position predicts the next token of the text.
const all = [...bos, ...model.tokenize(readFileSync(textPath, 'utf8'), false)].slice(0, PPL_TOKENS + 1);
await sequence.clearHistory();
const input = all.slice(0, -1).map((t, i) => [t, asked(all[i + 1])]);
const out = await sequence.controlledEvaluate(input);
const logprobs = out.map((o, i) => {
  const max = Math.max(...o.next.logits.values());
  return o.next.logits.get(all[i + 1]) - max - Math.log(o.next.totalLogitWeight);
});
const nll = -logprobs.reduce((a, b) => a + b, 0) / logprobs.length;
console.error(`perplexity over ${logprobs.length} predictions: ${Math.exp(nll).toFixed(4)}`);

writeFileSync(
  outPath,
  JSON.stringify(
    {
      model_sha256: sha256,
      engine: 'llama.cpp via node-llama-cpp 3.22.1 (prebuilt CPU binary)',
      prompts,
      perplexity: { text: textPath.split('/').pop(), tokens: all, logprobs, value: Math.exp(nll) },
    },
    null,
    1,
  ) + '\n',
);
process.exit(0);
