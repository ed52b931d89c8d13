/** Topologies and refusals through real processes (builtin:tiny). */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { metric, post, postStream, startCluster, startTandem, stats, waitFor, type Proc } from "./cluster.js"
import { freshCacheDir, runTandem } from "./processes.js"

const cache = freshCacheDir()
let serve: Proc
let serveUrl: string

beforeAll(async () => {
  serve = await startTandem("serve", ["serve", "--model", "builtin:tiny", "--port", "0"], {
    TANDEM_CACHE_DIR: cache
  })
  serveUrl = `http://${serve.ready.http}`
}, 120_000)
afterAll(async () => {
  await serve?.stop()
})

const completion = (prompt: string, extra: Record<string, unknown> = {}) => ({
  prompt,
  max_tokens: 20,
  temperature: 0,
  ...extra
})

describe("two prefill nodes to one decode node", () => {
  it("32 concurrent requests: every output equals tandem serve's and the same request sent alone, and both prefill nodes take work", async () => {
    const cluster = await startCluster({
      cache,
      prefill: 2,
      decode: 1,
      routerArgs: ["--routing", "round-robin"]
    })
    try {
      const prompts = Array.from({ length: 32 }, (_, i) => `request number ${i} says `)
      const [fromCluster, fromServe] = await Promise.all([
        Promise.all(prompts.map((p) => post(cluster.url, "/v1/completions", completion(p)))),
        Promise.all(prompts.map((p) => post(serveUrl, "/v1/completions", completion(p))))
      ])
      fromCluster.forEach((r, i) => {
        expect(r.status).toBe(200)
        expect(r.body["choices"]).toEqual(fromServe[i]!.body["choices"])
        expect(r.body["usage"]).toEqual(fromServe[i]!.body["usage"])
      })
      // Batching changes nothing: each request alone (a batch of one) gives the same tokens.
      for (const [i, p] of prompts.entries()) {
        const alone = await post(serveUrl, "/v1/completions", completion(p))
        expect(alone.body["choices"]).toEqual(fromCluster[i]!.body["choices"])
      }

      const s = await stats(cluster.url)
      expect(s.prefill_hits).toEqual({ "prefill-0": 16, "prefill-1": 16 })
      expect(s.decode_hits).toEqual({ "decode-0": 32 })
      const decodeHttp = cluster.decode[0]!.ready.http!
      await waitFor("all KV freed", async () =>
        (await metric(decodeHttp, "tandem_node_kv_bytes_held")) === 0 &&
        (await metric(decodeHttp, "tandem_node_live_sequences")) === 0
          ? true
          : undefined
      )
      for (const p of cluster.prefill)
        expect(await metric(p.ready.http!, "tandem_node_live_sequences")).toBe(0)
    } finally {
      await cluster.stop()
    }
  })
})

describe("refusals", () => {
  it("a prefill node whose allowlist omits the chosen decode node fails the request naming it; no KV reaches the decode node", async () => {
    const cluster = await startCluster({ cache, allowlist: () => "127.0.0.1:9" })
    try {
      const target = cluster.decode[0]!.ready.serving!
      const r = await post(cluster.url, "/v1/completions", completion("forbidden"))
      expect(r.status).toBe(502)
      const message = (r.body["error"] as { message: string }).message
      expect(message).toContain(target)
      expect(message).toContain("KV handoff rejected")
      const s = await postStream(cluster.url, "/v1/completions", completion("forbidden stream"))
      expect(s.status).toBe(502)
      const decodeHttp = cluster.decode[0]!.ready.http!
      expect(await metric(decodeHttp, "tandem_node_kv_bytes_received_total")).toBe(0)
      expect(await metric(cluster.prefill[0]!.ready.http!, "tandem_node_kv_bytes_sent_total")).toBe(0)
      expect(
        await metric(cluster.prefill[0]!.ready.http!, "tandem_node_handoffs_total", 'outcome="rejected"')
      ).toBe(2)
      await waitFor("the decode node drops the Expects", async () =>
        (await metric(decodeHttp, "tandem_node_live_sequences")) === 0 ? true : undefined
      )
    } finally {
      await cluster.stop()
    }
  })

  it("--max-concurrency 1 --max-queue 1: a third concurrent request answers 429", async () => {
    const cluster = await startCluster({ cache, routerArgs: ["--max-concurrency", "1", "--max-queue", "1"] })
    const aborts = [new AbortController(), new AbortController()]
    try {
      const long = (signal: AbortSignal) =>
        fetch(`${cluster.url}/v1/completions`, {
          method: "POST",
          signal,
          headers: { "content-type": "application/json" },
          body: JSON.stringify(completion("hold", { max_tokens: 3000, ignore_eos: true, stream: true }))
        })
      const first = await long(aborts[0]!.signal)
      expect(first.status).toBe(200)
      const second = long(aborts[1]!.signal)
      second.catch(() => {})
      await waitFor("one request waiting", async () =>
        (await metric(cluster.router.ready.http!, "tandem_num_requests_waiting")) === 1 ? true : undefined
      )
      const third = await post(cluster.url, "/v1/completions", completion("third"))
      expect(third.status).toBe(429)
      expect((third.body["error"] as { message: string }).message).toContain("queue is full")
      expect(third.headers.get("retry-after")).not.toBeNull()
    } finally {
      for (const a of aborts) a.abort()
      await cluster.stop()
    }
  })

  it("a router with no decode node online answers 503, and /health says so", async () => {
    const cluster = await startCluster({ cache })
    try {
      const router = await startTandem(
        "router-nodecode",
        [
          "router",
          "--model",
          "builtin:tiny",
          "--port",
          "0",
          "--prefill-peers",
          cluster.prefill[0]!.ready.serving!,
          "--decode-peers",
          "127.0.0.1:9",
          "--health-interval",
          "200ms"
        ],
        { TANDEM_CACHE_DIR: cache }
      )
      try {
        const url = `http://${router.ready.http}`
        await waitFor("prefill online", async () =>
          (await stats(url)).nodes.find((n) => n.id === "prefill-0")?.status === "online" ? true : undefined
        )
        expect((await fetch(`${url}/health`)).status).toBe(503)
        const r = await post(url, "/v1/completions", completion("nobody home"))
        expect(r.status).toBe(503)
        expect((r.body["error"] as { message: string }).message).toContain("no decode node")
        expect((await stats(url)).nodes.find((n) => n.id === "decode-0")?.status).toBe("unreachable")
      } finally {
        await router.stop()
      }
    } finally {
      await cluster.stop()
    }
  })

  it("a role node without a cluster secret refuses to start and says how to set one", async () => {
    const env = { TANDEM_CACHE_DIR: cache, TANDEM_CLUSTER_SECRET: "" }
    const r = await runTandem(["decode", "--model", "builtin:tiny", "--serving-bind", "127.0.0.1:0"], env)
    expect(r.code).not.toBe(0)
    expect(r.stderr).toContain("TANDEM_CLUSTER_SECRET")
    expect(r.stderr).toContain("--cluster-secret-file")
  })
})
