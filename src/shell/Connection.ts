/**
 * A persistent, multiplexed, authenticated framed TCP connection (one per peer pair). Frames of many
 * requests interleave on it; the domain codec frames them and the domain handshake decides who may talk.
 *
 * Handshake (both directions, 5 s limit): each side sends Hello with a fresh 32-byte nonce, role, node id,
 * protocol version and fingerprints; each then sends Auth, an HMAC-SHA256 of the domain transcript for
 * its own direction. The secret never crosses the wire and a MAC cannot be reflected.
 *
 * Backpressure: `send` resolves once the socket has taken the frame; when Node's buffer is full it waits
 * for 'drain'. Senders of bulk data (KV) await it; small frames may be fired and forgotten.
 */
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto"
import net from "node:net"
import { checkPeerHello, handshakeTranscript, type HandshakeSide, type Hello } from "../domain/Handshake.js"
import {
  defaultWireLimits,
  describeWireError,
  encodeFrameParts,
  FrameDecoder,
  type WireLimits
} from "../domain/WireCodec.js"
import { type Frame, type NodeRole, PROTOCOL_VERSION } from "../domain/WireFrames.js"

export const HANDSHAKE_TIMEOUT_MS = 5000

export interface Identity {
  readonly role: NodeRole
  readonly nodeId: string
  readonly modelFingerprint: string
  readonly tokenizerFingerprint: string
}

export interface HandshakeOptions {
  readonly secret: Buffer
  readonly self: Identity
  /** Roles this side accepts from the peer. */
  readonly peerRoles: ReadonlyArray<NodeRole>
  /** The model fingerprint a peer of this role must have; undefined accepts any (e.g. the router). */
  readonly expectModel: (peerRole: NodeRole) => string | undefined
  readonly limits?: WireLimits
}

export interface ConnectionEvents {
  frame(frame: Frame): void
  /** A sound frame with a bad header or payload (fail that request when the id is known). */
  invalid(message: string, requestId: string | undefined): void
  close(reason: string): void
}

const mac = (secret: Buffer, text: string) => createHmac("sha256", secret).update(text).digest()

let connectionCounter = 0

export class Connection {
  readonly id = ++connectionCounter
  private readonly decoder: FrameDecoder
  private closed = false
  private corked = false
  private listeners: Partial<ConnectionEvents> = {}
  bytesIn = 0
  bytesOut = 0

  private constructor(
    private readonly socket: net.Socket,
    readonly peer: Hello,
    limits: WireLimits
  ) {
    // Frames split across reads are joined into one reused scratch buffer: every frame of a read is
    // handled (KV bytes copied out) before the next read, so the memory is free again by then.
    let scratch = Buffer.allocUnsafe(0)
    this.decoder = new FrameDecoder(limits, (n) => {
      if (scratch.byteLength < n) scratch = Buffer.allocUnsafe(Math.max(n, 2 * scratch.byteLength))
      return scratch.subarray(0, n)
    })

    // Reading starts when the owner attaches its listeners (`on`), so no frame is dropped.
    socket.pause()
    socket.on("data", (chunk: Buffer) => this.onData(chunk))
    socket.on("close", () => this.finish("connection closed"))
    socket.on("error", (e) => this.finish(`socket error: ${e.message}`))
  }

  get isClosed(): boolean {
    return this.closed
  }

  /** True while a frame is partly received. */
  get hasPartialFrame(): boolean {
    return this.decoder.bufferedBytes > 0
  }

  get remote(): string {
    return `${this.socket.remoteAddress ?? "?"}:${this.socket.remotePort ?? "?"}`
  }

  /** Sets the frame and invalid handlers; close handlers accumulate (each is called once). */
  on(events: Partial<ConnectionEvents>): void {
    const previousClose = this.listeners.close
    const close = events.close
    this.listeners = { ...this.listeners, ...events }
    if (previousClose !== undefined && close !== undefined) {
      this.listeners.close = (reason) => {
        previousClose(reason)
        close(reason)
      }
    }
    if (this.closed && close !== undefined) queueMicrotask(() => close("connection closed"))
    if (this.listeners.frame !== undefined) this.socket.resume()
  }

  send(frame: Frame): Promise<void> {
    if (this.closed) return Promise.reject(new Error("connection closed"))
    const [head, payload] = encodeFrameParts(frame)
    this.bytesOut += head.byteLength + payload.byteLength
    this.coalesce()
    let ok = this.socket.write(head)
    if (payload.byteLength > 0) ok = this.socket.write(payload)
    if (ok) return Promise.resolve()
    return new Promise((resolve, reject) => {
      const onDrain = () => {
        this.socket.off("close", onClose)
        resolve()
      }
      const onClose = () => {
        this.socket.off("drain", onDrain)
        reject(new Error("connection closed"))
      }
      this.socket.once("drain", onDrain)
      this.socket.once("close", onClose)
    })
  }

  /**
   * Frames sent in one tick leave in one write: a decode step's tokens for every sequence (and a frame's
   * header with its payload) cost one system call, not one each.
   */
  private coalesce(): void {
    if (this.corked) return
    this.corked = true
    this.socket.cork()
    process.nextTick(() => {
      this.corked = false
      this.socket.uncork()
    })
  }

  /** Writes bytes as they are, outside the codec (for tools that test peers with hostile input). */
  writeRaw(bytes: Uint8Array): void {
    if (!this.closed) this.socket.write(bytes)
  }

  close(reason = "closed"): void {
    this.socket.destroy()
    this.finish(reason)
  }

  private finish(reason: string): void {
    if (this.closed) return
    this.closed = true
    this.socket.destroy()
    this.listeners.close?.(reason)
  }

  private onData(chunk: Buffer): void {
    if (this.closed) return
    this.bytesIn += chunk.byteLength
    for (const d of this.decoder.push(chunk)) {
      if (d._tag === "Frame") {
        try {
          this.listeners.frame?.(d.frame)
        } catch (e) {
          this.listeners.invalid?.(
            `handling ${d.frame._tag} failed: ${(e as Error).message}`,
            "id" in d.frame ? d.frame.id : undefined
          )
        }
      } else if (d._tag === "Invalid") {
        this.listeners.invalid?.(describeWireError(d.error), d.requestId)
      } else {
        this.listeners.invalid?.(describeWireError(d.error), undefined)
        this.close(`protocol error: ${describeWireError(d.error)}`)
        return
      }
    }
  }

  /**
   * Runs the handshake on a fresh socket; resolves with an authenticated connection or rejects with the
   * reason. Order: dialer Hello -> listener Hello -> dialer Auth -> (listener verifies) listener Auth ->
   * (dialer verifies). The listener never speaks unasked, so nothing may follow the last handshake frame
   * in the same read; before authentication only small control frames are accepted.
   */
  static handshake(socket: net.Socket, side: HandshakeSide, options: HandshakeOptions): Promise<Connection> {
    const limits = options.limits ?? defaultWireLimits
    socket.setNoDelay(true)
    return new Promise((resolve, reject) => {
      const decoder = new FrameDecoder({ maxHeaderBytes: 4096, maxChunkBytes: 0, maxTokens: 0 })
      const own: Hello = {
        nonce: randomBytes(32).toString("hex"),
        protocolVersion: PROTOCOL_VERSION,
        ...options.self
      }
      let peer: Hello | undefined
      let settled = false
      const cleanup = () => {
        settled = true
        clearTimeout(timer)
        socket.removeListener("data", onData)
        socket.removeListener("error", onError)
        socket.removeListener("close", onClose)
      }
      const fail = (reason: string) => {
        if (settled) return
        cleanup()
        socket.destroy()
        reject(new Error(reason))
      }
      const timer = setTimeout(
        () => fail(`handshake not completed within ${HANDSHAKE_TIMEOUT_MS} ms`),
        HANDSHAKE_TIMEOUT_MS
      )
      const sendRaw = (frame: Frame) => void socket.write(encodeFrameParts(frame)[0])
      const transcriptOf = (who: HandshakeSide, p: Hello) =>
        handshakeTranscript(who, side === "dialer" ? own : p, side === "dialer" ? p : own)
      const onData = (chunk: Buffer) => {
        const items = decoder.push(chunk)
        for (const [i, d] of items.entries()) {
          if (settled) return
          if (d._tag !== "Frame") return fail(`bad handshake frame: ${describeWireError(d.error)}`)
          const f = d.frame
          if (peer === undefined) {
            if (f._tag !== "Hello") return fail(`expected Hello, got ${f._tag}`)
            const { _tag, ...hello } = f
            void _tag
            const check = checkPeerHello(hello, {
              roles: options.peerRoles,
              tokenizerFingerprint: options.self.tokenizerFingerprint,
              modelFingerprint: options.expectModel(hello.role)
            })
            if (check._tag === "Refuse") return fail(`refused ${hello.role} ${hello.nodeId}: ${check.reason}`)
            peer = hello
            if (side === "listener") sendRaw({ _tag: "Hello", ...own })
            else
              sendRaw({
                _tag: "Auth",
                mac: mac(options.secret, transcriptOf("dialer", peer)).toString("hex")
              })
            continue
          }
          if (f._tag !== "Auth") return fail(`expected Auth, got ${f._tag}`)
          const expected = mac(options.secret, transcriptOf(side === "dialer" ? "listener" : "dialer", peer))
          const got = Buffer.from(f.mac, "hex")
          if (got.length !== expected.length || !timingSafeEqual(got, expected)) {
            return fail(`refused ${peer.role} ${peer.nodeId}: wrong cluster secret (MAC mismatch)`)
          }
          if (i !== items.length - 1 || decoder.bufferedBytes > 0)
            return fail("frames sent before the handshake completed")
          if (side === "listener")
            sendRaw({
              _tag: "Auth",
              mac: mac(options.secret, transcriptOf("listener", peer)).toString("hex")
            })
          cleanup()
          resolve(new Connection(socket, peer, limits))
          return
        }
      }
      const onError = (e: Error) => fail(`socket error: ${e.message}`)
      const onClose = () => fail("connection closed during handshake")
      socket.on("data", onData)
      socket.on("error", onError)
      socket.on("close", onClose)
      if (side === "dialer") sendRaw({ _tag: "Hello", ...own })
    })
  }

  /** Dials `host:port` and runs the handshake as the dialer. */
  static dial(
    host: string,
    port: number,
    options: HandshakeOptions,
    timeoutMs = HANDSHAKE_TIMEOUT_MS
  ): Promise<Connection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect({ host, port, noDelay: true })
      const timer = setTimeout(() => {
        socket.destroy()
        reject(new Error(`connect to ${host}:${port} timed out`))
      }, timeoutMs)
      socket.once("connect", () => {
        clearTimeout(timer)
        Connection.handshake(socket, "dialer", options).then(resolve, reject)
      })
      socket.once("error", (e) => {
        clearTimeout(timer)
        reject(new Error(`connect to ${host}:${port} failed: ${e.message}`))
      })
    })
  }
}
