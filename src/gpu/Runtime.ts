/**
 * The inference runtime: one onnxruntime session over a model directory, with an explicit KV cache per
 * sequence that can be exported as bytes and imported in another process.
 *
 * KV layout: per layer, key and value tensors of `[kvHeads, tokens, headDim]` float32. A batched decode
 * step packs the live sequences left-padded into `[B, kvHeads, P, headDim]` past tensors; while the batch
 * stays the same from one step to the next, the previous step's `present` outputs are fed straight back
 * (no copy). When sequences join or leave, every member is copied out of the old batch into its own store
 * and a new batch is packed.
 */
import { existsSync } from "node:fs"
import { dirname, join } from "node:path"
import { createRequire } from "node:module"
import ort from "onnxruntime-node"
import type { KvGeometry } from "../domain/KvHandoff.js"
import type { KvDescriptor } from "../domain/WireFrames.js"
import { ModelLoadError, modelFingerprint, readModelConfig, type ModelConfig } from "./ModelDir.js"

export type Device = "cpu" | "cuda"

export interface RuntimeOptions {
  readonly device: Device
  readonly threads: number
  /** Ids whose logits are masked to -Infinity (ids without a token). */
  readonly maskedIds?: Int32Array | undefined
}

interface KvStore {
  capacity: number
  /** Per layer, `[kvHeads, capacity, headDim]`. */
  readonly keys: Array<Float32Array>
  readonly values: Array<Float32Array>
}

interface PackedBatch {
  readonly seqs: ReadonlyArray<Sequence>
  /** Positions per row (left-padded). */
  readonly P: number
  readonly tensors: Record<string, ort.Tensor>
}

/** One sequence's KV cache, owned by the runtime that made it. */
export class Sequence {
  /** Tokens whose K/V the cache holds. */
  length = 0
  freed = false
  /** @internal */ owner: { batch: PackedBatch; row: number } | undefined
  /** @internal */ store: KvStore | undefined
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

/** A Float32Array over fresh, unpooled, not zero-filled memory (every element read is written first). */
const uninitializedFloats = (n: number): Float32Array =>
  new Float32Array(Buffer.allocUnsafeSlow(n * 4).buffer, 0, n)

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

export class Runtime {
  private lastBatch: PackedBatch | undefined
  private readonly hasPositionIds: boolean
  private readonly kvBytesPerToken: number

  private constructor(
    readonly dir: string,
    private readonly session: ort.InferenceSession,
    readonly config: ModelConfig,
    readonly fingerprint: string,
    private readonly maskedIds: Int32Array
  ) {
    this.hasPositionIds = session.inputNames.includes("position_ids")
    this.kvBytesPerToken = 2 * config.layers * config.kvHeads * config.headDim * 4
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

  /** KV bytes a sequence of `tokens` tokens holds. */
  kvBytesFor(tokens: number): number {
    return tokens * this.kvBytesPerToken
  }

  /**
   * Prefills several prompts at once (ragged, left-padded). Returns each prompt's new sequence and the
   * logits of its last position.
   */
  async prefill(
    prompts: ReadonlyArray<ReadonlyArray<number>>
  ): Promise<Array<{ seq: Sequence; logits: Float32Array }>> {
    const B = prompts.length
    if (B === 0) return []
    const S = Math.max(...prompts.map((p) => p.length))
    if (S === 0) throw new Error("prefill needs at least one token per prompt")
    if (S > this.config.maxPositions)
      throw new Error(`prompt of ${S} tokens exceeds the context ${this.config.maxPositions}`)
    const ids = new BigInt64Array(B * S)
    const mask = new BigInt64Array(B * S)
    const pos = new BigInt64Array(B * S)
    prompts.forEach((p, b) => {
      const pad = S - p.length
      p.forEach((t, j) => {
        ids[b * S + pad + j] = BigInt(t)
        mask[b * S + pad + j] = 1n
        pos[b * S + pad + j] = BigInt(j)
      })
    })
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor("int64", ids, [B, S]),
      attention_mask: new ort.Tensor("int64", mask, [B, S])
    }
    if (this.hasPositionIds) feeds["position_ids"] = new ort.Tensor("int64", pos, [B, S])
    const { kvHeads, headDim, layers } = this.config
    for (let l = 0; l < layers; l++)
      for (const kv of ["key", "value"])
        feeds[`past_key_values.${l}.${kv}`] = new ort.Tensor("float32", new Float32Array(0), [
          B,
          kvHeads,
          0,
          headDim
        ])
    const out = await this.session.run(feeds)
    const seqs = prompts.map((p) => {
      const seq = new Sequence()
      seq.length = p.length
      return seq
    })
    this.adopt(seqs, S, out)
    return seqs.map((seq, b) => ({ seq, logits: this.logitsRow(out, b, S - 1) }))
  }

  /** Continues one sequence with more prompt tokens (chunked prefill); returns the last position's logits. */
  async extend(seq: Sequence, tokens: ReadonlyArray<number>): Promise<Float32Array> {
    this.assertLive(seq)
    if (tokens.length === 0) throw new Error("extend needs at least one token")
    if (seq.length + tokens.length > this.config.maxPositions)
      throw new Error(`sequence would exceed the context ${this.config.maxPositions}`)
    const S = tokens.length
    const past = this.pastFor([seq])
    const P = past.P
    const feeds: Record<string, ort.Tensor> = {
      ...past.tensors,
      input_ids: new ort.Tensor("int64", BigInt64Array.from(tokens.map(BigInt)), [1, S]),
      attention_mask: new ort.Tensor("int64", new BigInt64Array(P + S).fill(1n), [1, P + S])
    }
    if (this.hasPositionIds)
      feeds["position_ids"] = new ort.Tensor(
        "int64",
        BigInt64Array.from(tokens.map((_, j) => BigInt(seq.length + j))),
        [1, S]
      )
    const out = await this.session.run(feeds)
    seq.length += S
    this.adopt([seq], P + S, out)
    return this.logitsRow(out, 0, S - 1)
  }

  /** One decode step over sequences of any lengths: feeds each its next token, returns each one's logits. */
  async decode(
    steps: ReadonlyArray<{ readonly seq: Sequence; readonly token: number }>
  ): Promise<Array<Float32Array>> {
    const B = steps.length
    if (B === 0) return []
    const seqs = steps.map((s) => s.seq)
    for (const s of seqs) {
      this.assertLive(s)
      if (s.length + 1 > this.config.maxPositions)
        throw new Error(`sequence would exceed the context ${this.config.maxPositions}`)
    }
    if (new Set(seqs).size !== B) throw new Error("a sequence appears twice in one decode step")
    const past = this.pastFor(seqs)
    const P = past.P
    const mask = new BigInt64Array(B * (P + 1))
    const pos = new BigInt64Array(B)
    seqs.forEach((s, b) => {
      mask.fill(1n, b * (P + 1) + (P - s.length), (b + 1) * (P + 1))
      pos[b] = BigInt(s.length)
    })
    const feeds: Record<string, ort.Tensor> = {
      ...past.tensors,
      input_ids: new ort.Tensor("int64", BigInt64Array.from(steps.map((s) => BigInt(s.token))), [B, 1]),
      attention_mask: new ort.Tensor("int64", mask, [B, P + 1])
    }
    if (this.hasPositionIds) feeds["position_ids"] = new ort.Tensor("int64", pos, [B, 1])
    const out = await this.session.run(feeds)
    for (const s of seqs) s.length += 1
    this.adopt(seqs, P + 1, out)
    return seqs.map((_, b) => this.logitsRow(out, b, 0))
  }

  /** The sequence's KV as a descriptor plus one contiguous byte tensor per layer and kind. */
  exportKv(seq: Sequence): KvExport {
    this.assertLive(seq)
    const store = this.materialize(seq)
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

  /** Makes `seqs` members of a new packed batch whose tensors are `out`'s presents. */
  private adopt(seqs: ReadonlyArray<Sequence>, P: number, out: ort.InferenceSession.OnnxValueMapType): void {
    const tensors: Record<string, ort.Tensor> = {}
    for (let l = 0; l < this.config.layers; l++)
      for (const kv of ["key", "value"])
        tensors[`past_key_values.${l}.${kv}`] = out[`present.${l}.${kv}`] as ort.Tensor
    const batch: PackedBatch = { seqs, P, tensors }
    seqs.forEach((s, row) => {
      s.owner = { batch, row }
      s.store = undefined
    })
    this.lastBatch = batch
  }

  /** Past tensors for `seqs` in this order: the last batch's presents when it is the same batch, else packed. */
  private pastFor(seqs: ReadonlyArray<Sequence>): { P: number; tensors: Record<string, ort.Tensor> } {
    const last = this.lastBatch
    if (
      last !== undefined &&
      last.seqs.length === seqs.length &&
      seqs.every((s, i) => last.seqs[i] === s && s.owner?.batch === last && s.owner.row === i)
    ) {
      return { P: last.P, tensors: last.tensors }
    }
    // Members of the previous batch that are not in this one (and still alive) get their own store
    // now, so the old batch's tensors can go once nothing points at them.
    if (last !== undefined) {
      const staying = new Set(seqs)
      for (const s of last.seqs)
        if (!s.freed && s.owner?.batch === last && !staying.has(s)) this.materialize(s)
    }
    const { layers, kvHeads, headDim } = this.config
    const B = seqs.length
    const P = Math.max(...seqs.map((s) => s.length))
    const tensors: Record<string, ort.Tensor> = {}
    for (let l = 0; l < layers; l++)
      for (const kind of ["key", "value"] as const) {
        const name = `past_key_values.${l}.${kind}`
        // Not zero-filled: each row's data is copied in and only its left padding is zeroed (padding
        // is masked out, but must be finite).
        const dst = uninitializedFloats(B * kvHeads * P * headDim)
        seqs.forEach((s, b) => {
          for (let h = 0; h < kvHeads; h++) {
            const rowStart = (b * kvHeads + h) * P * headDim
            const pad = (P - s.length) * headDim
            if (pad > 0) dst.fill(0, rowStart, rowStart + pad)
            // Straight from where the sequence lives now: its batch's tensors, or its own store.
            const owner = s.owner
            if (owner !== undefined) {
              const src = owner.batch.tensors[name]?.data as Float32Array
              const from = ((owner.row * kvHeads + h) * owner.batch.P + (owner.batch.P - s.length)) * headDim
              dst.set(src.subarray(from, from + s.length * headDim), rowStart + pad)
            } else {
              const store = s.store as KvStore
              const src = (kind === "key" ? store.keys : store.values)[l] as Float32Array
              dst.set(
                src.subarray(h * store.capacity * headDim, (h * store.capacity + s.length) * headDim),
                rowStart + pad
              )
            }
          }
        })
        tensors[name] = new ort.Tensor("float32", dst, [B, kvHeads, P, headDim])
      }
    for (const s of seqs)
      if (s.owner === undefined && s.store === undefined) throw new Error("sequence has no KV")
    return { P, tensors }
  }

  /** The sequence's own store, copied out of its packed batch when it lives there. */
  private materialize(seq: Sequence): KvStore {
    const owner = seq.owner
    if (owner === undefined) {
      if (seq.store === undefined) throw new Error("sequence has no KV")
      return seq.store
    }
    const { layers, kvHeads, headDim } = this.config
    const T = seq.length
    const capacity = Math.max(T, 16) * 2
    const store: KvStore = { capacity, keys: [], values: [] }
    // Positions past `length` are never read, so the store need not be zeroed.
    const { P, tensors } = owner.batch
    for (let l = 0; l < layers; l++)
      for (const kind of ["key", "value"] as const) {
        const src = tensors[`past_key_values.${l}.${kind}`]?.data as Float32Array
        const dst = uninitializedFloats(kvHeads * capacity * headDim)
        for (let h = 0; h < kvHeads; h++) {
          const from = ((owner.row * kvHeads + h) * P + (P - T)) * headDim
          dst.set(src.subarray(from, from + T * headDim), h * capacity * headDim)
        }
        ;(kind === "key" ? store.keys : store.values).push(dst)
      }
    seq.owner = undefined
    seq.store = store
    return store
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
  need(inputs, "input_ids", "input")
  need(inputs, "attention_mask", "input")
  need(outputs, "logits", "output")
  for (let l = 0; l < config.layers; l++)
    for (const kv of ["key", "value"]) {
      need(inputs, `past_key_values.${l}.${kv}`, "input")
      need(outputs, `present.${l}.${kv}`, "output")
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
