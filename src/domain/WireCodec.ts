/**
 * Binary codec of the node transport. Every frame:
 *
 *   u32 BE  length of what follows (version .. end of payload)
 *   u8      protocol version
 *   u8      frame type (FrameType)
 *   u16 BE  header length H (<= 64 KiB)
 *   H bytes header: UTF-8 JSON, validated by the frame type's Schema
 *   rest    payload: int32 LE token ids, or raw KV bytes, or nothing
 *
 * The decoder is incremental (a stream split at any byte decodes to the same frames), refuses an
 * oversized length before allocating anything, and never throws: bad input becomes a typed error.
 * A framing error (bad length or version) is fatal for the connection; a bad header or payload under a
 * sound frame is reported for that frame (with its request id when one can be read) and decoding goes on.
 */
import { Result, Schema } from "effect"
import {
  type Frame,
  type FrameTag,
  FrameType,
  HeaderSchemas,
  PROTOCOL_VERSION,
  payloadKind
} from "./WireFrames.js"

export interface WireLimits {
  /** Control header bytes (JSON). */
  readonly maxHeaderBytes: number
  /** KV chunk payload bytes. */
  readonly maxChunkBytes: number
  /** Token ids in one Prefill / KvBegin payload (the model's context). */
  readonly maxTokens: number
}

export const defaultWireLimits: WireLimits = {
  maxHeaderBytes: 64 * 1024,
  maxChunkBytes: 4 * 1024 * 1024,
  maxTokens: 1 << 17
}

const PREFIX = 4
const FIXED = 4 // version, type, header length

/** Largest value the length field may carry under these limits. */
export const maxFrameLength = (limits: WireLimits): number =>
  FIXED + limits.maxHeaderBytes + Math.max(limits.maxChunkBytes, limits.maxTokens * 4)

export type WireError =
  | { readonly _tag: "FrameTooLarge"; readonly length: number; readonly limit: number }
  | { readonly _tag: "FrameTooShort"; readonly length: number }
  | { readonly _tag: "UnsupportedVersion"; readonly version: number }
  | { readonly _tag: "UnknownFrameType"; readonly type: number }
  | { readonly _tag: "BadHeader"; readonly frame: FrameTag; readonly message: string }
  | { readonly _tag: "BadPayload"; readonly frame: FrameTag; readonly message: string }

export const describeWireError = (e: WireError): string => {
  switch (e._tag) {
    case "FrameTooLarge":
      return `frame length ${e.length} exceeds the limit ${e.limit}`
    case "FrameTooShort":
      return `frame length ${e.length} is shorter than a frame header`
    case "UnsupportedVersion":
      return `protocol version ${e.version} is not supported (this node speaks ${PROTOCOL_VERSION})`
    case "UnknownFrameType":
      return `unknown frame type ${e.type}`
    case "BadHeader":
      return `bad ${e.frame} header: ${e.message}`
    case "BadPayload":
      return `bad ${e.frame} payload: ${e.message}`
  }
}

export type Decoded =
  | { readonly _tag: "Frame"; readonly frame: Frame }
  /** A sound frame with a bad header or payload: fail that request (when `requestId` is known). */
  | { readonly _tag: "Invalid"; readonly error: WireError; readonly requestId: string | undefined }
  /** Framing is lost: close the connection. Nothing more is decoded. */
  | { readonly _tag: "Fatal"; readonly error: WireError }

const TYPE_TAGS: ReadonlyMap<number, FrameTag> = new Map(
  Object.entries(FrameType).map(([tag, type]) => [type, tag as FrameTag])
)

const textEncoder = new TextEncoder()
const textDecoder = new TextDecoder("utf-8", { fatal: true })

const tokensToBytes = (tokens: Int32Array): Uint8Array => {
  const out = new Uint8Array(tokens.length * 4)
  const view = new DataView(out.buffer)
  for (let i = 0; i < tokens.length; i++) view.setInt32(i * 4, tokens[i] as number, true)
  return out
}

const bytesToTokens = (bytes: Uint8Array): Int32Array => {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
  const out = new Int32Array(bytes.byteLength / 4)
  for (let i = 0; i < out.length; i++) out[i] = view.getInt32(i * 4, true)
  return out
}

const headerOf = (frame: Frame): Record<string, unknown> => {
  const { _tag, ...rest } = frame
  void _tag
  if ("tokens" in rest) {
    const { tokens, ...header } = rest
    void tokens
    return header
  }
  if ("bytes" in rest) {
    const { bytes, ...header } = rest
    void bytes
    return header
  }
  return rest
}

/**
 * Encodes a frame as [head, payload]: the head holds the prefix, version, type and header; the payload is
 * passed through untouched (a KV chunk's bytes are not copied). Write both, in order.
 */
export const encodeFrameParts = (frame: Frame): readonly [Uint8Array, Uint8Array] => {
  const header = textEncoder.encode(JSON.stringify(headerOf(frame)))
  const payload =
    frame._tag === "Prefill" || frame._tag === "KvBegin"
      ? tokensToBytes(frame.tokens)
      : frame._tag === "KvChunk"
        ? frame.bytes
        : new Uint8Array(0)
  const head = new Uint8Array(PREFIX + FIXED + header.byteLength)
  const view = new DataView(head.buffer)
  view.setUint32(0, FIXED + header.byteLength + payload.byteLength)
  view.setUint8(4, PROTOCOL_VERSION)
  view.setUint8(5, FrameType[frame._tag])
  view.setUint16(6, header.byteLength)
  head.set(header, PREFIX + FIXED)
  return [head, payload]
}

/** The whole frame in one buffer. */
export const encodeFrame = (frame: Frame): Uint8Array => {
  const [head, payload] = encodeFrameParts(frame)
  if (payload.byteLength === 0) return head
  const out = new Uint8Array(head.byteLength + payload.byteLength)
  out.set(head)
  out.set(payload, head.byteLength)
  return out
}

const idFromJson = (json: unknown): string | undefined => {
  if (typeof json !== "object" || json === null || !("id" in json)) return undefined
  const id = (json as { readonly id: unknown }).id
  return typeof id === "string" && id.length > 0 && id.length <= 128 ? id : undefined
}

/** Decodes one complete frame body (after the length prefix). */
export const decodeFrameBody = (body: Uint8Array, limits: WireLimits = defaultWireLimits): Decoded => {
  if (body.byteLength < FIXED)
    return { _tag: "Fatal", error: { _tag: "FrameTooShort", length: body.byteLength } }
  const view = new DataView(body.buffer, body.byteOffset, body.byteLength)
  const version = view.getUint8(0)
  if (version !== PROTOCOL_VERSION) return { _tag: "Fatal", error: { _tag: "UnsupportedVersion", version } }
  const type = view.getUint8(1)
  const tag = TYPE_TAGS.get(type)
  if (tag === undefined)
    return { _tag: "Invalid", error: { _tag: "UnknownFrameType", type }, requestId: undefined }
  const headerLength = view.getUint16(2)
  const invalid = (e: WireError, requestId: string | undefined): Decoded => ({
    _tag: "Invalid",
    error: e,
    requestId
  })
  if (FIXED + headerLength > body.byteLength || headerLength > limits.maxHeaderBytes) {
    return invalid(
      { _tag: "BadHeader", frame: tag, message: `header length ${headerLength} out of bounds` },
      undefined
    )
  }
  let json: unknown
  try {
    json = JSON.parse(textDecoder.decode(body.subarray(FIXED, FIXED + headerLength)))
  } catch {
    return invalid({ _tag: "BadHeader", frame: tag, message: "header is not UTF-8 JSON" }, undefined)
  }
  const requestId = idFromJson(json)
  const decoded = Schema.decodeUnknownResult(HeaderSchemas[tag])(json)
  if (Result.isFailure(decoded)) {
    return invalid({ _tag: "BadHeader", frame: tag, message: decoded.failure.message }, requestId)
  }
  const header = decoded.success
  const payload = body.subarray(FIXED + headerLength)
  switch (payloadKind(tag)) {
    case "none":
      if (payload.byteLength !== 0) {
        return invalid({ _tag: "BadPayload", frame: tag, message: "unexpected payload" }, requestId)
      }
      return { _tag: "Frame", frame: { _tag: tag, ...header } as Frame }
    case "tokens": {
      if (payload.byteLength % 4 !== 0 || payload.byteLength / 4 > limits.maxTokens) {
        return invalid(
          { _tag: "BadPayload", frame: tag, message: `token payload of ${payload.byteLength} bytes` },
          requestId
        )
      }
      const tokens = bytesToTokens(payload)
      if (tokens.some((t) => t < 0)) {
        return invalid({ _tag: "BadPayload", frame: tag, message: "negative token id" }, requestId)
      }
      return { _tag: "Frame", frame: { _tag: tag, ...header, tokens } as Frame }
    }
    case "bytes":
      if (payload.byteLength > limits.maxChunkBytes) {
        return invalid(
          { _tag: "BadPayload", frame: tag, message: `chunk of ${payload.byteLength} bytes over the limit` },
          requestId
        )
      }
      return { _tag: "Frame", frame: { _tag: tag, ...header, bytes: payload } as Frame }
  }
}

/**
 * Incremental decoder: feed it chunks as they arrive, in order. It holds the chunks of at most one partial
 * frame (never more than the frame limit plus one chunk) and copies a frame only once it is complete.
 */
export class FrameDecoder {
  private readonly limits: WireLimits
  private readonly limit: number
  private pending: Array<Uint8Array> = []
  private pendingBytes = 0
  private failed = false

  /**
   * `allocate` makes the buffer a frame split across chunks is joined into; every byte of it is written
   * before it is read, so the shell may pass a non-zeroing allocator (Buffer.allocUnsafe). It is called
   * at most once per `push`, so it may even hand back the same memory each time, provided the caller is
   * done with the frames of one `push` (payload views included) before the next.
   */

  constructor(
    limits: WireLimits = defaultWireLimits,
    private readonly allocate: (bytes: number) => Uint8Array = (n) => new Uint8Array(n)
  ) {
    this.limits = limits
    this.limit = maxFrameLength(limits)
  }

  /** Bytes held for a frame that has not fully arrived (0 between frames). */
  get bufferedBytes(): number {
    return this.pendingBytes
  }

  get isFailed(): boolean {
    return this.failed
  }

  push(chunk: Uint8Array): ReadonlyArray<Decoded> {
    if (this.failed || chunk.byteLength === 0) return []
    this.pending.push(chunk)
    this.pendingBytes += chunk.byteLength
    const out: Array<Decoded> = []
    for (;;) {
      if (this.pendingBytes < PREFIX) return out
      const length = this.peekLength()
      if (length > this.limit) return this.fail(out, { _tag: "FrameTooLarge", length, limit: this.limit })
      if (length < FIXED) return this.fail(out, { _tag: "FrameTooShort", length })
      // Wait, without copying, until the whole frame is here; then copy it at most once.
      if (this.pendingBytes < PREFIX + length) return out
      const data = this.pending.length === 1 ? (this.pending[0] as Uint8Array) : this.joinPending()
      const decoded = decodeFrameBody(data.subarray(PREFIX, PREFIX + length), this.limits)
      out.push(decoded)
      if (decoded._tag === "Fatal") return this.fail(out, undefined)
      const rest = data.subarray(PREFIX + length)
      this.pending = rest.byteLength > 0 ? [rest] : []
      this.pendingBytes = rest.byteLength
    }
  }

  private peekLength(): number {
    const first = this.pending[0] as Uint8Array
    const head = first.byteLength >= PREFIX ? first : this.joinPending()
    return new DataView(head.buffer, head.byteOffset, PREFIX).getUint32(0)
  }

  private joinPending(): Uint8Array {
    const joined = this.allocate(this.pendingBytes)

    let at = 0
    for (const p of this.pending) {
      joined.set(p, at)
      at += p.byteLength
    }
    this.pending = [joined]
    return joined
  }

  private fail(out: Array<Decoded>, error: WireError | undefined): ReadonlyArray<Decoded> {
    this.failed = true
    this.pending = []
    this.pendingBytes = 0
    if (error !== undefined) out.push({ _tag: "Fatal", error })
    return out
  }
}
