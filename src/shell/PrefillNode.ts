/**
 * `tandem prefill`: prefills prompts for the router, sends the first token back at once, and ships the KV
 * to the decode node the router chose, after checking it against `TANDEM_DECODE_ALLOWLIST`. Its own copy
 * is freed on `KvAck`, cancel or failure; no KV leaves for a request that finished at its first token.
 */
import { decideDecodeTarget, type DecodeAllowlist } from "../domain/DecodeAllowlist.js"
import { sampleFirstToken } from "../domain/Generation.js"
import {
  formatHost,
  formatSocketAddress,
  parseSocketAddress,
  type SocketAddress
} from "../domain/SocketAddress.js"
import type { ErrorCode, FrameOf } from "../domain/WireFrames.js"
import { Cancelled } from "../gpu/Engine.js"
import { Connection, type HandshakeOptions } from "./Connection.js"
import type { Logger } from "./Log.js"
import { InOrderKvChecksum } from "./KvChecksum.js"

import { loadOf, type RoleNodeCore } from "./RoleNode.js"

/** Bytes per KvChunk frame. */
export const KV_CHUNK_BYTES = 1 << 20

class HandoffFailed extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string
  ) {
    super(message)
  }
}

interface Active {
  cancelled: boolean
  /** Settles the pending KvAck wait, if any. */
  ack?: { resolve(): void; reject(e: Error): void; conn: Connection }
  /** Settles when the decode node reserved budget for the KV (KvGrant), or refused it. */
  grant?: { resolve(): void; reject(e: Error): void }
}

export class PrefillNode {
  private readonly active = new Map<string, Active>()
  private readonly decodePool = new Map<string, Promise<Connection>>()
  private warnedPermissive = false

  constructor(
    private readonly core: RoleNodeCore,
    private readonly allowlist: DecodeAllowlist,
    /** First `--decode-peers` entry: the target when a Prefill names none (operator config, unchecked). */
    private readonly fallbackTarget: SocketAddress,
    private readonly dialOptions: HandshakeOptions,
    private readonly log: Logger,
    private readonly connections: () => Iterable<Connection>
  ) {}

  get activeRequests(): number {
    return this.active.size
  }

  /** A router connection. */
  attach(router: Connection): void {
    router.on({
      frame: (f) => {
        switch (f._tag) {
          case "Prefill":
            void this.handle(router, f)
            return
          case "Cancel":
            this.cancel(f.id)
            return
          case "Heartbeat":
            void router
              .send({
                _tag: "HeartbeatReply",
                nonce: f.nonce,
                load: loadOf(this.core, this.connections(), 0)
              })
              .catch(() => {})
            return
          default:
            void router
              .send({
                _tag: "Error",
                ...("id" in f ? { id: f.id } : {}),
                code: "bad_frame",
                message: `a prefill node does not take ${f._tag} frames`
              })
              .catch(() => {})
        }
      },
      invalid: (message, id) => {
        this.log.warn("bad frame from router", { reason: message, request_id: id })
        if (id !== undefined)
          void router.send({ _tag: "Error", id, code: "bad_frame", message }).catch(() => {})
      },
      close: () => {
        // Nothing can reach the router any more: its requests end here, and their KV is freed.
        for (const id of [...this.active.keys()]) this.cancel(id)
      }
    })
  }

  private cancel(id: string): void {
    const a = this.active.get(id)
    if (a === undefined) return
    a.cancelled = true
    a.ack?.reject(new Cancelled())
    a.grant?.reject(new Cancelled())
    this.core.engine.cancel(id)
    this.active.delete(id)
    this.log.info("request cancelled", { request_id: id })
  }

  private async handle(router: Connection, f: FrameOf<"Prefill">): Promise<void> {
    const log = this.log.with({ request_id: f.id })
    if (this.active.has(f.id)) {
      void router
        .send({
          _tag: "Error",
          id: f.id,
          code: "bad_frame",
          message: `request ${f.id} is already in flight here`
        })
        .catch(() => {})
      return
    }
    let target: SocketAddress
    if (f.decodeTarget === undefined) {
      target = this.fallbackTarget
    } else {
      const decision = decideDecodeTarget(this.allowlist, f.decodeTarget)
      if (decision._tag === "Reject") {
        log.warn("decode target rejected", { target: decision.target, reason: decision.reason })
        this.core.metrics.handoffs.inc({ outcome: "rejected" })
        void router
          .send({ _tag: "Error", id: f.id, code: "decode_target_rejected", message: decision.reason })
          .catch(() => {})
        return
      }
      if (decision._tag === "AllowUnchecked" && !this.warnedPermissive) {
        this.warnedPermissive = true
        log.warn("decode targets are not checked: TANDEM_DECODE_ALLOWLIST has no valid entry")
      }
      const parsed = parseSocketAddress(f.decodeTarget)
      if (!parsed.ok) {
        void router
          .send({
            _tag: "Error",
            id: f.id,
            code: "decode_target_rejected",
            message: `decode target "${f.decodeTarget}" is not a numeric IP:port address; KV handoff rejected`
          })
          .catch(() => {})
        return
      }
      target = parsed.address
    }
    const state: Active = { cancelled: false }
    this.active.set(f.id, state)
    const prompt = Array.from(f.tokens)
    try {
      if (prompt.length === 0) throw new HandoffFailed("bad_frame", "empty prompt")
      const { seq, logits } = await this.core.engine.prefill(f.id, prompt)
      if (state.cancelled) throw new Cancelled()
      const first = sampleFirstToken(logits, f.generation, prompt, this.core.codec.eosTokenIds)
      log.info("prefilled", {
        prompt_tokens: prompt.length,
        decode_target: formatSocketAddress(target),
        finished: first.finish ?? null
      })
      await router.send({ _tag: "Token", id: f.id, seq: 0, token: first.token })
      if (first.finish !== undefined) {
        await router.send({ _tag: "Done", id: f.id, finishReason: first.finish, completionTokens: 1 })
        this.core.metrics.handoffs.inc({ outcome: "not_needed" })
        return
      }
      const exported = this.core.runtime.exportKv(seq)
      const conn = await this.decodeConnection(target)
      if (state.cancelled) throw new Cancelled()
      const acked = new Promise<void>((resolve, reject) => (state.ack = { resolve, reject, conn }))
      acked.catch(() => {})
      const granted = new Promise<void>((resolve, reject) => (state.grant = { resolve, reject }))
      granted.catch(() => {})
      await conn.send({
        _tag: "KvBegin",
        id: f.id,
        descriptor: exported.descriptor,
        generation: f.generation,
        firstToken: first.token,
        rngState: first.rng.state,
        tokens: f.tokens
      })
      // The decode node reserves budget first (it may queue this handoff while it is full).
      await granted
      const checksum = new InOrderKvChecksum(exported.tensors[0]?.bytes.byteLength ?? 0)
      for (const [tensor, t] of exported.tensors.entries()) {
        for (let offset = 0; offset < t.bytes.byteLength; offset += KV_CHUNK_BYTES) {
          if (state.cancelled) throw new Cancelled()
          const bytes = t.bytes.subarray(offset, Math.min(offset + KV_CHUNK_BYTES, t.bytes.byteLength))
          checksum.add(tensor, offset, bytes)
          await conn.send({ _tag: "KvChunk", id: f.id, layer: t.layer, kind: t.kind, offset, bytes })
          this.core.metrics.kvBytesSent.inc(bytes.byteLength)
        }
      }
      await conn.send({
        _tag: "KvEnd",
        id: f.id,
        checksum: checksum.result(exported.tensors.map((t) => t.bytes))
      })

      await acked
      this.core.metrics.handoffs.inc({ outcome: "acked" })
      log.info("KV handed off", {
        decode_target: formatSocketAddress(target),
        kv_bytes: exported.tensors.reduce((n, t) => n + t.bytes.byteLength, 0)
      })
    } catch (e) {
      if (e instanceof Cancelled || state.cancelled) {
        this.core.metrics.handoffs.inc({ outcome: "cancelled" })
      } else {
        const err = e instanceof HandoffFailed ? e : new HandoffFailed("internal", (e as Error).message)
        log.warn("request failed", { reason: err.message, decode_target: formatSocketAddress(target) })

        this.core.metrics.handoffs.inc({ outcome: "failed" })
        void router.send({ _tag: "Error", id: f.id, code: err.code, message: err.message }).catch(() => {})
      }
    } finally {
      this.core.engine.release(f.id)
      this.active.delete(f.id)
    }
  }

  /** A pooled, authenticated connection to a decode node (dialled on first use, re-dialled after a close). */
  private decodeConnection(target: SocketAddress): Promise<Connection> {
    const key = formatSocketAddress(target)
    const existing = this.decodePool.get(key)
    if (existing !== undefined) return existing
    const dialing = Connection.dial(formatHost(target), target.port, this.dialOptions).then(
      (conn) => {
        conn.on({
          frame: (f) => {
            if (f._tag !== "KvAck" && f._tag !== "KvGrant" && f._tag !== "Error") return
            if (f.id === undefined) return
            const a = this.active.get(f.id)
            if (a?.ack === undefined) return
            if (f._tag === "KvGrant") a.grant?.resolve()
            else if (f._tag === "KvAck") a.ack.resolve()
            else {
              // No address in what goes back to the router (and on to clients); the log line has it.
              const e = new HandoffFailed(f.code, `the decode node refused the KV: ${f.message}`)
              a.grant?.reject(e)
              a.ack.reject(e)
            }
          },
          close: (reason) => {
            this.decodePool.delete(key)
            for (const a of this.active.values()) {
              if (a.ack?.conn !== conn) continue
              const e = new HandoffFailed(
                "unavailable",
                `decode node ${key} closed the connection during the KV handoff (${reason})`
              )
              a.grant?.reject(e)
              a.ack.reject(e)
            }
          }
        })
        return conn
      },
      (e: Error) => {
        this.decodePool.delete(key)
        throw new HandoffFailed("unavailable", `cannot reach decode node ${key}: ${e.message}`)
      }
    )
    this.decodePool.set(key, dialing)
    return dialing
  }
}
