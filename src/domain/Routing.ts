/**
 * Which prefill node and which decode node serve a request. The decision is a pure function of node
 * snapshots, the policy state and random draws (numbers in [0, 1) drawn by the shell); the caller counts
 * the dispatch (in-flight + 1) itself, so a burst does not pile onto one node. Only `online` nodes are
 * ever chosen.
 */
import type { HealthStatus } from "./Health.js"
import { compareNatural } from "./NaturalOrder.js"

export type RoutingPolicy = "round-robin" | "least-loaded" | "power-of-two"
export const routingPolicies: ReadonlyArray<RoutingPolicy> = ["round-robin", "least-loaded", "power-of-two"]

/** What a node reported in its last heartbeat reply. */
export interface NodeLoad {
  readonly liveSequences: number
  readonly kvBytes: number
  readonly freeKvBytes: number
  readonly queueLength: number
}

export interface NodeView {
  readonly id: string
  readonly status: HealthStatus
  /** Requests the router has dispatched to this node and not yet seen finish. */
  readonly inFlight: number
  readonly load?: NodeLoad | undefined
}

export interface RoutingState {
  /** Round-robin cursors, one per pool. */
  readonly prefillCursor: number
  readonly decodeCursor: number
}

export const initialRoutingState: RoutingState = { prefillCursor: 0, decodeCursor: 0 }

/** Two independent uniform draws in [0, 1). */
export type Draws = readonly [number, number]

export type RoutingDecision =
  | { readonly _tag: "Chosen"; readonly id: string; readonly state: RoutingState }
  | { readonly _tag: "NoHealthyNode"; readonly role: "prefill" | "decode"; readonly state: RoutingState }

const onlineSorted = (nodes: ReadonlyArray<NodeView>): ReadonlyArray<NodeView> =>
  nodes.filter((n) => n.status === "online").sort((a, b) => compareNatural(a.id, b.id))

const drawIndex = (draw: number, n: number): number => {
  const d = Number.isFinite(draw) ? draw - Math.floor(draw) : 0
  return Math.min(n - 1, Math.floor(d * n))
}

/** Lower is better: dispatch count first, then (when reported) queue, then more free KV. */
const compareLoad = (a: NodeView, b: NodeView): number => {
  if (a.inFlight !== b.inFlight) return a.inFlight - b.inFlight
  const qa = a.load?.queueLength ?? 0
  const qb = b.load?.queueLength ?? 0
  if (qa !== qb) return qa - qb
  const fa = a.load?.freeKvBytes ?? 0
  const fb = b.load?.freeKvBytes ?? 0
  return fb - fa
}

/** The node one pool's policy picks; `cursor` is that pool's round-robin cursor. */
export const selectNode = (
  nodes: ReadonlyArray<NodeView>,
  policy: RoutingPolicy,
  cursor: number,
  draws: Draws
): { readonly node: NodeView; readonly cursor: number } | undefined => {
  const online = onlineSorted(nodes)
  const k = online.length
  if (k === 0) return undefined
  switch (policy) {
    case "round-robin": {
      const c = ((cursor % k) + k) % k
      return { node: online[c] as NodeView, cursor: c + 1 }
    }
    case "least-loaded": {
      let best: Array<NodeView> = []
      for (const n of online) {
        const first = best[0]
        const cmp = first === undefined ? -1 : compareLoad(n, first)
        if (cmp < 0) best = [n]
        else if (cmp === 0) best.push(n)
      }
      return { node: best[drawIndex(draws[0], best.length)] as NodeView, cursor }
    }
    case "power-of-two": {
      if (k === 1) return { node: online[0] as NodeView, cursor }
      const i = drawIndex(draws[0], k)
      const j0 = drawIndex(draws[1], k - 1)
      const j = j0 >= i ? j0 + 1 : j0
      const a = online[i] as NodeView
      const b = online[j] as NodeView
      return { node: compareLoad(b, a) < 0 ? b : a, cursor }
    }
  }
}

export const choosePrefill = (
  nodes: ReadonlyArray<NodeView>,
  policy: RoutingPolicy,
  state: RoutingState,
  draws: Draws
): RoutingDecision => {
  const picked = selectNode(nodes, policy, state.prefillCursor, draws)
  return picked === undefined
    ? { _tag: "NoHealthyNode", role: "prefill", state }
    : { _tag: "Chosen", id: picked.node.id, state: { ...state, prefillCursor: picked.cursor } }
}

export const chooseDecode = (
  nodes: ReadonlyArray<NodeView>,
  policy: RoutingPolicy,
  state: RoutingState,
  draws: Draws
): RoutingDecision => {
  const picked = selectNode(nodes, policy, state.decodeCursor, draws)
  return picked === undefined
    ? { _tag: "NoHealthyNode", role: "decode", state }
    : { _tag: "Chosen", id: picked.node.id, state: { ...state, decodeCursor: picked.cursor } }
}
