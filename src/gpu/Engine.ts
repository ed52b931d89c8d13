/**
 * One engine loop per process over one Runtime: every iteration runs the planned prefill work, then one
 * decode step over all running sequences (continuous batching: sequences join and leave between any two
 * steps; a cancelled one leaves at once and its KV is freed). Used by `serve` (both), prefill nodes
 * (prefill only) and decode nodes (decode only).
 */
import { finishAfter, suppressEarlyEos, type StopRules } from "../domain/Generation.js"
import { type Rng, sample, type SamplingParams } from "../domain/Sampling.js"
import { planIteration, type SchedulerLimits } from "../domain/Scheduler.js"
import type { FinishReason } from "../domain/WireFrames.js"
import type { Runtime, Sequence } from "./Runtime.js"

export class Cancelled extends Error {
  readonly _tag = "Cancelled"
  constructor() {
    super("cancelled")
  }
}

interface PrefillJob {
  readonly id: string
  readonly tokens: ReadonlyArray<number>
  done: number
  seq: Sequence | undefined
  cancelled: boolean
  resolve(r: { seq: Sequence; logits: Float32Array }): void
  reject(e: Error): void
}

/** A sequence generating on this engine, after its first token. */
export interface DecodeRequest {
  readonly id: string
  readonly seq: Sequence
  readonly promptTokens: ReadonlyArray<number>
  /** Tokens generated so far (the first one included). */
  readonly outputTokens: Array<number>
  rng: Rng
  readonly sampling: SamplingParams
  readonly rules: StopRules
  /** Token number `index` (0-based over the whole completion). */
  onToken(token: number, index: number): void
  onDone(reason: FinishReason, completionTokens: number): void
  onError(error: Error): void
}

export interface EngineStats {
  readonly liveSequences: number
  readonly kvBytes: number
  readonly waiting: number
  readonly prefillQueue: number
}

export class Engine {
  private readonly prefillQueue: Array<PrefillJob> = []
  private readonly waiting: Array<DecodeRequest> = []
  private readonly running = new Map<string, DecodeRequest>()
  /** Sequences held outside the decode batch (prefilled, awaiting handoff), by request id. */
  private readonly held = new Map<string, Sequence>()
  private looping = false
  private stopped = false

  constructor(
    readonly runtime: Runtime,
    private readonly limits: SchedulerLimits
  ) {}

  stats(): EngineStats {
    let tokens = 0
    for (const r of this.running.values()) tokens += r.seq.length
    for (const r of this.waiting) tokens += r.seq.length
    for (const s of this.held.values()) tokens += s.length
    for (const j of this.prefillQueue) tokens += j.seq?.length ?? 0
    return {
      liveSequences: this.running.size + this.waiting.length + this.held.size,
      kvBytes: this.runtime.kvBytesFor(tokens),
      waiting: this.waiting.length,
      prefillQueue: this.prefillQueue.length
    }
  }

  /** Prefills a prompt (batched with others, chunked when long). The sequence is held until released. */
  prefill(id: string, tokens: ReadonlyArray<number>): Promise<{ seq: Sequence; logits: Float32Array }> {
    return new Promise((resolve, reject) => {
      this.prefillQueue.push({ id, tokens, done: 0, seq: undefined, cancelled: false, resolve, reject })
      this.kick()
    }).then((r) => {
      const result = r as { seq: Sequence; logits: Float32Array }
      this.held.set(id, result.seq)
      return result
    })
  }

  /** Adds a sequence to the decode batch (it joins at the next step). */
  decode(request: DecodeRequest): void {
    this.held.delete(request.id)
    this.waiting.push(request)
    this.kick()
  }

  /** Holds an imported sequence (e.g. KV received) under `id` until it decodes or is released. */
  hold(id: string, seq: Sequence): void {
    this.held.set(id, seq)
  }

  /** Takes a held sequence out of the held table (the caller is about to decode it). */
  takeHeld(id: string): Sequence | undefined {
    const seq = this.held.get(id)
    this.held.delete(id)
    return seq
  }

  /** Frees a held sequence (after its KV was shipped, or on failure). */
  release(id: string): void {
    const seq = this.held.get(id)
    if (seq !== undefined) this.runtime.free(seq)
    this.held.delete(id)
  }

  /** Cancels whatever `id` is doing here and frees its KV at once. True when something was found. */
  cancel(id: string): boolean {
    let found = false
    const job = this.prefillQueue.find((j) => j.id === id)
    if (job !== undefined) {
      job.cancelled = true
      found = true
    }
    const w = this.waiting.findIndex((r) => r.id === id)
    if (w >= 0) {
      const [r] = this.waiting.splice(w, 1)
      if (r !== undefined) this.runtime.free(r.seq)
      found = true
    }
    const r = this.running.get(id)
    if (r !== undefined) {
      this.running.delete(id)
      this.runtime.free(r.seq)
      found = true
    }
    if (this.held.has(id)) {
      this.release(id)
      found = true
    }
    return found
  }

  stop(): void {
    this.stopped = true
  }

  private kick(): void {
    if (this.looping || this.stopped) return
    this.looping = true
    setImmediate(() => {
      this.loop().catch((e: unknown) => {
        // An engine failure fails everything in flight; the process keeps serving new work.
        const error = e instanceof Error ? e : new Error(String(e))
        for (const r of [...this.running.values(), ...this.waiting]) r.onError(error)
        this.running.clear()
        this.waiting.length = 0
        for (const j of this.prefillQueue.splice(0)) j.reject(error)
        this.looping = false
      })
    })
  }

  private async loop(): Promise<void> {
    while (
      !this.stopped &&
      (this.prefillQueue.length > 0 || this.waiting.length > 0 || this.running.size > 0)
    ) {
      await this.prefillIteration()
      await this.decodeIteration()
      // Let I/O (new requests, cancels, socket writes) in between iterations.
      await new Promise((r) => setImmediate(r))
    }
    this.looping = false
  }

  private async prefillIteration(): Promise<void> {
    for (const j of this.prefillQueue.filter((x) => x.cancelled)) {
      if (j.seq !== undefined) this.runtime.free(j.seq)
      j.reject(new Cancelled())
    }
    const live = this.prefillQueue.filter((j) => !j.cancelled)
    this.prefillQueue.length = 0
    this.prefillQueue.push(...live)
    if (live.length === 0) return
    const plan = planIteration(
      live.map((j) => ({ id: j.id, remaining: j.tokens.length - j.done, started: j.seq !== undefined })),
      { running: this.running.size, waiting: this.waiting.length },
      this.limits
    )
    const byId = new Map(live.map((j) => [j.id, j]))
    const finished: Array<{ job: PrefillJob; logits: Float32Array }> = []
    const fresh = plan.fresh.map((p) => ({ job: byId.get(p.id) as PrefillJob, tokens: p.tokens }))
    if (fresh.length > 0) {
      const results = await this.runtime.prefill(fresh.map((f) => f.job.tokens.slice(0, f.tokens)))
      results.forEach((r, i) => {
        const f = fresh[i] as (typeof fresh)[number]
        f.job.seq = r.seq
        f.job.done = f.tokens
        if (f.job.done === f.job.tokens.length) finished.push({ job: f.job, logits: r.logits })
      })
    }
    for (const c of plan.continued) {
      const job = byId.get(c.id) as PrefillJob
      if (job.cancelled || job.seq === undefined) continue
      const logits = await this.runtime.extend(job.seq, job.tokens.slice(job.done, job.done + c.tokens))
      job.done += c.tokens
      if (job.done === job.tokens.length) finished.push({ job, logits })
    }
    for (const { job, logits } of finished) {
      this.prefillQueue.splice(this.prefillQueue.indexOf(job), 1)
      if (job.cancelled) {
        if (job.seq !== undefined) this.runtime.free(job.seq)
        job.reject(new Cancelled())
      } else job.resolve({ seq: job.seq as Sequence, logits })
    }
  }

  private async decodeIteration(): Promise<void> {
    const plan = planIteration([], { running: this.running.size, waiting: this.waiting.length }, this.limits)
    for (const r of this.waiting.splice(0, plan.admitDecodes)) this.running.set(r.id, r)
    if (this.running.size === 0) return
    const batch = [...this.running.values()]
    const logits = await this.runtime.decode(
      batch.map((r) => ({ seq: r.seq, token: r.outputTokens.at(-1) as number }))
    )
    batch.forEach((r, i) => {
      if (!this.running.has(r.id)) return // cancelled during the step
      const row = suppressEarlyEos(logits[i] as Float32Array, r.outputTokens.length, r.rules)
      const picked = sample(row, r.sampling, r.rng, {
        promptTokens: r.promptTokens,
        outputTokens: r.outputTokens
      })
      r.rng = picked.rng
      r.outputTokens.push(picked.token)
      r.onToken(picked.token, r.outputTokens.length - 1)
      const finish = finishAfter(picked.token, r.outputTokens.length, r.rules)
      if (finish !== undefined) {
        this.running.delete(r.id)
        this.runtime.free(r.seq)
        r.onDone(finish, r.outputTokens.length)
      }
    })
  }
}
