import fc from "fast-check"
import { describe, expect, it } from "vitest"
import { parseDuration, parseSize } from "../../src/domain/Units.js"

describe("Units", () => {
  it("parses durations (bare number = seconds) and sizes", () => {
    expect(parseDuration("500ms")).toEqual({ ok: true, value: 500 })
    expect(parseDuration("2s")).toEqual({ ok: true, value: 2000 })
    expect(parseDuration("1m")).toEqual({ ok: true, value: 60000 })
    expect(parseDuration("30")).toEqual({ ok: true, value: 30000 })
    expect(parseDuration("soon").ok).toBe(false)
    expect(parseSize("4MiB")).toEqual({ ok: true, value: 4 * 1024 * 1024 })
    expect(parseSize("64 KiB")).toEqual({ ok: true, value: 65536 })
    expect(parseSize("123")).toEqual({ ok: true, value: 123 })
    expect(parseSize("lots").ok).toBe(false)
  })

  it("property: never throws", () => {
    fc.assert(fc.property(fc.string(), (s) => void (parseDuration(s), parseSize(s))))
  })
})
