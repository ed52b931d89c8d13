import { mkdtempSync, readdirSync, readFileSync, writeFileSync, cpSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import onnxProto from "onnx-proto"
import { afterAll, describe, expect, it } from "vitest"
import { generateModel, builtinDims } from "../../src/gpu/ModelGenerator.js"
import { writeModelDir } from "../../src/gpu/ModelStore.js"
import { Runtime } from "../../src/gpu/Runtime.js"
import { TextCodec } from "../../src/gpu/TextCodec.js"
import { argmax, builtinDir, maxAbsDiff, modelDir, prompt } from "./models.js"

const { onnx } = onnxProto
const scratch = mkdtempSync(join(tmpdir(), "tandem-load-"))
afterAll(() => rmSync(scratch, { recursive: true, force: true }))
const copyOfTiny = (name: string) => {
  const dir = join(scratch, name)
  cpSync(builtinDir("tiny"), dir, { recursive: true })
  return dir
}
const load = (dir: string) => Runtime.load(dir, { device: "cpu", threads: 1 })

describe("built-in model generation", () => {
  it("gives the same bytes every time, with the documented sizes", () => {
    const a = generateModel(builtinDims("tiny"))
    const b = generateModel(builtinDims("tiny"))
    expect(Buffer.from(a.onnx).equals(Buffer.from(b.onnx))).toBe(true)
    expect(a.params).toBeGreaterThan(350_000)
    expect(a.params).toBeLessThan(500_000)
    expect(generateModel(builtinDims("small")).params).toBeGreaterThan(9_000_000)
    expect(a.config["vocab_size"]).toBe(259)
    expect(a.config["max_position_embeddings"]).toBe(4096)
  })

  it("a graph without a position_ids input (positions from the mask) gives the same logits, ragged batches included", async () => {
    const dir = join(scratch, "nopos")
    writeModelDir(dir, { size: "tiny", positionIdsInput: false, kvLayout: "concat" })
    const withPos = await load(modelDir("tiny", "concat"))
    const noPos = await load(dir)

    const prompts = [prompt(12, 1), prompt(5, 2)]
    const a = await withPos.prefill(prompts)
    const b = await noPos.prefill(prompts)
    expect(Math.max(...a.map((x, i) => maxAbsDiff(x.logits, b[i]!.logits)))).toBeLessThanOrEqual(1e-5)
    const da = await withPos.decode(a.map((x) => ({ seq: x.seq, token: argmax(x.logits) })))
    const db = await noPos.decode(b.map((x) => ({ seq: x.seq, token: argmax(x.logits) })))
    expect(Math.max(...da.map((x, i) => maxAbsDiff(x, db[i]!)))).toBeLessThanOrEqual(1e-5)
  })
})

describe("loading errors name the file and the problem", () => {
  it("missing file", async () => {
    const dir = copyOfTiny("missing")
    rmSync(join(dir, "model.onnx"))
    await expect(load(dir)).rejects.toThrow(`${join(dir, "model.onnx")}: missing file`)
    rmSync(join(dir, "config.json"))
    expect(() => TextCodec.load(dir)).toThrow(`${join(dir, "config.json")}: missing file`)
  })

  it("unreadable config", async () => {
    const dir = copyOfTiny("badconfig")
    writeFileSync(join(dir, "config.json"), "{ not json")
    await expect(load(dir)).rejects.toThrow(/config\.json: not valid JSON/)
    writeFileSync(join(dir, "config.json"), JSON.stringify({ num_hidden_layers: "two" }))
    await expect(load(dir)).rejects.toThrow(/config\.json: "num_hidden_layers" must be a positive integer/)
  })

  it("an I/O layout that does not match the config", async () => {
    const dir = copyOfTiny("layout")
    const config = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Record<string, unknown>
    writeFileSync(join(dir, "config.json"), JSON.stringify({ ...config, num_hidden_layers: 3 }))
    await expect(load(dir)).rejects.toThrow(
      /model\.onnx: I\/O layout does not match: no input "past_key_values\.2\.key"/
    )
    writeFileSync(join(dir, "config.json"), JSON.stringify({ ...config, num_hidden_layers: 1 }))
    await expect(load(dir)).rejects.toThrow(/more layers than config\.json/)
    writeFileSync(
      join(dir, "config.json"),
      JSON.stringify({ ...config, num_key_value_heads: 4, head_dim: 16 })
    )
    await expect(load(dir)).rejects.toThrow(/config\.json says 4 KV heads/)
  })

  it("float16 KV is reported as unsupported", async () => {
    const dir = copyOfTiny("fp16")
    const DT = onnx.TensorProto.DataType
    const vi = (name: string, t: number, dims: Array<number | string>) =>
      onnx.ValueInfoProto.create({
        name,
        type: {
          tensorType: {
            elemType: t,
            shape: { dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })) }
          }
        }
      })
    // A minimal graph with the Optimum names and float16 KV: Identity from each input to an output.
    const graph = onnx.GraphProto.create({
      name: "fp16",
      input: [
        vi("input_ids", DT.INT64, ["b", "s"]),
        vi("attention_mask", DT.INT64, ["b", "t"]),
        vi("past_key_values.0.key", DT.FLOAT16, ["b", 2, "p", 32]),
        vi("past_key_values.0.value", DT.FLOAT16, ["b", 2, "p", 32]),
        vi("past_key_values.1.key", DT.FLOAT16, ["b", 2, "p", 32]),
        vi("past_key_values.1.value", DT.FLOAT16, ["b", 2, "p", 32])
      ],
      output: [
        vi("logits", DT.INT64, ["b", "s"]),
        vi("present.0.key", DT.FLOAT16, ["b", 2, "p", 32]),
        vi("present.0.value", DT.FLOAT16, ["b", 2, "p", 32]),
        vi("present.1.key", DT.FLOAT16, ["b", 2, "p", 32]),
        vi("present.1.value", DT.FLOAT16, ["b", 2, "p", 32])
      ],
      node: [
        onnx.NodeProto.create({ opType: "Identity", input: ["input_ids"], output: ["logits"] }),
        ...[0, 1].flatMap((l) =>
          ["key", "value"].map((k) =>
            onnx.NodeProto.create({
              opType: "Identity",
              input: [`past_key_values.${l}.${k}`],
              output: [`present.${l}.${k}`]
            })
          )
        )
      ]
    })
    const model = onnx.ModelProto.create({ irVersion: 8, opsetImport: [{ domain: "", version: 18 }], graph })
    writeFileSync(join(dir, "model.onnx"), onnx.ModelProto.encode(model).finish())
    await expect(load(dir)).rejects.toThrow(/KV dtype float16 of "past_key_values\.0\.key" is not supported/)
  })

  it("cuda without its libraries fails at start and says what to install (never a silent fallback)", async () => {
    await expect(Runtime.load(builtinDir("tiny"), { device: "cuda", threads: 1 })).rejects.toThrow(
      /libonnxruntime_providers_cuda\.so[\s\S]*Microsoft\.ML\.OnnxRuntime\.Gpu\.Linux/
    )
  })

  it("does not leave temp directories in the cache", () => {
    builtinDir("tiny")
    expect(readdirSync(join(tmpdir(), "tandem-test-models")).filter((f) => f.startsWith(".tmp"))).toEqual([])
  })
})

describe("the two KV layouts", () => {
  it.each(["tiny", "small"] as const)(
    "inplace (new K/V only, past read in place) and concat (Optimum) give the same logits on %s, ragged and chunked",
    async (size) => {
      const inplace = await load(modelDir(size, "inplace"))
      const concat = await load(modelDir(size, "concat"))
      expect([inplace.layout, concat.layout]).toEqual(["rows", "concat"])
      const prompts = [prompt(17, 31), prompt(6, 32), prompt(1, 33)]
      const a = await inplace.prefill(prompts)
      const b = await concat.prefill(prompts)
      let worst = Math.max(...a.map((x, i) => maxAbsDiff(x.logits, b[i]!.logits)))
      let tokens = a.map((x) => argmax(x.logits))
      for (let step = 0; step < 6; step++) {
        const da = await inplace.decode(a.map((x, i) => ({ seq: x.seq, token: tokens[i]! })))
        const db = await concat.decode(b.map((x, i) => ({ seq: x.seq, token: tokens[i]! })))
        worst = Math.max(worst, ...da.map((x, i) => maxAbsDiff(x, db[i]!)))
        tokens = da.map(argmax)
      }
      const chunk = prompt(9, 34)
      worst = Math.max(
        worst,
        maxAbsDiff(await inplace.extend(a[0]!.seq, chunk), await concat.extend(b[0]!.seq, chunk))
      )
      expect(worst).toBeLessThanOrEqual(1e-4)
    }
  )
})
