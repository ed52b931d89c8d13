/**
 * `tandem decode`: takes KV from prefill nodes (several at once; chunks of different requests interleave),
 * validates it (fingerprint, geometry, limits, bounds, overlaps, checksum) before admitting it, joins the
 * request to its continuous batch, and streams tokens to the router on the connection that sent `Expect`.
 *
 * A request is a slot: the router's `Expect` and the prefill node's KV may arrive in either order; a slot
 * with only one of them lives at most `--kv-lease`; a partial handoff is dropped at once when its
 * sender's connection closes. A `Cancel` leaves a short tombstone so late frames are dropped.
 */
import {
  acceptKvChunk,
  isKvComplete,
  startKvAssembly,
  validateKvDescriptor,
  type KvAssembly
} from "../domain/KvHandoff.js"
import { stopRulesOf } from "../domain/Generation.js"
import { decideHandoff, grantableFromQueue } from "../domain/Scheduler.js"

import type { ErrorCode, FrameOf, Generation } from "../domain/WireFrames.js"
import type { Connection } from "./Connection.js"
import type { Logger } from "./Log.js"
import { InOrderKvChecksum } from "./KvChecksum.js"
import { loadOf, type RoleNodeCore } from "./RoleNode.js"

const MAX_SLOTS = 4096

/** Sends a request's Error to a peer (best effort: a closed connection has its own handling). */
const tell = (conn: Connection, id: string, code: ErrorCode, message: string): void =>
  void conn.send({ _tag: "Error", id, code, message }).catch(() => {})
/** Handoffs that may wait for KV budget at once. */
const MAX_QUEUED_HANDOFFS = 256
const TOMBSTONE_MS = 60_000

interface Handoff {
  readonly conn: Connection
  readonly begin: FrameOf<"KvBegin">
  assembly: KvAssembly
  readonly tensors: ReadonlyArray<Uint8Array>
  readonly checksum: InOrderKvChecksum
  readonly startedAt: number
}

interface Slot {
  readonly id: string
  expect?: { readonly router: Connection; readonly generation: Generation }
  handoff?: Handoff | undefined
  /** KV complete and imported (held by the engine), waiting for Expect. */
  ready?: {
    readonly firstToken: number
    readonly rngState: number
    readonly promptTokens: ReadonlyArray<number>
  }
  decoding: boolean
  lease: NodeJS.Timeout | undefined
}

export class DecodeNode {
  private readonly slots = new Map<string, Slot>()
  private readonly tombstones = new Map<string, number>()
  /** KvBegins waiting for budget, in arrival order. */
  private readonly waiting: Array<{
    readonly conn: Connection
    readonly begin: FrameOf<"KvBegin">
    readonly bytes: number
  }> = []

  constructor(
    private readonly core: RoleNodeCore,
    private readonly kvLeaseMs: number,
    private readonly log: Logger,
    private readonly connections: () => Iterable<Connection>
  ) {}

  /** KV bytes of handoffs still arriving. */
  /** KV bytes reserved by granted handoffs still arriving (their tensors are allocated). */
  pendingKvBytes(): number {
    let n = 0
    for (const s of this.slots.values())
      if (s.handoff !== undefined)
        n += 2 * s.handoff.assembly.descriptor.layers * s.handoff.assembly.tensorBytes
    return n
  }

  /** Handoffs waiting for KV budget. */
  queuedHandoffs(): number {
    return this.waiting.length
  }

  attach(conn: Connection): void {
    conn.on({
      frame: (f) => {
        if ("id" in f && f.id !== undefined && this.isTombstoned(f.id) && f._tag !== "Cancel") return
        switch (f._tag) {
          case "Expect":
            return this.onExpect(conn, f)
          case "KvBegin":
            return this.onKvBegin(conn, f)
          case "KvChunk":
            return this.onKvChunk(conn, f)
          case "KvEnd":
            return this.onKvEnd(conn, f)
          case "Cancel":
            return this.cancel(f.id, "cancelled")
          case "Heartbeat":
            void conn
              .send({
                _tag: "HeartbeatReply",
                nonce: f.nonce,
                load: loadOf(this.core, this.connections(), this.pendingKvBytes(), this.waiting.length)
              })
              .catch(() => {})
            return
          default:
            void conn
              .send({
                _tag: "Error",
                ...("id" in f && f.id !== undefined ? { id: f.id } : {}),
                code: "bad_frame",
                message: `a decode node does not take ${f._tag} frames`
              })
              .catch(() => {})
        }
      },
      invalid: (message, id) => {
        this.log.warn("bad frame", {
          peer: `${conn.peer.role}/${conn.peer.nodeId}`,
          reason: message,
          request_id: id
        })
        if (id !== undefined) this.fail(id, "bad_frame", message)
      },
      close: () => {
        for (const s of [...this.slots.values()]) {
          // A partial handoff from a closed sender is dropped at once; so is everything a closed router asked for.
          if (s.handoff?.conn === conn)
            this.fail(s.id, "unavailable", "the prefill node's connection closed during the KV handoff")
          else if (s.expect?.router === conn) this.cancel(s.id, "router connection closed")
        }
        for (const w of this.waiting.filter((x) => x.conn === conn)) {
          this.fail(
            w.begin.id,
            "unavailable",
            "the prefill node's connection closed while its KV waited for budget"
          )
        }
      }
    })
  }

  private slot(id: string): Slot | undefined {
    let s = this.slots.get(id)
    if (s !== undefined) return s
    if (this.slots.size >= MAX_SLOTS) return undefined
    s = { id, decoding: false, lease: undefined }
    this.slots.set(id, s)
    this.renewLease(s)
    return s
  }

  /** A slot not yet decoding lives `--kv-lease` past its last frame (silence), then is dropped. */
  private renewLease(s: Slot): void {
    clearTimeout(s.lease)
    s.lease = setTimeout(
      () =>
        this.fail(s.id, "lease_expired", `no KV or Expect progress for ${this.kvLeaseMs} ms (--kv-lease)`),
      this.kvLeaseMs
    )
  }

  private isTombstoned(id: string): boolean {
    const until = this.tombstones.get(id)
    if (until === undefined) return false
    if (until < Date.now()) {
      this.tombstones.delete(id)
      return false
    }
    return true
  }

  private tombstone(id: string): void {
    if (this.tombstones.size > 10_000)
      for (const [k, until] of this.tombstones) if (until < Date.now()) this.tombstones.delete(k)
    this.tombstones.set(id, Date.now() + TOMBSTONE_MS)
  }

  private onExpect(router: Connection, f: FrameOf<"Expect">): void {
    const s = this.slot(f.id)
    if (s === undefined) return tell(router, f.id, "over_capacity", "decode node's request table is full")
    if (s.expect !== undefined) return tell(router, f.id, "bad_frame", `duplicate Expect for ${f.id}`)
    s.expect = { router, generation: f.generation }
    this.maybeStart(s)
  }

  private onKvBegin(conn: Connection, f: FrameOf<"KvBegin">): void {
    const refuse = (code: ErrorCode, message: string) => {
      void conn.send({ _tag: "Error", id: f.id, code, message }).catch(() => {})
      this.fail(f.id, code, message)
    }
    if (conn.peer.role !== "prefill") return refuse("bad_frame", "KV comes from prefill nodes only")
    const s = this.slot(f.id)
    if (s === undefined) return tell(conn, f.id, "over_capacity", "decode node's request table is full")
    if (s.handoff !== undefined || s.ready !== undefined)
      return refuse("bad_frame", `duplicate KvBegin for ${f.id}`)
    // Geometry and limits first; the budget is the scheduler's call (grant, queue or refuse).
    const check = validateKvDescriptor(f.descriptor, this.core.runtime.geometry, { freeBytes: Infinity })
    if (check._tag === "Invalid") return refuse(check.code, check.reason)
    if (f.tokens.length !== f.descriptor.tokenCount)
      return refuse(
        "kv_invalid",
        `KvBegin carries ${f.tokens.length} prompt tokens for ${f.descriptor.tokenCount} KV positions`
      )
    if (this.waiting.some((w) => w.begin.id === f.id))
      return refuse("bad_frame", `duplicate KvBegin for ${f.id}`)
    const decision = decideHandoff(check.totalBytes, this.budgetView())
    if (decision._tag === "Refuse") return refuse("over_capacity", decision.reason)
    if (decision._tag === "Queue") {
      this.waiting.push({ conn, begin: f, bytes: check.totalBytes })
      this.log.info("KV handoff queued: budget full", {
        request_id: f.id,
        kv_bytes: check.totalBytes,
        queued: this.waiting.length
      })
      return
    }
    this.grant(s, conn, f)
  }

  private budgetView() {
    return {
      budgetBytes: this.core.kvBudgetBytes,
      usedBytes: this.core.engine.stats().kvBytes + this.pendingKvBytes(),
      queued: this.waiting.length,
      maxQueued: MAX_QUEUED_HANDOFFS
    }
  }

  /** Reserves the handoff's bytes (allocates its tensors) and tells the sender to go on. */
  private grant(s: Slot, conn: Connection, f: FrameOf<"KvBegin">): void {
    const assembly = startKvAssembly(f.descriptor)
    s.handoff = {
      conn,
      begin: f,
      assembly,
      // Not zeroed: completeness (every byte of every tensor received) is checked before use.
      tensors: Array.from({ length: 2 * f.descriptor.layers }, () =>
        Buffer.allocUnsafe(assembly.tensorBytes)
      ),
      checksum: new InOrderKvChecksum(assembly.tensorBytes),
      startedAt: performance.now()
    }
    this.renewLease(s)
    void conn.send({ _tag: "KvGrant", id: f.id }).catch(() => {})
  }

  /** Grants waiting handoffs, in arrival order, while they fit. Called whenever capacity frees. */
  private pump(): void {
    if (this.waiting.length === 0) return
    const view = this.budgetView()
    const n = grantableFromQueue(
      this.waiting.map((w) => w.bytes),
      view
    )
    for (const w of this.waiting.splice(0, n)) {
      const s = this.slots.get(w.begin.id)
      if (s === undefined || w.conn.isClosed) continue
      this.grant(s, w.conn, w.begin)
    }
  }

  private onKvChunk(conn: Connection, f: FrameOf<"KvChunk">): void {
    const h = this.slots.get(f.id)?.handoff
    if (h === undefined || h.conn !== conn) {
      void conn
        .send({
          _tag: "Error",
          id: f.id,
          code: "unknown_request",
          message: `no KV handoff ${f.id} in progress on this connection`
        })
        .catch(() => {})
      return
    }
    const r = acceptKvChunk(h.assembly, {
      layer: f.layer,
      kind: f.kind,
      offset: f.offset,
      length: f.bytes.byteLength
    })
    if (r._tag === "Rejected") {
      void conn.send({ _tag: "Error", id: f.id, code: "kv_invalid", message: r.reason }).catch(() => {})
      return this.fail(f.id, "kv_invalid", r.reason)
    }
    h.assembly = r.assembly
    ;(h.tensors[r.tensor] as Uint8Array).set(f.bytes, f.offset)
    h.checksum.add(r.tensor, f.offset, f.bytes)
    const s = this.slots.get(f.id)
    if (s !== undefined) this.renewLease(s)
    this.core.metrics.kvBytesReceived.inc(f.bytes.byteLength)
  }

  private onKvEnd(conn: Connection, f: FrameOf<"KvEnd">): void {
    const s = this.slots.get(f.id)
    const h = s?.handoff
    if (s === undefined || h === undefined || h.conn !== conn) {
      void conn
        .send({
          _tag: "Error",
          id: f.id,
          code: "unknown_request",
          message: `no KV handoff ${f.id} in progress on this connection`
        })
        .catch(() => {})
      return
    }
    const refuse = (code: ErrorCode, message: string) => {
      void conn.send({ _tag: "Error", id: f.id, code, message }).catch(() => {})
      this.fail(f.id, code, message)
    }
    if (!isKvComplete(h.assembly))
      return refuse(
        "kv_invalid",
        `KvEnd after ${h.assembly.receivedBytes} of ${2 * h.assembly.descriptor.layers * h.assembly.tensorBytes} KV bytes`
      )
    if (h.checksum.result(h.tensors) !== f.checksum)
      return refuse("kv_checksum_mismatch", "KV checksum mismatch: the handoff was corrupted")
    const seq = this.core.runtime.importKv(h.begin.descriptor, h.tensors)
    this.core.engine.hold(f.id, seq)
    this.core.metrics.kvTransferSeconds.observe((performance.now() - h.startedAt) / 1000)
    this.core.metrics.kvTransferBytes.observe(h.assembly.receivedBytes)
    this.core.metrics.handoffs.inc({ outcome: "received" })
    this.log.info("KV received", {
      request_id: f.id,
      kv_bytes: h.assembly.receivedBytes,
      from: conn.peer.nodeId
    })
    s.ready = {
      firstToken: h.begin.firstToken,
      rngState: h.begin.rngState,
      promptTokens: Array.from(h.begin.tokens)
    }
    s.handoff = undefined
    void conn.send({ _tag: "KvAck", id: f.id }).catch(() => {})
    this.maybeStart(s)
  }

  private maybeStart(s: Slot): void {
    if (s.expect === undefined || s.ready === undefined || s.decoding) return
    clearTimeout(s.lease)
    s.lease = undefined
    s.decoding = true
    const { router, generation } = s.expect
    const seq = this.heldSequence(s.id)
    if (seq === undefined) return this.fail(s.id, "internal", "imported KV went missing")
    const id = s.id
    this.core.engine.decode({
      id,
      seq,
      promptTokens: s.ready.promptTokens,
      outputTokens: [s.ready.firstToken],
      rng: { state: s.ready.rngState },
      sampling: generation.sampling,
      rules: stopRulesOf(generation, this.core.codec.eosTokenIds),
      onToken: (token, index) => void router.send({ _tag: "Token", id, seq: index, token }).catch(() => {}),
      onDone: (finishReason, completionTokens) => {
        this.slots.delete(id)
        queueMicrotask(() => this.pump())
        this.log.info("request finished", {
          request_id: id,
          finish_reason: finishReason,
          completion_tokens: completionTokens
        })
        void router.send({ _tag: "Done", id, finishReason, completionTokens }).catch(() => {})
      },
      onError: (e) => this.fail(id, "internal", e.message)
    })
  }

  private heldSequence(id: string) {
    return this.core.engine.takeHeld(id)
  }

  /** Ends a request here: frees its KV and tells the router (when one asked for it). */
  private fail(id: string, code: ErrorCode, message: string): void {
    const s = this.slots.get(id)
    this.drop(id)
    if (s?.expect !== undefined)
      void s.expect.router.send({ _tag: "Error", id, code, message }).catch(() => {})
    this.log.warn("request failed", { request_id: id, code, reason: message })
    if (code !== "lease_expired") this.core.metrics.handoffs.inc({ outcome: "failed" })
  }

  private cancel(id: string, why: string): void {
    this.tombstone(id)
    if (this.drop(id)) this.log.info("request cancelled", { request_id: id, reason: why })
  }

  private drop(id: string): boolean {
    const s = this.slots.get(id)
    if (s !== undefined) {
      clearTimeout(s.lease)
      this.slots.delete(id)
    }
    const w = this.waiting.findIndex((x) => x.begin.id === id)
    if (w >= 0) this.waiting.splice(w, 1)
    const found = this.core.engine.cancel(id) || s !== undefined
    // Capacity may have freed: waiting handoffs go next.
    queueMicrotask(() => this.pump())
    return found
  }
}
