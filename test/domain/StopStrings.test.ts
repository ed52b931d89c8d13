import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { finishAfter, suppressEarlyEos } from "../../src/domain/Generation.js"
import { flushStop, initialStopScan, scanStop } from "../../src/domain/StopStrings.js"

const run = (pieces: ReadonlyArray<string>, stops: ReadonlyArray<string>) => {
  let scan = initialStopScan
  let out = ""
  for (const p of pieces) {
    const step = scanStop(scan, p, stops)
    out += step.release
    scan = step.scan
    if (step.stopped) return { out, stopped: true }
  }
  return { out: out + flushStop(scan), stopped: false }
}

describe("StopStrings", () => {
  it("finds a stop string split across pieces and releases only the text before it", () => {
    expect(run(["hel", "lo EN", "D more"], ["END"])).toEqual({ out: "hello ", stopped: true })
    expect(run(["abc"], [])).toEqual({ out: "abc", stopped: false })
    expect(run(["a", "E", "N", "x"], ["END"])).toEqual({ out: "aENx", stopped: false })
  })

  it("property: output equals the text cut at the first stop occurrence, however it is split", () => {
    fc.assert(
      fc.property(
        fc.string({ maxLength: 30 }),
        fc.array(fc.string({ minLength: 1, maxLength: 4 }), { maxLength: 3 }),
        fc.array(fc.nat(30), { maxLength: 8 }),
        (text, stops, cuts) => {
          const points = [...new Set(cuts.map((c) => c % (text.length + 1)))].sort((a, b) => a - b)
          const pieces: Array<string> = []
          let prev = 0
          for (const p of [...points, text.length]) {
            pieces.push(text.slice(prev, p))
            prev = p
          }
          const first = Math.min(...stops.map((s) => text.indexOf(s)).filter((i) => i >= 0))
          const expected = Number.isFinite(first)
            ? { out: text.slice(0, first), stopped: true }
            : { out: text, stopped: false }
          expect(run(pieces, stops)).toEqual(expected)
        }
      ),
      { numRuns: 500 }
    )
  })
})

describe("Generation rules", () => {
  const rules = { maxTokens: 5, minTokens: 2, ignoreEos: false, eosTokenIds: new Set([2]) }
  it("stops on EOS after min_tokens, at max_tokens otherwise, never on EOS with ignore_eos", () => {
    expect(finishAfter(2, 3, rules)).toBe("stop")
    expect(finishAfter(7, 3, rules)).toBeUndefined()
    expect(finishAfter(7, 5, rules)).toBe("length")
    expect(finishAfter(2, 3, { ...rules, ignoreEos: true })).toBeUndefined()
  })
  it("suppresses EOS while fewer than min_tokens were generated", () => {
    expect(suppressEarlyEos(Float32Array.from([0, 0, 9]), 1, rules)[2]).toBe(-Infinity)
    expect(suppressEarlyEos(Float32Array.from([0, 0, 9]), 2, rules)[2]).toBe(9)
  })
})
