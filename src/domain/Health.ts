/**
 * Node health as the router sees it: `joining -> online <-> unreachable`, with hysteresis.
 * A joining node that fails a probe becomes unreachable at once (it never served); an online node
 * needs `downAfter` consecutive failures to go down; an unreachable or joining node needs
 * `upAfter` consecutive successes to come up.
 */
export type HealthStatus = "joining" | "online" | "unreachable"

export interface HealthState {
  readonly status: HealthStatus
  readonly consecutiveFailures: number
  readonly consecutiveSuccesses: number
}

export interface HealthPolicy {
  readonly downAfter: number
  readonly upAfter: number
}

export type ProbeResult = "success" | "failure"

export const initialHealth: HealthState = {
  status: "joining",
  consecutiveFailures: 0,
  consecutiveSuccesses: 0
}

export const healthTransition = (
  state: HealthState,
  probe: ProbeResult,
  policy: HealthPolicy
): HealthState => {
  const downAfter = Math.max(1, Math.floor(policy.downAfter))
  const upAfter = Math.max(1, Math.floor(policy.upAfter))
  if (probe === "success") {
    const successes = state.consecutiveSuccesses + 1
    const status = state.status === "online" || successes >= upAfter ? "online" : state.status
    return { status, consecutiveFailures: 0, consecutiveSuccesses: successes }
  }
  const failures = state.consecutiveFailures + 1
  const status =
    state.status === "joining" ? "unreachable" : failures >= downAfter ? "unreachable" : state.status
  return { status, consecutiveFailures: failures, consecutiveSuccesses: 0 }
}
