/**
 * `tandem bench`: drives any OpenAI-compatible server with streaming requests (random prompts, seeded
 * gamma/Poisson arrivals, bounded concurrency) and reports `vllm bench serve`'s metrics. Bounded: a
 * finite number of requests, each with a deadline.
 */
import { writeFileSync } from "node:fs"
import {
  arrivalTimes,
  randomLengths,
  summarize,
  type RequestOutcome,
  type Slo
} from "../domain/BenchStats.js"
import { nextUniform, rngFromSeed, type Rng } from "../domain/Sampling.js"
import { renderPlot } from "./BenchPlot.js"

export interface BenchOptions {
  readonly url: string
  readonly model: string | undefined
  readonly endpoint: "chat" | "completions"
  readonly numPrompts: number
  readonly requestRates: ReadonlyArray<number>
  readonly burstiness: number
  readonly maxConcurrency: number | undefined
  readonly inputLen: number
  readonly outputLen: number
  readonly rangeRatio: number
  readonly prefixLen: number
  readonly seed: number
  readonly ignoreEos: boolean
  readonly numWarmups: number
  readonly goodput: Slo | undefined
  readonly apiKey: string | undefined
  readonly timeoutS: number
  readonly saveResult: string | undefined
  readonly plot: string | undefined
  /** Progress bar and table (false for library use). */
  readonly interactive: boolean
}

export interface BenchRun {
  /** `vllm bench serve`'s saved-result fields (metrics as numbers, run settings as numbers or strings). */
  readonly summary: Readonly<Record<string, number | string | null>>

  readonly outcomes: ReadonlyArray<RequestOutcome>
}

interface Prompt {
  readonly input: ReadonlyArray<number>
  readonly outputLen: number
}

/** Random prompts: token ids 3..258 (valid in the byte tokenizer and in real vocabularies) after a shared prefix. */
const makePrompts = (o: BenchOptions, rng0: Rng): { prompts: ReadonlyArray<Prompt>; rng: Rng } => {
  let rng = rng0
  const draw = (n: number) => {
    const ids: Array<number> = []
    for (let i = 0; i < n; i++) {
      const [u, r] = nextUniform(rng)
      rng = r
      ids.push(3 + Math.floor(u * 256))
    }
    return ids
  }
  const prefix = draw(o.prefixLen)
  const ins = randomLengths(o.numPrompts + o.numWarmups, o.inputLen, o.rangeRatio, rng)
  rng = ins.rng
  const outs = randomLengths(o.numPrompts + o.numWarmups, o.outputLen, o.rangeRatio, rng)
  rng = outs.rng
  const prompts = ins.lengths.map((n, i) => ({
    input: [...prefix, ...draw(n)],
    outputLen: outs.lengths[i] as number
  }))
  return { prompts, rng }
}

/** Chat content: letters a..z and spaces from the ids (one character per id, so ~1 token each on byte tokenizers). */
const textOf = (ids: ReadonlyArray<number>) =>
  ids.map((t) => (t % 6 === 0 ? " " : String.fromCharCode(97 + (t % 26)))).join("")

const headers = (o: BenchOptions): Record<string, string> => ({
  "content-type": "application/json",
  ...(o.apiKey !== undefined ? { authorization: `Bearer ${o.apiKey}` } : {})
})

export const defaultModel = async (url: string, apiKey: string | undefined): Promise<string> => {
  const res = await fetch(`${url}/v1/models`, {
    headers: apiKey === undefined ? {} : { authorization: `Bearer ${apiKey}` }
  })
  if (!res.ok) throw new Error(`GET ${url}/v1/models answered ${res.status}`)
  const body = (await res.json()) as { data?: Array<{ id: string }> }
  const id = body.data?.[0]?.id
  if (id === undefined) throw new Error(`${url}/v1/models lists no model`)
  return id
}

/** One streamed request, timed. */
const sendOne = async (o: BenchOptions, model: string, p: Prompt): Promise<RequestOutcome> => {
  const body =
    o.endpoint === "chat"
      ? { model, messages: [{ role: "user", content: textOf(p.input) }], max_tokens: p.outputLen }
      : { model, prompt: p.input, max_tokens: p.outputLen }
  const start = performance.now()
  const fail = (error: string): RequestOutcome => ({
    success: false,
    promptTokens: 0,
    outputTokens: 0,
    ttft: 0,
    e2el: (performance.now() - start) / 1000,
    itl: [],
    error
  })
  try {
    const res = await fetch(`${o.url}/v1/${o.endpoint === "chat" ? "chat/completions" : "completions"}`, {
      method: "POST",
      headers: headers(o),
      body: JSON.stringify({
        ...body,
        stream: true,
        stream_options: { include_usage: true },
        ignore_eos: o.ignoreEos,
        temperature: 0
      }),
      signal: AbortSignal.timeout(o.timeoutS * 1000)
    })
    if (!res.ok || res.body === null) return fail(`HTTP ${res.status}: ${(await res.text()).slice(0, 200)}`)
    const reader = res.body.getReader()
    const decoder = new TextDecoder()
    let buffer = ""
    let first: number | undefined
    let last = start
    const itl: Array<number> = []
    let chunks = 0
    let usage: { prompt_tokens: number; completion_tokens: number } | undefined
    let error: string | undefined
    let done = false
    while (!done) {
      const { value, done: end } = await reader.read()
      if (end) break
      buffer += decoder.decode(value, { stream: true })
      let cut: number
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut).trim()
        buffer = buffer.slice(cut + 2)
        if (!event.startsWith("data:")) continue
        const data = event.slice(5).trim()
        if (data === "[DONE]") {
          done = true
          break
        }
        const now = performance.now()
        const chunk = JSON.parse(data) as {
          error?: { message: string }
          usage?: { prompt_tokens: number; completion_tokens: number }
          choices?: Array<{
            text?: string
            delta?: { role?: string; content?: string | null }
            finish_reason?: string | null
          }>
        }
        if (chunk.error !== undefined) error = chunk.error.message
        if (chunk.usage !== undefined && chunk.usage !== null) usage = chunk.usage
        // As vllm bench serve: a chunk with choices is a token's arrival, whatever its text (servers send
        // empty text while a character's bytes are incomplete). Not: the chat role chunk, or a final
        // chunk that only carries the finish reason.
        const choice = chunk.choices?.[0]
        if (choice === undefined) continue
        if (choice.delta?.role !== undefined) continue
        const piece = choice.text ?? choice.delta?.content ?? ""
        if (piece === "" && choice.finish_reason !== null && choice.finish_reason !== undefined) continue
        chunks++

        if (first === undefined) first = now
        else itl.push((now - last) / 1000)
        last = now
      }
    }
    const end = performance.now()
    if (error !== undefined) return fail(error)
    return {
      success: true,
      promptTokens: usage?.prompt_tokens ?? p.input.length,
      outputTokens: usage?.completion_tokens ?? chunks,
      ttft: ((first ?? end) - start) / 1000,
      e2el: (end - start) / 1000,
      itl
    }
  } catch (e) {
    return fail((e as Error).message)
  }
}

const progress = (done: number, total: number) => {
  const width = 30
  const filled = Math.round((done / total) * width)
  process.stderr.write(`\r[${"#".repeat(filled)}${".".repeat(width - filled)}] ${done}/${total}`)
  if (done === total) process.stderr.write("\n")
}

const runAtRate = async (
  o: BenchOptions,
  model: string,
  prompts: ReadonlyArray<Prompt>,
  rate: number,
  rng: Rng
): Promise<BenchRun> => {
  const times = arrivalTimes(prompts.length, rate, o.burstiness, rng)
  const limit = o.maxConcurrency ?? Infinity
  let running = 0
  const waiters: Array<() => void> = []
  const acquire = () =>
    running < limit
      ? (running++, Promise.resolve())
      : new Promise<void>((r) => waiters.push(() => (running++, r())))
  const release = () => {
    running--
    waiters.shift()?.()
  }
  let finished = 0
  const start = performance.now()
  const outcomes = await Promise.all(
    prompts.map(async (p, i) => {
      const wait = (times[i] as number) * 1000 - (performance.now() - start)
      if (wait > 0) await new Promise((r) => setTimeout(r, wait))
      await acquire()
      try {
        return await sendOne(o, model, p)
      } finally {
        release()
        finished++
        if (o.interactive && process.stderr.isTTY) progress(finished, prompts.length)
      }
    })
  )
  const duration = (performance.now() - start) / 1000
  return {
    summary: {
      model_id: model,
      endpoint: o.endpoint,
      num_prompts: prompts.length,
      request_rate: Number.isFinite(rate) ? rate : "inf",
      burstiness: o.burstiness,
      max_concurrency: o.maxConcurrency ?? null,
      ...summarize(outcomes, duration, o.goodput)
    },
    outcomes
  }
}

export const runBench = async (o: BenchOptions): Promise<ReadonlyArray<BenchRun>> => {
  const model = o.model ?? (await defaultModel(o.url, o.apiKey))
  const { prompts, rng } = makePrompts(o, rngFromSeed(o.seed))
  for (const p of prompts.slice(0, o.numWarmups)) await sendOne(o, model, p)
  const measured = prompts.slice(o.numWarmups)
  const runs: Array<BenchRun> = []
  for (const rate of o.requestRates) {
    const run = await runAtRate(o, model, measured, rate, rng)
    runs.push(run)
    if (o.interactive) process.stdout.write(table(run.summary))
  }
  const saved = runs.map((r) => r.summary)
  if (o.saveResult !== undefined)
    writeFileSync(o.saveResult, JSON.stringify(saved.length === 1 ? saved[0] : saved, null, 2) + "\n")
  if (o.plot !== undefined) writeFileSync(o.plot, await renderPlot(runs))
  return runs
}

const fmt = (v: unknown) =>
  typeof v === "number" ? (Number.isInteger(v) ? String(v) : v.toFixed(2)) : String(v)

/** The human summary, laid out like `vllm bench serve`'s. */
export const table = (s: BenchRun["summary"]): string => {
  const row = (label: string, key: string) => `${label.padEnd(40)}${fmt(s[key]).padStart(12)}\n`
  const section = (title: string) => {
    const side = Math.max(2, Math.floor((52 - title.length) / 2))
    return `${"-".repeat(side)} ${title} ${"-".repeat(side)}\n`
  }

  let out = `${"=".repeat(14)} Serving Benchmark Result ${"=".repeat(14)}\n`
  out += row("Request rate (req/s):", "request_rate")
  out += row("Successful requests:", "completed")
  out += row("Failed requests:", "failed")
  out += row("Benchmark duration (s):", "duration")
  out += row("Total input tokens:", "total_input_tokens")
  out += row("Total generated tokens:", "total_output_tokens")
  out += row("Request throughput (req/s):", "request_throughput")
  if (s["request_goodput"] !== null) out += row("Request goodput (req/s):", "request_goodput")
  out += row("Output token throughput (tok/s):", "output_throughput")
  out += row("Total token throughput (tok/s):", "total_token_throughput")
  for (const [name, title] of [
    ["ttft", "Time to First Token"],
    ["tpot", "Time per Output Token (excl. 1st token)"],
    ["itl", "Inter-token Latency"],
    ["e2el", "End-to-end Latency"]
  ] as const) {
    out += section(title)
    out += row(`Mean ${name.toUpperCase()} (ms):`, `mean_${name}_ms`)
    out += row(`Median ${name.toUpperCase()} (ms):`, `median_${name}_ms`)
    out += row(`P90 ${name.toUpperCase()} (ms):`, `p90_${name}_ms`)
    out += row(`P99 ${name.toUpperCase()} (ms):`, `p99_${name}_ms`)
  }
  return out + "=".repeat(54) + "\n"
}
