/** What prefill and decode nodes share: model + engine, identity, load reports, and their small HTTP surface. */
import http from "node:http"
import type { WireLoad } from "../domain/WireFrames.js"
import { Engine } from "../gpu/Engine.js"
import { Runtime, type Device } from "../gpu/Runtime.js"
import { TextCodec } from "../gpu/TextCodec.js"
import type { Connection, Identity } from "./Connection.js"
import { NodeMetrics } from "./NodeMetrics.js"

export interface RoleNodeOptions {
  readonly modelDir: string
  readonly device: Device
  readonly threads: number
  readonly maxBatch: number
  readonly maxBatchPrefillTokens: number
  readonly prefillChunk: number
  /** KV budget in bytes. */
  readonly kvBudgetBytes: number
}

export interface RoleNodeCore {
  readonly codec: TextCodec
  readonly runtime: Runtime
  readonly engine: Engine
  readonly metrics: NodeMetrics
  readonly kvBudgetBytes: number
}

export const loadRoleNode = async (options: RoleNodeOptions): Promise<RoleNodeCore> => {
  const codec = TextCodec.load(options.modelDir)
  const runtime = await Runtime.load(options.modelDir, {
    device: options.device,
    threads: options.threads,
    maskedIds: codec.idsWithoutToken
  })
  const engine = new Engine(runtime, {
    maxBatch: options.maxBatch,
    maxBatchPrefillTokens: options.maxBatchPrefillTokens,
    prefillChunk: options.prefillChunk
  })
  return { codec, runtime, engine, metrics: new NodeMetrics(), kvBudgetBytes: options.kvBudgetBytes }
}

export const identityOf = (role: Identity["role"], nodeId: string, core: RoleNodeCore): Identity => ({
  role,
  nodeId,
  modelFingerprint: core.runtime.fingerprint,
  tokenizerFingerprint: core.codec.fingerprint
})

/** Load as reported in heartbeats and gauges. `pendingKvBytes`: handoffs still arriving. */
export const loadOf = (
  core: RoleNodeCore,
  connections: Iterable<Connection>,
  pendingKvBytes: number,
  /** Handoffs waiting for KV budget (decode nodes). */
  queuedHandoffs = 0
): WireLoad => {
  const s = core.engine.stats()
  let partial = 0
  for (const c of connections) if (c.hasPartialFrame) partial++
  const load: WireLoad = {
    liveSequences: s.liveSequences,
    kvBytes: s.kvBytes,
    freeKvBytes: Math.max(0, core.kvBudgetBytes - s.kvBytes - pendingKvBytes),
    queueLength: s.waiting + s.prefillQueue + queuedHandoffs,

    pendingKvBytes,
    partialFrames: partial
  }
  core.metrics.liveSequences.set(load.liveSequences)
  core.metrics.kvBytesHeld.set(load.kvBytes)
  core.metrics.decodeBufferBytes.set(core.runtime.decodeBufferBytes)

  core.metrics.kvPendingBytes.set(load.pendingKvBytes)
  core.metrics.partialFrames.set(load.partialFrames)
  return load
}

/** `/health` (200 once loaded and bound) and `/metrics` of a role node, when `--port` is given. */
export const startNodeHttp = (
  host: string,
  port: number,
  metrics: () => Promise<string>,
  contentType: string
): Promise<http.Server> =>
  new Promise((resolve, reject) => {
    const server = http.createServer((req, res) => {
      if (req.method === "GET" && req.url === "/health") {
        res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ status: "ok" }))
      } else if (req.method === "GET" && req.url === "/metrics") {
        metrics().then(
          (text) => res.writeHead(200, { "content-type": contentType }).end(text),
          (e: Error) => res.writeHead(500).end(e.message)
        )
      } else {
        res.writeHead(404, { "content-type": "application/json" }).end(
          JSON.stringify({
            error: { message: "not found", type: "not_found_error", code: null, param: null }
          })
        )
      }
    })
    server.once("error", reject)
    server.listen({ host, port }, () => resolve(server))
  })

export const addressOf = (server: http.Server): string => {
  const a = server.address()
  if (a === null || typeof a === "string") return "?"
  return a.family === "IPv6" ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`
}
