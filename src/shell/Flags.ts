/** CLI flags of the serving processes, each with its default in the description (help does not print defaults). */
import { Effect, Option, References } from "effect"
import { Flag } from "effect/cli"
import { parseSocketAddress, type SocketAddress } from "../domain/SocketAddress.js"
import { routingPolicies, type RoutingPolicy } from "../domain/Routing.js"
import { parseDuration, parseSize } from "../domain/Units.js"
import type { LogLevel } from "./Log.js"

const duration = (name: string, fallback: string, what: string) =>
  Flag.String(name).pipe(
    Flag.withDescription(`${what} (default ${fallback}; 500ms, 2s, 1m, or bare seconds)`),
    Flag.withDefault(fallback),
    Flag.mapTryCatch(
      (s) => {
        const r = parseDuration(s)
        if (!r.ok) throw new Error(r.reason)
        return r.value
      },
      (e) => `--${name}: ${(e as Error).message}`
    )
  )

const size = (name: string, fallback: string, what: string) =>
  Flag.String(name).pipe(
    Flag.withDescription(`${what} (default ${fallback}; bytes or KiB/MiB/GiB)`),
    Flag.withDefault(fallback),
    Flag.mapTryCatch(
      (s) => {
        const r = parseSize(s)
        if (!r.ok) throw new Error(r.reason)
        return r.value
      },
      (e) => `--${name}: ${(e as Error).message}`
    )
  )

export const socketAddressList = (
  value: string,
  flag: string,
  allowPortZero = false
): ReadonlyArray<{ readonly text: string; readonly address: SocketAddress | undefined }> =>
  value
    .split(",")
    .map((s) => s.trim())
    .filter((s) => s !== "")
    .map((text) => {
      const p = parseSocketAddress(text, { allowPortZero })
      if (p.ok) return { text, address: p.address }
      if (!/^[A-Za-z0-9.-]+:\d+$/.test(text)) throw new Error(`${flag}: ${p.reason}`)
      return { text, address: undefined }
    })

export const Flags = {
  model: Flag.String("model").pipe(
    Flag.withDescription(
      "Model directory (Optimum decoder export) or builtin:tiny / builtin:small (default builtin:tiny)"
    ),
    Flag.withDefault("builtin:tiny")
  ),
  threads: Flag.Int("threads").pipe(
    Flag.withDescription("onnxruntime intra-op threads (default 1)"),
    Flag.withDefault(1)
  ),
  device: Flag.Literals("device", ["cpu", "cuda"]).pipe(
    Flag.withDescription(
      "cpu, or cuda when onnxruntime's CUDA libraries are installed; never a silent fallback (default cpu)"
    ),
    Flag.withDefault("cpu" as const)
  ),
  host: Flag.String("host").pipe(
    Flag.withDescription("HTTP listen address (default 127.0.0.1)"),
    Flag.withDefault("127.0.0.1")
  ),
  port: (fallback: number | undefined) =>
    fallback === undefined
      ? Flag.Int("port").pipe(
          Flag.withDescription("HTTP port for /health and /metrics (default: none; 0 = any free port)"),
          Flag.optional
        )
      : Flag.Int("port").pipe(
          Flag.withDescription(`HTTP port (default ${fallback}; 0 = any free port)`),
          Flag.withDefault(fallback),
          Flag.map(Option.some)
        ),
  servingBind: Flag.String("serving-bind").pipe(
    Flag.withDescription("ip:port of this node's framed-TCP listener (required; port 0 = any free port)")
  ),
  prefillPeers: Flag.String("prefill-peers").pipe(
    Flag.withDescription(
      "Comma-separated ip:port (or host:port, resolved at start) of the prefill nodes: prefill-0, prefill-1, ..."
    )
  ),
  decodePeers: Flag.String("decode-peers").pipe(
    Flag.withDescription("Comma-separated ip:port (or host:port, resolved at start) of the decode nodes")
  ),
  routing: Flag.Literals("routing", routingPolicies).pipe(
    Flag.withDescription("Routing policy (default least-loaded)"),
    Flag.withDefault<RoutingPolicy>("least-loaded")
  ),
  servedModelName: Flag.String("served-model-name").pipe(
    Flag.withDescription(
      "Model id in the API (default builtin-tiny / builtin-small, or the model directory's basename)"
    ),
    Flag.optional
  ),
  maxConcurrency: Flag.Int("max-concurrency").pipe(
    Flag.withDescription("Requests dispatched at once (default 64)"),
    Flag.withDefault(64)
  ),
  maxQueue: Flag.Int("max-queue").pipe(
    Flag.withDescription("Requests waiting for admission (default 256; full: 429)"),
    Flag.withDefault(256)
  ),
  queueTimeout: duration("queue-timeout", "30s", "Longest wait for admission (then 503)"),
  requestTimeout: duration("request-timeout", "600s", "Deadline of a request"),
  healthInterval: duration("health-interval", "2s", "Heartbeat period (and the longest re-dial backoff)"),
  healthTimeout: duration("health-timeout", "1s", "Heartbeat reply deadline"),
  healthDownAfter: Flag.Int("health-down-after").pipe(
    Flag.withDescription("Consecutive failed probes to mark a node unreachable (default 2)"),
    Flag.withDefault(2)
  ),
  healthUpAfter: Flag.Int("health-up-after").pipe(
    Flag.withDescription("Consecutive good probes to bring it back (default 1)"),
    Flag.withDefault(1)
  ),
  maxBatch: Flag.Int("max-batch").pipe(
    Flag.withDescription("Sequences per decode step (default 32)"),
    Flag.withDefault(32)
  ),
  kvBudgetMb: Flag.Int("kv-budget-mb").pipe(
    Flag.withDescription("KV cache budget in MiB (default: derived from free memory, printed at start)"),
    Flag.optional
  ),
  maxBatchPrefillTokens: Flag.Int("max-batch-prefill-tokens").pipe(
    Flag.withDescription("Prompt tokens prefilled per iteration (default 4096)"),
    Flag.withDefault(4096)
  ),
  prefillChunk: Flag.Int("prefill-chunk").pipe(
    Flag.withDescription("Longer prompts are prefilled in chunks of this many tokens (default 512)"),
    Flag.withDefault(512)
  ),
  kvLease: duration(
    "kv-lease",
    "30s",
    "How long a decode node holds an Expect without KV, or KV without an Expect"
  ),
  maxBody: size("max-body", "4MiB", "Largest request body (then 413)"),
  benchTimeout: duration("timeout", "600s", "Deadline of each request"),
  apiKey: Flag.String("api-key").pipe(
    Flag.withDescription("Bearer API key clients must send (repeatable; also TANDEM_API_KEYS)"),
    Flag.atLeast(0)
  ),
  clusterSecretFile: Flag.String("cluster-secret-file").pipe(
    Flag.withDescription("File holding the cluster secret (else TANDEM_CLUSTER_SECRET)"),
    Flag.optional
  )
}

/** The level of the built-in `--log-level` flag, in our logger's terms. */
export const logLevel: Effect.Effect<LogLevel> = Effect.map(
  Effect.service(References.MinimumLogLevel),
  (l) =>
    l === "Debug" || l === "Trace" || l === "All"
      ? "debug"
      : l === "Warn"
        ? "warn"
        : l === "Error" || l === "Fatal" || l === "None"
          ? "error"
          : "info"
)
