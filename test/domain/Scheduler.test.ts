import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  DECODE_BUFFER_STEP,
  decodeBufferFor,
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

describe("decodeBufferFor (the in-place layout's decode buffer)", () => {
  // Shapes the function itself makes: positions in whole steps (0 before the first step).
  const shapeArb = fc.record({
    rows: fc.nat(64),
    positions: fc.nat(80).map((n) => n * DECODE_BUFFER_STEP)
  })

  const needArb = fc.record({
    rows: fc.integer({ min: 1, max: 64 }),
    positions: fc.integer({ min: 1, max: 5000 })
  })

  it("property: always fits the need, in whole steps of positions", () => {
    fc.assert(
      fc.property(shapeArb, needArb, (current, need) => {
        const next = decodeBufferFor(current, need)
        expect(next.rows).toBeGreaterThanOrEqual(need.rows)
        expect(next.positions).toBeGreaterThanOrEqual(need.positions)
        if (next !== current) expect(next.positions % DECODE_BUFFER_STEP).toBe(0)
      })
    )
  })

  it("property: never far too long: fewer positions than four times what the need fits in", () => {
    fc.assert(
      fc.property(shapeArb, needArb, (current, need) => {
        const next = decodeBufferFor(current, need)
        const fitted = Math.ceil(need.positions / DECODE_BUFFER_STEP) * DECODE_BUFFER_STEP
        expect(4 * fitted).toBeGreaterThan(next.positions)
      })
    )
  })

  it("property: stable: the same need again reallocates nothing, nor does any need within a factor of four below", () => {
    fc.assert(
      fc.property(shapeArb, needArb, fc.double({ min: 0.26, max: 1, noNaN: true }), (current, need, f) => {
        const next = decodeBufferFor(current, need)
        expect(decodeBufferFor(next, need)).toBe(next)
        const smaller = { rows: need.rows, positions: Math.max(1, Math.floor(next.positions * f)) }
        if (4 * Math.ceil(smaller.positions / DECODE_BUFFER_STEP) * DECODE_BUFFER_STEP > next.positions)
          expect(decodeBufferFor(next, smaller)).toBe(next)
      })
    )
  })

  it("grows rows by doubling (at least 8) and shrinks positions only to fit", () => {
    expect(decodeBufferFor({ rows: 0, positions: 0 }, { rows: 1, positions: 20 })).toEqual({
      rows: 8,
      positions: 64
    })
    expect(decodeBufferFor({ rows: 8, positions: 64 }, { rows: 9, positions: 20 })).toEqual({
      rows: 16,
      positions: 64
    })
    expect(decodeBufferFor({ rows: 8, positions: 4096 }, { rows: 2, positions: 300 })).toEqual({
      rows: 8,
      positions: 320
    })
    expect(decodeBufferFor({ rows: 8, positions: 4096 }, { rows: 2, positions: 1100 })).toEqual({
      rows: 8,
      positions: 4096
    })
  })
})
