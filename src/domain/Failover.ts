/**
 * Failover before the first byte: a request that fails before anything was streamed to the client is
 * re-planned on other nodes, a bounded number of times with exponential backoff. A stream that has
 * started is never replayed. Failures that another node would repeat (a rejected decode target, a bad
 * request) are not retried.
 */

const NOT_RETRYABLE: ReadonlySet<string> = new Set([
  "decode_target_rejected",
  "bad_frame",
  "fingerprint_mismatch",
  "kv_invalid",
  "protocol_error"
])

export interface FailoverFacts {
  readonly code: string
  /** Attempts made so far (1 after the first failure). */
  readonly attempts: number
  readonly maxAttempts: number
  /** True once any token reached the client's stream. */
  readonly streamed: boolean
}

export type FailoverDecision =
  { readonly _tag: "Retry"; readonly backoffMs: number } | { readonly _tag: "GiveUp" }

export const decideFailover = (f: FailoverFacts, baseBackoffMs = 25): FailoverDecision =>
  f.streamed || NOT_RETRYABLE.has(f.code) || f.attempts >= f.maxAttempts
    ? { _tag: "GiveUp" }
    : { _tag: "Retry", backoffMs: baseBackoffMs * 2 ** (f.attempts - 1) }

/**
 * Which node a failure is blamed on (excluded from the request's re-planning). A prefill node reporting
 * that it lost its decode node during the KV handoff (`unavailable`) is the messenger: the decode node
 * is at fault. Anything else is the reporter's.
 */
export const blameFor = (reporter: "prefill" | "decode", code: string): "prefill" | "decode" =>
  reporter === "prefill" && code === "unavailable" ? "decode" : reporter

/** Attempts per request: one per prefill node (as the seed tries each once), at least 1, at most 3. */
export const maxAttemptsFor = (prefillNodes: number): number =>
  Math.min(3, Math.max(1, Math.floor(prefillNodes)))
