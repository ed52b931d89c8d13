/**
 * An independent float64 LLaMA forward pass in plain TypeScript that reads the weights back out of the
 * .onnx file: proof that the generated graph computes the intended math.
 */
import { readFileSync } from "node:fs"
import { join } from "node:path"
import onnxProto from "onnx-proto"

const { onnx } = onnxProto

export const referenceLogits = (dir: string, tokens: ReadonlyArray<number>): Float64Array => {
  const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Record<string, number>
  const D = cfg["hidden_size"]!,
    L = cfg["num_hidden_layers"]!,
    H = cfg["num_attention_heads"]!,
    KV = cfg["num_key_value_heads"]!
  const Dh = cfg["head_dim"]!,
    V = cfg["vocab_size"]!,
    FF = cfg["intermediate_size"]!,
    eps = cfg["rms_norm_eps"]!,
    theta = cfg["rope_theta"]!
  const model = onnx.ModelProto.decode(readFileSync(join(dir, "model.onnx")))
  const W = new Map<string, Float32Array>()
  for (const t of model.graph?.initializer ?? []) {
    if (
      t.dataType !== 1 ||
      t.rawData === null ||
      t.rawData === undefined ||
      t.name === null ||
      t.name === undefined
    )
      continue
    const b = t.rawData
    W.set(t.name, new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength)))
  }
  const w = (name: string) => {
    const v = W.get(name)
    if (v === undefined) throw new Error(`no weight ${name}`)
    return v
  }
  const N = tokens.length
  const matmul = (x: Float64Array, m: Float32Array, n: number, k: number, out: number) => {
    const y = new Float64Array(n * out)
    for (let i = 0; i < n; i++)
      for (let j = 0; j < k; j++) {
        const a = x[i * k + j]!
        if (a !== 0) for (let c = 0; c < out; c++) y[i * out + c]! += a * m[j * out + c]!
      }
    return y
  }
  const rms = (x: Float64Array, g: Float32Array) => {
    const y = new Float64Array(N * D)
    for (let i = 0; i < N; i++) {
      let s = 0
      for (let j = 0; j < D; j++) s += x[i * D + j]! ** 2
      const r = 1 / Math.sqrt(s / D + eps)
      for (let j = 0; j < D; j++) y[i * D + j] = x[i * D + j]! * r * g[j]!
    }
    return y
  }
  const rope = (x: Float64Array, heads: number) => {
    for (let p = 0; p < N; p++)
      for (let h = 0; h < heads; h++)
        for (let i = 0; i < Dh / 2; i++) {
          const a = p / Math.pow(theta, (2 * i) / Dh)
          const c = Math.cos(a),
            s = Math.sin(a),
            o = p * heads * Dh + h * Dh
          const x1 = x[o + i]!,
            x2 = x[o + i + Dh / 2]!
          x[o + i] = x1 * c - x2 * s
          x[o + i + Dh / 2] = x2 * c + x1 * s
        }
  }
  let x = new Float64Array(N * D)
  tokens.forEach((t, i) => {
    for (let j = 0; j < D; j++) x[i * D + j] = w("model.embed_tokens.weight")[t * D + j]!
  })
  for (let l = 0; l < L; l++) {
    const p = `model.layers.${l}`
    const h = rms(x, w(`${p}.input_layernorm.weight`))
    const q = matmul(h, w(`${p}.self_attn.q_proj.weight`), N, D, D)
    const k = matmul(h, w(`${p}.self_attn.k_proj.weight`), N, D, KV * Dh)
    const v = matmul(h, w(`${p}.self_attn.v_proj.weight`), N, D, KV * Dh)
    rope(q, H)
    rope(k, KV)
    const ctx = new Float64Array(N * D)
    for (let hh = 0; hh < H; hh++) {
      const kh = Math.floor(hh / (H / KV))
      for (let i = 0; i < N; i++) {
        const sc: Array<number> = []
        for (let j = 0; j <= i; j++) {
          let s = 0
          for (let d = 0; d < Dh; d++) s += q[i * D + hh * Dh + d]! * k[j * KV * Dh + kh * Dh + d]!
          sc.push(s / Math.sqrt(Dh))
        }
        const m = Math.max(...sc)
        const e = sc.map((s) => Math.exp(s - m))
        const z = e.reduce((a, b) => a + b)
        for (let j = 0; j <= i; j++)
          for (let d = 0; d < Dh; d++)
            ctx[i * D + hh * Dh + d]! += (e[j]! / z) * v[j * KV * Dh + kh * Dh + d]!
      }
    }
    const o = matmul(ctx, w(`${p}.self_attn.o_proj.weight`), N, D, D)
    x = x.map((val, i) => val + o[i]!)
    const h2 = rms(x, w(`${p}.post_attention_layernorm.weight`))
    const g = matmul(h2, w(`${p}.mlp.gate_proj.weight`), N, D, FF)
    const u = matmul(h2, w(`${p}.mlp.up_proj.weight`), N, D, FF)
    for (let i = 0; i < g.length; i++) g[i] = (g[i]! / (1 + Math.exp(-g[i]!))) * u[i]!
    const dn = matmul(g, w(`${p}.mlp.down_proj.weight`), N, FF, D)
    x = x.map((val, i) => val + dn[i]!)
  }
  return matmul(rms(x, w("model.norm.weight")), w("lm_head.weight"), N, D, V)
}
