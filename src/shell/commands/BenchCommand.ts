/** `tandem bench`: a load generator for any OpenAI-compatible server, reporting vllm-bench-serve metrics. */
import { Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { parseGoodput } from "../../domain/BenchStats.js"
import { Flags } from "../Flags.js"
import { runBench } from "../Bench.js"

const parseRates = (text: string): ReadonlyArray<number> =>
  text.split(",").map((s) => {
    const t = s.trim().toLowerCase()
    if (t === "inf") return Infinity
    const n = Number(t)
    if (!Number.isFinite(n) || n <= 0)
      throw new Error(`--request-rate: "${s}" is not a positive number or inf`)
    return n
  })

export const benchCommand = Command.make(
  "bench",
  {
    url: Flag.String("url").pipe(
      Flag.withDescription("Server base URL (default http://127.0.0.1:8080)"),
      Flag.withDefault("http://127.0.0.1:8080")
    ),
    model: Flag.String("model").pipe(
      Flag.withDescription("Model id (default: the first id of /v1/models)"),
      Flag.optional
    ),
    endpoint: Flag.Literals("endpoint", ["completions", "chat"]).pipe(
      Flag.withDescription("completions (token-id prompts) or chat (default completions)"),
      Flag.withDefault("completions" as const)
    ),
    numPrompts: Flag.Int("num-prompts").pipe(
      Flag.withDescription("Requests to send (default 100)"),
      Flag.withDefault(100)
    ),
    requestRate: Flag.String("request-rate").pipe(
      Flag.withDescription(
        "Requests/s, or inf; several comma-separated rates run one after another (default inf)"
      ),
      Flag.withDefault("inf")
    ),
    burstiness: Flag.Finite("burstiness").pipe(
      Flag.withDescription("Gamma shape of the arrival gaps; 1 = Poisson (default 1)"),
      Flag.withDefault(1)
    ),
    maxConcurrency: Flag.Int("max-concurrency").pipe(
      Flag.withDescription("Requests in flight at most (default: unbounded)"),
      Flag.optional
    ),
    inputLen: Flag.Int("random-input-len").pipe(
      Flag.withDescription("Prompt tokens per request (default 1024)"),
      Flag.withDefault(1024)
    ),
    outputLen: Flag.Int("random-output-len").pipe(
      Flag.withDescription("max_tokens per request (default 128)"),
      Flag.withDefault(128)
    ),
    rangeRatio: Flag.Finite("random-range-ratio").pipe(
      Flag.withDescription("Lengths vary uniformly within ±ratio (default 0)"),
      Flag.withDefault(0)
    ),
    prefixLen: Flag.Int("random-prefix-len").pipe(
      Flag.withDescription("Tokens of a prefix shared by every prompt (default 0)"),
      Flag.withDefault(0)
    ),
    seed: Flag.Int("seed").pipe(
      Flag.withDescription("Seed of prompts and arrivals (default 0)"),
      Flag.withDefault(0)
    ),
    ignoreEos: Flag.Boolean("ignore-eos").pipe(
      Flag.withDescription("Ask the server to ignore EOS (vLLM extension; default false)"),
      Flag.withDefault(false)
    ),
    numWarmups: Flag.Int("num-warmups").pipe(
      Flag.withDescription("Unmeasured requests sent first (default 0)"),
      Flag.withDefault(0)
    ),
    saveResult: Flag.String("save-result").pipe(
      Flag.withDescription("Write the result JSON (vllm bench serve field names) to this file"),
      Flag.optional
    ),
    goodput: Flag.String("goodput").pipe(
      Flag.withDescription("SLOs for goodput, e.g. ttft:200 tpot:50 e2el:2000 (repeatable)"),
      Flag.atLeast(0)
    ),
    plot: Flag.String("plot").pipe(
      Flag.withDescription("Write an SVG chart: latency distributions, or latency against rate"),
      Flag.optional
    ),
    apiKey: Flag.String("api-key").pipe(Flag.withDescription("Bearer key for the server"), Flag.optional),
    timeout: Flags.benchTimeout
  },
  (f) =>
    Effect.tryPromise({
      try: async () => {
        const goodput = parseGoodput(f.goodput)
        if (!goodput.ok) throw new Error(goodput.reason)
        if (f.numPrompts < 1) throw new Error("--num-prompts must be at least 1")
        if (f.burstiness <= 0) throw new Error("--burstiness must be positive")
        await runBench({
          url: f.url.replace(/\/+$/, ""),
          model: Option.getOrUndefined(f.model),
          endpoint: f.endpoint,
          numPrompts: f.numPrompts,
          requestRates: parseRates(f.requestRate),
          burstiness: f.burstiness,
          maxConcurrency: Option.getOrUndefined(f.maxConcurrency),
          inputLen: f.inputLen,
          outputLen: f.outputLen,
          rangeRatio: f.rangeRatio,
          prefixLen: f.prefixLen,
          seed: f.seed,
          ignoreEos: f.ignoreEos,
          numWarmups: f.numWarmups,
          goodput: f.goodput.length > 0 ? goodput.slo : undefined,
          apiKey: Option.getOrUndefined(f.apiKey),
          timeoutS: f.timeout / 1000,
          saveResult: Option.getOrUndefined(f.saveResult),
          plot: Option.getOrUndefined(f.plot),
          interactive: true
        })
      },
      catch: (e) => (e instanceof Error ? e : new Error(String(e)))
    })
).pipe(
  Command.withDescription("Benchmark any OpenAI-compatible server (vllm bench serve metrics and field names)")
)
