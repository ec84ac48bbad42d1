// Types of the adore-webgpu API.

/** Where a model comes from: a URL, one GGUF file (File, Blob, ArrayBuffer, typed array), or
 * the files of a Hugging Face directory (config.json, tokenizer.json, *.safetensors). */
export type ModelSource =
  | string
  | URL
  | Blob
  | ArrayBuffer
  | ArrayBufferView
  | ArrayLike<File | Blob | ArrayBuffer | ArrayBufferView | { name: string; data: Blob | ArrayBuffer | ArrayBufferView }>;

/** Load progress, in bytes. Phases arrive in this order: `download` (or `cache`, or `read`
 * for local files), `parse`, `upload` (weights to the GPU), `ready`. */
export interface Progress {
  phase: 'download' | 'cache' | 'read' | 'parse' | 'upload' | 'ready';
  loadedBytes: number;
  totalBytes: number;
}

export interface LoadOptions {
  onProgress?: (progress: Progress) => void;
  signal?: AbortSignal;
  /** Keep downloaded model files in the browser's Cache API (default false). */
  cache?: boolean;
}

export interface WorkerLoadOptions extends LoadOptions {
  /** Where worker.js is served from (default: next to this module). */
  workerUrl?: string | URL;
}

export type Policy = 'full' | 'window' | 'sink' | 'h2o' | 'tova' | 'adore' | 'quest' | 'oracle';

export interface GenerateOptions {
  /** Most tokens to generate (default 128). */
  maxTokens?: number;
  /** 0 = greedy (default). */
  temperature?: number;
  /** 0 = no top-k filter (default). */
  topK?: number;
  /** 1 = no top-p filter (default). */
  topP?: number;
  /** Sampling seed (default 0): the same seed gives the same tokens. */
  seed?: number;
  /** KV cache policy (default `full`). */
  policy?: Policy;
  /** KV slots kept by a budgeted policy (default 256). */
  budget?: number;
  /** Protected first tokens (default 4). */
  sinks?: number;
  /** Protected most recent tokens (h2o, tova, adore; default: half the budget for h2o, 16 for tova and adore, three quarters of the budget for adore with `ranking: 'controller'` or `rebuildFrom: 'recompute'`). */
  recent?: number | null;
  /** Where adore gets released tokens back from: `store` (default; every token's K/V stays on the GPU and each step re-chooses the attended budget among all of them) or `recompute` (released K/V dropped, memory flat; `rebuild` of them recomputed per step). */
  rebuildFrom?: 'store' | 'recompute';
  /** What adore from its store ranks past tokens by: `keys` (default; each layer its own choice, by its attention over short keys fitted to the model's queries and keys) or `controller` (the learned controller's score, one choice for every layer). */
  ranking?: 'keys' | 'controller';
  /** adore ranked by keys: the first of every N layers chooses by its short keys and the N - 1 after it attend to its choice (default 1, a choice per layer; 2 decodes long contexts faster, with lower fidelity). */
  layersPerChoice?: number;
  /** How the KV cache stores keys and values: `f32` (default) or `f16` (half the GPU memory; Hamlet perplexity within 0.5% of f32's). */
  kvCache?: 'f16' | 'f32';
  /** Released tokens adore recomputes per step with `rebuildFrom: 'recompute'` (default 0). */
  rebuild?: number;
  /** Longest sequence (prompt + output); default min(model context, 4096). */
  context?: number | null;
  /** Report each token's cache state in `onToken` (`kept`, `rebuilt`). */
  trace?: boolean;
  /** Stops the generation before its next token; the stats then say `cancelled`. */
  signal?: AbortSignal;
  onToken?: (token: TokenInfo) => void;
}

export interface TokenInfo {
  id: number;
  text: string;
  /** Position in the sequence. */
  position: number;
  /** Positions held in the KV cache after this step, or for adore with its store those the step attended to (trace, budgeted policies). */
  kept?: number[];
  /** Positions this step rebuilt (trace, adore with rebuild). */
  rebuilt?: number[];
}

export interface Stats {
  promptTokens: number;
  generatedTokens: number;
  prefillSeconds: number;
  decodeSeconds: number;
  prefillTokensPerS: number;
  decodeTokensPerS: number;
  stop: 'max_tokens' | 'end_of_sequence' | 'context_full' | 'cancelled';
  kvBytes: number;
  tokens: number[];
}

export interface ModelInfo {
  name: string;
  adapter: string;
  layers: number;
  hidden: number;
  heads: number;
  kvHeads: number;
  vocab: number;
  context: number;
  weightBytes: number;
  maxStorageBufferBindingSize: number;
  chatTemplate: boolean;
  /** Whether a key index ships for this model: the adore policy ranked by keys needs one.
   * Without it, the first prompt of `keyIndexMinTokens` or more run with adore gets one fitted
   * to it (a second pass over its first 1024 tokens), kept for the engine's life; a shorter
   * prompt is refused with an `ArgumentError` naming the key index. */
  keyIndex: boolean;
  keyIndexMinTokens: number;
}

export interface Message {
  role: 'system' | 'user' | 'assistant' | string;
  content: string;
}

/** A generation in progress: iterate it for text pieces; `stats` resolves when it ends. */
export declare class Generation implements AsyncIterable<string> {
  readonly stats: Promise<Stats>;
  [Symbol.asyncIterator](): AsyncIterator<string>;
  /** The whole text. */
  text(): Promise<string>;
}

export declare class Engine {
  readonly info: ModelInfo;
  generate(prompt: string, options?: GenerateOptions): Generation;
  chat(messages: Message[], options?: GenerateOptions): Generation;
  /** The key index adore ranks by (shipped, given, or fitted to a prompt) as a file's bytes, or
   * null before there is one: keep a fitted one and give it to a later engine. */
  keyIndex(): Promise<Uint8Array | null>;
  /** Makes `bytes` (from `keyIndex()`, or a file of `adore index fit`) the key index adore ranks
   * by; refused unless fitted for this model. The conversation is forgotten. */
  setKeyIndex(bytes: Uint8Array | ArrayBuffer): Promise<void>;
  /** Forgets the conversation (the model stays loaded). */
  reset(): Promise<void>;
  /** Frees the model and its GPU memory. */
  dispose(): void;
}

export declare function createEngine(source: ModelSource, options?: LoadOptions): Promise<Engine>;
export declare function createWorkerEngine(source: ModelSource, options?: WorkerLoadOptions): Promise<Engine>;
/** Deletes the model files cached by `cache: true`; resolves to whether there were any. */
export declare function clearModelCache(): Promise<boolean>;

export declare const POLICIES: readonly Policy[];
export declare const GENERATE_DEFAULTS: Readonly<Required<Omit<GenerateOptions, 'signal' | 'onToken'>>>;

export declare class AdoreError extends Error {
  /** Stable identifier: truncated, bad_magic, unknown_dtype, unsupported, prompt_too_long, no_adapter, ... */
  readonly kind: string;
}
export declare class ModelFormatError extends AdoreError {}
export declare class WebGpuError extends AdoreError {}
export declare class DeviceLimitError extends AdoreError {}
export declare class ArgumentError extends AdoreError {}
export declare class PromptError extends AdoreError {}
export declare class DownloadError extends AdoreError {}
export declare class EngineClosedError extends AdoreError {}
