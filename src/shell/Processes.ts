/** The long-running roles: router, prefill, decode, serve. Each prints its ready line once serving. */
import { lookup } from "node:dns/promises"
import { freemem } from "node:os"
import { DecodeAllowlist } from "../domain/DecodeAllowlist.js"
import { envSetting } from "../domain/Env.js"
import { deriveKvBudget } from "../domain/Scheduler.js"

import { routerStatsVerboseFrom } from "../domain/RouterStats.js"
import type { RoutingPolicy } from "../domain/Routing.js"
import {
  formatHost,
  formatSocketAddress,
  parseSocketAddress,
  type SocketAddress
} from "../domain/SocketAddress.js"
import { defaultModelName, resolveModelDir } from "../gpu/ModelStore.js"
import type { Device } from "../gpu/Runtime.js"
import { TextCodec } from "../gpu/TextCodec.js"
import { ClusterBackend, type PeerSpec } from "./ClusterBackend.js"
import { DecodeNode } from "./DecodeNode.js"
import { socketAddressList } from "./Flags.js"
import { listen, type BoundListener } from "./Listener.js"
import { LocalBackend } from "./LocalBackend.js"
import { HttpMetrics } from "./HttpMetrics.js"
import { makeLogger, type LogLevel, type Logger } from "./Log.js"
import { startOpenAiServer } from "./OpenAiServer.js"
import { PrefillNode } from "./PrefillNode.js"
import { addressOf, identityOf, loadOf, loadRoleNode, startNodeHttp, type RoleNodeCore } from "./RoleNode.js"
import { loadClusterSecret } from "./Secret.js"

const GRACE_MS = 10_000

export const printReady = (role: string, httpAddr: string | null, serving: string | null): void => {
  process.stdout.write(JSON.stringify({ event: "ready", role, http: httpAddr, serving }) + "\n")
}

/**
 * Resolves on SIGINT/SIGTERM (once), or, for children of `tandem up` (TANDEM_EXIT_WITH_PARENT=1), when
 * the parent's end of stdin closes: the parent died, even by SIGKILL.
 */
const untilSignal = (): Promise<string> =>
  new Promise((resolve) => {
    const on = (sig: string) => () => resolve(sig)
    process.once("SIGINT", on("SIGINT"))
    process.once("SIGTERM", on("SIGTERM"))
    if (process.env["TANDEM_EXIT_WITH_PARENT"] === "1") {
      process.stdin.on("data", () => {})
      process.stdin.once("close", on("parent exited"))
      process.stdin.once("end", on("parent exited"))
    }
  })

/** Numeric peers as given; hostnames resolved once, at start. */
const resolvePeers = async (value: string, flag: string): Promise<ReadonlyArray<SocketAddress>> => {
  const out: Array<SocketAddress> = []
  for (const { text, address } of socketAddressList(value, flag)) {
    if (address !== undefined) {
      out.push(address)
      continue
    }
    const colon = text.lastIndexOf(":")
    const { address: ip } = await lookup(text.slice(0, colon))
    const p = parseSocketAddress(
      ip.includes(":") ? `[${ip}]:${text.slice(colon + 1)}` : `${ip}:${text.slice(colon + 1)}`
    )
    if (!p.ok) throw new Error(`${flag}: ${text} resolved to ${ip}, which is not usable: ${p.reason}`)
    out.push(p.address)
  }
  if (out.length === 0) throw new Error(`${flag} needs at least one ip:port`)
  return out
}

const parseBind = (value: string): SocketAddress => {
  const p = parseSocketAddress(value, { allowPortZero: true })
  if (!p.ok) throw new Error(`--serving-bind: ${p.reason}`)
  return p.address
}

export const apiKeysFrom = (
  flagKeys: ReadonlyArray<string>,
  env: NodeJS.ProcessEnv = process.env
): ReadonlyArray<string> => [
  ...flagKeys,
  ...(env["TANDEM_API_KEYS"] ?? "")
    .split(",")
    .map((k) => k.trim())
    .filter((k) => k !== "")
]

export interface EngineOptions {
  readonly model: string
  readonly threads: number
  readonly device: Device
  readonly maxBatch: number
  readonly kvBudgetMb: number | undefined
  readonly maxBatchPrefillTokens: number
  readonly prefillChunk: number
}

/** The KV budget: as given, or a quarter of the memory free at start, capped at 4 GiB (other processes share the machine). */
const kvBudget = (mb: number | undefined, log: Logger): number => {
  const bytes = deriveKvBudget(mb, freemem())
  log.info("KV budget", { kv_budget_mb: Math.round(bytes / 1024 / 1024), derived: mb === undefined })
  return bytes
}

const loadCore = async (o: EngineOptions, log: Logger): Promise<RoleNodeCore> =>
  loadRoleNode({
    modelDir: resolveModelDir(o.model),
    device: o.device,
    threads: o.threads,
    maxBatch: o.maxBatch,
    maxBatchPrefillTokens: o.maxBatchPrefillTokens,
    prefillChunk: o.prefillChunk,
    kvBudgetBytes: kvBudget(o.kvBudgetMb, log)
  })

export interface HttpFrontOptions {
  readonly host: string
  readonly port: number
  readonly servedModelName: string | undefined
  readonly apiKeys: ReadonlyArray<string>
  readonly maxBody: number
  readonly maxConcurrency: number
  readonly maxQueue: number
  readonly queueTimeoutMs: number
  readonly requestTimeoutMs: number
}

export interface RoleNodeProcessOptions extends EngineOptions {
  readonly servingBind: string
  readonly host: string
  readonly port: number | undefined
  readonly clusterSecretFile: string | undefined
  readonly logLevel: LogLevel
  readonly nodeId: string | undefined
}

const startRoleHttp = async (o: RoleNodeProcessOptions, core: RoleNodeCore, refresh: () => void) => {
  if (o.port === undefined) return null
  const server = await startNodeHttp(
    o.host,
    o.port,
    async () => {
      refresh()
      return core.metrics.registry.metrics()
    },
    core.metrics.registry.contentType
  )
  return { server, address: addressOf(server) }
}

export const runPrefill = async (
  o: RoleNodeProcessOptions & { readonly decodePeers: string }
): Promise<void> => {
  const log = makeLogger({ role: "prefill", node: o.nodeId ?? "prefill" }, o.logLevel)
  const secret = loadClusterSecret(o.clusterSecretFile)
  const bind = parseBind(o.servingBind)
  const decodePeers = await resolvePeers(o.decodePeers, "--decode-peers")
  const { allowlist, warnings } = DecodeAllowlist.fromEnv(envSetting(process.env, "DECODE_ALLOWLIST"))
  for (const w of warnings) log.warn(w)
  if (!DecodeAllowlist.isConfigured(allowlist)) log.warn(DecodeAllowlist.permissiveWarning)
  const core = await loadCore(o, log)
  const self = identityOf("prefill", o.nodeId ?? `prefill@${o.servingBind}`, core)
  const handshake = { secret, self, peerRoles: ["router" as const], expectModel: () => undefined }
  let listener: BoundListener | undefined
  const node = new PrefillNode(
    core,
    allowlist,
    decodePeers[0] as SocketAddress,
    { secret, self, peerRoles: ["decode"], expectModel: () => core.runtime.fingerprint },
    log,
    () => listener?.connections ?? []
  )
  listener = await listen(formatHost(bind), bind.port, handshake, log, (conn) => node.attach(conn))
  const http = await startRoleHttp(o, core, () => loadOf(core, listener?.connections ?? [], 0))
  printReady("prefill", http?.address ?? null, formatSocketAddress({ ...bind, port: listener.port }))
  log.info("serving", { serving: formatSocketAddress({ ...bind, port: listener.port }) })
  const sig = await untilSignal()
  log.info("shutting down", { signal: sig })
  await drain(() => node.activeRequests === 0)
  await listener.close()
  http?.server.close()
  process.exit(0)
}

export const runDecode = async (
  o: RoleNodeProcessOptions & { readonly kvLeaseMs: number }
): Promise<void> => {
  const log = makeLogger({ role: "decode", node: o.nodeId ?? "decode" }, o.logLevel)
  const secret = loadClusterSecret(o.clusterSecretFile)
  const bind = parseBind(o.servingBind)
  const core = await loadCore(o, log)
  const self = identityOf("decode", o.nodeId ?? `decode@${o.servingBind}`, core)
  let listener: BoundListener | undefined
  const handshake = {
    secret,
    self,
    peerRoles: ["router" as const, "prefill" as const],
    expectModel: (role: string) => (role === "prefill" ? core.runtime.fingerprint : undefined)
  }
  const node = new DecodeNode(core, o.kvLeaseMs, log, () => listener?.connections ?? [])
  listener = await listen(formatHost(bind), bind.port, handshake, log, (conn) => node.attach(conn))
  const http = await startRoleHttp(o, core, () => loadOf(core, listener.connections, node.pendingKvBytes()))
  printReady("decode", http?.address ?? null, formatSocketAddress({ ...bind, port: listener.port }))
  log.info("serving", { serving: formatSocketAddress({ ...bind, port: listener.port }) })
  const sig = await untilSignal()
  log.info("shutting down", { signal: sig })
  await drain(() => core.engine.stats().liveSequences === 0)
  await listener.close()
  http?.server.close()
  process.exit(0)
}

const drain = async (idle: () => boolean): Promise<void> => {
  const until = Date.now() + GRACE_MS
  while (!idle() && Date.now() < until) await new Promise((r) => setTimeout(r, 50))
}

export interface RouterProcessOptions extends HttpFrontOptions {
  readonly model: string
  readonly prefillPeers: string
  readonly decodePeers: string
  readonly routing: RoutingPolicy
  readonly healthIntervalMs: number
  readonly healthTimeoutMs: number
  readonly healthDownAfter: number
  readonly healthUpAfter: number
  readonly clusterSecretFile: string | undefined
  readonly logLevel: LogLevel
}

export const runRouter = async (o: RouterProcessOptions): Promise<void> => {
  const log = makeLogger({ role: "router" }, o.logLevel)
  const secret = loadClusterSecret(o.clusterSecretFile)
  const prefill = await resolvePeers(o.prefillPeers, "--prefill-peers")
  const decode = await resolvePeers(o.decodePeers, "--decode-peers")
  // The router needs only the tokenizer and chat template: no weights are loaded.
  const codec = TextCodec.load(resolveModelDir(o.model))
  const peers: Array<PeerSpec> = [
    ...prefill.map((address, i) => ({ id: `prefill-${i}`, role: "prefill" as const, address })),
    ...decode.map((address, i) => ({ id: `decode-${i}`, role: "decode" as const, address }))
  ]
  const metrics = new HttpMetrics()
  const backend = new ClusterBackend({
    peers,
    secret,
    tokenizerFingerprint: codec.fingerprint,
    routing: o.routing,
    healthIntervalMs: o.healthIntervalMs,
    healthTimeoutMs: o.healthTimeoutMs,
    health: { downAfter: o.healthDownAfter, upAfter: o.healthUpAfter },
    log,
    registry: metrics.registry
  })
  const server = await startOpenAiServer({
    ...o,
    modelName: o.servedModelName ?? defaultModelName(o.model),
    codec,
    maxBodyBytes: o.maxBody,
    log,
    metrics,
    backend,
    healthy: () => backend.healthy(),
    routerStats: () => backend.stats(routerStatsVerboseFrom(envSetting(process.env, "ROUTER_STATS_VERBOSE")))
  })
  backend.connect()
  printReady("router", server.address, null)
  log.info("serving", {
    http: server.address,
    prefill: prefill.length,
    decode: decode.length,
    routing: o.routing
  })
  const sig = await untilSignal()
  log.info("shutting down", { signal: sig })
  await server.shutdown(GRACE_MS)
  backend.stop()
  process.exit(0)
}

export const runServe = async (
  o: HttpFrontOptions & EngineOptions & { readonly logLevel: LogLevel }
): Promise<void> => {
  const log = makeLogger({ role: "serve" }, o.logLevel)
  const core = await loadCore(o, log)
  const server = await startOpenAiServer({
    ...o,
    modelName: o.servedModelName ?? defaultModelName(o.model),
    codec: core.codec,
    maxBodyBytes: o.maxBody,
    log,
    backend: new LocalBackend(core.engine, core.codec.eosTokenIds),
    healthy: () => true,
    extraMetrics: async () => {
      loadOf(core, [], 0)
      return core.metrics.registry.metrics()
    }
  })
  printReady("serve", server.address, null)
  log.info("serving", { http: server.address })
  const sig = await untilSignal()
  log.info("shutting down", { signal: sig })
  await server.shutdown(GRACE_MS)
  process.exit(0)
}
