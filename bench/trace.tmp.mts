import { startTandem, waitFor } from "/work/main/test/e2e/cluster.js"
import { freshCacheDir } from "/work/main/test/e2e/processes.js"
const cache = freshCacheDir()
const env = { TANDEM_CACHE_DIR: cache }
const d = await startTandem("decode", ["decode", "--model", "builtin:small", "--serving-bind", "127.0.0.1:0"], env)
const p = await startTandem("prefill", ["prefill", "--model", "builtin:small", "--serving-bind", "127.0.0.1:0", "--decode-peers", d.ready.serving!], { ...env, TANDEM_DECODE_ALLOWLIST: d.ready.serving!, NODE_OPTIONS: "--trace-gc" })
const r = await startTandem("router", ["router", "--model", "builtin:small", "--port", "0", "--prefill-peers", p.ready.serving!, "--decode-peers", d.ready.serving!], env)
const url = `http://${r.ready.http}`
await waitFor("up", async () => ((await fetch(`${url}/health`)).status === 200 ? true : undefined))
const lat: number[] = []
for (let i = 0; i < 20; i++) {
  const t0 = performance.now()
  const res = await fetch(`${url}/v1/completions`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: Array.from({ length: 256 }, (_, j) => 3 + ((i + j) % 250)), max_tokens: 4, stream: true }) })
  const rd = res.body!.getReader()
  let first = 0
  for (;;) { const { done, value } = await rd.read(); if (done) break; if (!first && new TextDecoder().decode(value).includes('"text"')) first = performance.now() - t0 }
  lat.push(Math.round(first))
}
console.log("ttft", lat.join(" "))
await new Promise((r) => setTimeout(r, 300))
const gcLines = p.stderr().split("\n").filter((l) => l.includes("Mark-Compact") || l.includes("Scavenge"))
console.log("gc events on prefill node:", gcLines.length)
console.log(gcLines.slice(-12).join("\n"))
await Promise.all([r.stop(), p.stop(), d.stop()])
process.exit(0)
