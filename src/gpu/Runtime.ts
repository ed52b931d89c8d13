/**
 * The inference runtime: one onnxruntime session over a model directory, with an explicit KV cache per
 * sequence that can be exported as bytes and imported in another process.
 *
 * KV layout: per layer, key and value tensors of `[kvHeads, tokens, headDim]` float32. Two model layouts
 * (see `ModelGenerator.ts`):
 *
 * - `rows` (the built-in models: the graph returns only the new positions' K/V): the decode batch lives in
 *   long-lived buffers `[rows, kvHeads, M, headDim]`, one row per running sequence, fed to every step as
 *   they are; each step writes its one new position per row. A sequence joining the batch is copied into a
 *   free row once; one leaving is copied out (if it is still alive) and the last row moves into its place.
 *   No step copies the cache.
 * - `concat` (Optimum exports: the graph returns `present` = past + new): a batched decode step packs the
 *   live sequences left-padded into `[B, kvHeads, P, headDim]` past tensors; while the batch stays the same
 *   from one step to the next, the previous step's `present` outputs are fed straight back. When sequences
 *   join or leave, every member is copied out of the old batch into its own store and a new batch is packed.
 */
import { existsSync } from "node:fs"
import { dirname, join } from "node:path"
import { createRequire } from "node:module"
import ort from "onnxruntime-node"
import type { KvGeometry } from "../domain/KvHandoff.js"
import { decodeBufferFor } from "../domain/Scheduler.js"
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
  /** @internal concat layout: the packed batch whose tensors hold it. */
  owner: { batch: PackedBatch; row: number } | undefined
  /** @internal rows layout: its row in the decode batch. */
  row: number | undefined
  /** @internal its own store, when it lives in neither. */
  store: KvStore | undefined
}

/**
 * The rows layout's decode batch: per layer and kind a buffer `[capacityRows, kvHeads, M, headDim]`;
 * `seqs[r]` lives in row r, positions 0..length-1. Positions past a row's length are masked
 * out; they hold zeros or an earlier row's values, finite either way.
 */
class RowBatch {
  seqs: Array<Sequence> = []
  M = 0
  capacityRows = 0
  /** Index `2 * layer + (value ? 1 : 0)`. */
  bufs: Array<Float32Array> = []

  constructor(
    private readonly tensorCount: number,
    private readonly kvHeads: number,
    private readonly headDim: number
  ) {}

  get rowFloats(): number {
    return this.kvHeads * this.M * this.headDim
  }

  /** Row r as a store (views, no copy). */
  view(r: number): KvStore {
    const n = this.rowFloats
    const at = (i: number) => (this.bufs[i] as Float32Array).subarray(r * n, (r + 1) * n)
    const half = this.tensorCount / 2
    return {
      capacity: this.M,
      keys: Array.from({ length: half }, (_, l) => at(2 * l)),
      values: Array.from({ length: half }, (_, l) => at(2 * l + 1))
    }
  }

  /** Sizes the buffers for `rows` rows of `positions` positions (`decodeBufferFor`), keeping every row. */
  reserve(rows: number, positions: number): void {
    const current = { rows: this.capacityRows, positions: this.M }
    const next = decodeBufferFor(current, { rows, positions })
    if (next === current) return
    const M = next.positions
    const capacityRows = next.rows
    const old = this.seqs.map((s, r) => ({ s, store: this.view(r) }))
    this.bufs = Array.from(
      { length: this.tensorCount },
      () => new Float32Array(capacityRows * this.kvHeads * M * this.headDim)
    )
    this.M = M
    this.capacityRows = capacityRows
    old.forEach(({ s, store }, r) => copyPositions(store, this.view(r), s.length, this.kvHeads, this.headDim))
  }

  reset(): void {
    this.bufs = []
    this.M = 0
    this.capacityRows = 0
  }

  /** Removes row r; the last row moves into it. */
  remove(r: number): void {
    const last = this.seqs.length - 1
    const leaving = this.seqs[r] as Sequence
    leaving.row = undefined
    if (r !== last) {
      const moved = this.seqs[last] as Sequence
      copyPositions(this.view(last), this.view(r), moved.length, this.kvHeads, this.headDim)
      this.seqs[r] = moved
      moved.row = r
    }
    this.seqs.pop()
  }
}

/** Copies positions 0..tokens-1 of every layer and kind from one store to another. */
const copyPositions = (
  from: KvStore,
  to: KvStore,
  tokens: number,
  kvHeads: number,
  headDim: number
): void => {
  for (const [src, dst] of [
    [from.keys, to.keys],
    [from.values, to.values]
  ] as const)
    src.forEach((s, l) => {
      const d = dst[l] as Float32Array
      for (let h = 0; h < kvHeads; h++)
        d.set(
          s.subarray(h * from.capacity * headDim, (h * from.capacity + tokens) * headDim),
          h * to.capacity * headDim
        )
    })
}

/** A store as a write target for `Runtime.writeNew`. */
const storeTarget = (store: KvStore) => ({
  of: (i: number) => (i % 2 === 0 ? store.keys : store.values)[i >> 1] as Float32Array,
  base: 0,
  capacity: store.capacity
})

/**
 * A store of `capacity` positions, zero-filled: positions past a sequence's length are fed to the model
 * (masked out), so they must hold finite numbers.
 */
const emptyStore = (layers: number, capacity: number, kvHeads: number, headDim: number): KvStore => ({
  capacity,
  keys: Array.from({ length: layers }, () => new Float32Array(kvHeads * capacity * headDim)),
  values: Array.from({ length: layers }, () => new Float32Array(kvHeads * capacity * headDim))
})

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

export type KvModelLayout = "rows" | "concat"

export class Runtime {
  /** `rows`: the graph returns only new K/V (see the file comment). */
  readonly layout: KvModelLayout
  private lastBatch: PackedBatch | undefined
  private pending: Promise<void> = Promise.resolve()

  private readonly rowBatch: RowBatch
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
    this.layout = session.outputNames.includes("new.0.key") ? "rows" : "concat"
    this.rowBatch = new RowBatch(2 * config.layers, config.kvHeads, config.headDim)
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
    return this.rowBatch.M
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
  decode(
    steps: ReadonlyArray<{ readonly seq: Sequence; readonly token: number }>
  ): Promise<Array<Float32Array>> {
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
    if (this.layout === "rows") return this.prefillRows(prompts, S)
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

  private async extendNow(seq: Sequence, tokens: ReadonlyArray<number>): Promise<Float32Array> {
    this.assertLive(seq)
    if (tokens.length === 0) throw new Error("extend needs at least one token")
    if (seq.length + tokens.length > this.config.maxPositions)
      throw new Error(`sequence would exceed the context ${this.config.maxPositions}`)
    if (this.layout === "rows") return this.extendRows(seq, tokens)
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

  private async decodeNow(
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
    if (this.layout === "rows") return this.decodeRows(steps)
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
    const store = seq.row !== undefined ? this.rowBatch.view(seq.row) : this.materialize(seq)
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

  /**
   * Feeds for the rows layout: input_ids and position_ids, right-padded. A row's first position id is
   * also its past length (the graph masks the past block with it).
   */
  private rowFeeds(
    B: number,
    S: number,
    fill: (b: number, ids: BigInt64Array, pos: BigInt64Array) => void
  ): Record<string, ort.Tensor> {
    const ids = new BigInt64Array(B * S)
    const pos = new BigInt64Array(B * S)
    for (let b = 0; b < B; b++) fill(b, ids, pos)
    return {
      input_ids: new ort.Tensor("int64", ids, [B, S]),
      position_ids: new ort.Tensor("int64", pos, [B, S])
    }
  }

  /**
   * Writes `count` new positions of output row b (`new.{l}.{kind}`, `[B,S,kvHeads*headDim]`), from output
   * position `from`, into `store` at position `at`.
   */
  private writeNew(
    out: ort.InferenceSession.OnnxValueMapType,
    b: number,
    count: number,
    dst: { readonly of: (i: number) => Float32Array; readonly base: number; readonly capacity: number },
    at: number
  ): void {
    const { layers, kvHeads, headDim } = this.config
    for (let l = 0; l < layers; l++)
      for (const [k, kind] of (["key", "value"] as const).entries()) {
        const t = out[`new.${l}.${kind}`] as ort.Tensor
        const S = t.dims[2] as number
        const src = t.data as Float32Array
        const d = dst.of(2 * l + k)
        // Heads-first on both sides: one contiguous run per head.
        for (let h = 0; h < kvHeads; h++) {
          const i = (b * kvHeads + h) * S * headDim
          const o = dst.base + (h * dst.capacity + at) * headDim
          if (count === 1) for (let x = 0; x < headDim; x++) d[o + x] = src[i + x] as number
          else d.set(src.subarray(i, i + count * headDim), o)
        }
      }
  }

  /** Past tensors over `bufs`' first `B` rows of `P` positions (no copy). */
  private pastOver(
    B: number,
    P: number,
    tensor: (i: number) => Float32Array | undefined
  ): Record<string, ort.Tensor> {
    const { layers, kvHeads, headDim } = this.config
    const n = B * kvHeads * P * headDim
    const feeds: Record<string, ort.Tensor> = {}
    for (let l = 0; l < layers; l++)
      for (const [k, kind] of (["key", "value"] as const).entries()) {
        const buf = tensor(2 * l + k)
        feeds[`past_key_values.${l}.${kind}`] = new ort.Tensor(
          "float32",
          buf === undefined ? new Float32Array(n) : buf.subarray(0, n),
          [B, kvHeads, P, headDim]
        )
      }
    return feeds
  }

  private async prefillRows(
    prompts: ReadonlyArray<ReadonlyArray<number>>,
    S: number
  ): Promise<Array<{ seq: Sequence; logits: Float32Array }>> {
    const B = prompts.length
    const { layers, kvHeads, headDim } = this.config
    // Right-padded: row b's real tokens are positions 0..len-1; padding is never attended by them.
    const feeds = {
      ...this.rowFeeds(B, S, (b, ids, pos) => {
        const p = prompts[b] as ReadonlyArray<number>
        for (let j = 0; j < S; j++) {
          ids[b * S + j] = BigInt(p[j] ?? 0)
          pos[b * S + j] = BigInt(j)
        }
      }),
      // No past: one masked position (past length 0) keeps every tensor non-empty.
      ...this.pastOver(B, 1, () => undefined)
    }
    const out = await this.session.run(feeds)
    return prompts.map((p, b) => {
      const seq = new Sequence()
      seq.length = p.length
      seq.store = emptyStore(layers, p.length, kvHeads, headDim)
      this.writeNew(out, b, p.length, storeTarget(seq.store), 0)
      return { seq, logits: this.logitsRow(out, b, p.length - 1) }
    })
  }

  private async extendRows(seq: Sequence, tokens: ReadonlyArray<number>): Promise<Float32Array> {
    const { layers, kvHeads, headDim } = this.config
    const S = tokens.length
    const need = seq.length + S
    // Chunked prefill works on the sequence's own store, grown to fit.
    if (seq.row !== undefined) {
      seq.store = this.ownStore(seq)
      this.rowBatch.remove(seq.row)
    }
    let store = this.ownStore(seq)
    if (store.capacity < need) {
      const grown = emptyStore(layers, Math.max(2 * store.capacity, need), kvHeads, headDim)
      copyPositions(store, grown, seq.length, kvHeads, headDim)
      store = seq.store = grown
    }
    const s0 = store
    const feeds = {
      ...this.rowFeeds(1, S, (_, ids, pos) => {
        tokens.forEach((t, j) => {
          ids[j] = BigInt(t)
          pos[j] = BigInt(seq.length + j)
        })
      }),
      ...this.pastOver(1, s0.capacity, (i) => (i % 2 === 0 ? s0.keys : s0.values)[i >> 1])
    }
    const out = await this.session.run(feeds)
    this.writeNew(out, 0, S, storeTarget(s0), seq.length)
    seq.length = need
    return this.logitsRow(out, 0, S - 1)
  }

  private async decodeRows(
    steps: ReadonlyArray<{ readonly seq: Sequence; readonly token: number }>
  ): Promise<Array<Float32Array>> {
    const rb = this.rowBatch
    this.arrangeRows(steps.map((s) => s.seq))
    const B = rb.seqs.length
    const tokenOf = new Map(steps.map((s) => [s.seq, s.token]))
    const feeds = {
      ...this.rowFeeds(B, 1, (b, ids, pos) => {
        const s = rb.seqs[b] as Sequence
        ids[b] = BigInt(tokenOf.get(s) as number)
        pos[b] = BigInt(s.length)
      }),
      ...this.pastOver(B, rb.M, (i) => rb.bufs[i])
    }
    const out = await this.session.run(feeds)
    const rowFloats = rb.rowFloats
    const of = (i: number) => rb.bufs[i] as Float32Array
    rb.seqs.forEach((s, b) => {
      this.writeNew(out, b, 1, { of, base: b * rowFloats, capacity: rb.M }, s.length)
      s.length += 1
    })
    return steps.map((s) => this.logitsRow(out, s.seq.row as number, 0))
  }

  /** Makes the decode batch's rows exactly `seqs`: others leave (copied out if alive), newcomers join. */
  private arrangeRows(seqs: ReadonlyArray<Sequence>): void {
    const rb = this.rowBatch
    const wanted = new Set(seqs)
    for (let r = rb.seqs.length - 1; r >= 0; r--) {
      const s = rb.seqs[r] as Sequence
      if (wanted.has(s)) continue
      if (!s.freed) s.store = this.ownStore(s)
      rb.remove(r)
    }
    // An emptied batch gives its buffers back (a long sequence no longer sets every row's size).
    if (rb.seqs.length === 0) rb.reset()
    const longest = Math.max(...seqs.map((s) => s.length))
    rb.reserve(seqs.length, longest + 1)
    for (const s of seqs) {
      if (s.row !== undefined) continue
      const store = s.store
      if (store === undefined) throw new Error("sequence has no KV")
      const r = rb.seqs.length
      rb.seqs.push(s)
      s.row = r
      copyPositions(store, rb.view(r), s.length, this.config.kvHeads, this.config.headDim)
      s.store = undefined
    }
  }

  /** The sequence's own store (rows layout), copied out of its decode-batch row when it lives there. */
  private ownStore(seq: Sequence): KvStore {
    if (seq.row === undefined) {
      if (seq.store === undefined) throw new Error("sequence has no KV")
      return seq.store
    }
    const { layers, kvHeads, headDim } = this.config
    const store = emptyStore(layers, Math.max(64, 2 * seq.length), kvHeads, headDim)
    copyPositions(this.rowBatch.view(seq.row), store, seq.length, kvHeads, headDim)
    return store
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
