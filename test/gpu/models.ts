/** Built-in models for runtime tests, generated once per machine into a temp cache (atomic, seeded). */
import { tmpdir } from "node:os"
import { join } from "node:path"
import { ensureBuiltin } from "../../src/gpu/ModelStore.js"
import type { BuiltinSize, KvLayout } from "../../src/gpu/ModelGenerator.js"

export const testCacheDir = join(tmpdir(), "tandem-test-models")

export const builtinDir = (size: BuiltinSize): string =>
  ensureBuiltin(size, { TANDEM_CACHE_DIR: testCacheDir })

/**
 * The built-in weights in either KV layout: `inplace` is the built-in model itself, `concat` the same
 * model in the Optimum layout that exported models use (the runtime's other path).
 */
export const modelDir = (size: BuiltinSize, layout: KvLayout): string =>
  ensureBuiltin(size, { TANDEM_CACHE_DIR: testCacheDir }, layout)

export const argmax = (a: Float32Array): number => {
  let best = 0
  for (let i = 1; i < a.length; i++) if ((a[i] as number) > (a[best] as number)) best = i
  return best
}

/** Gap between the two largest logits (the near-tie rule: a divergence is allowed only below 1e-4). */
export const top2Gap = (a: Float32Array): number => {
  let first = -Infinity
  let second = -Infinity
  for (const v of a) {
    if (v > first) {
      second = first
      first = v
    } else if (v > second) second = v
  }
  return first - second
}

export const maxAbsDiff = (a: Float32Array, b: Float32Array): number => {
  let m = 0
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs((a[i] as number) - (b[i] as number))
    if (Number.isFinite(d)) m = Math.max(m, d)
    else if (a[i] !== b[i]) return Infinity
  }
  return m
}

/** Deterministic pseudo-random prompt of byte-tokenizer ids (3..258). */
export const prompt = (n: number, seed: number): Array<number> => {
  let s = seed >>> 0
  return Array.from({ length: n }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0
    return 3 + (s % 256)
  })
}
