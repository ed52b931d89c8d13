/**
 * The OpenAI-compatible HTTP front shared by `tandem router` and `tandem serve`: validation, chat
 * templates and tokenizing, admission, SSE and JSON responses, detokenizing and stop strings, usage,
 * API keys, `/v1/models`, `/health`, `/metrics`, and (router) `/router/stats`.
 */
import { Result } from "effect"
import { randomBytes, randomInt, timingSafeEqual } from "node:crypto"
import http from "node:http"
import { admit, promoteOnRelease } from "../domain/Admission.js"
import {
  decodeChatRequest,
  decodeCompletionRequest,
  resolveMaxTokens,
  type GenerationRequest
} from "../domain/OpenAiRequest.js"
import {
  chatChunk,
  chatCompletionBody,
  completionBody,
  completionChunk,
  completionTokensUsed,
  errorBody,
  modelsBody,
  usageChunk,
  usageOf,
  type ErrorType,
  type ResponseMeta
} from "../domain/OpenAiResponse.js"
import { flushStop, initialStopScan, scanStop, type StopScan } from "../domain/StopStrings.js"
import type { FinishReason, Generation } from "../domain/WireFrames.js"
import { IncrementalDetokenizer, type TextCodec } from "../gpu/TextCodec.js"
import type { Backend, BackendFailure } from "./Backend.js"
import { HttpMetrics } from "./HttpMetrics.js"
import type { Logger } from "./Log.js"

export interface OpenAiServerOptions {
  readonly host: string
  readonly port: number
  readonly modelName: string
  readonly codec: TextCodec
  readonly backend: Backend
  readonly apiKeys: ReadonlyArray<string>
  readonly maxBodyBytes: number
  readonly maxConcurrency: number
  readonly maxQueue: number
  readonly queueTimeoutMs: number
  readonly requestTimeoutMs: number
  readonly log: Logger
  /** `GET /health` is 200 when this says so. */
  readonly healthy: () => boolean
  /** Router only: the `/router/stats` body, built per request. */
  readonly routerStats?: (() => unknown) | undefined
  /** The front's metrics (the router's backend registers its own in the same registry). */
  readonly metrics?: HttpMetrics | undefined
  /** More Prometheus text appended to `/metrics` (e.g. the node metrics of `serve`). */
  readonly extraMetrics?: (() => Promise<string>) | undefined
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly type: ErrorType,
    message: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {}
  ) {
    super(message)
  }
}

const json = (
  res: http.ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {}
) => {
  if (res.headersSent) return
  const text = JSON.stringify(body)
  res
    .writeHead(status, {
      "content-type": "application/json",
      "content-length": String(Buffer.byteLength(text)),
      ...headers
    })
    .end(text)
}

const sendError = (res: http.ServerResponse, e: HttpError) =>
  json(res, e.status, errorBody(e.message, e.type, e.code, e.param), e.headers)

const failureToHttp = (f: BackendFailure): HttpError =>
  new HttpError(
    f.status,
    f.status === 503 ? "service_unavailable" : f.status === 504 ? "timeout" : "server_error",
    f.message,
    f.code,
    null,
    f.status === 503 ? { "retry-after": "1" } : {}
  )

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,100}$/

/** Admission: a semaphore with a bounded FIFO queue (decisions from the domain). */
class Admission {
  running = 0
  private readonly queue: Array<{ go: () => void }> = []
  constructor(
    private readonly limits: { maxConcurrency: number; maxQueue: number },
    private readonly metrics: HttpMetrics
  ) {}

  get waiting(): number {
    return this.queue.length
  }

  /** Resolves when dispatched; rejects with 429 (queue full) or 503 (waited too long / aborted). */
  acquire(timeoutMs: number, signal: AbortSignal): Promise<void> {
    const decision = admit({ running: this.running, waiting: this.queue.length }, this.limits)
    if (decision === "Dispatch") {
      this.running++
      this.publish()
      return Promise.resolve()
    }
    if (decision === "Reject") {
      return Promise.reject(
        new HttpError(
          429,
          "rate_limit_error",
          `the admission queue is full (${this.limits.maxQueue} waiting)`,
          "queue_full",
          null,
          { "retry-after": "1" }
        )
      )
    }
    return new Promise((resolve, reject) => {
      const entry = {
        go: () => {
          clearTimeout(timer)
          signal.removeEventListener("abort", onAbort)
          this.running++
          this.publish()
          resolve()
        }
      }
      const leave = () => {
        const i = this.queue.indexOf(entry)
        if (i >= 0) this.queue.splice(i, 1)
        this.publish()
      }
      const timer = setTimeout(() => {
        leave()
        reject(
          new HttpError(
            503,
            "service_unavailable",
            `waited longer than the queue timeout (${timeoutMs} ms) for admission`,
            "queue_timeout",
            null,
            { "retry-after": "1" }
          )
        )
      }, timeoutMs)
      const onAbort = () => {
        clearTimeout(timer)
        leave()
        reject(new HttpError(499, "invalid_request_error", "client went away while queued"))
      }
      signal.addEventListener("abort", onAbort, { once: true })
      this.queue.push(entry)
      this.publish()
    })
  }

  release(): void {
    this.running--
    if (promoteOnRelease({ running: this.running, waiting: this.queue.length }, this.limits))
      this.queue.shift()?.go()
    this.publish()
  }

  private publish(): void {
    this.metrics.running.set(this.running)
    this.metrics.waiting.set(this.queue.length)
  }
}

export interface RunningServer {
  readonly server: http.Server
  readonly address: string
  readonly metrics: HttpMetrics
  /** Stop admitting, let in-flight requests finish for up to `graceMs`, then close. */
  shutdown(graceMs: number): Promise<void>
}

export const startOpenAiServer = async (o: OpenAiServerOptions): Promise<RunningServer> => {
  const metrics = o.metrics ?? new HttpMetrics()
  const admission = new Admission({ maxConcurrency: o.maxConcurrency, maxQueue: o.maxQueue }, metrics)
  const inFlightIds = new Set<string>()
  let draining = false
  const created = Math.floor(Date.now() / 1000)

  const authorized = (req: http.IncomingMessage): boolean => {
    if (o.apiKeys.length === 0) return true
    const header = req.headers["authorization"] ?? ""
    const m = /^Bearer\s+(.+)$/i.exec(header)
    if (m === null) return false
    const given = Buffer.from((m[1] ?? "").trim())
    return o.apiKeys.some((k) => {
      const key = Buffer.from(k)
      return key.length === given.length && timingSafeEqual(key, given)
    })
  }

  const readBody = (req: http.IncomingMessage): Promise<unknown> =>
    new Promise((resolve, reject) => {
      const declared = Number(req.headers["content-length"] ?? "0")
      if (declared > o.maxBodyBytes) {
        req.resume()
        return reject(
          new HttpError(
            413,
            "invalid_request_error",
            `the request body is over the ${o.maxBodyBytes}-byte limit`,
            "body_too_large"
          )
        )
      }
      const chunks: Array<Buffer> = []
      let size = 0
      req.on("data", (c: Buffer) => {
        size += c.byteLength
        if (size > o.maxBodyBytes) {
          req.removeAllListeners("data")
          req.resume()
          reject(
            new HttpError(
              413,
              "invalid_request_error",
              `the request body is over the ${o.maxBodyBytes}-byte limit`,
              "body_too_large"
            )
          )
          return
        }
        chunks.push(c)
      })
      req.on("error", (e) =>
        reject(new HttpError(400, "invalid_request_error", `could not read the request body: ${e.message}`))
      )
      req.on("aborted", () =>
        reject(new HttpError(400, "invalid_request_error", "the request body was truncated"))
      )
      req.on("end", () => {
        const text = Buffer.concat(chunks).toString("utf8")
        if (text.trim() === "")
          return reject(
            new HttpError(400, "invalid_request_error", "the request body is empty; send a JSON object")
          )
        try {
          resolve(JSON.parse(text))
        } catch (e) {
          reject(
            new HttpError(
              400,
              "invalid_request_error",
              `the request body is not valid JSON: ${(e as Error).message}`
            )
          )
        }
      })
    })

  const requestIdOf = (req: http.IncomingMessage): string => {
    const given = req.headers["x-request-id"]
    let id =
      typeof given === "string" && REQUEST_ID.test(given) ? given : `req-${randomBytes(8).toString("hex")}`
    if (inFlightIds.has(id)) id = `${id}.${randomBytes(3).toString("hex")}`
    return id
  }

  const promptOf = (r: GenerationRequest): Array<number> => {
    if (r.kind === "chat") {
      if (!o.codec.hasChatTemplate)
        throw new HttpError(
          400,
          "invalid_request_error",
          "this model has no chat template: use /v1/completions",
          null,
          "messages"
        )
      return o.codec.encodeChat(r.messages)
    }
    const p = r.prompt
    if (p === undefined)
      throw new HttpError(400, "invalid_request_error", "prompt is required", null, "prompt")
    if (p._tag === "Text") {
      const ids = o.codec.encode(p.text)
      if (ids.length === 0)
        throw new HttpError(400, "invalid_request_error", "prompt encodes to no tokens", null, "prompt")
      return ids
    }
    const vocab = o.codec.config.vocabSize
    const bad = p.tokens.find((t) => t >= vocab)
    if (bad !== undefined)
      throw new HttpError(
        400,
        "invalid_request_error",
        `prompt token id ${bad} is outside the vocabulary (${vocab})`,
        null,
        "prompt"
      )
    return [...p.tokens]
  }

  const generate = async (
    req: http.IncomingMessage,
    res: http.ServerResponse,
    kind: "chat" | "completion",
    id: string,
    arrived: number
  ) => {
    const body = await readBody(req)
    const decoded = kind === "chat" ? decodeChatRequest(body) : decodeCompletionRequest(body)
    if (Result.isFailure(decoded))
      throw new HttpError(
        400,
        "invalid_request_error",
        decoded.failure.message,
        null,
        decoded.failure.param ?? null
      )
    const r = decoded.success
    if (r.model !== undefined && r.model !== o.modelName) {
      throw new HttpError(
        404,
        "not_found_error",
        `the model "${r.model}" does not exist; this server serves "${o.modelName}"`,
        "model_not_found",
        "model"
      )
    }
    const prompt = promptOf(r)
    const maxTokens = resolveMaxTokens(r.maxTokens, prompt.length, o.codec.config.maxPositions)
    if (Result.isFailure(maxTokens))
      throw new HttpError(
        400,
        "invalid_request_error",
        maxTokens.failure.message,
        null,
        maxTokens.failure.param ?? null
      )
    if (r.minTokens > maxTokens.success)
      throw new HttpError(
        400,
        "invalid_request_error",
        "min_tokens must not exceed max_tokens",
        null,
        "min_tokens"
      )
    const generation: Generation = {
      sampling: r.sampling,
      maxTokens: maxTokens.success,
      minTokens: r.minTokens,
      ignoreEos: r.ignoreEos,
      seed: r.seed === undefined ? randomInt(0, 2 ** 32 - 1) : r.seed >>> 0
    }
    const unavailable = o.backend.unavailable()
    if (unavailable !== undefined) throw failureToHttp(unavailable)
    if (draining)
      throw new HttpError(503, "service_unavailable", "the server is shutting down", "shutting_down", null, {
        "retry-after": "1"
      })

    const clientGone = new AbortController()
    res.on("close", () => {
      if (!res.writableFinished) clientGone.abort()
    })
    await admission.acquire(o.queueTimeoutMs, clientGone.signal)
    metrics.queueTime.observe((performance.now() - arrived) / 1000)
    inFlightIds.add(id)
    try {
      await stream(res, r, kind, id, prompt, generation, arrived, clientGone.signal)
    } finally {
      inFlightIds.delete(id)
      admission.release()
    }
  }

  const stream = (
    res: http.ServerResponse,
    r: GenerationRequest,
    kind: "chat" | "completion",
    id: string,
    prompt: ReadonlyArray<number>,
    generation: Generation,
    arrived: number,
    clientGone: AbortSignal
  ): Promise<void> =>
    new Promise((resolve) => {
      const log = o.log.with({ request_id: id })
      const meta: ResponseMeta = {
        id: `${kind === "chat" ? "chatcmpl" : "cmpl"}-${id}`,
        created: Math.floor(Date.now() / 1000),
        model: o.modelName
      }
      const detok = new IncrementalDetokenizer((ids) => o.codec.decode(ids))
      let scan: StopScan = initialStopScan
      let text = ""
      let tokens = 0
      let lastTokenAt = 0
      let finished = false
      let started = false
      const sse = (obj: unknown) => res.write(`data: ${JSON.stringify(obj)}\n\n`)
      const begin = () => {
        if (started || !r.stream) return
        started = true
        res.writeHead(200, {
          "content-type": "text/event-stream",
          "cache-control": "no-cache",
          connection: "keep-alive",
          "x-request-id": id
        })
        if (kind === "chat") sse(chatChunk(meta, { role: "assistant", content: "" }, null))
      }
      /**
       * One SSE chunk per generated token, even when its text is empty (bytes of a character still held,
       * or a possible stop string): clients and benchmarks see every token when it is produced.
       */
      const emitToken = (piece: string) => {
        text += piece
        if (!r.stream) return
        begin()
        sse(kind === "chat" ? chatChunk(meta, { content: piece }, null) : completionChunk(meta, piece, null))
      }
      /** Text released without a token of its own (at a stop string or at the end): only if any. */
      const emit = (piece: string) => {
        if (piece !== "") emitToken(piece)
      }
      const finish = (reason: FinishReason, completionTokens: number, outcome: string) => {
        if (finished) return
        finished = true
        clearTimeout(timer)
        const usage = usageOf(prompt.length, completionTokens)
        metrics.e2e.observe((performance.now() - arrived) / 1000)
        metrics.requests.inc({ outcome })
        if (r.stream) {
          begin()
          sse(kind === "chat" ? chatChunk(meta, {}, reason) : completionChunk(meta, "", reason))
          if (r.includeUsage) sse(usageChunk(meta, kind, usage))
          res.end("data: [DONE]\n\n")
        } else {
          json(
            res,
            200,
            kind === "chat"
              ? chatCompletionBody(meta, text, reason, usage)
              : completionBody(meta, text, reason, usage),
            { "x-request-id": id }
          )
        }
        log.info("request finished", {
          finish_reason: reason,
          prompt_tokens: prompt.length,
          completion_tokens: completionTokens
        })
        resolve()
      }
      const failWith = (e: HttpError, outcome: string) => {
        if (finished) return
        finished = true
        clearTimeout(timer)
        cancel()
        metrics.requests.inc({ outcome })
        log.warn("request failed", { status: e.status, reason: e.message })
        if (r.stream && started) {
          // In-band: an error chunk, a finish_reason, then [DONE].
          sse(errorBody(e.message, e.type, e.code))
          sse(kind === "chat" ? chatChunk(meta, {}, "stop") : completionChunk(meta, "", "stop"))
          res.end("data: [DONE]\n\n")
        } else {
          sendError(res, e)
        }
        resolve()
      }
      const timer = setTimeout(
        () =>
          failWith(
            new HttpError(
              504,
              "timeout",
              `the request did not finish within the request timeout (${o.requestTimeoutMs} ms)`,
              "request_timeout"
            ),
            "timeout"
          ),
        o.requestTimeoutMs
      )
      const cancel = o.backend.start(
        { id, promptTokens: prompt, generation, log },
        {
          token: (index, token) => {
            if (finished) return
            const now = performance.now()
            if (index === 0) metrics.ttft.observe((now - arrived) / 1000)
            else metrics.itl.observe((now - lastTokenAt) / 1000)
            lastTokenAt = now
            tokens = index + 1
            const step = scanStop(scan, detok.push(token), r.stop)
            scan = step.scan
            if (!step.stopped) return emitToken(step.release)
            emit(step.release)
            {
              cancel()
              finish(
                "stop",
                completionTokensUsed({
                  reportedByNodes: tokens,
                  maxTokens: generation.maxTokens,
                  stopStringAtToken: tokens
                }),
                "stop_string"
              )
            }
          },

          done: (reason, completionTokens) => {
            if (finished) return
            const tail = scanStop(scan, detok.flush(), r.stop)
            emit(tail.release)
            if (tail.stopped)
              return finish(
                "stop",
                completionTokensUsed({
                  reportedByNodes: tokens,
                  maxTokens: generation.maxTokens,
                  stopStringAtToken: tokens
                }),
                "stop_string"
              )
            emit(flushStop(tail.scan))
            finish(
              reason,
              completionTokensUsed({ reportedByNodes: completionTokens, maxTokens: generation.maxTokens }),
              reason
            )
          },
          fail: (f) => failWith(failureToHttp(f), "error")
        }
      )
      clientGone.addEventListener(
        "abort",
        () => {
          if (finished) return
          finished = true
          clearTimeout(timer)
          cancel()
          metrics.requests.inc({ outcome: "client_disconnected" })
          log.info("client disconnected; request cancelled")
          resolve()
        },
        { once: true }
      )
    })

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    const arrived = performance.now()
    const url = (req.url ?? "/").split("?")[0]
    const id = requestIdOf(req)
    res.setHeader("x-request-id", id)
    try {
      if (url === "/health" && req.method === "GET") {
        const ok = o.healthy()
        return json(res, ok ? 200 : 503, { status: ok ? "ok" : "unavailable" })
      }
      if (!authorized(req))
        throw new HttpError(
          401,
          "authentication_error",
          "missing or wrong API key (send Authorization: Bearer <key>)",
          "invalid_api_key"
        )
      if (url === "/v1/models" && req.method === "GET")
        return json(res, 200, modelsBody(o.modelName, created))
      if (url === "/metrics" && req.method === "GET") {
        const extra = o.extraMetrics === undefined ? "" : await o.extraMetrics()
        res
          .writeHead(200, { "content-type": metrics.registry.contentType })
          .end((await metrics.registry.metrics()) + extra)
        return
      }
      if (url === "/router/stats" && req.method === "GET" && o.routerStats !== undefined)
        return json(res, 200, o.routerStats())
      if (url === "/v1/chat/completions" && req.method === "POST")
        return await generate(req, res, "chat", id, arrived)
      if (url === "/v1/completions" && req.method === "POST")
        return await generate(req, res, "completion", id, arrived)
      const known = [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/health",
        "/metrics",
        ...(o.routerStats !== undefined ? ["/router/stats"] : [])
      ]
      if (known.includes(url ?? ""))
        throw new HttpError(
          405,
          "invalid_request_error",
          `method ${req.method ?? "?"} is not allowed on ${url ?? ""}`
        )
      throw new HttpError(404, "not_found_error", `no route ${req.method ?? "?"} ${url ?? ""}`)
    } catch (e) {
      if (e instanceof HttpError) {
        if (e.status !== 499) sendError(res, e)
        return
      }
      o.log.error("unexpected error", { request_id: id, reason: (e as Error).stack ?? String(e) })
      sendError(res, new HttpError(500, "server_error", "internal error"))
    }
  }

  const server = http.createServer(
    { maxHeaderSize: 16 * 1024, requestTimeout: 60_000, headersTimeout: 15_000, keepAliveTimeout: 5_000 },
    (req, res) => {
      void handle(req, res)
    }
  )
  server.maxHeadersCount = 100
  server.on("clientError", (err, socket) => {
    if (socket.writable)
      socket.end(
        `HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n${JSON.stringify(errorBody(`bad HTTP request: ${err.message}`, "invalid_request_error"))}`
      )
    else socket.destroy()
  })
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject)
    server.listen({ host: o.host, port: o.port }, () => resolve())
  })
  const a = server.address()
  const address =
    a === null || typeof a === "string"
      ? "?"
      : a.family === "IPv6"
        ? `[${a.address}]:${a.port}`
        : `${a.address}:${a.port}`
  return {
    server,
    address,
    metrics,
    shutdown: async (graceMs) => {
      draining = true
      server.close()
      const until = Date.now() + graceMs
      while (admission.running > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 50))
      server.closeAllConnections()
    }
  }
}
