/**
 * Per-sequence generation rules the nodes apply: EOS (unless `ignore_eos`), `min_tokens` (EOS is
 * suppressed until then) and `max_tokens`.
 */
import type { FinishReason } from "./WireFrames.js"

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
