import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  emptyRouterMetrics,
  routerStatsBody,
  routerStatsVerboseFrom,
  type RouterStatsSnapshot
} from "../../src/domain/RouterStats.js"
import { formatHost, formatSocketAddress } from "../../src/domain/SocketAddress.js"
import { socketAddress } from "./arbitraries.js"

const snapshotArb: fc.Arbitrary<{ snapshot: RouterStatsSnapshot; hosts: ReadonlyArray<string> }> = fc
  .record({
    prefill: fc.array(socketAddress, { minLength: 0, maxLength: 12 }),
    decode: fc.array(socketAddress, { minLength: 0, maxLength: 12 }),
    hits: fc.array(fc.nat(50), { minLength: 24, maxLength: 24 }),
    counts: fc.array(fc.nat(1_000_000), { minLength: 3, maxLength: 3 }),
    metric: fc.nat(100)
  })
  .map(({ prefill, decode, hits, counts, metric }) => {
    const nodes = [
      ...prefill.map((a, i) => ({ id: `prefill-${i}`, role: "prefill" as const, address: a })),
      ...decode.map((a, i) => ({ id: `decode-${i}`, role: "decode" as const, address: a }))
    ]
    const hitsFor = (role: string) =>
      Object.fromEntries(
        nodes.filter((n) => n.role === role).map((n, i) => [n.id, hits[i % hits.length] ?? 0])
      )
    return {
      hosts: nodes.map((n) => formatHost(n.address)),
      snapshot: {
        metrics: { ...emptyRouterMetrics, total_requests: metric },
        prefill_hits: hitsFor("prefill"),
        decode_hits: hitsFor("decode"),
        nodes: nodes.map((n, i) => ({
          id: n.id,
          role: n.role,
          status: (["online", "joining", "unreachable"] as const)[i % 3]!,
          address: formatSocketAddress(n.address),
          in_flight: counts[0] ?? 0,
          live_sequences: counts[1] ?? 0,
          kv_bytes: counts[2] ?? 0
        }))
      }
    }
  })

describe("RouterStats", () => {
  const snapshot: RouterStatsSnapshot = {
    metrics: { ...emptyRouterMetrics, total_requests: 3 },
    prefill_hits: { "prefill-10": 1, "prefill-2": 2, "prefill-0": 0 },
    decode_hits: { "decode-0": 3 },
    nodes: [
      {
        id: "prefill-10",
        role: "prefill",
        status: "online",
        address: "10.0.0.10:7201",
        in_flight: 0,
        live_sequences: 0,
        kv_bytes: 0
      },
      {
        id: "prefill-2",
        role: "prefill",
        status: "unreachable",
        address: "10.0.0.2:7201",
        in_flight: 1,
        live_sequences: 0,
        kv_bytes: 0
      },
      {
        id: "decode-0",
        role: "decode",
        status: "online",
        address: "[::1]:7202",
        in_flight: 2,
        live_sequences: 2,
        kv_bytes: 4096
      }
    ]
  }

  it("redacts by default: no address key, sorted naturally, hit maps list only nodes with hits", () => {
    const body = routerStatsBody(snapshot, { verbose: false })
    expect(body.addresses_redacted).toBe(true)
    expect(body.nodes.map((n) => n.id)).toEqual(["decode-0", "prefill-2", "prefill-10"])
    expect(Object.keys(body.prefill_hits)).toEqual(["prefill-2", "prefill-10"])
    expect(body.nodes.every((n) => !("address" in n))).toBe(true)
    expect(JSON.stringify(body)).not.toContain("10.0.0.")
  })

  it("verbose shows canonical addresses", () => {
    const body = routerStatsBody(snapshot, { verbose: true })
    expect(body.addresses_redacted).toBe(false)
    expect(body.nodes.find((n) => n.id === "decode-0")?.address).toBe("[::1]:7202")
  })

  it("reads the verbose flag as 1|true|yes|on, trimmed, any case", () => {
    for (const v of ["1", "true", " TRUE ", "yes", "On"]) expect(routerStatsVerboseFrom(v)).toBe(true)
    for (const v of [undefined, "", "0", "false", "no", "off", "verbose", "2"])
      expect(routerStatsVerboseFrom(v)).toBe(false)
  })

  it("property: the redacted body has no address key and no host literal or host:port", () => {
    fc.assert(
      fc.property(snapshotArb, ({ snapshot, hosts }) => {
        const body = routerStatsBody(snapshot, { verbose: false })
        const text = JSON.stringify(body)
        expect(text).not.toContain('"address"')
        for (const h of hosts) expect(text).not.toContain(h)
        for (const n of snapshot.nodes) expect(text).not.toContain(n.address)
      }),
      { numRuns: 300 }
    )
  })

  it("property: the verbose body contains every node's canonical address", () => {
    fc.assert(
      fc.property(snapshotArb, ({ snapshot }) => {
        const text = JSON.stringify(routerStatsBody(snapshot, { verbose: true }))
        for (const n of snapshot.nodes) expect(text).toContain(`"address":"${n.address}"`)
      })
    )
  })

  it("property: the body is plain JSON (round-trips through JSON.stringify)", () => {
    fc.assert(
      fc.property(snapshotArb, fc.boolean(), ({ snapshot }, verbose) => {
        const body = routerStatsBody(snapshot, { verbose })
        expect(JSON.parse(JSON.stringify(body))).toEqual(body)
      })
    )
  })
})
