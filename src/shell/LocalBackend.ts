/** `tandem serve`'s backend: prefill and decode colocated on one engine, no network in between. */
import { sampleFirstToken, stopRulesOf } from "../domain/Generation.js"
import { Cancelled, type Engine } from "../gpu/Engine.js"
import type { Backend, BackendJob, TokenSink } from "./Backend.js"

export class LocalBackend implements Backend {
  constructor(
    private readonly engine: Engine,
    private readonly eosTokenIds: ReadonlySet<number>
  ) {}

  unavailable() {
    return undefined
  }

  start(job: BackendJob, sink: TokenSink): () => void {
    let cancelled = false
    const run = async () => {
      const { logits } = await this.engine.prefill(job.id, job.promptTokens)
      if (cancelled) return this.engine.release(job.id)
      const first = sampleFirstToken(logits, job.generation, job.promptTokens, this.eosTokenIds)
      sink.token(0, first.token)
      if (first.finish !== undefined) {
        this.engine.release(job.id)
        return sink.done(first.finish, 1)
      }
      const seq = this.engine.takeHeld(job.id)
      if (seq === undefined) throw new Error("prefilled sequence went missing")
      this.engine.decode({
        id: job.id,
        seq,
        promptTokens: job.promptTokens,
        outputTokens: [first.token],
        rng: first.rng,
        sampling: job.generation.sampling,
        rules: stopRulesOf(job.generation, this.eosTokenIds),
        onToken: (token, index) => sink.token(index, token),
        onDone: (reason, n) => sink.done(reason, n),
        onError: (e) => sink.fail({ status: 502, code: "engine_error", message: e.message })
      })
    }
    setImmediate(() =>
      run().catch((e: unknown) => {
        if (e instanceof Cancelled || cancelled) return
        sink.fail({ status: 502, code: "engine_error", message: (e as Error).message })
      })
    )
    return () => {
      if (cancelled) return
      cancelled = true
      this.engine.cancel(job.id)
    }
  }
}
