import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  arrivalTimes,
  meetsSlo,
  parseGoodput,
  percentile,
  randomLengths,
  summarize,
  type RequestOutcome
} from "../../src/domain/BenchStats.js"
import { rngFromSeed } from "../../src/domain/Sampling.js"

const outcome = (over: Partial<RequestOutcome> = {}): RequestOutcome => ({
  success: true,
  promptTokens: 10,
  outputTokens: 5,
  ttft: 0.1,
  e2el: 0.5,
  itl: [0.1, 0.1, 0.1, 0.1],
  ...over
})

describe("BenchStats", () => {
  it("percentiles interpolate like numpy", () => {
    expect(percentile([1, 2, 3, 4], 50)).toBe(2.5)
    expect(percentile([1, 2, 3, 4], 99)).toBeCloseTo(3.97)
    expect(percentile([5], 90)).toBe(5)
    expect(percentile([], 50)).toBeNaN()
  })

  it("property: a percentile lies within the data and grows with p", () => {
    fc.assert(
      fc.property(
        fc.array(fc.double({ min: -1e6, max: 1e6, noNaN: true }), { minLength: 1, maxLength: 50 }),
        fc.double({ min: 0, max: 100, noNaN: true }),
        fc.double({ min: 0, max: 100, noNaN: true }),
        (xs, p, q) => {
          const v = percentile(xs, p)
          expect(v).toBeGreaterThanOrEqual(Math.min(...xs))
          expect(v).toBeLessThanOrEqual(Math.max(...xs))
          if (p <= q) expect(v).toBeLessThanOrEqual(percentile(xs, q) + 1e-9)
        }
      )
    )
  })

  it("summarizes with vLLM's field names: TPOT per request, ITL over every gap, goodput against the SLOs", () => {
    const s = summarize(
      [
        outcome(),
        outcome({ ttft: 0.3, e2el: 1.3, itl: [0.25, 0.25, 0.25, 0.25] }),
        outcome({ success: false, outputTokens: 0 })
      ],
      2,
      { ttftMs: 200 }
    )
    expect(s["completed"]).toBe(2)
    expect(s["failed"]).toBe(1)
    expect(s["request_throughput"]).toBe(1)
    expect(s["request_goodput"]).toBe(0.5)
    expect(s["output_throughput"]).toBe(5)
    expect(s["total_token_throughput"]).toBe(15)
    expect(s["mean_ttft_ms"]).toBeCloseTo(200)
    expect(s["median_tpot_ms"]).toBeCloseTo((100 + 250) / 2)
    expect(s["mean_itl_ms"]).toBeCloseTo(175)
    expect(s["p99_e2el_ms"]).toBeCloseTo(1292)
    for (const k of [
      "mean_ttft_ms",
      "median_ttft_ms",
      "p99_ttft_ms",
      "mean_tpot_ms",
      "mean_itl_ms",
      "p99_itl_ms",
      "mean_e2el_ms",
      "p90_ttft_ms"
    ])
      expect(s).toHaveProperty(k)
    expect(summarize([outcome()], 1)["request_goodput"]).toBeNull()
  })

  it("goodput counts a request only when it meets every SLO given", () => {
    expect(meetsSlo(outcome(), { ttftMs: 100, tpotMs: 100, e2elMs: 500 })).toBe(true)
    expect(meetsSlo(outcome(), { tpotMs: 99 })).toBe(false)
    expect(meetsSlo(outcome({ success: false }), {})).toBe(false)
    expect(parseGoodput(["ttft:200", "tpot:50 e2el:1000"])).toEqual({
      ok: true,
      slo: { ttftMs: 200, tpotMs: 50, e2elMs: 1000 }
    })
    expect(parseGoodput(["latency:3"]).ok).toBe(false)
  })

  it("arrivals: same seed, same schedule; infinite rate sends at once; mean gap 1/rate; burstiness sets the spread", () => {
    expect(arrivalTimes(50, 4, 1, rngFromSeed(7))).toEqual(arrivalTimes(50, 4, 1, rngFromSeed(7)))
    expect(arrivalTimes(3, Infinity, 1, rngFromSeed(7))).toEqual([0, 0, 0])
    const gaps = (shape: number) => {
      const t = arrivalTimes(20_000, 10, shape, rngFromSeed(3))
      return t.map((x, i) => x - (t[i - 1] ?? 0))
    }
    const cv2 = (xs: ReadonlyArray<number>) => {
      const m = xs.reduce((a, b) => a + b, 0) / xs.length
      return xs.reduce((a, b) => a + (b - m) ** 2, 0) / xs.length / (m * m)
    }
    const poisson = gaps(1)
    expect(poisson.reduce((a, b) => a + b, 0) / poisson.length).toBeCloseTo(0.1, 2)
    expect(cv2(poisson)).toBeCloseTo(1, 1)
    expect(cv2(gaps(4))).toBeCloseTo(0.25, 1)
    expect(cv2(gaps(0.5))).toBeCloseTo(2, 0)
  })

  it("property: arrival times never decrease; random lengths stay within the range", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 200 }),
        fc.double({ min: 0.1, max: 100, noNaN: true }),
        fc.double({ min: 0.1, max: 5, noNaN: true }),
        fc.nat(),
        (n, rate, b, seed) => {
          const t = arrivalTimes(n, rate, b, rngFromSeed(seed))
          for (let i = 1; i < t.length; i++) expect(t[i]!).toBeGreaterThanOrEqual(t[i - 1]!)
          const { lengths } = randomLengths(n, 100, 0.5, rngFromSeed(seed))
          for (const l of lengths) expect(l >= 50 && l <= 150).toBe(true)
        }
      )
    )
  })
})
