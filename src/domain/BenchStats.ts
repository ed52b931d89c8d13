/**
 * The statistics of `tandem bench`, in `vllm bench serve`'s vocabulary and field names: TTFT (arrival of
 * the first token), TPOT (per request: (e2el - ttft) / (output tokens - 1)), ITL (every gap between
 * streamed chunks), E2EL, throughputs, and goodput (requests/s meeting every SLO given). Arrival times are
 * a seeded gamma process (shape = burstiness; burstiness 1 = Poisson). Pure: the PRNG comes in.
 */
import { nextUniform, type Rng } from "./Sampling.js"

export interface RequestOutcome {
  readonly success: boolean
  readonly promptTokens: number
  readonly outputTokens: number
  /** Seconds from sending to the first token. */
  readonly ttft: number
  /** Seconds from sending to the last byte. */
  readonly e2el: number
  /** Seconds between consecutive streamed chunks. */
  readonly itl: ReadonlyArray<number>
  readonly error?: string
}

export interface Slo {
  readonly ttftMs?: number | undefined
  readonly tpotMs?: number | undefined
  readonly e2elMs?: number | undefined
}

/** Linear interpolation between closest ranks (numpy's default); NaN for no data. */
export const percentile = (values: ReadonlyArray<number>, p: number): number => {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const rank = (Math.min(100, Math.max(0, p)) / 100) * (sorted.length - 1)
  const lo = Math.floor(rank)
  const hi = Math.ceil(rank)
  return (sorted[lo] as number) + ((sorted[hi] as number) - (sorted[lo] as number)) * (rank - lo)
}

const mean = (xs: ReadonlyArray<number>) =>
  xs.length === 0 ? Number.NaN : xs.reduce((a, b) => a + b, 0) / xs.length
const std = (xs: ReadonlyArray<number>) => {
  if (xs.length === 0) return Number.NaN
  const m = mean(xs)
  return Math.sqrt(xs.reduce((a, b) => a + (b - m) ** 2, 0) / xs.length)
}

/** TPOT of one request in seconds, or undefined when it produced fewer than 2 tokens. */
export const tpotOf = (r: RequestOutcome): number | undefined =>
  r.outputTokens > 1 ? (r.e2el - r.ttft) / (r.outputTokens - 1) : undefined

export const meetsSlo = (r: RequestOutcome, slo: Slo): boolean => {
  if (!r.success) return false
  if (slo.ttftMs !== undefined && r.ttft * 1000 > slo.ttftMs) return false
  if (slo.e2elMs !== undefined && r.e2el * 1000 > slo.e2elMs) return false
  const tpot = tpotOf(r)
  if (slo.tpotMs !== undefined && tpot !== undefined && tpot * 1000 > slo.tpotMs) return false
  return true
}

export type BenchSummary = Record<string, number | null>

const metricFields = (name: string, seconds: ReadonlyArray<number>): BenchSummary => {
  const ms = seconds.map((s) => s * 1000)
  const clean = (v: number) => (Number.isFinite(v) ? v : null)
  return {
    [`mean_${name}_ms`]: clean(mean(ms)),
    [`median_${name}_ms`]: clean(percentile(ms, 50)),
    [`std_${name}_ms`]: clean(std(ms)),
    [`p90_${name}_ms`]: clean(percentile(ms, 90)),
    [`p99_${name}_ms`]: clean(percentile(ms, 99))
  }
}

/** The summary with `vllm bench serve`'s field names. `durationS`: wall time of the measured run. */
export const summarize = (
  outcomes: ReadonlyArray<RequestOutcome>,
  durationS: number,
  slo?: Slo
): BenchSummary => {
  const ok = outcomes.filter((o) => o.success)
  const inputTokens = ok.reduce((n, o) => n + o.promptTokens, 0)
  const outputTokens = ok.reduce((n, o) => n + o.outputTokens, 0)
  const d = durationS > 0 ? durationS : Number.NaN
  const good = slo === undefined ? null : ok.filter((o) => meetsSlo(o, slo)).length
  return {
    duration: durationS,
    completed: ok.length,
    failed: outcomes.length - ok.length,
    total_input_tokens: inputTokens,
    total_output_tokens: outputTokens,
    request_throughput: ok.length / d,
    request_goodput: good === null ? null : good / d,
    output_throughput: outputTokens / d,
    total_token_throughput: (inputTokens + outputTokens) / d,
    ...metricFields(
      "ttft",
      ok.map((o) => o.ttft)
    ),
    ...metricFields(
      "tpot",
      ok.flatMap((o) => tpotOf(o) ?? [])
    ),
    ...metricFields(
      "itl",
      ok.flatMap((o) => o.itl)
    ),
    ...metricFields(
      "e2el",
      ok.map((o) => o.e2el)
    )
  }
}

/** A standard normal draw (Box-Muller). */
const normal = (rng: Rng): readonly [number, Rng] => {
  const [u1, r1] = nextUniform(rng)
  const [u2, r2] = nextUniform(r1)
  return [Math.sqrt(-2 * Math.log(1 - u1)) * Math.cos(2 * Math.PI * u2), r2]
}

/** A gamma(shape, 1) draw (Marsaglia-Tsang; shape < 1 by the boost u^(1/shape)). */
export const gammaDraw = (shape: number, rng: Rng): readonly [number, Rng] => {
  if (shape < 1) {
    const [g, r1] = gammaDraw(shape + 1, rng)
    const [u, r2] = nextUniform(r1)
    return [g * Math.pow(1 - u, 1 / shape), r2]
  }
  const d = shape - 1 / 3
  const c = 1 / Math.sqrt(9 * d)
  let r = rng
  for (;;) {
    const [x, r1] = normal(r)
    const v = (1 + c * x) ** 3
    const [u, r2] = nextUniform(r1)
    r = r2
    if (v > 0 && Math.log(1 - u) < 0.5 * x * x + d - d * v + d * Math.log(v)) return [d * v, r]
  }
}

/**
 * Send times (seconds from the start) of `n` requests at `rate` requests/s: gamma-distributed gaps with
 * shape `burstiness` and mean 1/rate (burstiness 1 = Poisson). `rate` Infinity sends everything at 0.
 */
export const arrivalTimes = (
  n: number,
  rate: number,
  burstiness: number,
  rng: Rng
): ReadonlyArray<number> => {
  if (!Number.isFinite(rate)) return new Array<number>(n).fill(0)
  const out: Array<number> = []
  let t = 0
  let r = rng
  for (let i = 0; i < n; i++) {
    const [g, next] = gammaDraw(burstiness, r)
    r = next
    t += g / (burstiness * rate)
    out.push(t)
  }
  return out
}

/** Per-request lengths uniform in [len * (1 - ratio), len * (1 + ratio)] (at least 1), as vLLM's random dataset. */
export const randomLengths = (
  n: number,
  len: number,
  ratio: number,
  rng: Rng
): { readonly lengths: ReadonlyArray<number>; readonly rng: Rng } => {
  const lo = Math.max(1, Math.floor(len * (1 - ratio)))
  const hi = Math.max(lo, Math.floor(len * (1 + ratio)))
  const lengths: Array<number> = []
  let r = rng
  for (let i = 0; i < n; i++) {
    const [u, next] = nextUniform(r)
    r = next
    lengths.push(lo + Math.floor(u * (hi - lo + 1)))
  }
  return { lengths, rng: r }
}

/** `--goodput ttft:MS tpot:MS e2el:MS` pairs. */
export const parseGoodput = (
  pairs: ReadonlyArray<string>
): { readonly ok: true; readonly slo: Slo } | { readonly ok: false; readonly reason: string } => {
  const slo: { ttftMs?: number; tpotMs?: number; e2elMs?: number } = {}
  for (const p of pairs.flatMap((x) => x.split(/[\s,]+/)).filter((x) => x !== "")) {
    const m = /^(ttft|tpot|e2el):(\d+(?:\.\d+)?)$/.exec(p)
    if (m === null) return { ok: false, reason: `--goodput: "${p}" is not ttft:MS, tpot:MS or e2el:MS` }
    const v = Number(m[2])
    if (m[1] === "ttft") slo.ttftMs = v
    else if (m[1] === "tpot") slo.tpotMs = v
    else slo.e2elMs = v
  }
  return { ok: true, slo }
}
