/** The disaggregated cluster against `tandem serve`, through real processes and sockets (builtin:tiny). */
import OpenAI from "openai"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { tokenizerFingerprint } from "../../src/gpu/ModelDir.js"
import { resolveModelDir } from "../../src/gpu/ModelStore.js"
import { Connection } from "../../src/shell/Connection.js"
import {
  metric,
  post,
  postStream,
  startCluster,
  startTandem,
  stats,
  waitFor,
  type Cluster,
  type Proc
} from "./cluster.js"
import { freshCacheDir } from "./processes.js"

const cache = freshCacheDir()
let serve: Proc
let serveUrl: string
let cluster: Cluster

beforeAll(async () => {
  serve = await startTandem("serve", ["serve", "--model", "builtin:tiny", "--port", "0"], {
    TANDEM_CACHE_DIR: cache
  })
  serveUrl = `http://${serve.ready.http}`
  cluster = await startCluster({ cache })
}, 120_000)

afterAll(async () => {
  await Promise.all([serve?.stop(), cluster?.stop()])
})

const chat = (content: string, extra: Record<string, unknown> = {}) => ({
  messages: [{ role: "user", content }],
  max_tokens: 24,
  temperature: 0,
  ...extra
})
const completion = (prompt: string, extra: Record<string, unknown> = {}) => ({
  prompt,
  max_tokens: 24,
  temperature: 0,
  ...extra
})

describe("cluster output is token-identical to tandem serve", () => {
  it("chat and completions, non-streaming, usage included", async () => {
    for (const [path, body] of [
      ["/v1/chat/completions", chat("Tell me about disaggregation")],
      ["/v1/completions", completion("The KV cache ")],
      ["/v1/completions", completion("short", { max_tokens: 1 })]
    ] as const) {
      const [a, b] = await Promise.all([post(serveUrl, path, body), post(cluster.url, path, body)])
      expect(a.status).toBe(200)
      expect(b.status).toBe(200)
      const choice = (r: typeof a) => (r.body["choices"] as Array<Record<string, unknown>>)[0]
      expect(choice(b)).toEqual(choice(a))
      expect(b.body["usage"]).toEqual(a.body["usage"])
      expect((b.body["usage"] as { completion_tokens: number }).completion_tokens).toBe(body.max_tokens)
    }
  })

  it("chat and completions, streaming, with the include_usage chunk", async () => {
    for (const [path, body] of [
      ["/v1/chat/completions", chat("Stream this", { stream_options: { include_usage: true } })],
      ["/v1/completions", completion("Streaming ", { stream_options: { include_usage: true } })]
    ] as const) {
      const [a, b] = await Promise.all([
        postStream(serveUrl, path, body),
        postStream(cluster.url, path, body)
      ])
      expect(b.status).toBe(200)
      expect(b.done).toBe(true)
      expect(b.content).toBe(a.content)
      expect(b.finish).toBe(a.finish)
      expect(b.usage).toEqual(a.usage)
      expect(b.usage).toMatchObject({ completion_tokens: 24 })
      // Streaming and non-streaming give the same text.
      const whole = await post(cluster.url, path, body)
      const c = (whole.body["choices"] as Array<{ text?: string; message?: { content: string } }>)[0]!
      expect(c.text ?? c.message?.content).toBe(b.content)
    }
  })

  it("seeded sampling gives the same output on both (the PRNG state travels with the KV)", async () => {
    const body = completion("sampling ", {
      temperature: 0.9,
      top_p: 0.9,
      top_k: 40,
      seed: 1234,
      repetition_penalty: 1.1
    })
    const [a, b] = await Promise.all([
      post(serveUrl, "/v1/completions", body),
      post(cluster.url, "/v1/completions", body)
    ])
    expect(b.body["choices"]).toEqual(a.body["choices"])
  })

  it("stop strings end the stream, and usage counts up to the token that completed the stop string", async () => {
    const base = await post(cluster.url, "/v1/completions", completion("stop here ", { max_tokens: 40 }))
    const text = (base.body["choices"] as Array<{ text: string }>)[0]!.text
    // A stop string made of two characters from the middle of the greedy output.
    const at = [...text].findIndex((ch, i) => i > 3 && ch.charCodeAt(0) < 128 && ch.charCodeAt(0) > 32)
    if (at < 0) return
    const stop = text.slice(at, at + 1)
    const [a, b] = await Promise.all([
      post(serveUrl, "/v1/completions", completion("stop here ", { max_tokens: 40, stop: [stop] })),
      post(cluster.url, "/v1/completions", completion("stop here ", { max_tokens: 40, stop: [stop] }))
    ])
    const choice = (b.body["choices"] as Array<{ text: string; finish_reason: string }>)[0]!
    expect(choice.finish_reason).toBe("stop")
    expect(choice.text).toBe(text.slice(0, text.indexOf(stop)))
    expect(b.body["choices"]).toEqual(a.body["choices"])
    expect(b.body["usage"]).toEqual(a.body["usage"])
    expect((b.body["usage"] as { completion_tokens: number }).completion_tokens).toBeLessThan(40)
  })
})

describe("the official openai client through the router", () => {
  it("streams and non-streams a chat completion", async () => {
    const client = new OpenAI({ baseURL: `${cluster.url}/v1`, apiKey: "unused" })
    const models = await client.models.list()
    expect(models.data.map((m) => m.id)).toEqual(["builtin-tiny"])
    const whole = await client.chat.completions.create({
      model: "builtin-tiny",
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 12,
      temperature: 0
    })
    expect(whole.choices[0]?.finish_reason).toBe("length")
    expect(whole.usage?.completion_tokens).toBe(12)
    const stream = await client.chat.completions.create({
      model: "builtin-tiny",
      messages: [{ role: "user", content: "hi" }],
      max_tokens: 12,
      temperature: 0,
      stream: true,
      stream_options: { include_usage: true }
    })
    let text = ""
    let usage: number | undefined
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? ""
      if (chunk.usage) usage = chunk.usage.completion_tokens
    }
    expect(text).toBe(whole.choices[0]?.message.content)
    expect(usage).toBe(12)
    await expect(
      client.chat.completions.create({ model: "gpt-4", messages: [{ role: "user", content: "x" }] })
    ).rejects.toMatchObject({ status: 404 })
  })
})

describe("router stats and authentication", () => {
  it("/router/stats has no address by default, and every node's address with the verbose variable set", async () => {
    const s = await stats(cluster.url)
    expect(s.addresses_redacted).toBe(true)
    expect(JSON.stringify(s)).not.toContain("127.0.0.1")
    const verbose = await startTandem(
      "router-verbose",
      [
        "router",
        "--model",
        "builtin:tiny",
        "--port",
        "0",
        "--prefill-peers",
        cluster.prefill[0]!.ready.serving!,
        "--decode-peers",
        cluster.decode[0]!.ready.serving!
      ],
      { TANDEM_CACHE_DIR: cache, TANDEM_ROUTER_STATS_VERBOSE: "yes" }
    )
    try {
      const v = await stats(`http://${verbose.ready.http}`)
      expect(v.addresses_redacted).toBe(false)
      expect(v.nodes.map((n) => n.address).sort()).toEqual(
        [cluster.decode[0]!.ready.serving, cluster.prefill[0]!.ready.serving].sort()
      )
    } finally {
      await verbose.stop()
    }
  })

  it("a connection with the wrong cluster secret is refused, and the node keeps serving", async () => {
    const [host, port] = cluster.decode[0]!.ready.serving!.split(":") as [string, string]
    // Everything right but the secret: the refusal comes from the MAC check.
    const self = {
      role: "router" as const,
      nodeId: "intruder",
      modelFingerprint: "",
      tokenizerFingerprint: tokenizerFingerprint(resolveModelDir("builtin:tiny", { TANDEM_CACHE_DIR: cache }))
    }
    const options = {
      secret: Buffer.from("not-the-cluster-secret-at-all!!"),
      self,
      peerRoles: ["decode" as const],
      expectModel: () => undefined
    }
    await expect(Connection.dial(host, Number(port), options)).rejects.toThrow()
    await waitFor("the refusal in the decode node's log", async () =>
      cluster.decode[0]!.stderr().includes("refused a connection") ? true : undefined
    )
    expect(cluster.decode[0]!.stderr()).toMatch(/refused a connection.*wrong cluster secret/)
    const r = await post(cluster.url, "/v1/completions", completion("still serving"))
    expect(r.status).toBe(200)
  })

  it("API keys: 401 without or with a wrong key on every endpoint but /health", async () => {
    const keyed = await startTandem(
      "serve-keyed",
      ["serve", "--model", "builtin:tiny", "--port", "0", "--api-key", "k1"],
      { TANDEM_CACHE_DIR: cache, TANDEM_API_KEYS: "k2,k3" }
    )
    try {
      const url = `http://${keyed.ready.http}`
      expect((await fetch(`${url}/health`)).status).toBe(200)
      for (const path of ["/v1/models", "/metrics"]) {
        expect((await fetch(`${url}${path}`)).status).toBe(401)
        expect((await fetch(`${url}${path}`, { headers: { authorization: "Bearer nope" } })).status).toBe(401)
        expect((await fetch(`${url}${path}`, { headers: { authorization: "Bearer k1" } })).status).toBe(200)
        expect((await fetch(`${url}${path}`, { headers: { authorization: "Bearer k3" } })).status).toBe(200)
      }
      expect((await post(url, "/v1/completions", completion("x"))).status).toBe(401)
      expect(
        (await post(url, "/v1/completions", completion("x"), { authorization: "Bearer k2" })).status
      ).toBe(200)
    } finally {
      await keyed.stop()
    }
  })

  it("x-request-id is echoed and carried into every node's log lines", async () => {
    const r = await post(cluster.url, "/v1/completions", completion("trace me"), {
      "x-request-id": "trace-42"
    })
    expect(r.headers.get("x-request-id")).toBe("trace-42")
    for (const p of [cluster.router, cluster.prefill[0]!, cluster.decode[0]!]) {
      await waitFor(`the request id in ${p.name}'s log`, async () =>
        p.stderr().includes('"request_id":"trace-42"') ? true : undefined
      )
    }
  })
})

describe("metrics", () => {
  it("the router exports the vLLM-style histograms and counters; nodes export their KV gauges", async () => {
    await post(cluster.url, "/v1/completions", completion("metrics"))
    const text = await (await fetch(`${cluster.url}/metrics`)).text()
    for (const name of [
      "tandem_time_to_first_token_seconds",
      "tandem_inter_token_latency_seconds",
      "tandem_e2e_request_latency_seconds",
      "tandem_request_queue_time_seconds",
      "tandem_requests_total",
      "tandem_routing_decisions_total",
      "tandem_node_up",
      "tandem_num_requests_running",
      "tandem_num_requests_waiting"
    ]) {
      expect(text, name).toContain(name)
    }
    const decodeHttp = cluster.decode[0]!.ready.http!
    expect(await metric(decodeHttp, "tandem_node_kv_bytes_received_total")).toBeGreaterThan(0)
    expect(await metric(cluster.prefill[0]!.ready.http!, "tandem_node_kv_bytes_sent_total")).toBeGreaterThan(
      0
    )
    await waitFor("KV freed on the decode node, its decode buffers given back", async () =>
      (await metric(decodeHttp, "tandem_node_kv_bytes_held")) === 0 &&
      (await metric(decodeHttp, "tandem_node_decode_buffer_bytes")) === 0
        ? true
        : undefined
    )
  })
})
