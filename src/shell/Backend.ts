/** What the HTTP front needs from whatever generates: the cluster (router) or a local engine (serve). */
import type { FinishReason, Generation } from "../domain/WireFrames.js"
import type { Logger } from "./Log.js"

export interface BackendJob {
  /** Request id, carried into every node's log lines. */
  readonly id: string
  readonly promptTokens: ReadonlyArray<number>
  readonly generation: Generation
  readonly log: Logger
}

export interface BackendFailure {
  /** 502: a node failed the request; 503: no healthy node; 504: timed out. */
  readonly status: 502 | 503 | 504
  readonly code: string
  readonly message: string
}

/** Called in token order (index 0, 1, 2, ...), then exactly one of `done` / `fail`. */
export interface TokenSink {
  token(index: number, token: number): void
  done(reason: FinishReason, completionTokens: number): void
  fail(failure: BackendFailure): void
}

export interface Backend {
  /** Why no request can be served now (no healthy node), or undefined. */
  unavailable(): BackendFailure | undefined
  /** Starts a job; returns its cancel (idempotent; frees the request's KV everywhere). */
  start(job: BackendJob, sink: TokenSink): () => void
}
