import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  decideHandoff,
  deriveKvBudget,
  grantableFromQueue,
  planIteration,
  type PrefillJobView
} from "../../src/domain/Scheduler.js"

const limitsArb = fc.record({
  maxBatch: fc.integer({ min: 1, max: 64 }),
  maxBatchPrefillTokens: fc.integer({ min: 1, max: 8192 }),
  prefillChunk: fc.integer({ min: 1, max: 2048 })
})
const jobsArb = fc
  .array(fc.record({ remaining: fc.integer({ min: 1, max: 5000 }), started: fc.boolean() }), {
    maxLength: 30
  })
  .map((xs) => xs.map((x, i): PrefillJobView => ({ id: `r${i}`, ...x })))

describe("Scheduler", () => {
  it("property: never over the batch limit, chunks never longer than --prefill-chunk, prefill tokens within the budget", () => {
    fc.assert(
      fc.property(jobsArb, fc.nat(80), fc.nat(80), limitsArb, (jobs, running, waiting, limits) => {
        const plan = planIteration(jobs, { running: Math.min(running, limits.maxBatch), waiting }, limits)
        expect(Math.min(running, limits.maxBatch) + plan.admitDecodes).toBeLessThanOrEqual(limits.maxBatch)
        expect(plan.admitDecodes).toBeLessThanOrEqual(waiting)
        const all = [...plan.fresh, ...plan.continued]
        for (const p of all) expect(p.tokens).toBeLessThanOrEqual(limits.prefillChunk)
        const total = all.reduce((n, p) => n + p.tokens, 0)
        expect(total).toBeLessThanOrEqual(Math.max(limits.prefillChunk, limits.maxBatchPrefillTokens))
        if (jobs.length > 0) expect(all.length).toBeGreaterThan(0)
      }),
      { numRuns: 500 }
    )
  })

  it("property: no request starves: every queued prompt is fully prefilled within its share of iterations, in arrival order", () => {
    fc.assert(
      fc.property(
        jobsArb.map((js) => js.map((j) => ({ ...j, started: false }))),
        limitsArb,
        (initial, limits) => {
          let queue = initial.map((j) => ({ ...j }))
          const finishedAt = new Map<string, number>()
          const bound = initial.reduce((n, j) => n + Math.ceil(j.remaining / limits.prefillChunk), 0)
          for (let it = 1; queue.length > 0; it++) {
            expect(it).toBeLessThanOrEqual(bound)
            const plan = planIteration(queue, { running: 0, waiting: 0 }, limits)
            for (const p of [...plan.fresh, ...plan.continued]) {
              const j = queue.find((x) => x.id === p.id)!
              j.remaining -= p.tokens
              j.started = true
              if (j.remaining === 0) finishedAt.set(j.id, it)
            }
            queue = queue.filter((j) => j.remaining > 0)
          }
          expect(finishedAt.size).toBe(initial.length)
        }
      )
    )
  })

  it("property: waiting decode sequences are admitted as capacity frees, and a cancel frees capacity at once", () => {
    fc.assert(
      fc.property(limitsArb, fc.nat(40), fc.nat(40), (limits, running, waiting) => {
        const r = Math.min(running, limits.maxBatch)
        const before = planIteration([], { running: r, waiting }, limits).admitDecodes
        if (r > 0)
          expect(planIteration([], { running: r - 1, waiting }, limits).admitDecodes).toBeGreaterThanOrEqual(
            Math.min(waiting, before + 1)
          )
      })
    )
  })

  it("property: KV budget: a grant never goes over the budget; queued handoffs go in arrival order; freed bytes admit more", () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 1e6 }),
        fc.nat(1e6),
        fc.array(fc.integer({ min: 1, max: 5e5 }), { maxLength: 20 }),
        fc.integer({ min: 1, max: 8 }),
        (budget, used0, queue, maxQueued) => {
          const used = Math.min(used0, budget)
          for (const bytes of queue) {
            const d = decideHandoff(bytes, { budgetBytes: budget, usedBytes: used, queued: 0, maxQueued })
            if (d._tag === "Grant") expect(used + bytes).toBeLessThanOrEqual(budget)
            if (bytes > budget) expect(d._tag).toBe("Refuse")
          }
          const n = grantableFromQueue(queue, { budgetBytes: budget, usedBytes: used })
          expect(used + queue.slice(0, n).reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(budget)
          if (n < queue.length)
            expect(used + queue.slice(0, n + 1).reduce((a, b) => a + b, 0)).toBeGreaterThan(budget)
          // Freeing capacity (a finished or cancelled sequence) never admits fewer.
          expect(
            grantableFromQueue(queue, { budgetBytes: budget, usedBytes: Math.max(0, used - 1000) })
          ).toBeGreaterThanOrEqual(n)
        }
      )
    )
  })

  it("queues rather than fails when full, refuses what can never fit or a full queue, and keeps FIFO behind a waiting head", () => {
    const view = { budgetBytes: 100, usedBytes: 90, queued: 0, maxQueued: 2 }
    expect(decideHandoff(5, view)._tag).toBe("Grant")
    expect(decideHandoff(20, view)._tag).toBe("Queue")
    expect(decideHandoff(200, view)._tag).toBe("Refuse")
    expect(decideHandoff(20, { ...view, queued: 2 })._tag).toBe("Refuse")
    // Something is already waiting: a small newcomer does not overtake it.
    expect(decideHandoff(5, { ...view, queued: 1 })._tag).toBe("Queue")
    expect(grantableFromQueue([50, 5], { budgetBytes: 100, usedBytes: 90 })).toBe(0)
  })
})

describe("deriveKvBudget", () => {
  it("takes --kv-budget-mb when given, else a quarter of free memory capped at 4 GiB", () => {
    expect(deriveKvBudget(1, 0)).toBe(1024 * 1024)
    expect(deriveKvBudget(undefined, 8 * 1024 ** 3)).toBe(2 * 1024 ** 3)
    expect(deriveKvBudget(undefined, 64 * 1024 ** 3)).toBe(4 * 1024 ** 3)
    fc.assert(
      fc.property(fc.nat(), (free) => {
        expect(deriveKvBudget(undefined, free)).toBeLessThanOrEqual(free / 4)
      })
    )
  })
})
