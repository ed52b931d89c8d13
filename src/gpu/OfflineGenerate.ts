/** One prompt, generated to the end on a local runtime: the `tandem generate` path. */
import { finishAfter, suppressEarlyEos, type StopRules } from "../domain/Generation.js"
import { rngFromSeed, sample, type SamplingParams } from "../domain/Sampling.js"
import type { FinishReason } from "../domain/WireFrames.js"
import type { Runtime } from "./Runtime.js"

export interface OfflineResult {
  readonly tokenIds: ReadonlyArray<number>
  readonly finishReason: FinishReason
}

export const generateTokens = async (
  runtime: Runtime,
  promptIds: ReadonlyArray<number>,
  params: { readonly sampling: SamplingParams; readonly seed: number; readonly rules: StopRules }
): Promise<OfflineResult> => {
  const [first] = await runtime.prefill([promptIds])
  if (first === undefined) throw new Error("prefill returned nothing")
  const { seq } = first
  let logits = first.logits
  let rng = rngFromSeed(params.seed)
  const out: Array<number> = []
  try {
    for (;;) {
      const picked = sample(suppressEarlyEos(logits, out.length, params.rules), params.sampling, rng, {
        promptTokens: promptIds,
        outputTokens: out
      })
      rng = picked.rng
      out.push(picked.token)
      const finish = finishAfter(picked.token, out.length, params.rules)
      if (finish !== undefined) return { tokenIds: out, finishReason: finish }
      const [next] = await runtime.decode([{ seq, token: picked.token }])
      if (next === undefined) throw new Error("decode returned nothing")
      logits = next
    }
  } finally {
    runtime.free(seq)
  }
}
