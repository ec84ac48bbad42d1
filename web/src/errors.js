// Named errors of the adore-webgpu API. Every error the engine raises is an AdoreError with a
// `kind` (a stable identifier) and a message that says what to do.

export class AdoreError extends Error {
  constructor(message, kind = 'internal') {
    super(message);
    this.name = 'AdoreError';
    this.kind = kind;
  }
}

/** The model file is not one this engine can read (truncated, corrupt, unsupported). */
export class ModelFormatError extends AdoreError {
  constructor(message, kind = 'malformed') {
    super(message, kind);
    this.name = 'ModelFormatError';
  }
}

/** WebGPU is missing, refused a device, or failed while running. */
export class WebGpuError extends AdoreError {
  constructor(message, kind = 'no_adapter') {
    super(message, kind);
    this.name = 'WebGpuError';
  }
}

/** A tensor or buffer exceeds what this device allows (maxStorageBufferBindingSize). */
export class DeviceLimitError extends AdoreError {
  constructor(message, kind = 'tensor_too_large') {
    super(message, kind);
    this.name = 'DeviceLimitError';
  }
}

/** An argument (option, message list, model source) is out of range or of the wrong type. */
export class ArgumentError extends AdoreError {
  constructor(message, kind = 'invalid_argument') {
    super(message, kind);
    this.name = 'ArgumentError';
  }
}

/** The prompt is empty or longer than the context. */
export class PromptError extends AdoreError {
  constructor(message, kind = 'prompt_too_long') {
    super(message, kind);
    this.name = 'PromptError';
  }
}

/** The model could not be fetched or read. */
export class DownloadError extends AdoreError {
  constructor(message, kind = 'download') {
    super(message, kind);
    this.name = 'DownloadError';
  }
}

/** The engine was disposed, or stopped after an internal error: create a new one. */
export class EngineClosedError extends AdoreError {
  constructor(message, kind = 'closed') {
    super(message, kind);
    this.name = 'EngineClosedError';
  }
}

const BY_KIND = {
  io: DownloadError,
  download: DownloadError,
  checksum: DownloadError,
  empty_file: ModelFormatError,
  bad_magic: ModelFormatError,
  unsupported_version: ModelFormatError,
  truncated: ModelFormatError,
  malformed: ModelFormatError,
  unknown_dtype: ModelFormatError,
  shape_mismatch: ModelFormatError,
  missing_tensor: ModelFormatError,
  config: ModelFormatError,
  tokenizer: ModelFormatError,
  tensor_too_large: DeviceLimitError,
  no_adapter: WebGpuError,
  device: WebGpuError,
  gpu: WebGpuError,
  invalid_argument: ArgumentError,
  prompt_too_long: PromptError,
  empty_prompt: PromptError,
  closed: EngineClosedError,
};

/** Rebuilds an error from its `{ name?, kind, message }` form (from the engine or a worker). */
export function errorFromParts(kind, message) {
  const Class = BY_KIND[kind] ?? AdoreError;
  return new Class(message, kind);
}

/** Whatever was thrown, as an Error (engine errors as their named classes). */
export function toError(e) {
  if (e instanceof Error) return e;
  if (e && typeof e === 'object' && typeof e.kind === 'string' && typeof e.message === 'string') {
    return errorFromParts(e.kind, e.message);
  }
  return new AdoreError(String(e));
}
