/** Hostile input: random and mutated frames at both node listeners, malformed HTTP at the router. */
import { greedySampling } from "../../src/domain/Sampling.js"
import net from "node:net"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { encodeFrame } from "../../src/domain/WireCodec.js"
import type { Frame } from "../../src/domain/WireFrames.js"
import { resolveModelDir } from "../../src/gpu/ModelStore.js"
import { modelFingerprint, tokenizerFingerprint } from "../../src/gpu/ModelDir.js"
import { Connection } from "../../src/shell/Connection.js"
import { metric, post, SECRET, startCluster, waitFor, type Cluster } from "./cluster.js"
import { freshCacheDir } from "./processes.js"

const cache = freshCacheDir()
let cluster: Cluster
beforeAll(async () => {
  cluster = await startCluster({ cache, routerArgs: ["--max-body", "64KiB"] })
}, 120_000)
afterAll(async () => {
  await cluster?.stop()
})

/** Seeded PRNG (mulberry32) so a failure can be replayed. */
const SEED = 20261204
const rng = (() => {
  let s = SEED >>> 0
  return () => {
    s = (s + 0x6d2b79f5) >>> 0
    let t = s
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
})()
const int = (n: number) => Math.floor(rng() * n)
const bytes = (n: number) => Uint8Array.from({ length: n }, () => int(256))
const pick = <A>(xs: ReadonlyArray<A>): A => xs[int(xs.length)] as A

const generation = {
  sampling: greedySampling,
  maxTokens: 4,
  minTokens: 0,
  ignoreEos: false,
  seed: 1
}

/** One hostile byte string: garbage, wrong lengths, truncation, mutated valid frames, unknown ids, bad KV. */
const hostile = (fingerprint: string): Uint8Array => {
  const id = `fuzz-${int(50)}`
  const valid: Array<Frame> = [
    { _tag: "Token", id, seq: int(5), token: int(300) },
    { _tag: "Cancel", id },
    { _tag: "KvEnd", id, checksum: "00" },
    { _tag: "KvAck", id },
    { _tag: "Heartbeat", nonce: int(1000) },
    { _tag: "Expect", id, generation, promptTokens: int(10) },
    {
      _tag: "KvBegin",
      id,
      descriptor: {
        modelFingerprint: pick([fingerprint, "abcd"]),
        layers: pick([8, 9]),
        kvHeads: 4,
        headDim: 40,
        dtype: "float32",
        tokenCount: 1 + int(4)
      },
      generation,
      firstToken: 3,
      rngState: 1,
      tokens: Int32Array.from({ length: 1 + int(4) }, () => int(259))
    },
    {
      _tag: "KvChunk",
      id,
      layer: int(10),
      kind: pick(["key", "value"] as const),
      offset: pick([0, 4, 320, 1 << 20]),
      bytes: bytes(pick([4, 64, 640]))
    },
    {
      _tag: "Prefill",
      id,
      generation,
      decodeTarget: pick(["127.0.0.1:9", "evil.example:1", "[::1]:0"]),
      tokens: Int32Array.from({ length: int(6) }, () => int(400))
    }
  ]
  switch (int(6)) {
    case 0:
      return bytes(1 + int(64)) // random garbage
    case 1: {
      // garbage body under a valid header
      const body = bytes(int(100))
      const out = new Uint8Array(8 + body.length)
      const v = new DataView(out.buffer)
      v.setUint32(0, 4 + body.length)
      v.setUint8(4, 1)
      v.setUint8(5, int(25))
      v.setUint16(6, int(body.length + 1))
      out.set(body, 8)
      return out
    }
    case 2: {
      // wrong or oversized length
      const out = encodeFrame(pick(valid))
      new DataView(out.buffer).setUint32(0, pick([0, 1, 3, 0xffffffff, 70_000_000, out.length + int(10)]))
      return out
    }
    case 3: {
      // truncated frame
      const out = encodeFrame(pick(valid))
      return out.subarray(0, int(out.length))
    }
    case 4: {
      // a valid frame with a few flipped bytes
      const out = encodeFrame(pick(valid)).slice()
      for (let k = 0; k < 1 + int(3); k++) out[int(out.length)] = int(256)
      return out
    }
    default:
      return encodeFrame(pick(valid)) // unknown ids, out-of-order / overlapping / out-of-bounds KV, bad targets
  }
}

const rawBlast = async (address: string, payloads: ReadonlyArray<Uint8Array>) => {
  const [host, port] = address.split(":") as [string, string]
  for (const p of payloads) {
    await new Promise<void>((resolve) => {
      const s = net.connect({ host, port: Number(port) }, () => {
        s.write(p)
        s.end()
      })
      s.on("error", () => resolve())
      s.on("close", () => resolve())
      s.setTimeout(2000, () => s.destroy())
    })
  }
}

describe("frame fuzzing", () => {
  it("1,000+ hostile frames at a prefill and a decode listener, before and after authenticating, leave both serving with gauges at zero", async () => {
    const dir = resolveModelDir("builtin:tiny", { TANDEM_CACHE_DIR: cache })
    const fp = modelFingerprint(dir)
    const tfp = tokenizerFingerprint(dir)
    let sent = 0
    for (const node of [cluster.prefill[0]!, cluster.decode[0]!]) {
      // Before authenticating: raw connections, 8 payloads each.
      const pre = Array.from({ length: 160 }, () => hostile(fp))
      for (let i = 0; i < pre.length; i += 8) {
        await rawBlast(node.ready.serving!, [concat(pre.slice(i, i + 8))])
      }
      sent += pre.length
      // After authenticating (as a router to the prefill node, as a prefill node to the decode node).
      const role = node === cluster.prefill[0] ? ("router" as const) : ("prefill" as const)
      const [host, port] = node.ready.serving!.split(":") as [string, string]
      let conn: Connection | undefined
      for (let i = 0; i < 400; i++) {
        if (conn === undefined || conn.isClosed) {
          conn = await Connection.dial(host, Number(port), {
            secret: Buffer.from(SECRET),
            self: {
              role,
              nodeId: "fuzzer",
              modelFingerprint: role === "router" ? "" : fp,
              tokenizerFingerprint: tfp
            },
            peerRoles: [role === "router" ? "prefill" : "decode"],
            expectModel: () => undefined
          })
          conn.on({ frame: () => {} })
        }
        conn.writeRaw(hostile(fp))
        sent++
        if (i % 50 === 49) await new Promise((r) => setTimeout(r, 10))
      }
      conn?.close()
    }
    expect(sent).toBeGreaterThanOrEqual(1000)
    // Both nodes serve a correct request afterwards, and their gauges are back to zero.
    const r = await post(cluster.url, "/v1/completions", {
      prompt: "after the fuzz",
      max_tokens: 8,
      temperature: 0
    })
    expect(r.status).toBe(200)
    for (const node of [cluster.prefill[0]!, cluster.decode[0]!]) {
      await waitFor(
        `${node.name} gauges at zero`,
        async () => {
          const h = node.ready.http!
          const v = await Promise.all(
            [
              "tandem_node_partial_frames",
              "tandem_node_kv_pending_bytes",
              "tandem_node_live_sequences",
              "tandem_node_kv_bytes_held"
            ].map((m) => metric(h, m))
          )
          return v.every((x) => x === 0) ? true : undefined
        },
        60_000
      )
    }
  })
})

const concat = (parts: ReadonlyArray<Uint8Array>) => {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let at = 0
  for (const p of parts) {
    out.set(p, at)
    at += p.length
  }
  return out
}

/** A raw HTTP exchange; resolves with the status line's code (0 if the server closed without one). */
const rawHttp = (
  address: string,
  chunks: ReadonlyArray<string | Uint8Array>,
  gapMs = 0
): Promise<{ status: number; body: string }> =>
  new Promise((resolve) => {
    const [host, port] = address.split(":") as [string, string]
    let data = ""
    const s = net.connect({ host, port: Number(port) }, async () => {
      for (const c of chunks) {
        s.write(c)
        if (gapMs > 0) await new Promise((r) => setTimeout(r, gapMs))
      }
    })
    s.on("data", (d) => (data += d.toString()))
    s.on("error", () => {})
    s.on("close", () => {
      const m = /^HTTP\/1\.1 (\d{3})/.exec(data)
      resolve({ status: m === null ? 0 : Number(m[1]), body: data.slice(data.indexOf("\r\n\r\n") + 4) })
    })
    s.setTimeout(10_000, () => s.destroy())
  })

describe("HTTP fuzzing", () => {
  it("500+ malformed requests all get a 4xx with a message, never a 500, and the router keeps serving", async () => {
    const address = cluster.router.ready.http!
    const bad: Array<() => unknown> = [
      () => ({ messages: "hi" }),
      () => ({ messages: [] }),
      () => ({ messages: [{ role: pick(["wizard", "tool", "", 7]), content: "x" }] }),
      () => ({ messages: [{ role: "user", content: int(10) }] }),
      () => ({ messages: [{ role: "user" }] }),
      () => ({
        messages: [{ role: "user", content: "x" }],
        max_tokens: pick([-1, 0, 1e12, "ten", 1.5, 1_000_000])
      }),
      () => ({ messages: [{ role: "user", content: "x" }], temperature: pick([-1, "hot", 1e9, []]) }),
      () => ({ messages: [{ role: "user", content: "x" }], top_p: pick([0, 2, "x"]) }),
      () => ({ messages: [{ role: "user", content: "x" }], n: pick([2, 5]) }),
      () => ({ messages: [{ role: "user", content: "x" }], logprobs: true }),
      () => ({ messages: [{ role: "user", content: "x" }], tools: [{ type: "function" }] }),
      () => ({ messages: [{ role: "user", content: "x" }], stop: pick([7, [1, 2], Array(100).fill("x")]) }),
      () => ({ messages: [{ role: "user", content: "x" }], model: "no-such-model" }),
      () => ({ messages: [{ role: "user", content: "x" }], min_tokens: 50, max_tokens: 10 }),
      () => ({ prompt: pick([5, null, {}, [], [[]], ["a", "b"], [-1], [1e12]]) }),
      () => ({ prompt: "x", max_tokens: 5000 }),
      () => pick([[], 7, "string", null, true])
    ]
    let count = 0
    const statuses = new Map<number, number>()
    const record = (status: number, body: string) => {
      count++
      statuses.set(status, (statuses.get(status) ?? 0) + 1)
      expect(status, body).toBeGreaterThanOrEqual(400)
      expect(status, body).toBeLessThan(500)
      expect(body.length, `status ${status} without a message`).toBeGreaterThan(0)
      if (status !== 413)
        expect((JSON.parse(body) as { error: { message: string } }).error.message.length).toBeGreaterThan(0)
    }
    // Wrong types, missing fields, huge values, unknown roles, unsupported options, bad JSON.
    for (let i = 0; i < 420; i++) {
      const path = pick(["/v1/chat/completions", "/v1/completions"])
      const raw =
        int(5) === 0
          ? pick(["{", '{"messages":', "nul", "[1,2", "\u0000\u0001", '{"a":1}}'])
          : JSON.stringify(bad[int(bad.length)]!())
      const res = await fetch(`http://${address}${path}`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: raw
      })
      record(res.status, await res.text())
    }
    // Bodies over the limit (declared and undeclared).
    for (let i = 0; i < 30; i++) {
      const res = await fetch(`http://${address}/v1/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "x".repeat(70_000 + int(100_000)) })
      })
      record(res.status, await res.text())
    }
    // Slow bodies (sent in pieces) that turn out malformed, bad request lines, bad headers.
    for (let i = 0; i < 30; i++) {
      const body = '{"messages": [{"role": "user", "content": 12}]}'
      const r = await rawHttp(
        address,
        [
          `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n`,
          body.slice(0, 10),
          body.slice(10, 30),
          body.slice(30)
        ],
        20
      )
      record(r.status, r.body)
    }
    for (let i = 0; i < 30; i++) {
      const r = await rawHttp(address, [
        pick([
          "GARBAGE\r\n\r\n",
          "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
          "GET / HTTP/1.1\r\nBad Header\r\n\r\n",
          `GET /v1/models HTTP/1.1\r\nX: ${"y".repeat(20_000)}\r\n\r\n`
        ])
      ])
      record(r.status, r.body)
    }
    // Truncated bodies: the client goes away mid-body; the router must simply carry on.
    for (let i = 0; i < 10; i++) {
      await new Promise<void>((resolve) => {
        const [host, port] = address.split(":") as [string, string]
        const s = net.connect({ host, port: Number(port) }, () => {
          s.write(
            'POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{"prompt": "trunc'
          )
          setTimeout(() => s.destroy(), 20)
        })
        s.on("close", () => resolve())
        s.on("error", () => resolve())
      })
    }
    expect(count).toBeGreaterThanOrEqual(500)
    expect(statuses.has(500)).toBe(false)
    const ok = await post(cluster.url, "/v1/completions", { prompt: "still fine", max_tokens: 4 })
    expect(ok.status).toBe(200)
  })
})
