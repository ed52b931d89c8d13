/**
 * The router's backend: persistent authenticated connections to every prefill and decode node,
 * heartbeats through the domain health machine, the domain routing policies, and the per-request merge
 * of tokens (first from the prefill node, the rest from the decode node) in `seq` order.
 */
import { Gauge, Counter, type Registry } from "prom-client"
import { healthTransition, initialHealth, type HealthPolicy, type HealthState } from "../domain/Health.js"
import {
  emptyRouterMetrics,
  routerStatsBody,
  type RouterMetrics,
  type RouterStatsBody
} from "../domain/RouterStats.js"
import {
  chooseDecode,
  choosePrefill,
  initialRoutingState,
  type NodeView,
  type RoutingPolicy,
  type RoutingState
} from "../domain/Routing.js"
import { blameFor, decideFailover, maxAttemptsFor } from "../domain/Failover.js"

import { formatHost, formatSocketAddress, type SocketAddress } from "../domain/SocketAddress.js"
import type { Frame, FinishReason, WireLoad } from "../domain/WireFrames.js"
import type { Backend, BackendFailure, BackendJob, TokenSink } from "./Backend.js"
import { Connection, type Identity } from "./Connection.js"
import type { Logger } from "./Log.js"

export interface PeerSpec {
  readonly id: string
  readonly role: "prefill" | "decode"
  readonly address: SocketAddress
}

interface NodeHandle {
  readonly spec: PeerSpec
  readonly canonical: string
  conn: Connection | undefined
  dialing: boolean
  health: HealthState
  inFlight: number
  load: WireLoad | undefined
  beat: { nonce: number; timer: NodeJS.Timeout } | undefined
  readonly requests: Set<string>
}

/** One client request across its attempts. */
interface RequestHandle {
  readonly job: BackendJob
  readonly sink: TokenSink
  attempts: number
  /** Nodes that failed this request: not chosen again for it. */
  readonly excluded: Set<string>
  current: Flight | undefined
  cancelled: boolean
}

/** One attempt, under its own wire id (`<id>` then `<id>.r1`, ...: a retry never meets a tombstone). */
interface Flight {
  readonly wireId: string
  readonly request: RequestHandle
  readonly job: BackendJob
  readonly sink: TokenSink
  readonly prefill: NodeHandle
  readonly decode: NodeHandle
  nextSeq: number
  readonly buffer: Map<number, number>
  done: { reason: FinishReason; completionTokens: number } | undefined
  firstTokenSeen: boolean
}

export interface ClusterOptions {
  readonly peers: ReadonlyArray<PeerSpec>
  readonly secret: Buffer
  readonly tokenizerFingerprint: string
  readonly routing: RoutingPolicy
  readonly healthIntervalMs: number
  readonly healthTimeoutMs: number
  readonly health: HealthPolicy
  readonly log: Logger
  readonly registry: Registry
}

export class ClusterBackend implements Backend {
  private readonly nodes: ReadonlyArray<NodeHandle>
  private readonly flights = new Map<string, Flight>()
  private routing: RoutingState = initialRoutingState
  private modelFingerprint: string | undefined
  private readonly counters: { -readonly [K in keyof RouterMetrics]: number } = { ...emptyRouterMetrics }
  private readonly hits = { prefill: {} as Record<string, number>, decode: {} as Record<string, number> }
  private nonce = 0
  private ticker: NodeJS.Timeout | undefined
  private readonly nodeUp: Gauge
  private readonly decisions: Counter

  constructor(private readonly o: ClusterOptions) {
    this.nodes = o.peers.map((spec) => ({
      spec,
      canonical: formatSocketAddress(spec.address),
      conn: undefined,
      dialing: false,
      health: initialHealth,
      inFlight: 0,
      load: undefined,
      beat: undefined,
      requests: new Set()
    }))
    this.nodeUp = new Gauge({
      name: "tandem_node_up",
      help: "1 when the node is online in the router's view",
      labelNames: ["node"],
      registers: [o.registry]
    })
    this.decisions = new Counter({
      name: "tandem_routing_decisions_total",
      help: "Requests dispatched to each node",
      labelNames: ["node"],
      registers: [o.registry]
    })
    for (const n of this.nodes) this.nodeUp.set({ node: n.spec.id }, 0)
  }

  connect(): void {
    this.tick()
    this.ticker = setInterval(() => this.tick(), this.o.healthIntervalMs)
  }

  stop(): void {
    clearInterval(this.ticker)
    for (const n of this.nodes) n.conn?.close("router stopping")
  }

  /** True when at least one prefill and one decode node are online. */
  healthy(): boolean {
    return this.online("prefill") && this.online("decode")
  }

  allOnline(): boolean {
    return this.nodes.every((n) => n.health.status === "online")
  }

  private online(role: "prefill" | "decode"): boolean {
    return this.nodes.some(
      (n) => n.spec.role === role && n.health.status === "online" && n.conn !== undefined
    )
  }

  unavailable(): BackendFailure | undefined {
    if (!this.online("prefill"))
      return { status: 503, code: "no_prefill_node", message: "no prefill node is online" }
    if (!this.online("decode"))
      return { status: 503, code: "no_decode_node", message: "no decode node is online" }
    return undefined
  }

  stats(verbose: boolean): RouterStatsBody {
    let prefillQueue = 0
    let decodeQueue = 0
    let activePrefills = 0
    for (const n of this.nodes) {
      if (n.spec.role === "prefill") prefillQueue += n.load?.queueLength ?? 0
      else decodeQueue += n.load?.queueLength ?? 0
    }
    for (const f of this.flights.values()) if (!f.firstTokenSeen) activePrefills++
    return routerStatsBody(
      {
        metrics: {
          ...this.counters,
          prefill_queue_depth: prefillQueue,
          decode_queue_depth: decodeQueue,
          active_prefills: activePrefills,
          active_decodes: this.flights.size - activePrefills
        },
        prefill_hits: this.hits.prefill,
        decode_hits: this.hits.decode,
        nodes: this.nodes.map((n) => ({
          id: n.spec.id,
          role: n.spec.role,
          status: n.health.status,
          address: n.canonical,
          in_flight: n.inFlight,
          live_sequences: n.load?.liveSequences ?? 0,
          kv_bytes: n.load?.kvBytes ?? 0
        }))
      },
      { verbose }
    )
  }

  start(job: BackendJob, sink: TokenSink): () => void {
    this.counters.total_requests++
    const request: RequestHandle = {
      job,
      sink,
      attempts: 0,
      excluded: new Set(),
      current: undefined,
      cancelled: false
    }
    setImmediate(() => this.dispatch(request))
    return () => {
      if (request.cancelled) return
      request.cancelled = true
      const f = request.current
      if (f === undefined || !this.flights.has(f.wireId)) return
      this.end(f)
      this.send(f.prefill, { _tag: "Cancel", id: f.wireId })
      this.send(f.decode, { _tag: "Cancel", id: f.wireId })
    }
  }

  private views(role: "prefill" | "decode", excluded: ReadonlySet<string>): Array<NodeView> {
    return this.nodes
      .filter((n) => n.spec.role === role)
      .map((n) => ({
        id: n.spec.id,
        status: n.conn === undefined || excluded.has(n.spec.id) ? "unreachable" : n.health.status,
        inFlight: n.inFlight,
        load: n.load
      }))
  }

  private dispatch(request: RequestHandle): void {
    if (request.cancelled) return
    const { job, sink } = request
    const p = choosePrefill(this.views("prefill", request.excluded), this.o.routing, this.routing, [
      Math.random(),
      Math.random()
    ])
    const d =
      p._tag === "Chosen"
        ? chooseDecode(this.views("decode", request.excluded), this.o.routing, p.state, [
            Math.random(),
            Math.random()
          ])
        : p
    if (p._tag !== "Chosen" || d._tag !== "Chosen") {
      if (request.attempts === 0) this.counters.rejected_requests++
      this.counters.total_failed++
      const role = p._tag !== "Chosen" ? "prefill" : "decode"
      sink.fail({
        status: 503,
        code: `no_${role}_node`,
        message: `no ${request.attempts === 0 ? "" : "other "}${role} node is online`
      })
      return
    }
    this.routing = d.state
    const prefill = this.node(p.id)
    const decode = this.node(d.id)
    this.counters.routing_decisions++
    const wireId = request.attempts === 0 ? job.id : `${job.id}.r${request.attempts}`
    request.attempts++
    for (const n of [prefill, decode]) {
      n.inFlight++
      n.requests.add(wireId)
      this.hits[n.spec.role][n.spec.id] = (this.hits[n.spec.role][n.spec.id] ?? 0) + 1
      this.decisions.inc({ node: n.spec.id })
    }
    const flight: Flight = {
      wireId,
      request,
      job,
      sink,
      prefill,
      decode,
      nextSeq: 0,
      buffer: new Map(),
      done: undefined,
      firstTokenSeen: false
    }
    request.current = flight
    this.flights.set(wireId, flight)
    job.log.debug("dispatched", {
      prefill: prefill.spec.id,
      decode: decode.spec.id,
      attempt: request.attempts
    })
    const { generation } = job
    // Expect first, on the decode node's connection: it streams this request's tokens back on it.
    this.send(decode, { _tag: "Expect", id: wireId, generation, promptTokens: job.promptTokens.length })
    if (!this.flights.has(wireId)) return // the decode node dropped out under us; already re-planned
    this.send(prefill, {
      _tag: "Prefill",
      id: wireId,
      generation,
      decodeTarget: decode.canonical,
      tokens: Int32Array.from(job.promptTokens)
    })
  }

  private node(id: string): NodeHandle {
    const n = this.nodes.find((x) => x.spec.id === id)
    if (n === undefined) throw new Error(`unknown node ${id}`)
    return n
  }

  private send(n: NodeHandle, frame: Frame): void {
    const conn = n.conn
    if (conn === undefined) {
      if ("id" in frame && frame.id !== undefined && frame._tag !== "Cancel")
        this.failNode(n, `${n.spec.id} is not connected`)
      return
    }
    conn.send(frame).catch(() => {})
  }

  /** Removes a flight and its dispatch counts; the sink is not called. */
  private end(f: Flight): void {
    if (!this.flights.delete(f.wireId)) return
    for (const n of [f.prefill, f.decode]) {
      n.inFlight = Math.max(0, n.inFlight - 1)
      n.requests.delete(f.wireId)
    }
  }

  /**
   * A failed attempt: re-planned on other nodes when nothing reached the client yet (domain failover
   * rule), else the request ends with the failure (503 when no node of the failed role is left).
   */
  private fail(f: Flight, failure: BackendFailure, culprit?: NodeHandle): void {
    if (!this.flights.has(f.wireId)) return
    this.end(f)
    this.counters.failure_events++
    this.send(f.prefill, { _tag: "Cancel", id: f.wireId })
    this.send(f.decode, { _tag: "Cancel", id: f.wireId })
    const request = f.request
    if (request.cancelled) return
    if (culprit !== undefined) request.excluded.add(culprit.spec.id)
    const decision = decideFailover({
      code: failure.code,
      attempts: request.attempts,
      maxAttempts: this.maxAttempts(),
      streamed: f.firstTokenSeen
    })
    if (decision._tag === "Retry") {
      this.counters.rerouted_requests++
      f.job.log.warn("re-planning the request", {
        failed: culprit?.spec.id ?? null,
        code: failure.code,
        reason: failure.message,
        backoff_ms: decision.backoffMs
      })
      setTimeout(() => this.dispatch(request), decision.backoffMs)
      return
    }
    this.counters.total_failed++
    const role = culprit?.spec.role
    const noneLeft = role !== undefined && !f.firstTokenSeen && !this.online(role)
    f.sink.fail(
      noneLeft
        ? { status: 503, code: `no_${role}_node`, message: `${failure.message}; no ${role} node is online` }
        : failure
    )
  }

  private maxAttempts(): number {
    return maxAttemptsFor(this.nodes.filter((n) => n.spec.role === "prefill").length)
  }

  private onFrame(n: NodeHandle, frame: Frame): void {
    if (frame._tag === "HeartbeatReply") {
      if (n.beat?.nonce === frame.nonce) {
        clearTimeout(n.beat.timer)
        n.beat = undefined
        n.load = frame.load
        this.probe(n, "success")
      }
      return
    }
    if (!("id" in frame) || frame.id === undefined) {
      if (frame._tag === "Error")
        this.o.log.warn("node reported an error", {
          node: n.spec.id,
          code: frame.code,
          reason: frame.message
        })
      return
    }
    const f = this.flights.get(frame.id)
    if (f === undefined) return
    switch (frame._tag) {
      case "Token": {
        if (frame.seq < f.nextSeq || f.buffer.has(frame.seq) || frame.seq >= f.job.generation.maxTokens) {
          return this.fail(
            f,
            {
              status: 502,
              code: "protocol_error",
              message: `${n.spec.id} sent token seq ${frame.seq} out of order`
            },
            n
          )
        }
        f.buffer.set(frame.seq, frame.token)
        while (f.buffer.has(f.nextSeq)) {
          const token = f.buffer.get(f.nextSeq) as number
          f.buffer.delete(f.nextSeq)
          f.firstTokenSeen = true
          f.sink.token(f.nextSeq++, token)
          if (!this.flights.has(f.wireId)) return // the sink ended it (stop string)
        }
        return this.maybeDone(f)
      }
      case "Done":
        f.done = { reason: frame.finishReason, completionTokens: frame.completionTokens }
        // Finished at its first token: the decode node gets no KV and drops its Expect.
        if (n === f.prefill) this.send(f.decode, { _tag: "Cancel", id: f.wireId })
        return this.maybeDone(f)
      case "Error":
        f.job.log.warn("node failed the request", {
          node: n.spec.id,
          code: frame.code,
          reason: frame.message
        })
        // A prefill node that lost its decode node mid-handoff: the decode node is the one at fault, and
        // the client is told its id, never its internal address.
        if (blameFor(n.spec.role, frame.code) !== n.spec.role) {
          return this.fail(
            f,
            {
              status: 502,
              code: "node_failed",
              message: `${f.decode.spec.id} became unreachable during the KV handoff from ${n.spec.id}`
            },
            f.decode
          )
        }
        return this.fail(f, { status: 502, code: frame.code, message: `${n.spec.id}: ${frame.message}` }, n)
      default:
        return
    }
  }

  private maybeDone(f: Flight): void {
    if (f.done === undefined || f.nextSeq < f.done.completionTokens) return
    this.end(f)
    this.counters.total_completed++
    f.sink.done(f.done.reason, f.done.completionTokens)
  }

  /** Ends every request in flight on a node at once (it died or was cut off). */
  private failNode(n: NodeHandle, why: string): void {
    for (const id of [...n.requests]) {
      const f = this.flights.get(id)
      if (f !== undefined) this.fail(f, { status: 502, code: "node_failed", message: why }, n)
    }
  }

  private probe(n: NodeHandle, result: "success" | "failure"): void {
    const before = n.health.status
    n.health = healthTransition(n.health, result, this.o.health)
    if (n.health.status !== before) {
      this.o.log.info("node status changed", { node: n.spec.id, from: before, to: n.health.status })
      this.nodeUp.set({ node: n.spec.id }, n.health.status === "online" ? 1 : 0)
    }
  }

  private tick(): void {
    for (const n of this.nodes) {
      if (n.conn === undefined) {
        this.dial(n)
        continue
      }
      if (n.beat !== undefined) continue
      const nonce = ++this.nonce
      const conn = n.conn
      n.beat = {
        nonce,
        timer: setTimeout(() => {
          n.beat = undefined
          this.probe(n, "failure")
        }, this.o.healthTimeoutMs)
      }
      conn.send({ _tag: "Heartbeat", nonce }).catch(() => {})
    }
  }

  private dial(n: NodeHandle): void {
    if (n.dialing) return
    n.dialing = true
    const self: Identity = {
      role: "router",
      nodeId: "router",
      modelFingerprint: "",
      tokenizerFingerprint: this.o.tokenizerFingerprint
    }
    Connection.dial(formatHost(n.spec.address), n.spec.address.port, {
      secret: this.o.secret,
      self,
      peerRoles: [n.spec.role],
      expectModel: () => this.modelFingerprint
    }).then(
      (conn) => {
        n.dialing = false
        this.modelFingerprint ??= conn.peer.modelFingerprint
        n.conn = conn
        this.o.log.info("connected to node", { node: n.spec.id, peer: conn.peer.nodeId })
        conn.on({
          frame: (f) => this.onFrame(n, f),
          invalid: (message, id) => {
            this.o.log.warn("bad frame from node", { node: n.spec.id, reason: message, request_id: id })
            const f = id === undefined ? undefined : this.flights.get(id)
            if (f !== undefined)
              this.fail(
                f,
                { status: 502, code: "protocol_error", message: `${n.spec.id} sent a bad frame: ${message}` },
                n
              )
          },
          close: (reason) => {
            if (n.conn === conn) n.conn = undefined
            if (n.beat !== undefined) clearTimeout(n.beat.timer)
            n.beat = undefined
            n.load = undefined
            this.o.log.warn("node connection closed", { node: n.spec.id, reason })
            this.counters.failure_events++
            this.failNode(n, `${n.spec.id} closed the connection (${reason})`)
            // Down at once: a closed connection is not a missed heartbeat.
            n.health = {
              status: "unreachable",
              consecutiveFailures: this.o.health.downAfter,
              consecutiveSuccesses: 0
            }
            this.nodeUp.set({ node: n.spec.id }, 0)
          }
        })
        this.tick()
      },
      (e: Error) => {
        n.dialing = false
        this.probe(n, "failure")
        this.o.log.warn("cannot connect to node", { node: n.spec.id, reason: e.message })
      }
    )
  }
}
