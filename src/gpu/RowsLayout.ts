/**
 * The in-place KV layout (the built-in models: the graph takes the past and returns only the new
 * positions' K/V). The decode batch lives in long-lived buffers `[rows, kvHeads, M, headDim]`, one row per
 * running sequence, fed to every step as they are; each step writes its one new position per row. A
 * sequence joining is copied into a free row once; one leaving is copied out (if it is still alive) and the
 * last row moves into its place. No step copies the cache.
 */
import ort from "onnxruntime-node"
import { decodeBufferFor } from "../domain/Scheduler.js"
import type { ModelConfig } from "./ModelDir.js"
import {
  Sequence,
  type DecodeStep,
  type KvLayoutEngine,
  type KvStore,
  type LayoutContext
} from "./KvStore.js"

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

/** A store as a write target for `writeNew`. */
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

export class RowsLayout implements KvLayoutEngine {
  private readonly session: ort.InferenceSession
  private readonly config: ModelConfig
  private readonly logitsRow: LayoutContext["logitsRow"]
  private readonly rowBatch: RowBatch

  constructor(ctx: LayoutContext) {
    this.session = ctx.session
    this.config = ctx.config
    this.logitsRow = ctx.logitsRow
    this.rowBatch = new RowBatch(2 * ctx.config.layers, ctx.config.kvHeads, ctx.config.headDim)
  }

  get decodeBufferPositions(): number {
    return this.rowBatch.M
  }

  get decodeBufferBytes(): number {
    return this.rowBatch.bufs.reduce((n, b) => n + b.byteLength, 0)
  }

  compact(): void {
    const rb = this.rowBatch
    for (let r = rb.seqs.length - 1; r >= 0; r--) if ((rb.seqs[r] as Sequence).freed) rb.remove(r)
    if (rb.seqs.length === 0) rb.reset()
  }

  storeOf(seq: Sequence): KvStore {
    if (seq.row !== undefined) return this.rowBatch.view(seq.row)
    if (seq.store === undefined) throw new Error("sequence has no KV")
    return seq.store
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
   * Writes the first `count` new positions of output row b (`new.{l}.{kind}`, `[B,kvHeads,S,headDim]`)
   * into `dst` (a store, or a row of the decode batch at `base`) at position `at`.

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

  async prefill(
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

  async extend(seq: Sequence, tokens: ReadonlyArray<number>): Promise<Float32Array> {
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

  async decode(steps: ReadonlyArray<DecodeStep>): Promise<Array<Float32Array>> {
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
}
