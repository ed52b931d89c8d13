/**
 * Engine benchmark: Tandem's runtime beside a bare onnxruntime loop over the same model and thread count,
 * measured alternately in one run. Prefill tokens/s (one 128-token prompt), decode tokens/s at batch 1
 * and batch 8 (64 steps after a 64-token prompt). Prints JSON; medians over rounds.
 *
 *   npm run bench:engine -- [--model builtin:small] [--threads 1] [--rounds 5]
 */
import ort from "onnxruntime-node"
import { join } from "node:path"
import { parseArgs } from "node:util"
import { resolveModelDir } from "../src/gpu/ModelStore.js"
import { Runtime, type Sequence } from "../src/gpu/Runtime.js"

const { values } = parseArgs({
  options: {
    model: { type: "string", default: "builtin:small" },
    threads: { type: "string", default: "1" },
    rounds: { type: "string", default: "5" }
  }
})
const threads = Number(values.threads)
const rounds = Number(values.rounds)
const dir = resolveModelDir(values.model)
const PROMPT = 64
const STEPS = 64
const PREFILL = 128

const median = (xs: ReadonlyArray<number>) =>
  [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number
const argmax = (a: Float32Array, from = 0, to = a.length) => {
  let best = from
  for (let i = from; i < to; i++) if ((a[i] as number) > (a[best] as number)) best = i
  return best - from
}
const promptOf = (n: number, seed: number) =>
  Array.from({ length: n }, (_, i) => 3 + ((i * 31 + seed * 17) % 256))

const runtime = await Runtime.load(dir, { device: "cpu", threads })
const { layers: L, kvHeads: KV, headDim: Dh } = runtime.config
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

const tandemGenerate = async (B: number, promptLen: number, steps: number) => {
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

const results: Record<string, { tandem: Array<number>; bare: Array<number> }> = {
  prefill_tokens_per_s: { tandem: [], bare: [] },
  decode_b1_tokens_per_s: { tandem: [], bare: [] },
  decode_b8_tokens_per_s: { tandem: [], bare: [] }
}
const record = (key: string, who: "tandem" | "bare", v: number) => results[key]?.[who].push(v)

await tandemGenerate(1, 16, 4) // warm-up
await bareGenerate(1, 16, 4)
for (let r = 0; r < rounds; r++) {
  for (const who of r % 2 === 0 ? (["tandem", "bare"] as const) : (["bare", "tandem"] as const)) {
    const gen = who === "tandem" ? tandemGenerate : bareGenerate
    const p = await gen(1, PREFILL, 0)
    record("prefill_tokens_per_s", who, (PREFILL * 1000) / p.prefillMs)
    const d1 = await gen(1, PROMPT, STEPS)
    record("decode_b1_tokens_per_s", who, (STEPS * 1000) / d1.decodeMs)
    const d8 = await gen(8, PROMPT, STEPS)
    record("decode_b8_tokens_per_s", who, (8 * STEPS * 1000) / d8.decodeMs)
  }
}
const summary = Object.fromEntries(
  Object.entries(results).map(([k, v]) => {
    const t = median(v.tandem)
    const b = median(v.bare)
    return [k, { tandem: Math.round(t), bare: Math.round(b), ratio: Number((t / b).toFixed(3)) }]
  })
)
console.log(
  JSON.stringify(
    {
      model: values.model,
      threads,
      rounds,
      prompt: PROMPT,
      steps: STEPS,
      prefill_prompt: PREFILL,
      ...summary
    },
    null,
    1
  )
)
