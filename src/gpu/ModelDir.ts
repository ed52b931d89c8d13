/**
 * A model directory: `model.onnx` (plus its external-data file, if any), `config.json`,
 * `tokenizer.json`, `tokenizer_config.json`. Reads and checks the files, and computes the fingerprints
 * the transport compares: the model fingerprint (sha256 of the model files and config) and the tokenizer
 * fingerprint (sha256 of tokenizer.json, tokenizer_config.json and config.json).
 */
import { createHash } from "node:crypto"
import { existsSync, readdirSync, readFileSync } from "node:fs"
import { join } from "node:path"

export class ModelLoadError extends Error {
  readonly _tag = "ModelLoadError"
  constructor(
    readonly file: string,
    readonly problem: string
  ) {
    super(`${file}: ${problem}`)
  }
}

export interface ModelConfig {
  readonly layers: number
  readonly heads: number
  readonly kvHeads: number
  readonly headDim: number
  readonly vocabSize: number
  readonly maxPositions: number
  readonly eosTokenIds: ReadonlyArray<number>
  readonly bosTokenId: number | undefined
}

const readJson = (file: string): Record<string, unknown> => {
  if (!existsSync(file)) throw new ModelLoadError(file, "missing file")
  let text: string
  try {
    text = readFileSync(file, "utf8")
  } catch (e) {
    throw new ModelLoadError(file, `unreadable (${(e as Error).message})`)
  }
  try {
    const json: unknown = JSON.parse(text)
    if (typeof json !== "object" || json === null || Array.isArray(json)) throw new Error("not a JSON object")
    return json as Record<string, unknown>
  } catch (e) {
    throw new ModelLoadError(file, `not valid JSON (${(e as Error).message})`)
  }
}

const positiveInt = (file: string, json: Record<string, unknown>, key: string, fallback?: number): number => {
  const v = json[key] ?? fallback
  if (typeof v !== "number" || !Number.isInteger(v) || v <= 0)
    throw new ModelLoadError(file, `"${key}" must be a positive integer (got ${JSON.stringify(v)})`)
  return v
}

export const readModelConfig = (dir: string): ModelConfig => {
  const file = join(dir, "config.json")
  const c = readJson(file)
  const layers = positiveInt(file, c, "num_hidden_layers")
  const heads = positiveInt(file, c, "num_attention_heads")
  const kvHeads = positiveInt(file, c, "num_key_value_heads", heads)
  const hidden = positiveInt(file, c, "hidden_size")
  const headDim = positiveInt(file, c, "head_dim", Math.floor(hidden / heads))
  const eos = c["eos_token_id"]
  const eosTokenIds =
    typeof eos === "number"
      ? [eos]
      : Array.isArray(eos)
        ? eos.filter((x): x is number => typeof x === "number")
        : []
  const bos = c["bos_token_id"]
  return {
    layers,
    heads,
    kvHeads,
    headDim,
    vocabSize: positiveInt(file, c, "vocab_size"),
    maxPositions: positiveInt(file, c, "max_position_embeddings", 4096),
    eosTokenIds,
    bosTokenId: typeof bos === "number" ? bos : undefined
  }
}

export interface TokenizerFiles {
  readonly tokenizerJson: Record<string, unknown>
  readonly tokenizerConfig: Record<string, unknown>
}

export const readTokenizerFiles = (dir: string): TokenizerFiles => ({
  tokenizerJson: readJson(join(dir, "tokenizer.json")),
  tokenizerConfig: readJson(join(dir, "tokenizer_config.json"))
})

const sha256Of = (files: ReadonlyArray<string>): string => {
  const h = createHash("sha256")
  for (const f of files) {
    h.update(`${f.split("/").pop() ?? f}\0`)
    h.update(readFileSync(f))
  }
  return h.digest("hex")
}

/** model.onnx and its external-data files (`model.onnx_data`, `model.onnx.data`, ...). */
export const modelFiles = (dir: string): ReadonlyArray<string> => {
  const onnxFile = join(dir, "model.onnx")
  if (!existsSync(onnxFile)) throw new ModelLoadError(onnxFile, "missing file")
  return readdirSync(dir)
    .filter((f) => f.startsWith("model.onnx"))
    .sort()
    .map((f) => join(dir, f))
}

export const modelFingerprint = (dir: string): string =>
  sha256Of([...modelFiles(dir), join(dir, "config.json")])

export const tokenizerFingerprint = (dir: string): string =>
  sha256Of(["tokenizer.json", "tokenizer_config.json", "config.json"].map((f) => join(dir, f)))
