import { greedySampling } from "../../src/domain/Sampling.js"
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  decodeFrameBody,
  defaultWireLimits,
  encodeFrame,
  FrameDecoder,
  maxFrameLength,
  type Decoded
} from "../../src/domain/WireCodec.js"
import type { Frame } from "../../src/domain/WireFrames.js"
import { frameArb } from "./frameArbitraries.js"

const concat = (parts: ReadonlyArray<Uint8Array>): Uint8Array => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.byteLength
  }
  return out
}

const framesOf = (items: ReadonlyArray<Decoded>): Array<Frame> =>
  items.map((d) => {
    if (d._tag !== "Frame") throw new Error(`not a frame: ${JSON.stringify(d)}`)
    return d.frame
  })

/** Frames compared as plain data (typed arrays as arrays). */
const plain = (frames: ReadonlyArray<Frame>) =>
  frames.map(
    (f) =>
      JSON.parse(
        JSON.stringify(f, (_k, v: unknown) => (ArrayBuffer.isView(v) ? Array.from(v as Uint8Array) : v))
      ) as unknown
  )

describe("WireCodec", () => {
  it("property: encode then decode round-trips every frame", () => {
    fc.assert(
      fc.property(frameArb, (frame) => {
        const decoder = new FrameDecoder()
        expect(plain(framesOf(decoder.push(encodeFrame(frame))))).toEqual(plain([frame]))
        expect(decoder.bufferedBytes).toBe(0)
      }),
      { numRuns: 500 }
    )
  })

  it("property: any split of a byte stream decodes to the same frames", () => {
    fc.assert(
      fc.property(
        fc.array(frameArb, { minLength: 1, maxLength: 6 }),
        fc.array(fc.nat(), { maxLength: 12 }),
        (frames, cuts) => {
          const stream = concat(frames.map(encodeFrame))
          const points = [...new Set(cuts.map((c) => c % (stream.byteLength + 1)))].sort((a, b) => a - b)
          const decoder = new FrameDecoder()
          const out: Array<Decoded> = []
          let prev = 0
          for (const p of [...points, stream.byteLength]) {
            out.push(...decoder.push(stream.subarray(prev, p)))
            prev = p
          }
          expect(plain(framesOf(out))).toEqual(plain(frames))
        }
      ),
      { numRuns: 300 }
    )
  })

  it("decodes a stream fed one byte at a time", () => {
    const frames: Array<Frame> = [
      { _tag: "Token", id: "r1", seq: 0, token: 42 },
      { _tag: "KvChunk", id: "r1", layer: 1, kind: "value", offset: 8, bytes: Uint8Array.from([1, 2, 3, 4]) },
      { _tag: "Cancel", id: "r1" }
    ]
    const stream = concat(frames.map(encodeFrame))
    const decoder = new FrameDecoder()
    const out: Array<Decoded> = []
    for (let i = 0; i < stream.byteLength; i++) out.push(...decoder.push(stream.subarray(i, i + 1)))
    expect(plain(framesOf(out))).toEqual(plain(frames))
  })

  it("property: arbitrary bytes never throw out of the decoder", () => {
    fc.assert(
      fc.property(fc.array(fc.uint8Array({ maxLength: 64 }), { maxLength: 8 }), (chunks) => {
        const decoder = new FrameDecoder()
        for (const c of chunks)
          for (const d of decoder.push(c)) expect(["Frame", "Invalid", "Fatal"]).toContain(d._tag)
      }),
      { numRuns: 1000 }
    )
  })

  it("property: garbage under a sound frame header is an Invalid item, and decoding goes on", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 30 }), fc.uint8Array({ maxLength: 100 }), (type, garbage) => {
        const body = new Uint8Array(4 + garbage.byteLength)
        const view = new DataView(body.buffer)
        view.setUint8(0, 1)
        view.setUint8(1, type)
        view.setUint16(2, garbage.byteLength)
        body.set(garbage, 4)
        const prefix = new Uint8Array(4)
        new DataView(prefix.buffer).setUint32(0, body.byteLength)
        const after: Frame = { _tag: "Cancel", id: "after" }
        const decoder = new FrameDecoder()
        const out = decoder.push(concat([prefix, body, encodeFrame(after)]))
        expect(out.some((d) => d._tag === "Fatal")).toBe(false)
        expect(out.at(-1)).toEqual({ _tag: "Frame", frame: after })
      })
    )
  })

  it("property: an oversized length is refused before any allocation (the decoder holds no partial frame)", () => {
    fc.assert(
      fc.property(fc.integer({ min: maxFrameLength(defaultWireLimits) + 1, max: 0xffffffff }), (length) => {
        const prefix = new Uint8Array(4)
        new DataView(prefix.buffer).setUint32(0, length)
        const decoder = new FrameDecoder()
        const out = decoder.push(prefix)
        expect(out).toEqual([
          {
            _tag: "Fatal",
            error: { _tag: "FrameTooLarge", length, limit: maxFrameLength(defaultWireLimits) }
          }
        ])
        expect(decoder.bufferedBytes).toBe(0)
        expect(decoder.push(new Uint8Array(100))).toEqual([])
      })
    )
  })

  it("refuses an unknown protocol version for the connection", () => {
    const bytes = encodeFrame({ _tag: "Cancel", id: "x" })
    bytes[4] = 99
    expect(new FrameDecoder().push(bytes)[0]).toMatchObject({
      _tag: "Fatal",
      error: { _tag: "UnsupportedVersion", version: 99 }
    })
  })

  it("a header that fails its Schema names the request when it can, and the field", () => {
    const good = encodeFrame({ _tag: "Token", id: "req-7", seq: 0, token: 1 })
    const text = new TextDecoder().decode(good.subarray(8)).replace('"seq":0', '"seq":-1')
    const header = new TextEncoder().encode(text)
    const body = new Uint8Array(4 + header.byteLength)
    body.set(good.subarray(4, 6))
    new DataView(body.buffer).setUint16(2, header.byteLength)
    body.set(header, 4)
    const d = decodeFrameBody(body)
    expect(d).toMatchObject({
      _tag: "Invalid",
      requestId: "req-7",
      error: { _tag: "BadHeader", frame: "Token" }
    })
    if (d._tag === "Invalid" && d.error._tag === "BadHeader") expect(d.error.message).toContain("seq")
  })

  it("refuses a KV chunk over the chunk limit and a token list over the context", () => {
    const limits = { ...defaultWireLimits, maxChunkBytes: 16, maxTokens: 4 }
    const chunk = encodeFrame({
      _tag: "KvChunk",
      id: "r",
      layer: 0,
      kind: "key",
      offset: 0,
      bytes: new Uint8Array(17)
    })
    expect(decodeFrameBody(chunk.subarray(4), limits)).toMatchObject({
      _tag: "Invalid",
      requestId: "r",
      error: { _tag: "BadPayload" }
    })
    const g = {
      sampling: greedySampling,
      maxTokens: 1,
      minTokens: 0,
      ignoreEos: false,
      seed: 0
    }
    const prefill = encodeFrame({
      _tag: "Prefill",
      id: "r",
      generation: g,
      tokens: Int32Array.from([1, 2, 3, 4, 5])
    })
    expect(decodeFrameBody(prefill.subarray(4), limits)).toMatchObject({
      _tag: "Invalid",
      error: { _tag: "BadPayload" }
    })
  })
})
