/**
 * The inference runtime: one onnxruntime session over a model directory, with an explicit KV cache per
 * sequence that can be exported as bytes and imported in another process.
 *
 * KV layout: per layer, key and value tensors of `[kvHeads, tokens, headDim]` float32. The runtime checks
 * every call and runs calls one at a time; how the KV is kept between steps depends on the model's layout
 * (see `ModelGenerator.ts`):
 *
 * - `rows` (`RowsLayout.ts`; the built-in models: the graph returns only the new positions' K/V): the
 *   decode batch lives in long-lived row buffers and no step copies the cache;
 * - `concat` (`ConcatLayout.ts`; Optimum exports: the graph returns `present` = past + new): the previous
 *   step's `present` is fed back while the batch is unchanged, and the batch is repacked when it changes.
 */
import { existsSync } from "node:fs"
import { dirname, join } from "node:path"
import { createRequire } from "node:module"
import ort from "onnxruntime-node"
import type { KvGeometry } from "../domain/KvHandoff.js"
import type { KvDescriptor } from "../domain/WireFrames.js"
import { ConcatLayout } from "./ConcatLayout.js"
import { Sequence, type DecodeStep, type KvLayoutEngine } from "./KvStore.js"
import { ModelLoadError, modelFingerprint, readModelConfig, type ModelConfig } from "./ModelDir.js"
import { RowsLayout } from "./RowsLayout.js"

export { Sequence } from "./KvStore.js"

export type Device = "cpu" | "cuda"

export interface RuntimeOptions {
  readonly device: Device
  readonly threads: number
  /** Ids whose logits are masked to -Infinity (ids without a token). */
  readonly maskedIds?: Int32Array | undefined
}

export interface KvExport {
  readonly descriptor: KvDescriptor
  /** Per layer: key then value, each `[kvHeads, tokens, headDim]` little-endian float32 bytes. */
  readonly tensors: ReadonlyArray<{
    readonly layer: number
    readonly kind: "key" | "value"
    readonly bytes: Uint8Array
  }>
}

const cudaHelp = (dir: string) =>
  `--device cuda needs onnxruntime's CUDA provider libraries for onnxruntime-node ${ort.env.versions.common} ` +
  `(libonnxruntime_providers_shared.so and libonnxruntime_providers_cuda.so) in ${dir}, plus CUDA 12 and cuDNN 9. ` +
  `They come from NuGet (Microsoft.ML.OnnxRuntime.Gpu.Linux), which npm does not serve: run ` +
  `"ONNXRUNTIME_NODE_INSTALL=cuda12 npm rebuild onnxruntime-node --ignore-scripts=false" on a machine that can reach it. ` +
  `Tandem never falls back to the CPU silently: use --device cpu.`

const ortBinaryDir = (): string => {
  const require = createRequire(import.meta.url)
  const pkg = dirname(require.resolve("onnxruntime-node/package.json"))
  return join(pkg, "bin", "napi-v6", process.platform, process.arch)
}

export type KvModelLayout = "rows" | "concat"

export class Runtime {
  /** `rows`: the graph returns only new K/V (see the file comment). */
  readonly layout: KvModelLayout
  private pending: Promise<void> = Promise.resolve()
  private readonly kv: KvLayoutEngine
  private readonly kvBytesPerToken: number

  private constructor(
    readonly dir: string,
    private readonly session: ort.InferenceSession,
    readonly config: ModelConfig,
    readonly fingerprint: string,
    private readonly maskedIds: Int32Array
  ) {
    this.kvBytesPerToken = 2 * config.layers * config.kvHeads * config.headDim * 4
    this.layout = session.outputNames.includes("new.0.key") ? "rows" : "concat"
    const ctx = { session, config, logitsRow: this.logitsRow.bind(this) }
    this.kv = this.layout === "rows" ? new RowsLayout(ctx) : new ConcatLayout(ctx)
  }

  static async load(dir: string, options: RuntimeOptions): Promise<Runtime> {
    const config = readModelConfig(dir)
    const fingerprint = modelFingerprint(dir)
    const file = join(dir, "model.onnx")
    if (options.device === "cuda") {
      const bin = ortBinaryDir()
      if (
        !["libonnxruntime_providers_shared.so", "libonnxruntime_providers_cuda.so"].every((f) =>
          existsSync(join(bin, f))
        )
      ) {
        throw new ModelLoadError(file, cudaHelp(bin))
      }
    }
    let session: ort.InferenceSession
    try {
      session = await ort.InferenceSession.create(file, {
        executionProviders: [options.device],
        intraOpNumThreads: options.threads,
        interOpNumThreads: 1,
        executionMode: "sequential",
        graphOptimizationLevel: "all"
      })
    } catch (e) {
      const message = (e as Error).message
      if (options.device === "cuda") throw new ModelLoadError(file, `${message}. ${cudaHelp(ortBinaryDir())}`)
      throw new ModelLoadError(file, `onnxruntime cannot load it (${message})`)
    }
    checkLayout(file, session, config)
    return new Runtime(dir, session, config, fingerprint, options.maskedIds ?? new Int32Array(0))
  }

  get geometry(): KvGeometry {
    return {
      modelFingerprint: this.fingerprint,
      layers: this.config.layers,
      kvHeads: this.config.kvHeads,
      headDim: this.config.headDim,
      dtype: "float32",
      maxTokens: this.config.maxPositions
    }
  }

  /** Rows layout: positions per row of the decode batch's buffers (0 when empty; for tests and metrics). */
  get decodeBufferPositions(): number {
    return this.kv.decodeBufferPositions
  }

  /** KV bytes a sequence of `tokens` tokens holds. */
  kvBytesFor(tokens: number): number {
    return tokens * this.kvBytesPerToken
  }

  /**
   * Prefills several prompts at once (ragged, left-padded). Returns each prompt's new sequence and the
   * logits of its last position.
   */
  prefill(
    prompts: ReadonlyArray<ReadonlyArray<number>>
  ): Promise<Array<{ seq: Sequence; logits: Float32Array }>> {
    return this.serial(() => this.prefillNow(prompts))
  }

  /** Continues one sequence with more prompt tokens (chunked prefill); returns the last position's logits. */
  extend(seq: Sequence, tokens: ReadonlyArray<number>): Promise<Float32Array> {
    return this.serial(() => this.extendNow(seq, tokens))
  }

  /** One decode step over sequences of any lengths: feeds each its next token, returns each one's logits. */
  decode(steps: ReadonlyArray<DecodeStep>): Promise<Array<Float32Array>> {
    return this.serial(() => this.decodeNow(steps))
  }

  /**
   * Runs model calls one at a time, in call order: a call rearranges shared KV buffers before its run, so
   * two calls must not interleave (callers may still issue them concurrently).
   */
  private serial<T>(f: () => Promise<T>): Promise<T> {
    const run = this.pending.then(f)
    this.pending = run.then(
      () => undefined,
      () => undefined
    )
    return run
  }

  private async prefillNow(
    prompts: ReadonlyArray<ReadonlyArray<number>>
  ): Promise<Array<{ seq: Sequence; logits: Float32Array }>> {
    const B = prompts.length
    if (B === 0) return []
    const S = Math.max(...prompts.map((p) => p.length))
    if (S === 0) throw new Error("prefill needs at least one token per prompt")
    if (S > this.config.maxPositions)
      throw new Error(`prompt of ${S} tokens exceeds the context ${this.config.maxPositions}`)
    return this.kv.prefill(prompts, S)
  }

  private async extendNow(seq: Sequence, tokens: ReadonlyArray<number>): Promise<Float32Array> {
    this.assertLive(seq)
    if (tokens.length === 0) throw new Error("extend needs at least one token")
    if (seq.length + tokens.length > this.config.maxPositions)
      throw new Error(`sequence would exceed the context ${this.config.maxPositions}`)
    return this.kv.extend(seq, tokens)
  }

  private async decodeNow(steps: ReadonlyArray<DecodeStep>): Promise<Array<Float32Array>> {
    const B = steps.length
    if (B === 0) return []
    const seqs = steps.map((s) => s.seq)
    for (const s of seqs) {
      this.assertLive(s)
      if (s.length + 1 > this.config.maxPositions)
        throw new Error(`sequence would exceed the context ${this.config.maxPositions}`)
    }
    if (new Set(seqs).size !== B) throw new Error("a sequence appears twice in one decode step")
    return this.kv.decode(steps)
  }

  /** The sequence's KV as a descriptor plus one contiguous byte tensor per layer and kind. */
  exportKv(seq: Sequence): KvExport {
    this.assertLive(seq)
    const store = this.kv.storeOf(seq)
    const { layers, kvHeads, headDim } = this.config
    const T = seq.length
    const tensors: Array<{ layer: number; kind: "key" | "value"; bytes: Uint8Array }> = []
    for (let l = 0; l < layers; l++)
      for (const kind of ["key", "value"] as const) {
        const src = (kind === "key" ? store.keys : store.values)[l] as Float32Array
        const dst = new Float32Array(kvHeads * T * headDim)
        for (let h = 0; h < kvHeads; h++)
          dst.set(
            src.subarray(h * store.capacity * headDim, (h * store.capacity + T) * headDim),
            h * T * headDim
          )
        tensors.push({ layer: l, kind, bytes: new Uint8Array(dst.buffer) })
      }
    return {
      descriptor: {
        modelFingerprint: this.fingerprint,
        layers,
        kvHeads,
        headDim,
        dtype: "float32",
        tokenCount: T
      },
      tensors
    }
  }

  /**
   * A sequence from imported KV. `tensors[2 * layer + (value ? 1 : 0)]` holds that tensor's bytes
   * `[kvHeads, tokenCount, headDim]`; the descriptor must have been validated against `geometry`.
   */
  importKv(descriptor: KvDescriptor, tensors: ReadonlyArray<Uint8Array>): Sequence {
    const { layers, kvHeads, headDim } = this.config
    if (
      descriptor.modelFingerprint !== this.fingerprint ||
      descriptor.layers !== layers ||
      descriptor.kvHeads !== kvHeads ||
      descriptor.headDim !== headDim
    ) {
      throw new Error("KV descriptor does not match this model")
    }
    const T = descriptor.tokenCount
    const expected = kvHeads * T * headDim * 4
    if (tensors.length !== 2 * layers || tensors.some((t) => t.byteLength !== expected))
      throw new Error("KV tensors do not match the descriptor")
    const toFloats = (b: Uint8Array) => {
      const out = new Float32Array(b.byteLength / 4)
      new Uint8Array(out.buffer).set(b)
      return out
    }
    const seq = new Sequence()
    seq.length = T
    seq.store = {
      capacity: T,
      keys: Array.from({ length: layers }, (_, l) => toFloats(tensors[2 * l] as Uint8Array)),
      values: Array.from({ length: layers }, (_, l) => toFloats(tensors[2 * l + 1] as Uint8Array))
    }
    return seq
  }

  /** Releases the sequence's KV. Idempotent. */
  free(seq: Sequence): void {
    seq.freed = true
    seq.store = undefined
    seq.owner = undefined
    // Its place in the decode batch goes after any call in flight (which may still be writing there);
    // an emptied batch gives its buffers back.
    this.serial(async () => this.kv.compact()).catch(() => {})
  }

  /** Bytes of the decode batch's buffers beyond the sequences' own stores (not in `kvBytesFor`). */
  get decodeBufferBytes(): number {
    return this.kv.decodeBufferBytes
  }

  private assertLive(seq: Sequence): void {
    if (seq.freed) throw new Error("sequence was freed")
  }

  private logitsRow(out: ort.InferenceSession.OnnxValueMapType, b: number, s: number): Float32Array {
    const logits = out["logits"] as ort.Tensor
    const [, S, V] = logits.dims as [number, number, number]
    const data = logits.data as Float32Array
    const row = data.slice((b * S + s) * V, (b * S + s + 1) * V)
    for (const id of this.maskedIds) if (id < V) row[id] = -Infinity
    return row
  }
}

/** The session's inputs and outputs must be the Optimum decoder layout for the config's geometry. */
const checkLayout = (file: string, session: ort.InferenceSession, config: ModelConfig): void => {
  const inputs = new Set(session.inputNames)
  const outputs = new Set(session.outputNames)
  const need = (set: Set<string>, name: string, what: string) => {
    if (!set.has(name)) {
      throw new ModelLoadError(
        file,
        `I/O layout does not match: no ${what} "${name}" (config.json says ${config.layers} layers; the model's inputs are ${[...inputs].join(", ")})`
      )
    }
  }
  const rows = outputs.has("new.0.key")
  need(inputs, "input_ids", "input")
  need(outputs, "logits", "output")
  if (rows) need(inputs, "position_ids", "input")
  else need(inputs, "attention_mask", "input")
  for (let l = 0; l < config.layers; l++)
    for (const kv of ["key", "value"]) {
      need(inputs, `past_key_values.${l}.${kv}`, "input")
      need(outputs, `${rows ? "new" : "present"}.${l}.${kv}`, "output")
    }

  if (inputs.has(`past_key_values.${config.layers}.key`)) {
    throw new ModelLoadError(
      file,
      `I/O layout does not match: the model has more layers than config.json's ${config.layers}`
    )
  }
  for (const meta of session.inputMetadata) {
    if (!meta.isTensor || !meta.name.startsWith("past_key_values.")) continue
    if (meta.type !== "float32") {
      throw new ModelLoadError(
        file,
        `KV dtype ${meta.type} of "${meta.name}" is not supported (float32 only for now)`
      )
    }
    const [, heads, , dim] = meta.shape
    if (
      (typeof heads === "number" && heads !== config.kvHeads) ||
      (typeof dim === "number" && dim !== config.headDim)
    ) {
      throw new ModelLoadError(
        file,
        `I/O layout does not match: "${meta.name}" has shape [${meta.shape.join(", ")}], config.json says ${config.kvHeads} KV heads of size ${config.headDim}`
      )
    }
  }
}
