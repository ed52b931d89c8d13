import fc from "fast-check"
import { cpSync, mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { describe, expect, it } from "vitest"
import { IncrementalDetokenizer, TextCodec } from "../../src/gpu/TextCodec.js"
import { builtinDir } from "./models.js"

const qwenDir = join(import.meta.dirname, "..", "fixtures", "qwen3")

/** TextCodec reads config.json for the vocabulary size; the fixture has none, so a copy gets Qwen3's. */
const qwenModelDir = (() => {
  const dir = mkdtempSync(join(tmpdir(), "tandem-qwen-"))
  cpSync(qwenDir, dir, { recursive: true })
  writeFileSync(
    join(dir, "config.json"),
    JSON.stringify({
      num_hidden_layers: 1,
      num_attention_heads: 1,
      hidden_size: 8,
      vocab_size: 151936,
      max_position_embeddings: 40960,
      eos_token_id: 151645
    })
  )
  return dir
})()
const qwen = () => TextCodec.load(qwenModelDir)

describe("real tokenizer: Qwen3", () => {
  it("renders the chat template and encodes it to the known token ids", () => {
    const codec = qwen()
    const text = codec.renderChat([{ role: "user", content: "Hello world" }])
    expect(text.startsWith("<|im_start|>user\nHello world<|im_end|>\n<|im_start|>assistant\n")).toBe(true)
    // <|im_start|>=151644 user=872 \n=198 Hello=9707 " world"=1879 <|im_end|>=151645
    expect(codec.encode("<|im_start|>user\nHello world<|im_end|>\n<|im_start|>assistant\n", false)).toEqual([
      151644, 872, 198, 9707, 1879, 151645, 198, 151644, 77091, 198
    ])
    expect(codec.encodeChat([{ role: "user", content: "Hello world" }]).slice(0, 10)).toEqual([
      151644, 872, 198, 9707, 1879, 151645, 198, 151644, 77091, 198
    ])
    expect(codec.eosTokenIds.has(151645)).toBe(true)
    expect(codec.decode([9707, 1879, 151645])).toBe("Hello world")
  })

  it("masks the ids past the tokenizer's vocabulary", () => {
    const codec = qwen()
    expect(codec.idsWithoutToken.length).toBe(151936 - 151669)
    expect(codec.idsWithoutToken[0]).toBe(151669)
  })
})

describe("IncrementalDetokenizer", () => {
  const codec = TextCodec.load(builtinDir("tiny"))
  const decode = (ids: ReadonlyArray<number>) => codec.decode(ids)

  it("property: never emits U+FFFD for valid UTF-8 split at any byte, and the pieces add up to the text", () => {
    fc.assert(
      fc.property(fc.string({ unit: "grapheme", maxLength: 40 }), (text) => {
        const ids = codec.encode(text)
        const d = new IncrementalDetokenizer(decode)
        let out = ""
        for (const id of ids) {
          const piece = d.push(id)
          // A literal U+FFFD in the text is real text; otherwise none may appear.
          if (!text.includes("\uFFFD")) expect(piece).not.toContain("\uFFFD")
          out += piece
        }
        out += d.flush()
        expect(out).toBe(text)
      }),
      { numRuns: Number(process.env["DETOK_RUNS"] ?? 300) }
    )
  })

  it("holds an incomplete character, and releases an invalid byte as U+FFFD once text follows", () => {
    const d = new IncrementalDetokenizer(decode)
    const euro = [...Buffer.from("€", "utf8")].map((b) => b + 3)
    expect(d.push(euro[0]!)).toBe("")
    expect(d.push(euro[1]!)).toBe("")
    expect(d.push(euro[2]!)).toBe("€")
    expect(d.push(0xff + 3)).toBe("")
    expect(d.push("a".charCodeAt(0) + 3)).toBe("\uFFFDa")
    expect(d.push(0xe2 + 3)).toBe("")
    expect(d.flush()).toBe("\uFFFD")
  })

  it("skips special tokens", () => {
    const d = new IncrementalDetokenizer(decode)
    expect(d.push(1) + d.push("x".charCodeAt(0) + 3) + d.push(2) + d.flush()).toBe("x")
  })
})
