// Named errors of the adore-webgpu API. Every error the engine raises is an AdoreError with a
// `kind` (a stable identifier) and a message that says what to do.

export class AdoreError extends Error {
  static defaultKind = 'internal';
  constructor(message, kind = new.target.defaultKind) {
    super(message);
    this.name = new.target.name;
    this.kind = kind;
  }
}

/** The model file is not one this engine can read (truncated, corrupt, unsupported). */
export class ModelFormatError extends AdoreError {
  static defaultKind = 'malformed';
}

/** WebGPU is missing, refused a device, or failed while running. */
export class WebGpuError extends AdoreError {
  static defaultKind = 'no_adapter';
}

/** A tensor or buffer exceeds what this device allows (maxStorageBufferBindingSize). */
export class DeviceLimitError extends AdoreError {
  static defaultKind = 'tensor_too_large';
}

/** An argument (option, message list, model source) is out of range or of the wrong type. */
export class ArgumentError extends AdoreError {
  static defaultKind = 'invalid_argument';
}

/** The prompt is empty or longer than the context. */
export class PromptError extends AdoreError {
  static defaultKind = 'prompt_too_long';
}

/** The model could not be fetched or read. */
export class DownloadError extends AdoreError {
  static defaultKind = 'download';
}

/** The engine was disposed, or stopped after an internal error: create a new one. */
export class EngineClosedError extends AdoreError {
  static defaultKind = 'closed';
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
  unsupported: ModelFormatError,
  shape_mismatch: ModelFormatError,
  missing_tensor: ModelFormatError,
  config: ModelFormatError,
  tokenizer: ModelFormatError,
  tensor_too_large: DeviceLimitError,
  no_adapter: WebGpuError,
  device: WebGpuError,
  gpu: WebGpuError,
  device_lost: WebGpuError,
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
