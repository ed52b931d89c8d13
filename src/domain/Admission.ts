/**
 * Admission at the HTTP front: at most `maxConcurrency` requests dispatched at once; the rest wait in
 * arrival order in a queue of `maxQueue` (full: 429); a wait longer than the queue timeout is a 503.
 */
export interface AdmissionLimits {
  readonly maxConcurrency: number
  readonly maxQueue: number
}

export type AdmissionDecision = "Dispatch" | "Queue" | "Reject"

export const admit = (
  state: { readonly running: number; readonly waiting: number },
  limits: AdmissionLimits
): AdmissionDecision =>
  state.running < limits.maxConcurrency && state.waiting === 0
    ? "Dispatch"
    : state.waiting < limits.maxQueue
      ? "Queue"
      : "Reject"

/** When a dispatched request finishes: whether the head of the queue may go now. */
export const promoteOnRelease = (
  state: { readonly running: number; readonly waiting: number },
  limits: AdmissionLimits
): boolean => state.waiting > 0 && state.running < limits.maxConcurrency
