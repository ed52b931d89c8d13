/**
 * The frames of Tandem's node transport. Control headers are JSON validated by these Schemas (bounded to
 * 64 KiB); token-id lists and KV bytes travel as raw little-endian payloads, never as JSON numbers.
 */
import { Schema } from "effect"

export const PROTOCOL_VERSION = 1

export const FrameType = {
  Hello: 1,
  Auth: 2,
  Expect: 10,
  Prefill: 11,
  Token: 12,
  KvBegin: 13,
  KvChunk: 14,
  KvEnd: 15,
  KvAck: 16,
  KvGrant: 22,
  Done: 17,
  Error: 18,
  Cancel: 19,
  Heartbeat: 20,
  HeartbeatReply: 21
} as const
export type FrameTag = keyof typeof FrameType

const RequestId = Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(128))
const Count = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))
const Hex = Schema.String.check(Schema.isMaxLength(256), Schema.isPattern(/^[0-9a-f]*$/))

export const SamplingSchema = Schema.Struct({
  temperature: Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0)),
  topP: Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1 })),
  topK: Schema.Int,
  minP: Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1 })),
  repetitionPenalty: Schema.Finite.check(Schema.isGreaterThan(0)),
  frequencyPenalty: Schema.Finite,
  presencePenalty: Schema.Finite
})

/** What a node needs to generate: sampling, stop rules and the PRNG seed. */
export const GenerationSchema = Schema.Struct({
  sampling: SamplingSchema,
  maxTokens: Schema.Int.check(Schema.isGreaterThanOrEqualTo(1)),
  minTokens: Count,
  ignoreEos: Schema.Boolean,
  seed: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 0xffffffff }))
})
export type Generation = typeof GenerationSchema.Type

export const RoleSchema = Schema.Literals(["router", "prefill", "decode", "serve"])
export type NodeRole = typeof RoleSchema.Type

export const KvDescriptorSchema = Schema.Struct({
  modelFingerprint: Hex,
  layers: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 1024 })),
  kvHeads: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 1024 })),
  headDim: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 4096 })),
  dtype: Schema.Literals(["float32", "float16"]),
  tokenCount: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 1 << 20 }))
})
export type KvDescriptor = typeof KvDescriptorSchema.Type

export const LoadSchema = Schema.Struct({
  liveSequences: Count,
  kvBytes: Count,
  freeKvBytes: Count,
  queueLength: Count,
  pendingKvBytes: Count,
  partialFrames: Count
})
export type WireLoad = typeof LoadSchema.Type

export const ErrorCodeSchema = Schema.Literals([
  "bad_frame",
  "unknown_request",
  "decode_target_rejected",
  "kv_invalid",
  "kv_checksum_mismatch",
  "fingerprint_mismatch",
  "over_capacity",
  "cancelled",
  "lease_expired",
  "internal",
  "unavailable"
])
export type ErrorCode = typeof ErrorCodeSchema.Type

export const FinishReasonSchema = Schema.Literals(["stop", "length"])
export type FinishReason = typeof FinishReasonSchema.Type

/** Header schemas, one per frame type. Payload-bearing frames say so in `PayloadKind`. */
export const HeaderSchemas = {
  Hello: Schema.Struct({
    nonce: Hex,
    role: RoleSchema,
    nodeId: Schema.String.check(Schema.isMaxLength(128)),
    protocolVersion: Schema.Int,
    modelFingerprint: Hex,
    tokenizerFingerprint: Hex
  }),
  Auth: Schema.Struct({ mac: Hex }),
  Expect: Schema.Struct({ id: RequestId, generation: GenerationSchema, promptTokens: Count }),
  Prefill: Schema.Struct({
    id: RequestId,
    generation: GenerationSchema,
    decodeTarget: Schema.optionalKey(Schema.String.check(Schema.isMaxLength(128)))
  }),
  Token: Schema.Struct({ id: RequestId, seq: Count, token: Count }),
  KvBegin: Schema.Struct({
    id: RequestId,
    descriptor: KvDescriptorSchema,
    generation: GenerationSchema,
    firstToken: Count,
    rngState: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 0xffffffff }))
  }),
  KvChunk: Schema.Struct({
    id: RequestId,
    layer: Count,
    kind: Schema.Literals(["key", "value"]),
    offset: Count
  }),
  KvEnd: Schema.Struct({ id: RequestId, checksum: Hex }),
  KvAck: Schema.Struct({ id: RequestId }),
  /** Decode -> prefill: budget reserved for this handoff; send the chunks. */
  KvGrant: Schema.Struct({ id: RequestId }),
  Done: Schema.Struct({ id: RequestId, finishReason: FinishReasonSchema, completionTokens: Count }),
  Error: Schema.Struct({
    id: Schema.optionalKey(RequestId),
    code: ErrorCodeSchema,
    message: Schema.String.check(Schema.isMaxLength(4096))
  }),
  Cancel: Schema.Struct({ id: RequestId }),
  Heartbeat: Schema.Struct({ nonce: Count }),
  HeartbeatReply: Schema.Struct({ nonce: Count, load: LoadSchema })
} as const

type Headers = { readonly [K in FrameTag]: (typeof HeaderSchemas)[K]["Type"] }

/** Raw little-endian int32 token ids (Prefill: the prompt; KvBegin: prompt tokens). */
type WithTokens = { readonly tokens: Int32Array }
/** Raw KV bytes of one slice of one layer's key or value tensor. */
type WithBytes = { readonly bytes: Uint8Array }

export type Frame =
  | ({ readonly _tag: "Hello" } & Headers["Hello"])
  | ({ readonly _tag: "Auth" } & Headers["Auth"])
  | ({ readonly _tag: "Expect" } & Headers["Expect"])
  | ({ readonly _tag: "Prefill" } & Headers["Prefill"] & WithTokens)
  | ({ readonly _tag: "Token" } & Headers["Token"])
  | ({ readonly _tag: "KvBegin" } & Headers["KvBegin"] & WithTokens)
  | ({ readonly _tag: "KvChunk" } & Headers["KvChunk"] & WithBytes)
  | ({ readonly _tag: "KvEnd" } & Headers["KvEnd"])
  | ({ readonly _tag: "KvAck" } & Headers["KvAck"])
  | ({ readonly _tag: "KvGrant" } & Headers["KvGrant"])
  | ({ readonly _tag: "Done" } & Headers["Done"])
  | ({ readonly _tag: "Error" } & Headers["Error"])
  | ({ readonly _tag: "Cancel" } & Headers["Cancel"])
  | ({ readonly _tag: "Heartbeat" } & Headers["Heartbeat"])
  | ({ readonly _tag: "HeartbeatReply" } & Headers["HeartbeatReply"])

export type FrameOf<T extends FrameTag> = Extract<Frame, { readonly _tag: T }>

export const payloadKind = (tag: FrameTag): "tokens" | "bytes" | "none" =>
  tag === "Prefill" || tag === "KvBegin" ? "tokens" : tag === "KvChunk" ? "bytes" : "none"

/** Request id of a request-scoped frame (undefined for connection-level frames). */
export const frameRequestId = (frame: Frame): string | undefined => ("id" in frame ? frame.id : undefined)
