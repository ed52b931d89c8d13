/**
 * Token sampling over one logits row. Pure: the logits are not modified, the PRNG state comes in and the
 * next state goes out. Greedy at temperature 0 (ties go to the lowest id). Penalties follow vLLM:
 * repetition over prompt + output tokens, frequency and presence over output tokens only.
 */

export interface SamplingParams {
  readonly temperature: number
  readonly topP: number
  /** 0 or negative = disabled. */
  readonly topK: number
  readonly minP: number
  readonly repetitionPenalty: number
  readonly frequencyPenalty: number
  readonly presencePenalty: number
}

export const greedySampling: SamplingParams = {
  temperature: 0,
  topP: 1,
  topK: 0,
  minP: 0,
  repetitionPenalty: 1,
  frequencyPenalty: 0,
  presencePenalty: 0
}

/** mulberry32 state: one unsigned 32-bit integer. */
export interface Rng {
  readonly state: number
}

export const rngFromSeed = (seed: number): Rng => ({ state: Math.floor(Math.abs(seed)) >>> 0 })

/** A uniform draw in [0, 1) and the next state. */
export const nextUniform = (rng: Rng): readonly [number, Rng] => {
  const state = (rng.state + 0x6d2b79f5) >>> 0
  let t = state
  t = Math.imul(t ^ (t >>> 15), t | 1)
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
  return [((t ^ (t >>> 14)) >>> 0) / 4294967296, { state }]
}

export interface PenaltyContext {
  readonly promptTokens: ReadonlyArray<number>
  readonly outputTokens: ReadonlyArray<number>
}

const noHistory: PenaltyContext = { promptTokens: [], outputTokens: [] }

const hasPenalties = (p: SamplingParams): boolean =>
  p.repetitionPenalty !== 1 || p.frequencyPenalty !== 0 || p.presencePenalty !== 0

const applyPenalties = (logits: Float32Array, p: SamplingParams, history: PenaltyContext): Float32Array => {
  const out = Float32Array.from(logits)
  if (p.repetitionPenalty !== 1) {
    const seen = new Set<number>([...history.promptTokens, ...history.outputTokens])
    for (const id of seen) {
      const v = out[id]
      if (v === undefined) continue
      out[id] = v > 0 ? v / p.repetitionPenalty : v * p.repetitionPenalty
    }
  }
  if (p.frequencyPenalty !== 0 || p.presencePenalty !== 0) {
    const counts = new Map<number, number>()
    for (const id of history.outputTokens) counts.set(id, (counts.get(id) ?? 0) + 1)
    for (const [id, n] of counts) {
      const v = out[id]
      if (v === undefined) continue
      out[id] = v - p.frequencyPenalty * n - p.presencePenalty
    }
  }
  return out
}

/** Index of the largest finite-or-+Infinity logit, lowest id on ties; -1 when every logit is -Infinity/NaN. */
export const argmax = (logits: ArrayLike<number>): number => {
  let best = -1
  let bestValue = -Infinity
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i] as number
    if (v > bestValue) {
      best = i
      bestValue = v
    }
  }
  return best
}

export interface SampleResult {
  readonly token: number
  readonly rng: Rng
}

/**
 * Samples one token id. Returns token -1 only when no id has a logit above -Infinity.
 * The draw consumes one PRNG step except when the choice is deterministic (greedy or top_k = 1).
 */
export const sample = (
  logits: Float32Array,
  params: SamplingParams,
  rng: Rng,
  history: PenaltyContext = noHistory
): SampleResult => {
  const row = hasPenalties(params) ? applyPenalties(logits, params, history) : logits
  if (params.temperature <= 0 || params.topK === 1) return { token: argmax(row), rng }

  // Candidates: finite logits, sorted by descending logit (ties: lower id first).
  const ids: Array<number> = []
  for (let i = 0; i < row.length; i++) if ((row[i] as number) > -Infinity) ids.push(i)
  if (ids.length === 0) return { token: -1, rng }
  ids.sort((a, b) => (row[b] as number) - (row[a] as number) || a - b)
  const k = params.topK > 0 ? Math.min(params.topK, ids.length) : ids.length
  const kept = ids.slice(0, k)

  const maxLogit = row[kept[0] as number] as number
  const weights = kept.map((id) => Math.exp(((row[id] as number) - maxLogit) / params.temperature))
  let total = weights.reduce((a, b) => a + b, 0)
  let probs = weights.map((w) => w / total)

  let n = probs.length
  if (params.topP < 1) {
    let cumulative = 0
    for (let i = 0; i < probs.length; i++) {
      cumulative += probs[i] as number
      if (cumulative >= params.topP) {
        n = i + 1
        break
      }
    }
  }
  if (params.minP > 0) {
    const floor = params.minP * (probs[0] as number)
    let m = 0
    while (m < n && (probs[m] as number) >= floor) m++
    n = Math.max(1, m)
  }
  probs = probs.slice(0, n)
  total = probs.reduce((a, b) => a + b, 0)

  const [u, next] = nextUniform(rng)
  let target = u * total
  for (let i = 0; i < n; i++) {
    target -= probs[i] as number
    if (target < 0) return { token: kept[i] as number, rng: next }
  }
  return { token: kept[n - 1] as number, rng: next }
}
