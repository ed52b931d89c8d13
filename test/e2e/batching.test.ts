/** Continuous batching and KV-aware admission on real processes. */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { metric, post, startTandem, waitFor, type Proc } from "./cluster.js"
import { freshCacheDir } from "./processes.js"

const cache = freshCacheDir()
let serve: Proc
beforeAll(async () => {
  serve = await startTandem("serve", ["serve", "--model", "builtin:small", "--port", "0"], {
    TANDEM_CACHE_DIR: cache
  })
}, 120_000)
afterAll(async () => {
  await serve?.stop()
})

describe("KV-aware admission", () => {
  it("a decode node over its KV budget queues handoffs instead of failing them; every output equals serve's", async () => {
    // builtin:small holds 10 KiB of KV per token: a 1 MiB budget fits one 64-token request at a time.
    const decode = await startTandem(
      "decode",
      [
        "decode",
        "--model",
        "builtin:small",
        "--serving-bind",
        "127.0.0.1:0",
        "--port",
        "0",
        "--kv-budget-mb",
        "1"
      ],
      { TANDEM_CACHE_DIR: cache }
    )
    const prefill = await startTandem(
      "prefill",
      [
        "prefill",
        "--model",
        "builtin:small",
        "--serving-bind",
        "127.0.0.1:0",
        "--port",
        "0",
        "--decode-peers",
        decode.ready.serving!
      ],
      { TANDEM_CACHE_DIR: cache, TANDEM_DECODE_ALLOWLIST: decode.ready.serving! }
    )
    const router = await startTandem(
      "router",
      [
        "router",
        "--model",
        "builtin:small",
        "--port",
        "0",
        "--prefill-peers",
        prefill.ready.serving!,
        "--decode-peers",
        decode.ready.serving!,
        "--health-interval",
        "200ms"
      ],
      { TANDEM_CACHE_DIR: cache }
    )
    try {
      const url = `http://${router.ready.http}`
      await waitFor("router healthy", async () =>
        (await fetch(`${url}/health`)).status === 200 ? true : undefined
      )
      expect(decode.stderr()).toContain('"kv_budget_mb":1')
      const body = (i: number) => ({
        prompt: Array.from({ length: 64 }, (_, j) => 3 + ((i * 31 + j) % 256)),
        max_tokens: 24,
        temperature: 0,
        ignore_eos: true
      })
      const [fromCluster, fromServe] = await Promise.all([
        Promise.all([0, 1, 2, 3, 4, 5].map((i) => post(url, "/v1/completions", body(i)))),
        Promise.all(
          [0, 1, 2, 3, 4, 5].map((i) => post(`http://${serve.ready.http}`, "/v1/completions", body(i)))
        )
      ])
      fromCluster.forEach((r, i) => {
        expect(r.status).toBe(200)
        expect(r.body["choices"]).toEqual(fromServe[i]!.body["choices"])
      })
      expect(decode.stderr()).toContain("KV handoff queued: budget full")
      await waitFor("decode idle", async () =>
        (await metric(decode.ready.http!, "tandem_node_kv_bytes_held")) === 0 ? true : undefined
      )
    } finally {
      await Promise.all([router.stop(), prefill.stop(), decode.stop()])
    }
  })
})
