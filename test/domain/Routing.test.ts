import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  chooseDecode,
  choosePrefill,
  initialRoutingState,
  routingPolicies,
  type NodeView,
  type RoutingState
} from "../../src/domain/Routing.js"

const statusArb = fc.constantFrom("online" as const, "joining" as const, "unreachable" as const)
const nodesArb = fc
  .array(
    fc.record({
      status: statusArb,
      inFlight: fc.nat(20),
      load: fc.option(
        fc.record({
          liveSequences: fc.nat(32),
          kvBytes: fc.nat(1e9),
          freeKvBytes: fc.nat(1e9),
          queueLength: fc.nat(8)
        }),
        { nil: undefined }
      )
    }),
    { maxLength: 10 }
  )
  .map((xs) => xs.map((x, i): NodeView => ({ id: `prefill-${i}`, ...x })))
const drawsArb = fc.tuple(
  fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }),
  fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true })
)
const policyArb = fc.constantFrom(...routingPolicies)

describe("Routing", () => {
  it("property: never picks a node that is not online; NoHealthyNode iff none is online", () => {
    fc.assert(
      fc.property(nodesArb, policyArb, drawsArb, fc.nat(100), (nodes, policy, draws, cursor) => {
        const state: RoutingState = { prefillCursor: cursor, decodeCursor: cursor }
        for (const d of [
          choosePrefill(nodes, policy, state, draws),
          chooseDecode(nodes, policy, state, draws)
        ]) {
          if (d._tag === "Chosen") expect(nodes.find((n) => n.id === d.id)?.status).toBe("online")
          else expect(nodes.some((n) => n.status === "online")).toBe(false)
        }
      }),
      { numRuns: 500 }
    )
  })

  it("property: round-robin over k online nodes is fair within 1 over any k*m picks", () => {
    fc.assert(
      fc.property(nodesArb, fc.integer({ min: 1, max: 7 }), fc.nat(50), (nodes, m, start) => {
        const online = nodes.filter((n) => n.status === "online")
        fc.pre(online.length > 0)
        let state: RoutingState = { ...initialRoutingState, prefillCursor: start }
        const counts = new Map<string, number>()
        for (let i = 0; i < online.length * m; i++) {
          const d = choosePrefill(nodes, "round-robin", state, [0, 0])
          if (d._tag !== "Chosen") throw new Error("no node")
          counts.set(d.id, (counts.get(d.id) ?? 0) + 1)
          state = d.state
        }
        const values = online.map((n) => counts.get(n.id) ?? 0)
        expect(Math.max(...values) - Math.min(...values)).toBeLessThanOrEqual(1)
      })
    )
  })

  it("property: same inputs, same output", () => {
    fc.assert(
      fc.property(nodesArb, policyArb, drawsArb, (nodes, policy, draws) => {
        expect(choosePrefill(nodes, policy, initialRoutingState, draws)).toEqual(
          choosePrefill(nodes, policy, initialRoutingState, draws)
        )
      })
    )
  })

  it("property: least-loaded picks a node with the fewest in flight", () => {
    fc.assert(
      fc.property(nodesArb, drawsArb, (nodes, draws) => {
        const d = chooseDecode(nodes, "least-loaded", initialRoutingState, draws)
        fc.pre(d._tag === "Chosen")
        if (d._tag !== "Chosen") return
        const min = Math.min(...nodes.filter((n) => n.status === "online").map((n) => n.inFlight))
        expect(nodes.find((n) => n.id === d.id)?.inFlight).toBe(min)
      })
    )
  })

  it("least-loaded prefers more free KV at equal dispatch counts, and the draw breaks full ties", () => {
    const load = (free: number) => ({ liveSequences: 0, kvBytes: 0, freeKvBytes: free, queueLength: 0 })
    const nodes: Array<NodeView> = [
      { id: "decode-0", status: "online", inFlight: 1, load: load(100) },
      { id: "decode-1", status: "online", inFlight: 1, load: load(900) },
      { id: "decode-2", status: "online", inFlight: 1, load: load(900) }
    ]
    const picks = new Set(
      [0, 0.4, 0.6, 0.99].map((u) => {
        const d = chooseDecode(nodes, "least-loaded", initialRoutingState, [u, 0])
        return d._tag === "Chosen" ? d.id : "none"
      })
    )
    expect(picks).toEqual(new Set(["decode-1", "decode-2"]))
  })

  it("a burst counted at dispatch spreads over nodes (regression: cache-aware routing piling onto one worker)", () => {
    const nodes: Array<NodeView> = [0, 1, 2, 3].map((i) => ({
      id: `decode-${i}`,
      status: "online",
      inFlight: 0
    }))
    for (let r = 0; r < 8; r++) {
      const d = chooseDecode(nodes, "least-loaded", initialRoutingState, [0, 0])
      if (d._tag !== "Chosen") throw new Error("none")
      const n = nodes.find((x) => x.id === d.id)!
      nodes[nodes.indexOf(n)] = { ...n, inFlight: n.inFlight + 1 }
    }
    expect(nodes.map((n) => n.inFlight)).toEqual([2, 2, 2, 2])
  })

  it("power-of-two picks the less loaded of two distinct candidates", () => {
    const nodes: Array<NodeView> = [
      { id: "prefill-0", status: "online", inFlight: 5 },
      { id: "prefill-1", status: "online", inFlight: 1 }
    ]
    for (const u of [0, 0.3, 0.7, 0.99]) {
      const d = choosePrefill(nodes, "power-of-two", initialRoutingState, [u, u])
      expect(d._tag === "Chosen" && d.id).toBe("prefill-1")
    }
  })
})
