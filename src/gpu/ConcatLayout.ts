/**
 * The Optimum KV layout (exported models: the graph returns `present` = past + new). A batched decode
 * step packs the live sequences left-padded into `[B, kvHeads, P, headDim]` past tensors; while the batch
 * stays the same from one step to the next, the previous step's `present` outputs are fed straight back.
 * When sequences join or leave, every member is copied out of the old batch into its own store and a new
 * batch is packed.
 */
import ort from "onnxruntime-node"
import type { ModelConfig } from "./ModelDir.js"
import {
  Sequence,
  type DecodeStep,
  type KvLayoutEngine,
  type KvStore,
  type LayoutContext
} from "./KvStore.js"

export interface PackedBatch {
  readonly seqs: ReadonlyArray<Sequence>
  /** Positions per row (left-padded). */
  readonly P: number
  readonly tensors: Record<string, ort.Tensor>
}

/** A Float32Array over fresh, unpooled, not zero-filled memory (every element read is written first). */
const uninitializedFloats = (n: number): Float32Array =>
  new Float32Array(Buffer.allocUnsafeSlow(n * 4).buffer, 0, n)

export class ConcatLayout implements KvLayoutEngine {
  readonly decodeBufferPositions = 0
  private readonly session: ort.InferenceSession
  private readonly config: ModelConfig
  private readonly logitsRow: LayoutContext["logitsRow"]
  private readonly hasPositionIds: boolean
  private lastBatch: PackedBatch | undefined

  constructor(ctx: LayoutContext) {
    this.session = ctx.session
    this.config = ctx.config
    this.logitsRow = ctx.logitsRow
    this.hasPositionIds = ctx.session.inputNames.includes("position_ids")
  }

  get decodeBufferBytes(): number {
    let n = 0
    for (const t of Object.values(this.lastBatch?.tensors ?? {})) n += (t.data as Float32Array).byteLength
    return n
  }

  compact(): void {
    if (this.lastBatch?.seqs.every((s) => s.freed) === true) this.lastBatch = undefined
  }

  storeOf(seq: Sequence): KvStore {
    return this.materialize(seq)
  }

  async prefill(
    prompts: ReadonlyArray<ReadonlyArray<number>>,
    S: number
  ): Promise<Array<{ seq: Sequence; logits: Float32Array }>> {
    const B = prompts.length
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

  async extend(seq: Sequence, tokens: ReadonlyArray<number>): Promise<Float32Array> {
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

  async decode(steps: ReadonlyArray<DecodeStep>): Promise<Array<Float32Array>> {
    const B = steps.length
    const seqs = steps.map((s) => s.seq)
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
