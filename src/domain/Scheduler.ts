/**
 * Iteration-level scheduling, decided purely from a snapshot. Each engine iteration runs at most one
 * prefill batch (bounded by `maxBatchPrefillTokens`; prompts longer than `prefillChunk` go one chunk per
 * iteration, so short prompts are not stuck behind them) and then one decode step over every live
 * sequence (bounded by `maxBatch`). Waiting decode sequences join in arrival order as capacity frees up.
 */

export interface SchedulerLimits {
  readonly maxBatch: number
  readonly maxBatchPrefillTokens: number
  readonly prefillChunk: number
}

export const defaultSchedulerLimits: SchedulerLimits = {
  maxBatch: 32,
  maxBatchPrefillTokens: 4096,
  prefillChunk: 512
}

export interface PrefillJobView {
  readonly id: string
  /** Prompt tokens not yet prefilled. */
  readonly remaining: number
  /** True when part of the prompt is already in the KV (a chunked prefill in progress). */
  readonly started: boolean
}

export interface IterationPlan {
  /** Jobs starting from an empty cache this iteration, prefilled together, with their token counts. */
  readonly fresh: ReadonlyArray<{ readonly id: string; readonly tokens: number }>
  /** Jobs continuing a chunked prefill (one chunk each). */
  readonly continued: ReadonlyArray<{ readonly id: string; readonly tokens: number }>
  /** Waiting decode sequences admitted into the running batch this iteration. */
  readonly admitDecodes: number
}

export const planIteration = (
  prefillQueue: ReadonlyArray<PrefillJobView>,
  decode: { readonly running: number; readonly waiting: number },
  limits: SchedulerLimits
): IterationPlan => {
  const chunk = Math.max(1, limits.prefillChunk)
  let budget = Math.max(chunk, limits.maxBatchPrefillTokens)
  const fresh: Array<{ id: string; tokens: number }> = []
  const continued: Array<{ id: string; tokens: number }> = []
  for (const job of prefillQueue) {
    if (budget <= 0) break
    const tokens = Math.min(job.remaining, chunk)
    if (tokens > budget && fresh.length + continued.length > 0) break
    if (job.started) continued.push({ id: job.id, tokens })
    else fresh.push({ id: job.id, tokens })
    budget -= tokens
  }
  const free = Math.max(0, limits.maxBatch - decode.running)
  return { fresh, continued, admitDecodes: Math.min(free, decode.waiting) }
}

/**
 * KV budget admission on a decode node. A handoff reserves its full size when granted (the receiving
 * tensors are allocated then); one that does not fit waits in a bounded FIFO until capacity frees, and
 * waiting handoffs are granted strictly in arrival order (no starvation: a large head is not overtaken).
 * One that can never fit, or arrives to a full queue, is refused.
 */
export type HandoffDecision =
  | { readonly _tag: "Grant" }
  | { readonly _tag: "Queue" }
  | { readonly _tag: "Refuse"; readonly reason: string }

export interface KvBudgetView {
  readonly budgetBytes: number
  /** Bytes held by live sequences plus bytes reserved by granted handoffs. */
  readonly usedBytes: number
  readonly queued: number
  readonly maxQueued: number
}

export const decideHandoff = (bytes: number, b: KvBudgetView): HandoffDecision => {
  if (bytes > b.budgetBytes)
    return {
      _tag: "Refuse",
      reason: `KV of ${bytes} bytes exceeds this node's whole budget of ${b.budgetBytes} bytes`
    }
  if (b.queued === 0 && b.usedBytes + bytes <= b.budgetBytes) return { _tag: "Grant" }
  if (b.queued >= b.maxQueued)
    return { _tag: "Refuse", reason: `KV budget exhausted and ${b.queued} handoffs already waiting` }
  return { _tag: "Queue" }
}

/** How many handoffs at the head of the queue (sizes in arrival order) can be granted now. */
export const grantableFromQueue = (
  queuedBytes: ReadonlyArray<number>,
  b: Pick<KvBudgetView, "budgetBytes" | "usedBytes">
): number => {
  let used = b.usedBytes
  let n = 0
  for (const bytes of queuedBytes) {
    if (used + bytes > b.budgetBytes) break
    used += bytes
    n++
  }
  return n
}

/**
 * The KV budget of a node: `--kv-budget-mb` when given, else a quarter of the memory free at start,
 * at most 4 GiB: the node must not assume it has the machine to itself.
 */
export const deriveKvBudget = (requestedMb: number | undefined, freeBytes: number): number =>
  requestedMb !== undefined
    ? Math.max(0, requestedMb) * 1024 * 1024
    : Math.min(Math.floor(Math.max(0, freeBytes) / 4), 4 * 1024 ** 3)

/** The decode batch's buffer: `rows` rows of `positions` positions each (the in-place KV layout). */
export interface DecodeBufferShape {
  readonly rows: number
  readonly positions: number
}

/** Positions are allocated in steps of this many. */
export const DECODE_BUFFER_STEP = 64

/**
 * The buffer for a decode step that needs `rows` rows and `positions` positions (longest sequence + 1),
 * given the current one: unchanged when it fits and is not far too long; otherwise reallocated (which
 * copies every resident row). Positions grow to the next step; rows double, at least 8. Every row is
 * computed over all positions, so the buffer also shrinks, to fit, once the need is a quarter of it or
 * less: one long request does not slow every later step, and needs moving within a factor of four do not
 * reallocate back and forth.
 */
export const decodeBufferFor = (current: DecodeBufferShape, need: DecodeBufferShape): DecodeBufferShape => {
  const fitted = Math.ceil(need.positions / DECODE_BUFFER_STEP) * DECODE_BUFFER_STEP
  const shrink = 4 * fitted <= current.positions
  const positions = need.positions <= current.positions && !shrink ? current.positions : fitted
  const rows = need.rows <= current.rows ? current.rows : Math.max(8, need.rows, 2 * current.rows)
  return rows === current.rows && positions === current.positions ? current : { rows, positions }
}
