/** `tandem router | prefill | decode | serve`: flags in, a long-running process out. */
import { Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { Flags, logLevel } from "../Flags.js"
import { apiKeysFrom, runDecode, runPrefill, runRouter, runServe } from "../Processes.js"

const run = (f: () => Promise<void>) =>
  Effect.tryPromise({ try: f, catch: (e) => (e instanceof Error ? e : new Error(String(e))) })

const httpFront = {
  host: Flags.host,
  port: Flags.port(8080),
  servedModelName: Flags.servedModelName,
  apiKey: Flags.apiKey,
  maxBody: Flags.maxBody,
  maxConcurrency: Flags.maxConcurrency,
  maxQueue: Flags.maxQueue,
  queueTimeout: Flags.queueTimeout,
  requestTimeout: Flags.requestTimeout
}

const engine = {
  model: Flags.model,
  threads: Flags.threads,
  device: Flags.device,
  maxBatch: Flags.maxBatch,
  kvBudgetMb: Flags.kvBudgetMb,
  maxBatchPrefillTokens: Flags.maxBatchPrefillTokens,
  prefillChunk: Flags.prefillChunk
}

const nodeId = Flag.String("node-id").pipe(
  Flag.withDescription("This node's name in logs and handshakes (default role@serving-bind)"),
  Flag.optional
)

const httpOptions = (f: {
  host: string
  port: Option.Option<number>
  servedModelName: Option.Option<string>
  apiKey: ReadonlyArray<string>
  maxBody: number
  maxConcurrency: number
  maxQueue: number
  queueTimeout: number
  requestTimeout: number
}) => ({
  host: f.host,
  port: Option.getOrElse(f.port, () => 8080),
  servedModelName: Option.getOrUndefined(f.servedModelName),
  apiKeys: apiKeysFrom(f.apiKey),
  maxBody: f.maxBody,
  maxConcurrency: f.maxConcurrency,
  maxQueue: f.maxQueue,
  queueTimeoutMs: f.queueTimeout,
  requestTimeoutMs: f.requestTimeout
})

const engineOptions = (f: {
  model: string
  threads: number
  device: "cpu" | "cuda"
  maxBatch: number
  kvBudgetMb: Option.Option<number>
  maxBatchPrefillTokens: number
  prefillChunk: number
}) => ({
  model: f.model,
  threads: f.threads,
  device: f.device,
  maxBatch: f.maxBatch,
  kvBudgetMb: Option.getOrUndefined(f.kvBudgetMb),
  maxBatchPrefillTokens: f.maxBatchPrefillTokens,
  prefillChunk: f.prefillChunk
})

export const routerCommand = Command.make(
  "router",
  {
    ...httpFront,
    model: Flags.model,
    prefillPeers: Flags.prefillPeers,
    decodePeers: Flags.decodePeers,
    routing: Flags.routing,
    healthInterval: Flags.healthInterval,
    healthTimeout: Flags.healthTimeout,
    healthDownAfter: Flags.healthDownAfter,
    healthUpAfter: Flags.healthUpAfter,
    clusterSecretFile: Flags.clusterSecretFile
  },
  (f) =>
    Effect.gen(function* () {
      const level = yield* logLevel
      yield* run(() =>
        runRouter({
          ...httpOptions(f),
          model: f.model,
          prefillPeers: f.prefillPeers,
          decodePeers: f.decodePeers,
          routing: f.routing,
          healthIntervalMs: f.healthInterval,
          healthTimeoutMs: f.healthTimeout,
          healthDownAfter: f.healthDownAfter,
          healthUpAfter: f.healthUpAfter,
          clusterSecretFile: Option.getOrUndefined(f.clusterSecretFile),
          logLevel: level
        })
      )
    })
).pipe(Command.withDescription("The OpenAI-compatible router over prefill and decode nodes"))

const roleNode = {
  ...engine,
  servingBind: Flags.servingBind,
  host: Flags.host,
  port: Flags.port(undefined),
  clusterSecretFile: Flags.clusterSecretFile,
  nodeId
}

type RoleFlags = Parameters<typeof engineOptions>[0] & {
  servingBind: string
  host: string
  port: Option.Option<number>
  clusterSecretFile: Option.Option<string>
  nodeId: Option.Option<string>
}

const roleOptions = (f: RoleFlags) => ({
  ...engineOptions(f),
  servingBind: f.servingBind,
  host: f.host,
  port: Option.getOrUndefined(f.port),
  clusterSecretFile: Option.getOrUndefined(f.clusterSecretFile),
  nodeId: Option.getOrUndefined(f.nodeId)
})

export const prefillCommand = Command.make("prefill", { ...roleNode, decodePeers: Flags.decodePeers }, (f) =>
  Effect.gen(function* () {
    const level = yield* logLevel
    yield* run(() => runPrefill({ ...roleOptions(f), decodePeers: f.decodePeers, logLevel: level }))
  })
).pipe(Command.withDescription("A prefill node: prompts in, first token to the router, KV to a decode node"))

export const decodeCommand = Command.make("decode", { ...roleNode, kvLease: Flags.kvLease }, (f) =>
  Effect.gen(function* () {
    const level = yield* logLevel
    yield* run(() => runDecode({ ...roleOptions(f), kvLeaseMs: f.kvLease, logLevel: level }))
  })
).pipe(Command.withDescription("A decode node: KV in, tokens streamed to the router, continuous batching"))

export const serveCommand = Command.make("serve", { ...httpFront, ...engine }, (f) =>
  Effect.gen(function* () {
    const level = yield* logLevel
    yield* run(() => runServe({ ...httpOptions(f), ...engineOptions(f), logLevel: level }))
  })
).pipe(
  Command.withDescription(
    "One process: prefill and decode colocated, the same HTTP API (minus /router/stats)"
  )
)
