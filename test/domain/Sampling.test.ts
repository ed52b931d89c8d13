import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  argmax,
  greedySampling,
  rngFromSeed,
  sample,
  type SamplingParams
} from "../../src/domain/Sampling.js"

const logitsArb = fc
  .array(fc.float({ min: -20, max: 20, noNaN: true }), { minLength: 1, maxLength: 300 })
  .map((xs) => Float32Array.from(xs))
const paramsArb: fc.Arbitrary<SamplingParams> = fc.record({
  temperature: fc.double({ min: 0.05, max: 2, noNaN: true }),
  topP: fc.double({ min: 0.01, max: 1, noNaN: true }),
  topK: fc.integer({ min: 0, max: 50 }),
  minP: fc.double({ min: 0, max: 0.5, noNaN: true }),
  repetitionPenalty: fc.double({ min: 0.5, max: 2, noNaN: true }),
  frequencyPenalty: fc.double({ min: -2, max: 2, noNaN: true }),
  presencePenalty: fc.double({ min: -2, max: 2, noNaN: true })
})
const history = fc.record({
  promptTokens: fc.array(fc.nat(299), { maxLength: 20 }),
  outputTokens: fc.array(fc.nat(299), { maxLength: 20 })
})

describe("Sampling", () => {
  it("greedy at temperature 0 picks the argmax, lowest id on ties", () => {
    expect(sample(Float32Array.from([1, 3, 3, 2]), greedySampling, rngFromSeed(1)).token).toBe(1)
  })

  it("property: top_k = 1 equals argmax, whatever the temperature", () => {
    fc.assert(
      fc.property(logitsArb, paramsArb, fc.nat(), (logits, p, seed) => {
        const params = { ...p, topK: 1, repetitionPenalty: 1, frequencyPenalty: 0, presencePenalty: 0 }
        expect(sample(logits, params, rngFromSeed(seed)).token).toBe(argmax(logits))
      })
    )
  })

  it("property: same seed, same token (and same next PRNG state)", () => {
    fc.assert(
      fc.property(logitsArb, paramsArb, fc.nat(), history, (logits, params, seed, h) => {
        expect(sample(logits, params, rngFromSeed(seed), h)).toEqual(
          sample(logits, params, rngFromSeed(seed), h)
        )
      })
    )
  })

  it("property: a token whose logit is -Infinity is never chosen", () => {
    fc.assert(
      fc.property(
        logitsArb,
        paramsArb,
        fc.nat(),
        fc.array(fc.boolean(), { minLength: 300, maxLength: 300 }),
        history,
        (logits, params, seed, masked, h) => {
          const row = Float32Array.from(logits, (v, i) => (masked[i] === true ? -Infinity : v))
          fc.pre(row.some((v) => v > -Infinity))
          const { token } = sample(row, params, rngFromSeed(seed), h)
          expect(row[token]).toBeGreaterThan(-Infinity)
          expect(sample(row, { ...params, temperature: 0 }, rngFromSeed(seed), h).token).not.toBe(-1)
        }
      ),
      { numRuns: 300 }
    )
  })

  it("property: the chosen token is within top_k", () => {
    fc.assert(
      fc.property(logitsArb, paramsArb, fc.nat(), (logits, p, seed) => {
        const params = {
          ...p,
          repetitionPenalty: 1,
          frequencyPenalty: 0,
          presencePenalty: 0,
          topK: Math.max(1, p.topK)
        }
        const { token } = sample(logits, params, rngFromSeed(seed))
        const higher = Array.from(logits).filter((v) => v > (logits[token] as number)).length
        expect(higher).toBeLessThan(params.topK)
      })
    )
  })

  it("does not modify the logits it is given", () => {
    const logits = Float32Array.from([1, 2, 3])
    sample(
      logits,
      { ...greedySampling, temperature: 1, repetitionPenalty: 2, presencePenalty: 1 },
      rngFromSeed(3),
      { promptTokens: [2], outputTokens: [2] }
    )
    expect(Array.from(logits)).toEqual([1, 2, 3])
  })

  it("penalties push repeated tokens down", () => {
    const logits = Float32Array.from([2, 1.9])
    expect(
      sample(logits, greedySampling, rngFromSeed(0), { promptTokens: [], outputTokens: [0] }).token
    ).toBe(0)
    expect(
      sample(logits, { ...greedySampling, presencePenalty: 0.5 }, rngFromSeed(0), {
        promptTokens: [],
        outputTokens: [0]
      }).token
    ).toBe(1)
    expect(
      sample(logits, { ...greedySampling, repetitionPenalty: 1.5 }, rngFromSeed(0), {
        promptTokens: [0],
        outputTokens: []
      }).token
    ).toBe(1)
    expect(
      sample(logits, { ...greedySampling, frequencyPenalty: 0.06 }, rngFromSeed(0), {
        promptTokens: [],
        outputTokens: [0, 0]
      }).token
    ).toBe(1)
  })

  it("sampled frequencies follow the softmax (chi-square-free sanity check over many draws)", () => {
    const logits = Float32Array.from([Math.log(0.7), Math.log(0.2), Math.log(0.1)])
    const counts = [0, 0, 0]
    let rng = rngFromSeed(123)
    for (let i = 0; i < 20000; i++) {
      const r = sample(logits, { ...greedySampling, temperature: 1 }, rng)
      counts[r.token]! += 1
      rng = r.rng
    }
    expect(counts[0]! / 20000).toBeCloseTo(0.7, 1)
    expect(counts[2]! / 20000).toBeCloseTo(0.1, 1)
  })
})
