import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  healthTransition,
  initialHealth,
  type HealthState,
  type ProbeResult
} from "../../src/domain/Health.js"

const run = (probes: ReadonlyArray<ProbeResult>, policy = { downAfter: 2, upAfter: 1 }): HealthState =>
  probes.reduce((s, p) => healthTransition(s, p, policy), initialHealth)

describe("Health", () => {
  it("joining -> online on success; a joining node that fails becomes unreachable", () => {
    expect(run(["success"]).status).toBe("online")
    expect(run(["failure"]).status).toBe("unreachable")
  })

  it("online needs downAfter consecutive failures to go down; upAfter successes to come back", () => {
    const policy = { downAfter: 3, upAfter: 2 }
    const up: Array<ProbeResult> = ["success", "success"]
    expect(run(["success"], policy).status).toBe("joining")
    expect(run([...up, "failure", "failure"], policy).status).toBe("online")
    expect(run([...up, "failure", "failure", "failure"], policy).status).toBe("unreachable")
    expect(run([...up, "failure", "failure", "success", "failure", "failure"], policy).status).toBe("online")
    expect(run([...up, "failure", "failure", "failure", "success"], policy).status).toBe("unreachable")
    expect(run([...up, "failure", "failure", "failure", "success", "success"], policy).status).toBe("online")
  })

  it("property: status only changes after the configured number of consecutive probes", () => {
    fc.assert(
      fc.property(
        fc.array(fc.constantFrom<ProbeResult>("success", "failure"), { maxLength: 60 }),
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 1, max: 5 }),
        (probes, downAfter, upAfter) => {
          let s = initialHealth
          for (const p of probes) {
            const next = healthTransition(s, p, { downAfter, upAfter })
            if (s.status === "online" && next.status === "unreachable")
              expect(next.consecutiveFailures).toBeGreaterThanOrEqual(downAfter)
            if (s.status !== "online" && next.status === "online")
              expect(next.consecutiveSuccesses).toBeGreaterThanOrEqual(upAfter)
            if (next.status === "joining")
              expect(probes.slice(0, probes.indexOf(p) + 1).every((x) => x === "success")).toBe(true)
            s = next
          }
        }
      )
    )
  })
})
