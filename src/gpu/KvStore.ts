/**
 * What the runtime's two model KV layouts share: a sequence, its own store, and the interface each
 * layout implements (`RowsLayout.ts` for the built-in in-place layout, `ConcatLayout.ts` for Optimum
 * exports; see `Runtime.ts`).
 */
import type ort from "onnxruntime-node"
import type { PackedBatch } from "./ConcatLayout.js"
import type { ModelConfig } from "./ModelDir.js"

export interface KvStore {
  capacity: number
  /** Per layer, `[kvHeads, capacity, headDim]`. */
  readonly keys: Array<Float32Array>
  readonly values: Array<Float32Array>
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

export interface DecodeStep {
  readonly seq: Sequence
  readonly token: number
}

/** What a layout gets from the runtime. */
export interface LayoutContext {
  readonly session: ort.InferenceSession
  readonly config: ModelConfig
  /** Row b, position s of the `logits` output, with the masked ids at -Infinity. */
  readonly logitsRow: (out: ort.InferenceSession.OnnxValueMapType, b: number, s: number) => Float32Array
}

/** One model KV layout's prefill, extend and decode; the runtime has validated the arguments. */
export interface KvLayoutEngine {
  prefill(
    prompts: ReadonlyArray<ReadonlyArray<number>>,
    longest: number
  ): Promise<Array<{ seq: Sequence; logits: Float32Array }>>
  extend(seq: Sequence, tokens: ReadonlyArray<number>): Promise<Float32Array>
  decode(steps: ReadonlyArray<DecodeStep>): Promise<Array<Float32Array>>
  /** The sequence's KV, `[kvHeads, capacity, headDim]` per layer and kind (a view where it can be). */
  storeOf(seq: Sequence): KvStore
  /** Positions per row of the decode batch's buffers (rows layout; 0 otherwise). */
  readonly decodeBufferPositions: number
  /** Bytes of the decode batch's buffers (the rows, or the packed batch), beyond the sequences' own stores. */
  readonly decodeBufferBytes: number
  /** Lets go of what freed sequences still occupy in the decode batch (run between model calls). */
  compact(): void
}
