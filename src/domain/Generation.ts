/**
 * Per-sequence generation rules the nodes apply: EOS (unless `ignore_eos`), `min_tokens` (EOS is
 * suppressed until then) and `max_tokens`.
 */
import { type Rng, rngFromSeed, sample } from "./Sampling.js"
import type { FinishReason, Generation } from "./WireFrames.js"

export interface StopRules {
  readonly maxTokens: number
  readonly minTokens: number
  readonly ignoreEos: boolean
  readonly eosTokenIds: ReadonlySet<number>
}

/** After `generated` tokens, the last being `token`: finished, and why, or undefined to go on. */
export const finishAfter = (token: number, generated: number, rules: StopRules): FinishReason | undefined => {
  if (!rules.ignoreEos && generated > rules.minTokens && rules.eosTokenIds.has(token)) return "stop"
  if (generated >= rules.maxTokens) return "length"
  return undefined
}

/** Logits for the next token: EOS ids masked while fewer than `min_tokens` were generated. */
export const suppressEarlyEos = (logits: Float32Array, generated: number, rules: StopRules): Float32Array => {
  if (generated >= rules.minTokens || rules.eosTokenIds.size === 0) return logits
  const out = Float32Array.from(logits)
  for (const id of rules.eosTokenIds) if (id < out.length) out[id] = -Infinity
  return out
}

export const stopRulesOf = (g: Generation, eosTokenIds: ReadonlySet<number>): StopRules => ({
  maxTokens: g.maxTokens,
  minTokens: g.minTokens,
  ignoreEos: g.ignoreEos,
  eosTokenIds
})

/** The first token, sampled from the prompt's last logits with the request's seed (prefill side). */
export const sampleFirstToken = (
  logits: Float32Array,
  g: Generation,
  promptTokens: ReadonlyArray<number>,
  eosTokenIds: ReadonlySet<number>
): { readonly token: number; readonly rng: Rng; readonly finish: FinishReason | undefined } => {
  const rules = stopRulesOf(g, eosTokenIds)
  const picked = sample(suppressEarlyEos(logits, 0, rules), g.sampling, rngFromSeed(g.seed), {
    promptTokens,
    outputTokens: []
  })
  return { token: picked.token, rng: picked.rng, finish: finishAfter(picked.token, 1, rules) }
}
