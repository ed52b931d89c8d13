import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { blameFor, decideFailover, maxAttemptsFor } from "../../src/domain/Failover.js"

describe("Failover", () => {
  it("retries node failures before the first byte, with growing backoff, up to the attempt limit", () => {
    expect(decideFailover({ code: "node_failed", attempts: 1, maxAttempts: 3, streamed: false })).toEqual({
      _tag: "Retry",
      backoffMs: 25
    })
    expect(decideFailover({ code: "unavailable", attempts: 2, maxAttempts: 3, streamed: false })).toEqual({
      _tag: "Retry",
      backoffMs: 50
    })
    expect(decideFailover({ code: "node_failed", attempts: 3, maxAttempts: 3, streamed: false })._tag).toBe(
      "GiveUp"
    )
  })

  it("never replays a stream that has started, and does not retry what another node would repeat", () => {
    expect(decideFailover({ code: "node_failed", attempts: 1, maxAttempts: 3, streamed: true })._tag).toBe(
      "GiveUp"
    )
    expect(
      decideFailover({ code: "decode_target_rejected", attempts: 1, maxAttempts: 3, streamed: false })._tag
    ).toBe("GiveUp")
  })

  it("property: a started stream is never retried, and attempts never exceed the limit", () => {
    fc.assert(
      fc.property(
        fc.string(),
        fc.integer({ min: 1, max: 10 }),
        fc.integer({ min: 1, max: 10 }),
        fc.boolean(),
        (code, attempts, maxAttempts, streamed) => {
          const d = decideFailover({ code, attempts, maxAttempts, streamed })
          if (streamed || attempts >= maxAttempts) expect(d._tag).toBe("GiveUp")
          if (d._tag === "Retry") expect(d.backoffMs).toBeGreaterThan(0)
        }
      )
    )
  })
})

describe("blameFor", () => {
  it("a prefill node that lost its decode node mid-handoff is the messenger, not the culprit", () => {
    expect(blameFor("prefill", "unavailable")).toBe("decode")
    expect(blameFor("prefill", "decode_target_rejected")).toBe("prefill")
    expect(blameFor("prefill", "internal")).toBe("prefill")
    expect(blameFor("decode", "unavailable")).toBe("decode")
  })
})

describe("maxAttemptsFor", () => {
  it("property: one attempt per prefill node, at least 1 and at most 3", () => {
    fc.assert(
      fc.property(fc.integer({ min: -5, max: 100 }), (n) => {
        const a = maxAttemptsFor(n)
        expect(a).toBeGreaterThanOrEqual(1)
        expect(a).toBeLessThanOrEqual(3)
        if (n >= 1 && n <= 3) expect(a).toBe(n)
      })
    )
  })
})
