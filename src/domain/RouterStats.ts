/**
 * The `/router/stats` body (from the seed's PR #393): redacted by default, so a client that reaches the
 * inference port cannot map the internal cluster; verbose (addresses included) only when the operator
 * sets `TANDEM_ROUTER_STATS_VERBOSE`.
 */
import { envFlag } from "./Env.js"
import type { HealthStatus } from "./Health.js"
import { compareNatural } from "./NaturalOrder.js"

/** RouterMetrics, as the seed names them (more fields are welcome). */
export interface RouterMetrics {
  readonly total_requests: number
  readonly total_completed: number
  readonly total_failed: number
  readonly prefill_queue_depth: number
  readonly decode_queue_depth: number
  readonly active_prefills: number
  readonly active_decodes: number
  readonly routing_decisions: number
  readonly failure_events: number
  readonly rerouted_requests: number
  readonly rejected_requests: number
}

export interface NodeStatsSnapshot {
  /** Router-assigned id: `prefill-<i>` / `decode-<i>` in flag order. */
  readonly id: string
  readonly role: "prefill" | "decode"
  readonly status: HealthStatus
  /** Canonical `ip:port` (IPv6 in brackets). Shown only in the verbose body. */
  readonly address: string
  readonly in_flight: number
  readonly live_sequences: number
  readonly kv_bytes: number
}

export interface RouterStatsSnapshot {
  readonly metrics: RouterMetrics
  readonly prefill_hits: Readonly<Record<string, number>>
  readonly decode_hits: Readonly<Record<string, number>>
  readonly nodes: ReadonlyArray<NodeStatsSnapshot>
}

export interface RouterStatsNodeBody {
  readonly id: string
  readonly role: "prefill" | "decode"
  readonly status: HealthStatus
  readonly in_flight: number
  readonly live_sequences: number
  readonly kv_bytes: number
  readonly address?: string
}

export interface RouterStatsBody {
  readonly metrics: RouterMetrics
  readonly prefill_hits: Record<string, number>
  readonly decode_hits: Record<string, number>
  readonly nodes: ReadonlyArray<RouterStatsNodeBody>
  readonly addresses_redacted: boolean
}

export const emptyRouterMetrics: RouterMetrics = {
  total_requests: 0,
  total_completed: 0,
  total_failed: 0,
  prefill_queue_depth: 0,
  decode_queue_depth: 0,
  active_prefills: 0,
  active_decodes: 0,
  routing_decisions: 0,
  failure_events: 0,
  rerouted_requests: 0,
  rejected_requests: 0
}

/** `TANDEM_ROUTER_STATS_VERBOSE` (or `MLXCEL_...`) = `1|true|yes|on` shows addresses. */
export const routerStatsVerboseFrom = (value: string | undefined): boolean => envFlag(value)

/** Only nodes with at least one hit, keys in natural order. */
const hitMap = (hits: Readonly<Record<string, number>>): Record<string, number> => {
  const out: Record<string, number> = {}
  for (const id of Object.keys(hits).sort(compareNatural)) {
    const n = hits[id] ?? 0
    if (n > 0) out[id] = n
  }
  return out
}

export const routerStatsBody = (
  snapshot: RouterStatsSnapshot,
  options: { readonly verbose: boolean }
): RouterStatsBody => {
  const nodes = [...snapshot.nodes]
    .sort((a, b) => compareNatural(a.id, b.id))
    .map((n): RouterStatsNodeBody => {
      const base = {
        id: n.id,
        role: n.role,
        status: n.status,
        in_flight: n.in_flight,
        live_sequences: n.live_sequences,
        kv_bytes: n.kv_bytes
      }
      return options.verbose ? { ...base, address: n.address } : base
    })
  return {
    metrics: { ...snapshot.metrics },
    prefill_hits: hitMap(snapshot.prefill_hits),
    decode_hits: hitMap(snapshot.decode_hits),
    nodes,
    addresses_redacted: !options.verbose
  }
}
