/**
 * KV handoff bookkeeping on descriptors only (the bytes stay in the shell). A KV cache of one sequence is
 * `2 * layers` tensors (key and value per layer), each `[kvHeads, tokenCount, headDim]` little-endian
 * float32, sent as chunks `(layer, kind, offset, length)`. The receiver validates the descriptor against
 * its own model before it allocates, and every chunk against the tensor bounds and what already arrived.
 */
import type { KvDescriptor } from "./WireFrames.js"

export interface KvGeometry {
  readonly modelFingerprint: string
  readonly layers: number
  readonly kvHeads: number
  readonly headDim: number
  readonly dtype: "float32"
  /** Largest token count the receiver accepts (its context). */
  readonly maxTokens: number
}

export const bytesPerElement = (dtype: KvDescriptor["dtype"]): number => (dtype === "float32" ? 4 : 2)

/** Bytes of one layer's key (or value) tensor. */
export const kvTensorBytes = (d: KvDescriptor): number =>
  d.kvHeads * d.tokenCount * d.headDim * bytesPerElement(d.dtype)

/** Bytes of the whole handoff. */
export const kvTotalBytes = (d: KvDescriptor): number => 2 * d.layers * kvTensorBytes(d)

export type KvDescriptorCheck =
  | { readonly _tag: "Valid"; readonly totalBytes: number }
  | {
      readonly _tag: "Invalid"
      readonly code: "fingerprint_mismatch" | "kv_invalid"
      readonly reason: string
    }

export const validateKvDescriptor = (
  d: KvDescriptor,
  expected: KvGeometry,
  limits: { readonly freeBytes: number }
): KvDescriptorCheck => {
  if (d.modelFingerprint !== expected.modelFingerprint) {
    return {
      _tag: "Invalid",
      code: "fingerprint_mismatch",
      reason: `KV was made by model ${d.modelFingerprint.slice(0, 12)}, this node serves ${expected.modelFingerprint.slice(0, 12)}`
    }
  }
  if (d.dtype !== expected.dtype) {
    return {
      _tag: "Invalid",
      code: "kv_invalid",
      reason: `KV dtype ${d.dtype} is not supported (expected ${expected.dtype})`
    }
  }
  if (d.layers !== expected.layers || d.kvHeads !== expected.kvHeads || d.headDim !== expected.headDim) {
    return {
      _tag: "Invalid",
      code: "kv_invalid",
      reason: `KV geometry ${d.layers}x${d.kvHeads}x${d.headDim} does not match the model's ${expected.layers}x${expected.kvHeads}x${expected.headDim}`
    }
  }
  if (d.tokenCount > expected.maxTokens) {
    return {
      _tag: "Invalid",
      code: "kv_invalid",
      reason: `KV of ${d.tokenCount} tokens exceeds the context ${expected.maxTokens}`
    }
  }
  const totalBytes = kvTotalBytes(d)
  if (totalBytes > limits.freeBytes) {
    return {
      _tag: "Invalid",
      code: "kv_invalid",
      reason: `KV of ${totalBytes} bytes exceeds the free budget ${limits.freeBytes}`
    }
  }
  return { _tag: "Valid", totalBytes }
}

/** Received byte ranges per tensor; chunks must not overlap or leave the tensor. */
export interface KvAssembly {
  readonly descriptor: KvDescriptor
  readonly tensorBytes: number
  /** Per tensor index (2 * layer + (value ? 1 : 0)): sorted disjoint [start, end) ranges. */
  readonly received: ReadonlyArray<ReadonlyArray<readonly [number, number]>>
  readonly receivedBytes: number
}

export const startKvAssembly = (descriptor: KvDescriptor): KvAssembly => ({
  descriptor,
  tensorBytes: kvTensorBytes(descriptor),
  received: Array.from({ length: 2 * descriptor.layers }, () => []),
  receivedBytes: 0
})

export const tensorIndex = (layer: number, kind: "key" | "value"): number =>
  2 * layer + (kind === "value" ? 1 : 0)

export type KvChunkCheck =
  | { readonly _tag: "Accepted"; readonly assembly: KvAssembly; readonly tensor: number }
  | { readonly _tag: "Rejected"; readonly reason: string }

export const acceptKvChunk = (
  assembly: KvAssembly,
  chunk: {
    readonly layer: number
    readonly kind: "key" | "value"
    readonly offset: number
    readonly length: number
  }
): KvChunkCheck => {
  if (chunk.layer >= assembly.descriptor.layers) {
    return { _tag: "Rejected", reason: `KV chunk for layer ${chunk.layer} of ${assembly.descriptor.layers}` }
  }
  const end = chunk.offset + chunk.length
  if (chunk.length === 0 || end > assembly.tensorBytes) {
    return {
      _tag: "Rejected",
      reason: `KV chunk [${chunk.offset}, ${end}) outside the ${assembly.tensorBytes}-byte tensor`
    }
  }
  const tensor = tensorIndex(chunk.layer, chunk.kind)
  const ranges = assembly.received[tensor] ?? []
  if (ranges.some(([s, e]) => chunk.offset < e && s < end)) {
    return {
      _tag: "Rejected",
      reason: `KV chunk [${chunk.offset}, ${end}) of layer ${chunk.layer} ${chunk.kind} overlaps one received`
    }
  }
  const merged = [...ranges, [chunk.offset, end] as const].sort((a, b) => a[0] - b[0])
  const next = assembly.received.map((r, i) => (i === tensor ? merged : r))
  return {
    _tag: "Accepted",
    tensor,
    assembly: { ...assembly, received: next, receivedBytes: assembly.receivedBytes + chunk.length }
  }
}

export const isKvComplete = (assembly: KvAssembly): boolean =>
  assembly.receivedBytes === 2 * assembly.descriptor.layers * assembly.tensorBytes
