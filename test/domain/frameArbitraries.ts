import fc from "fast-check"
import type { Frame, Generation } from "../../src/domain/WireFrames.js"

const id = fc.string({ minLength: 1, maxLength: 40 })
const hex = fc.stringMatching(/^[0-9a-f]{0,64}$/)
const u32 = fc.integer({ min: 0, max: 0xffffffff })
const nat = fc.nat(1_000_000)

export const generationArb: fc.Arbitrary<Generation> = fc.record({
  sampling: fc.record({
    temperature: fc.double({ min: 0, max: 2, noNaN: true }),
    topP: fc.double({ min: 0, max: 1, noNaN: true }),
    topK: fc.integer({ min: -1, max: 100 }),
    minP: fc.double({ min: 0, max: 1, noNaN: true }),
    repetitionPenalty: fc.double({ min: 0.1, max: 2, noNaN: true }),
    frequencyPenalty: fc.double({ min: -2, max: 2, noNaN: true }),
    presencePenalty: fc.double({ min: -2, max: 2, noNaN: true })
  }),
  maxTokens: fc.integer({ min: 1, max: 4096 }),
  minTokens: fc.nat(10),
  ignoreEos: fc.boolean(),
  seed: u32
})

const tokens = fc
  .array(fc.integer({ min: 0, max: 0x7fffffff }), { maxLength: 64 })
  .map((xs) => Int32Array.from(xs))
const load = fc.record({
  liveSequences: nat,
  kvBytes: nat,
  freeKvBytes: nat,
  queueLength: nat,
  pendingKvBytes: nat,
  partialFrames: nat
})

export const frameArb: fc.Arbitrary<Frame> = fc.oneof(
  fc.record({
    _tag: fc.constant("Hello" as const),
    nonce: hex,
    role: fc.constantFrom("router" as const, "prefill" as const, "decode" as const),
    nodeId: fc.string({ maxLength: 20 }),
    protocolVersion: fc.nat(5),
    modelFingerprint: hex,
    tokenizerFingerprint: hex
  }),
  fc.record({ _tag: fc.constant("Auth" as const), mac: hex }),
  fc.record({ _tag: fc.constant("Expect" as const), id, generation: generationArb, promptTokens: nat }),
  fc.record(
    { _tag: fc.constant("Prefill" as const), id, generation: generationArb, tokens },
    { requiredKeys: ["_tag", "id", "generation", "tokens"] }
  ),
  fc.record({
    _tag: fc.constant("Prefill" as const),
    id,
    generation: generationArb,
    tokens,
    decodeTarget: fc.string({ maxLength: 40 })
  }),
  fc.record({ _tag: fc.constant("Token" as const), id, seq: nat, token: nat }),
  fc.record({
    _tag: fc.constant("KvBegin" as const),
    id,
    descriptor: fc.record({
      modelFingerprint: hex,
      layers: fc.integer({ min: 1, max: 8 }),
      kvHeads: fc.integer({ min: 1, max: 8 }),
      headDim: fc.integer({ min: 1, max: 128 }),
      dtype: fc.constant("float32" as const),
      tokenCount: fc.integer({ min: 1, max: 4096 })
    }),
    generation: generationArb,
    firstToken: nat,
    rngState: u32,
    tokens
  }),
  fc.record({
    _tag: fc.constant("KvChunk" as const),
    id,
    layer: fc.nat(8),
    kind: fc.constantFrom("key" as const, "value" as const),
    offset: nat,
    bytes: fc.uint8Array({ maxLength: 512 })
  }),
  fc.record({ _tag: fc.constant("KvEnd" as const), id, checksum: hex }),
  fc.record({ _tag: fc.constant("KvAck" as const), id }),
  fc.record({
    _tag: fc.constant("Done" as const),
    id,
    finishReason: fc.constantFrom("stop" as const, "length" as const),
    completionTokens: nat
  }),
  fc.record({
    _tag: fc.constant("Error" as const),
    id,
    code: fc.constantFrom("bad_frame" as const, "kv_invalid" as const, "decode_target_rejected" as const),
    message: fc.string({ maxLength: 100 })
  }),
  fc.record({
    _tag: fc.constant("Error" as const),
    code: fc.constantFrom("internal" as const),
    message: fc.string({ maxLength: 100 })
  }),
  fc.record({ _tag: fc.constant("Cancel" as const), id }),
  fc.record({ _tag: fc.constant("Heartbeat" as const), nonce: nat }),
  fc.record({ _tag: fc.constant("HeartbeatReply" as const), nonce: nat, load })
)
