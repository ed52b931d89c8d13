/**
 * Engine benchmark, three contestants over the same weights and thread count, measured alternately in
 * one run:
 *
 * - `tandem`: Tandem's runtime on the built-in model (in-place KV layout: the graph returns only new K/V);
 * - `tandem_concat`: Tandem's runtime on the same weights in the Optimum layout (`present` = past + new,
 *   what exported models use);
 * - `bare_concat`: a bare onnxruntime loop on the Optimum layout, presents fed straight back.
 *
 * Prefill tokens/s (one 128-token prompt), decode tokens/s at batch 1 and batch 8 (64 steps after a
 * 64-token prompt, and after a 256-token prompt). Prints JSON; medians over rounds.
 *
 *   npm run bench:engine -- [--size small] [--threads 1] [--rounds 5]
 */
import ort from "onnxruntime-node"
import { join } from "node:path"
import { parseArgs } from "node:util"
import { ensureBuiltin } from "../src/gpu/ModelStore.js"

import { Runtime, type Sequence } from "../src/gpu/Runtime.js"

const { values } = parseArgs({
  options: {
    size: { type: "string", default: "small" },
    threads: { type: "string", default: "1" },
    rounds: { type: "string", default: "5" }
  }
})
const threads = Number(values.threads)
const rounds = Number(values.rounds)
const size = values.size === "tiny" ? "tiny" : "small"
const dir = ensureBuiltin(size, process.env, "concat")
const PROMPT = 64
const STEPS = 64
const PREFILL = 128
const LONG_PROMPT = 256

const median = (xs: ReadonlyArray<number>) =>
  [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number
const argmax = (a: Float32Array, from = 0, to = a.length) => {
  let best = from
  for (let i = from; i < to; i++) if ((a[i] as number) > (a[best] as number)) best = i
  return best - from
}
const promptOf = (n: number, seed: number) =>
  Array.from({ length: n }, (_, i) => 3 + ((i * 31 + seed * 17) % 256))

const inplace = await Runtime.load(ensureBuiltin(size), { device: "cpu", threads })
const concat = await Runtime.load(dir, { device: "cpu", threads })
const { layers: L, kvHeads: KV, headDim: Dh } = concat.config

const bare = await ort.InferenceSession.create(join(dir, "model.onnx"), {
  intraOpNumThreads: threads,
  interOpNumThreads: 1,
  executionMode: "sequential",
  graphOptimizationLevel: "all"
})

/** The bare loop: left-padded equal-length batch, presents fed straight back, argmax in place. */
const bareGenerate = async (B: number, promptLen: number, steps: number) => {
  const i64 = (xs: ReadonlyArray<number>, dims: Array<number>) =>
    new ort.Tensor("int64", BigInt64Array.from(xs.map(BigInt)), dims)
  const feeds: Record<string, ort.Tensor> = {}
  for (let l = 0; l < L; l++)
    for (const kv of ["key", "value"])
      feeds[`past_key_values.${l}.${kv}`] = new ort.Tensor("float32", new Float32Array(0), [B, KV, 0, Dh])
  const prompts = Array.from({ length: B }, (_, b) => promptOf(promptLen, b))
  let t = performance.now()
  let out = await bare.run({
    ...feeds,
    input_ids: i64(prompts.flat(), [B, promptLen]),
    attention_mask: i64(new Array<number>(B * promptLen).fill(1), [B, promptLen]),
    position_ids: i64(
      prompts.flatMap((p) => p.map((_, j) => j)),
      [B, promptLen]
    )
  })
  const prefillMs = performance.now() - t
  let total = promptLen
  t = performance.now()
  for (let s = 0; s < steps; s++) {
    const logits = out["logits"] as ort.Tensor
    const V = logits.dims[2] as number
    const S = logits.dims[1] as number
    const data = logits.data as Float32Array
    const next = Array.from({ length: B }, (_, b) => argmax(data, (b * S + S - 1) * V, (b * S + S) * V))
    const past: Record<string, ort.Tensor> = {}
    for (let l = 0; l < L; l++)
      for (const kv of ["key", "value"])
        past[`past_key_values.${l}.${kv}`] = out[`present.${l}.${kv}`] as ort.Tensor
    total += 1
    out = await bare.run({
      ...past,
      input_ids: i64(next, [B, 1]),
      attention_mask: i64(new Array<number>(B * total).fill(1), [B, total]),
      position_ids: i64(new Array<number>(B).fill(total - 1), [B, 1])
    })
  }
  return { prefillMs, decodeMs: performance.now() - t }
}

const tandemGenerate = (runtime: Runtime) => async (B: number, promptLen: number, steps: number) => {
  let t = performance.now()
  const first = await runtime.prefill(Array.from({ length: B }, (_, b) => promptOf(promptLen, b)))
  const prefillMs = performance.now() - t
  let tokens = first.map((f) => argmax(f.logits))
  const seqs: Array<Sequence> = first.map((f) => f.seq)
  t = performance.now()
  for (let s = 0; s < steps; s++) {
    const out = await runtime.decode(seqs.map((seq, b) => ({ seq, token: tokens[b] as number })))
    tokens = out.map((l) => argmax(l))
  }
  const decodeMs = performance.now() - t
  for (const s of seqs) runtime.free(s)
  return { prefillMs, decodeMs }
}

const contestants = {
  tandem: tandemGenerate(inplace),
  tandem_concat: tandemGenerate(concat),
  bare_concat: bareGenerate
}
type Who = keyof typeof contestants
const order: ReadonlyArray<Who> = ["tandem", "tandem_concat", "bare_concat"]
const results: Record<string, Record<Who, Array<number>>> = {}
const record = (key: string, who: Who, v: number) => {
  results[key] ??= { tandem: [], tandem_concat: [], bare_concat: [] }
  results[key][who].push(v)
}

for (const who of order) await contestants[who](1, 16, 4) // warm-up
for (let r = 0; r < rounds; r++) {
  // Rotate who goes first, so drift on a shared machine does not favour anyone.
  for (const who of order.map((_, i) => order[(i + r) % order.length] as Who)) {
    const gen = contestants[who]
    const p = await gen(1, PREFILL, 0)
    record("prefill_tokens_per_s", who, (PREFILL * 1000) / p.prefillMs)
    for (const promptLen of [PROMPT, LONG_PROMPT])
      for (const B of [1, 8]) {
        const d = await gen(B, promptLen, STEPS)
        record(`decode_b${B}_p${promptLen}_tokens_per_s`, who, (B * STEPS * 1000) / d.decodeMs)
      }
  }
}
const summary = Object.fromEntries(
  Object.entries(results).map(([k, v]) => {
    const m = Object.fromEntries(order.map((who) => [who, Math.round(median(v[who]))])) as Record<Who, number>
    return [
      k,
      {
        ...m,
        tandem_over_concat: Number((m.tandem / m.tandem_concat).toFixed(3)),
        concat_runtime_over_bare: Number((m.tandem_concat / m.bare_concat).toFixed(3))
      }
    ]
  })
)
const b8 = (p: number, who: Who) => median(results[`decode_b8_p${p}_tokens_per_s`]![who])
const b1 = (p: number, who: Who) => median(results[`decode_b1_p${p}_tokens_per_s`]![who])
console.log(
  JSON.stringify(
    {
      size,
      threads,
      rounds,
      prompt: PROMPT,
      long_prompt: LONG_PROMPT,
      steps: STEPS,
      prefill_prompt: PREFILL,
      ...summary,
      b8_over_b1: Object.fromEntries(
        order.map((who) => [
          who,
          {
            [`p${PROMPT}`]: Number((b8(PROMPT, who) / b1(PROMPT, who)).toFixed(2)),
            [`p${LONG_PROMPT}`]: Number((b8(LONG_PROMPT, who) / b1(LONG_PROMPT, who)).toFixed(2))
          }
        ])
      )
    },
    null,
    1
  )
)
