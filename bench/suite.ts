/**
 * The side-by-side performance suite. Every figure is measured in this one run, beside its baseline:
 *   1. KV handoff throughput (real cluster at 256/1k/2k tokens; synthetic 8k/32k through the transport) vs raw TCP
 *   2. TTFT of 1 prefill + 1 decode vs `tandem serve`, low load
 *   3. ITL of steady decode streams while long prompts arrive: 1P1D vs `tandem serve`
 *   4. Router cost vs nginx (when installed) proxying to `tandem serve`, 1 and 64 concurrent clients
 *   5. Engine: the runtime vs a bare onnxruntime loop (bench/engine)
 *
 *   npm run bench:suite            (prints JSON; docs/benchmarks.md records a run)
 */
import { greedySampling } from "../src/domain/Sampling.js"
import { spawn, spawnSync, execFileSync } from "node:child_process"
import { randomBytes } from "node:crypto"
import { parseArgs } from "node:util"
import { mkdtempSync, writeFileSync } from "node:fs"
import net from "node:net"
import { tmpdir, cpus } from "node:os"
import { join } from "node:path"
import { createInterface } from "node:readline"
import { percentile } from "../src/domain/BenchStats.js"
import { runBench, type BenchOptions } from "../src/shell/Bench.js"
import { Connection } from "../src/shell/Connection.js"
import { InOrderKvChecksum } from "../src/shell/KvChecksum.js"
import { metric, post, startCluster, startTandem, type Cluster, type Proc } from "../test/e2e/cluster.js"
import { freshCacheDir } from "../test/e2e/processes.js"

const { values: args } = parseArgs({ options: { only: { type: "string", default: "1,2,3,4,5" } } })
const only = new Set(args.only.split(",").map((s) => s.trim()))
const cache = freshCacheDir()
const median = (xs: ReadonlyArray<number>) => percentile(xs, 50)
const round = (x: number, d = 2) => Number(x.toFixed(d))
const out: Record<string, unknown> = {
  date: new Date().toISOString(),
  cpus: cpus().length,
  cpu: cpus()[0]?.model ?? "?"
}
const log = (msg: string) => process.stderr.write(`[suite] ${msg}\n`)

const benchOpts = (url: string, over: Partial<BenchOptions>): BenchOptions => ({
  url,
  model: undefined,
  endpoint: "completions",
  numPrompts: 20,
  requestRates: [Infinity],
  burstiness: 1,
  maxConcurrency: undefined,
  inputLen: 64,
  outputLen: 16,
  rangeRatio: 0,
  prefixLen: 0,
  seed: 0,
  ignoreEos: true,
  numWarmups: 2,
  goodput: undefined,
  apiKey: undefined,
  timeoutS: 120,
  saveResult: undefined,
  plot: undefined,
  interactive: false,
  ...over
})

// ---------- 1. KV handoff throughput ----------
const receiver = (mode: "raw" | "framed") =>
  new Promise<{ port: number; proc: ReturnType<typeof spawn> }>((resolve) => {
    const proc = spawn(
      process.execPath,
      [...process.execArgv, join(import.meta.dirname, "kv-receiver.ts"), mode],
      {
        stdio: ["ignore", "pipe", "inherit"],
        env: { ...process.env, TANDEM_CLUSTER_SECRET: "bench-secret-0123456789abcdef" }
      }
    )
    createInterface({ input: proc.stdout as NodeJS.ReadableStream }).once("line", (l) =>
      resolve({ port: (JSON.parse(l) as { port: number }).port, proc })
    )
  })

const rawBlast = async (port: number, bytes: number): Promise<number> => {
  const s = net.connect({ host: "127.0.0.1", port, noDelay: true })
  await new Promise((r) => s.once("connect", r))
  const chunk = randomBytes(1 << 20)
  const t0 = performance.now()
  const head = Buffer.alloc(8)
  head.writeBigUInt64BE(BigInt(bytes))
  s.write(head)
  for (let sent = 0; sent < bytes; sent += chunk.length) {
    if (!s.write(sent + chunk.length <= bytes ? chunk : chunk.subarray(0, bytes - sent)))
      await new Promise((r) => s.once("drain", r))
  }
  await new Promise((r) => s.once("data", r))
  const ms = performance.now() - t0
  s.destroy()
  return ms
}

const framedHandoff = async (conn: Connection, tokens: number, id: string): Promise<number> => {
  const descriptor = {
    modelFingerprint: "",
    layers: 8,
    kvHeads: 4,
    headDim: 40,
    dtype: "float32" as const,
    tokenCount: tokens
  }
  const tensorBytes = 4 * tokens * 40 * 4
  const tensors = Array.from({ length: 16 }, () => randomBytes(tensorBytes))
  const generation = {
    sampling: greedySampling,
    maxTokens: 1,
    minTokens: 0,
    ignoreEos: false,
    seed: 0
  }
  let grant: () => void = () => {}
  const granted = new Promise<void>((r) => (grant = r))
  const acked = new Promise<void>((resolve, reject) =>
    conn.on({
      frame: (f) =>
        f._tag === "KvGrant" && f.id === id
          ? grant()
          : f._tag === "KvAck" && f.id === id
            ? resolve()
            : f._tag === "Error"
              ? reject(new Error(f.message))
              : undefined
    })
  )
  const t0 = performance.now()
  // As the prefill node does: KvBegin, wait for the grant, 1 MiB KvChunks awaiting drain (CRC folded in), KvEnd.
  await conn.send({
    _tag: "KvBegin",
    id,
    descriptor,
    generation,
    firstToken: 1,
    rngState: 0,
    tokens: new Int32Array(0)
  })
  await granted
  const checksum = new InOrderKvChecksum(tensorBytes)
  for (const [i, t] of tensors.entries()) {
    for (let off = 0; off < t.length; off += 1 << 20) {
      const bytes = t.subarray(off, Math.min(off + (1 << 20), t.length))
      checksum.add(i, off, bytes)
      await conn.send({
        _tag: "KvChunk",
        id,
        layer: i >> 1,
        kind: i % 2 === 0 ? "key" : "value",
        offset: off,
        bytes
      })
    }
  }
  await conn.send({ _tag: "KvEnd", id, checksum: checksum.result(tensors) })
  await acked
  return performance.now() - t0
}

if (only.has("1")) {
  log("1. KV handoff throughput")
  const raw = await receiver("raw")
  const framed = await receiver("framed")
  const conn = await Connection.dial("127.0.0.1", framed.port, {
    secret: Buffer.from("bench-secret-0123456789abcdef"),
    self: { role: "prefill", nodeId: "bench", modelFingerprint: "", tokenizerFingerprint: "" },
    peerRoles: ["decode"],
    expectModel: () => undefined
  })
  const synthetic: Record<string, unknown> = {}
  for (const tokens of [8192, 32768]) {
    const bytes = 10240 * tokens
    const rawMs: Array<number> = []
    const framedMs: Array<number> = []
    for (let r = 0; r < 3; r++) {
      rawMs.push(await rawBlast(raw.port, bytes))
      framedMs.push(await framedHandoff(conn, tokens, `kv-${tokens}-${r}`))
    }
    const rawBps = bytes / (median(rawMs) / 1000)
    const framedBps = bytes / (median(framedMs) / 1000)
    synthetic[`${tokens}_tokens`] = {
      bytes,
      raw_mib_s: round(rawBps / 2 ** 20, 0),
      tandem_mib_s: round(framedBps / 2 ** 20, 0),
      ratio: round(framedBps / rawBps)
    }
  }
  conn.close()
  raw.proc.kill()
  framed.proc.kill()
  // Real prefill -> decode handoffs on builtin:small, timed by the decode node (KvBegin to KvEnd).
  const cluster = await startCluster({ cache, model: "builtin:small" })
  const real: Record<string, unknown> = {}
  const decodeHttp = cluster.decode[0]!.ready.http!
  for (const tokens of [256, 1024, 2048]) {
    const s0 = await metric(decodeHttp, "tandem_kv_transfer_seconds_sum")
    const b0 = await metric(decodeHttp, "tandem_kv_transfer_bytes_sum")
    for (let r = 0; r < 3; r++)
      await post(cluster.url, "/v1/completions", {
        prompt: Array.from({ length: tokens }, (_, i) => 3 + ((i * 7 + r) % 256)),
        max_tokens: 2,
        ignore_eos: true
      })
    const secs = (await metric(decodeHttp, "tandem_kv_transfer_seconds_sum")) - s0
    const bytes = (await metric(decodeHttp, "tandem_kv_transfer_bytes_sum")) - b0
    real[`${tokens}_tokens`] = {
      bytes_per_handoff: bytes / 3,
      tandem_mib_s: round(bytes / secs / 2 ** 20, 0)
    }
  }
  await cluster.stop()
  out["kv_handoff"] = { synthetic, real_cluster_builtin_small: real }
}

// ---------- 2. TTFT: 1P1D vs serve, low load ----------
let serve: Proc | undefined
let cluster: Cluster | undefined
if (only.has("2") || only.has("3")) {
  log("2. TTFT at low load")
  serve = await startTandem("serve", ["serve", "--model", "builtin:small", "--port", "0"], {
    TANDEM_CACHE_DIR: cache
  })
  cluster = await startCluster({ cache, model: "builtin:small" })
  const opts = { numPrompts: 40, requestRates: [4], inputLen: 256, outputLen: 8 }
  const [s] = await runBench(benchOpts(`http://${serve.ready.http}`, opts))
  const [c] = await runBench(benchOpts(cluster.url, opts))
  const f = (r: typeof s, k: string) => round(r!.summary[k] as number)
  out["ttft_low_load"] = {
    settings: "40 requests, Poisson 4 req/s, 256 prompt tokens, 8 output tokens, builtin:small",
    serve: { p50_ms: f(s, "median_ttft_ms"), p99_ms: f(s, "p99_ttft_ms") },
    cluster_1p1d: { p50_ms: f(c, "median_ttft_ms"), p99_ms: f(c, "p99_ttft_ms") },
    p50_difference_ms: round(f(c, "median_ttft_ms") - f(s, "median_ttft_ms"))
  }
}

// ---------- 3. ITL under prefill interference ----------
const interference = async (url: string) => {
  const itls: Array<number> = []
  const stream = async (i: number) => {
    const res = await fetch(`${url}/v1/completions`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        prompt: Array.from({ length: 32 }, (_, j) => 3 + ((i + j) % 200)),
        max_tokens: 150,
        ignore_eos: true,
        stream: true
      })
    })
    const reader = (res.body as ReadableStream<Uint8Array>).getReader()
    let last: number | undefined
    for (;;) {
      const { done, value } = await reader.read()
      if (done) break
      const now = performance.now()
      const events = new TextDecoder()
        .decode(value)
        .split("\n\n")
        // Every token's chunk (empty text included), not the final finish-reason chunk.
        .filter((e) => e.includes('"text":') && e.includes('"finish_reason":null'))

      for (let k = 0; k < events.length; k++) {
        if (last !== undefined) itls.push(k === 0 ? now - last : 0)
        last = now
      }
    }
  }
  let running = true
  const longPrompts = (async () => {
    let n = 0
    // One 1,000-token prompt at a time, back to back, for as long as the streams run.
    while (running) {
      await post(url, "/v1/completions", {
        prompt: Array.from({ length: 1000 }, (_, j) => 3 + ((n * 13 + j) % 256)),
        max_tokens: 1
      })
      n++
    }
    return n
  })()
  await Promise.all([0, 1, 2, 3].map(stream))
  running = false
  const sent = await longPrompts
  return {
    itl_p50_ms: round(percentile(itls, 50)),
    itl_p99_ms: round(percentile(itls, 99)),
    long_prompts_sent: sent
  }
}
if ((only.has("2") || only.has("3")) && serve !== undefined && cluster !== undefined) {
  log("3. ITL under prefill interference")
  const s = await interference(`http://${serve.ready.http}`)
  const c = await interference(cluster.url)
  out["itl_under_interference"] = {
    settings:
      "4 streams of 150 tokens (32-token prompts) while 1,000-token prompts arrive back to back, builtin:small",
    serve: s,
    cluster_1p1d: c,
    p99_ratio_cluster_over_serve: round(c.itl_p99_ms / s.itl_p99_ms)
  }
  await serve.stop()
  await cluster.stop()
}

// ---------- 4. Router cost vs nginx ----------
if (only.has("4")) {
  log("4. Router cost")
  const tinyServe = await startTandem("serve-tiny", ["serve", "--model", "builtin:tiny", "--port", "0"], {
    TANDEM_CACHE_DIR: cache
  })
  const tinyCluster = await startCluster({ cache })
  const targets: Array<[string, string]> = [
    ["serve (direct)", `http://${tinyServe.ready.http}`],
    ["router -> 1P1D", tinyCluster.url]
  ]
  let nginx: ReturnType<typeof spawn> | undefined
  const hasNginx = spawnSync("which", ["nginx"]).status === 0
  if (hasNginx) {
    const dir = mkdtempSync(join(tmpdir(), "tandem-nginx-"))
    const port = 20000 + Math.floor(Math.random() * 20000)
    writeFileSync(
      join(dir, "nginx.conf"),
      `worker_processes 1; daemon off; pid ${dir}/nginx.pid; error_log ${dir}/error.log;
events { worker_connections 1024; }
http { access_log off; upstream tandem { server ${tinyServe.ready.http}; keepalive 64; }
  server { listen 127.0.0.1:${port}; location / { proxy_pass http://tandem; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; } } }\n`
    )
    nginx = spawn("nginx", ["-c", join(dir, "nginx.conf"), "-p", dir], { stdio: "ignore" })
    await new Promise((r) => setTimeout(r, 500))
    targets.push(["nginx -> serve", `http://127.0.0.1:${port}`])
  }
  const results: Record<string, unknown> = {}
  for (const [name, url] of targets) {
    const row: Record<string, unknown> = {}
    for (const c of [1, 64]) {
      const [r] = await runBench(
        benchOpts(url, {
          numPrompts: c === 1 ? 200 : 640,
          maxConcurrency: c,
          inputLen: 16,
          outputLen: 2,
          numWarmups: 5
        })
      )
      row[`c${c}`] = {
        req_s: round(r!.summary["request_throughput"] as number, 1),
        mean_e2el_ms: round(r!.summary["mean_e2el_ms"] as number)
      }
    }
    results[name] = row
  }
  nginx?.kill()
  out["router_cost"] = {
    settings:
      "completions, 16 prompt tokens, 2 output tokens, builtin:tiny; 200 requests at concurrency 1, 640 at 64",
    nginx: hasNginx ? "installed" : "absent: skipped (apt-get install nginx)",
    results
  }
  await tinyServe.stop()
  await tinyCluster.stop()
}

// ---------- 5. Engine ----------
if (only.has("5")) {
  log("5. Engine")

  const json = execFileSync(
    process.execPath,
    [join(import.meta.dirname, "..", "dist", "bench", "engine.js"), "--rounds", "3"],
    { env: { ...process.env, TANDEM_CACHE_DIR: cache } }
  ).toString()
  out["engine"] = JSON.parse(json) as unknown
}

process.stdout.write(JSON.stringify(out, null, 1) + "\n", () => process.exit(0))
