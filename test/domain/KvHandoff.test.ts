import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  acceptKvChunk,
  isKvComplete,
  kvTensorBytes,
  startKvAssembly,
  validateKvDescriptor,
  type KvAssembly
} from "../../src/domain/KvHandoff.js"
import type { KvDescriptor } from "../../src/domain/WireFrames.js"

const descriptor: KvDescriptor = {
  modelFingerprint: "ab",
  layers: 2,
  kvHeads: 2,
  headDim: 4,
  dtype: "float32",
  tokenCount: 3
}
const geometry = {
  modelFingerprint: "ab",
  layers: 2,
  kvHeads: 2,
  headDim: 4,
  dtype: "float32" as const,
  maxTokens: 16
}

describe("KvHandoff", () => {
  it("validates fingerprint, geometry, context and budget", () => {
    expect(validateKvDescriptor(descriptor, geometry, { freeBytes: 1e6 })).toEqual({
      _tag: "Valid",
      totalBytes: 2 * 2 * 2 * 3 * 4 * 4
    })
    expect(
      validateKvDescriptor({ ...descriptor, modelFingerprint: "cd" }, geometry, { freeBytes: 1e6 })
    ).toMatchObject({ code: "fingerprint_mismatch" })
    expect(validateKvDescriptor({ ...descriptor, headDim: 8 }, geometry, { freeBytes: 1e6 })).toMatchObject({
      code: "kv_invalid"
    })
    expect(
      validateKvDescriptor({ ...descriptor, tokenCount: 17 }, geometry, { freeBytes: 1e6 })
    ).toMatchObject({ code: "kv_invalid" })
    expect(validateKvDescriptor(descriptor, geometry, { freeBytes: 10 })).toMatchObject({
      code: "kv_invalid"
    })
  })

  it("property: chunks in any order and size complete exactly once all bytes arrived; overlaps are refused", () => {
    const tensor = kvTensorBytes(descriptor)
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: tensor }), { minLength: 1, maxLength: 10 }),
        fc.nat(),
        (sizes, seed) => {
          const chunks: Array<{ layer: number; kind: "key" | "value"; offset: number; length: number }> = []
          for (let layer = 0; layer < 2; layer++)
            for (const kind of ["key", "value"] as const) {
              let offset = 0
              let i = 0
              while (offset < tensor) {
                const length = Math.min(sizes[i++ % sizes.length] ?? 1, tensor - offset)
                chunks.push({ layer, kind, offset, length })
                offset += length
              }
            }
          // Shuffle deterministically by seed.
          const order = chunks
            .map((c, i) => ({ c, k: (i * 2654435761 + seed) % 1000003 }))
            .sort((a, b) => a.k - b.k)
            .map((x) => x.c)
          let a: KvAssembly = startKvAssembly(descriptor)
          for (const [i, c] of order.entries()) {
            expect(isKvComplete(a)).toBe(false)
            const r = acceptKvChunk(a, c)
            expect(r._tag).toBe("Accepted")
            if (r._tag === "Accepted") a = r.assembly
            if (i === 0) expect(acceptKvChunk(a, c)._tag).toBe("Rejected")
          }
          expect(isKvComplete(a)).toBe(true)
        }
      )
    )
  })

  it("refuses chunks outside the tensor or for a layer that does not exist", () => {
    const a = startKvAssembly(descriptor)
    expect(acceptKvChunk(a, { layer: 2, kind: "key", offset: 0, length: 4 })._tag).toBe("Rejected")
    expect(
      acceptKvChunk(a, { layer: 0, kind: "key", offset: kvTensorBytes(descriptor) - 2, length: 4 })._tag
    ).toBe("Rejected")
    expect(acceptKvChunk(a, { layer: 0, kind: "key", offset: 0, length: 0 })._tag).toBe("Rejected")
  })
})
