/**
 * Continuous batching, measured: aggregate output tokens/s and median ITL at concurrency 1, 4, 8 and 16,
 * on builtin:small, for a 1 prefill + 1 decode cluster and for `tandem serve`, in one run. Goal: at
 * concurrency 8, at least 3x the throughput of concurrency 1 (required: 2x) with median ITL at most 3.5x.
 *
 *   npm run bench:batching
 */
import { runBench, type BenchOptions } from "../src/shell/Bench.js"
import { startCluster, startTandem } from "../test/e2e/cluster.js"
import { freshCacheDir } from "../test/e2e/processes.js"

const cache = freshCacheDir()
const round = (x: number, d = 2) => Number(x.toFixed(d))
const opts = (url: string, c: number): BenchOptions => ({
  url,
  model: undefined,
  endpoint: "completions",
  numPrompts: Math.max(16, c * 8),

  requestRates: [Infinity],
  burstiness: 1,
  maxConcurrency: c,
  inputLen: 64,
  outputLen: 128,
  rangeRatio: 0,
  prefixLen: 0,
  seed: 1,
  ignoreEos: true,
  numWarmups: 2,
  goodput: undefined,
  apiKey: undefined,
  timeoutS: 300,
  saveResult: undefined,
  plot: undefined,
  interactive: false
})

const measure = async (url: string) => {
  const rows: Record<string, { output_tok_s: number; median_itl_ms: number; median_tpot_ms: number }> = {}
  for (const c of [1, 4, 8, 16]) {
    const [r] = await runBench(opts(url, c))
    rows[`c${c}`] = {
      output_tok_s: round(r!.summary["output_throughput"] as number, 1),
      median_itl_ms: round(r!.summary["median_itl_ms"] as number),
      median_tpot_ms: round(r!.summary["median_tpot_ms"] as number)
    }
  }
  const c1 = rows["c1"]!
  const c8 = rows["c8"]!
  return {
    ...rows,
    c8_over_c1_throughput: round(c8.output_tok_s / c1.output_tok_s),
    c8_over_c1_median_itl: round(c8.median_itl_ms / c1.median_itl_ms),
    c8_over_c1_median_tpot: round(c8.median_tpot_ms / c1.median_tpot_ms)
  }
}

const serve = await startTandem("serve", ["serve", "--model", "builtin:small", "--port", "0"], {
  TANDEM_CACHE_DIR: cache
})
const serveRows = await measure(`http://${serve.ready.http}`)
await serve.stop()
const cluster = await startCluster({ cache, model: "builtin:small" })
const clusterRows = await measure(cluster.url)
await cluster.stop()
const summary = {
  settings:
    "builtin:small, 64-token prompts, 128 output tokens (ignore_eos), 8 requests per client (at least 16), --threads 1",
  cluster_1p1d: clusterRows,
  serve: serveRows
}
process.stdout.write(JSON.stringify(summary, null, 1) + "\n", () => process.exit(0))
