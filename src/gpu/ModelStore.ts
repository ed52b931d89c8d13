/**
 * Where models come from: `builtin:tiny` / `builtin:small` are generated on first use into
 * `$TANDEM_CACHE_DIR` (default `~/.cache/tandem`) under a key that includes the generator's version,
 * atomically (a temp dir, then rename), so concurrent first starts neither corrupt nor duplicate it.
 * Anything else is a model directory.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs"
import { homedir } from "node:os"
import { basename, join, resolve } from "node:path"
import { BYTE_BOS_ID, BYTE_EOS_ID, byteTokenizerConfig, byteTokenizerJson } from "./ByteTokenizer.js"
import {
  builtinDims,
  type BuiltinSize,
  GENERATOR_VERSION,
  generateModel,
  type KvLayout
} from "./ModelGenerator.js"

export const cacheDir = (env: NodeJS.ProcessEnv = process.env): string =>
  env["TANDEM_CACHE_DIR"] !== undefined && env["TANDEM_CACHE_DIR"] !== ""
    ? resolve(env["TANDEM_CACHE_DIR"])
    : join(homedir(), ".cache", "tandem")

export const isBuiltin = (spec: string): spec is `builtin:${BuiltinSize}` =>
  spec === "builtin:tiny" || spec === "builtin:small"

/** The default served model name: `builtin-tiny`, or the directory's basename. */
export const defaultModelName = (spec: string): string =>
  isBuiltin(spec) ? spec.replace(":", "-") : basename(resolve(spec))

const MARKER = ".complete"

/** Vocabulary size and eos/bos ids of a tokenizer directory (max id + 1 over vocab and added tokens). */
const tokenizerFacts = (dir: string) => {
  const tj = JSON.parse(readFileSync(join(dir, "tokenizer.json"), "utf8")) as {
    model?: { vocab?: Record<string, number> | Array<unknown> }
    added_tokens?: Array<{ id: number; content: string }>
  }
  const tc = JSON.parse(readFileSync(join(dir, "tokenizer_config.json"), "utf8")) as {
    eos_token?: unknown
    bos_token?: unknown
  }
  const vocab = tj.model?.vocab
  const ids: Array<number> = Array.isArray(vocab) ? [vocab.length - 1] : Object.values(vocab ?? {})
  for (const t of tj.added_tokens ?? []) ids.push(t.id)
  const idOf = (token: unknown): number | undefined => {
    const content =
      typeof token === "string"
        ? token
        : typeof token === "object" && token !== null && "content" in token
          ? String((token as { content: unknown }).content)
          : undefined
    if (content === undefined) return undefined
    const added = tj.added_tokens?.find((t) => t.content === content)
    if (added !== undefined) return added.id
    return Array.isArray(vocab) ? undefined : vocab?.[content]
  }
  const maxId = ids.reduce((m, id) => (id > m ? id : m), -1)
  return { vocab: maxId + 1, eos: idOf(tc.eos_token), bos: idOf(tc.bos_token) }
}

export interface GenerateOptions {
  readonly size: BuiltinSize
  /** Build the model over this tokenizer's vocabulary and copy its tokenizer files. */
  readonly tokenizerDir?: string | undefined
  /** false: a graph without a `position_ids` input (positions derived from the mask; concat layout only). */
  readonly positionIdsInput?: boolean | undefined
  /** Default `inplace`; `concat` writes the Optimum layout exported models use. */
  readonly kvLayout?: KvLayout | undefined
}

/** Writes model.onnx, config.json, tokenizer.json and tokenizer_config.json into `outDir`. */
export const writeModelDir = (outDir: string, options: GenerateOptions): void => {
  mkdirSync(outDir, { recursive: true })
  if (options.tokenizerDir !== undefined) {
    const facts = tokenizerFacts(options.tokenizerDir)
    const model = generateModel(builtinDims(options.size, facts.vocab), {
      ...(facts.eos !== undefined ? { eosTokenId: facts.eos } : {}),
      ...(facts.bos !== undefined ? { bosTokenId: facts.bos } : {}),
      positionIdsInput: options.positionIdsInput !== false,
      kvLayout: options.kvLayout ?? "inplace"
    })
    for (const f of ["tokenizer.json", "tokenizer_config.json"])
      writeFileSync(join(outDir, f), readFileSync(join(options.tokenizerDir, f)))
    writeFileSync(join(outDir, "model.onnx"), model.onnx)
    writeFileSync(join(outDir, "config.json"), JSON.stringify(model.config, null, 2) + "\n")
    return
  }
  const model = generateModel(builtinDims(options.size), {
    eosTokenId: BYTE_EOS_ID,
    bosTokenId: BYTE_BOS_ID,
    positionIdsInput: options.positionIdsInput !== false,
    kvLayout: options.kvLayout ?? "inplace"
  })
  writeFileSync(join(outDir, "model.onnx"), model.onnx)
  writeFileSync(join(outDir, "config.json"), JSON.stringify(model.config, null, 2) + "\n")
  writeFileSync(join(outDir, "tokenizer.json"), JSON.stringify(byteTokenizerJson()))
  writeFileSync(join(outDir, "tokenizer_config.json"), JSON.stringify(byteTokenizerConfig(), null, 2) + "\n")
}

/**
 * The directory of a built-in model, generating it on first use. `concat`: the same weights in the
 * Optimum KV layout (what exported models use; for tests and benchmarks of that path).
 */
export const ensureBuiltin = (
  size: BuiltinSize,
  env: NodeJS.ProcessEnv = process.env,
  kvLayout: KvLayout = "inplace"
): string => {
  const root = cacheDir(env)
  const final = join(root, `builtin-${size}-g${GENERATOR_VERSION}${kvLayout === "concat" ? "-concat" : ""}`)
  if (existsSync(join(final, MARKER))) return final
  mkdirSync(root, { recursive: true })
  const tmp = mkdtempSync(join(root, `.tmp-builtin-${size}-`))
  try {
    writeModelDir(tmp, { size, kvLayout })

    writeFileSync(join(tmp, MARKER), "")
    try {
      renameSync(tmp, final)
    } catch (e) {
      // Another process finished first: its copy is identical (seeded), keep it.
      if (!existsSync(join(final, MARKER))) throw e
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true })
  }
  return final
}

/** Resolves `--model M` to a model directory. */
export const resolveModelDir = (spec: string, env: NodeJS.ProcessEnv = process.env): string =>
  isBuiltin(spec) ? ensureBuiltin(spec === "builtin:tiny" ? "tiny" : "small", env) : resolve(spec)
