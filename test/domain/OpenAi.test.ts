import { Result } from "effect"
import fc from "fast-check"
import { describe, expect, it } from "vitest"
import {
  decodeChatRequest,
  decodeCompletionRequest,
  resolveMaxTokens
} from "../../src/domain/OpenAiRequest.js"
import { chatChunk, completionTokensUsed, usageChunk, usageOf } from "../../src/domain/OpenAiResponse.js"

const errorOf = <A, E extends { message: string }>(r: Result.Result<A, E>): string =>
  Result.isFailure(r) ? r.failure.message : ""

describe("OpenAI requests", () => {
  it("decodes a chat request with defaults and vLLM extensions, ignoring unknown fields", () => {
    const r = decodeChatRequest({
      messages: [
        { role: "user", content: "hi" },
        {
          role: "assistant",
          content: [
            { type: "text", text: "a" },
            { type: "text", text: "b" }
          ]
        }
      ],
      max_completion_tokens: 5,
      top_k: 3,
      ignore_eos: true,
      stop: "x",
      stream: true,
      stream_options: { include_usage: true },
      something_new: { nested: 1 }
    })
    expect(Result.isSuccess(r)).toBe(true)
    if (Result.isSuccess(r)) {
      expect(r.success.messages[1]?.content).toBe("ab")
      expect(r.success.maxTokens).toBe(5)
      expect(r.success.sampling.topK).toBe(3)
      expect(r.success.sampling.temperature).toBe(1)
      expect(r.success.stop).toEqual(["x"])
      expect(r.success.includeUsage).toBe(true)
      expect(r.success.ignoreEos).toBe(true)
    }
  })

  it("names the field in every error", () => {
    expect(errorOf(decodeChatRequest({ messages: [] }))).toContain("messages")
    expect(errorOf(decodeChatRequest({}))).toContain("messages")
    expect(errorOf(decodeChatRequest({ messages: [{ role: "wizard", content: "x" }] }))).toContain("role")
    expect(
      errorOf(decodeChatRequest({ messages: [{ role: "user", content: "x" }], max_tokens: "ten" }))
    ).toContain("max_tokens")
    expect(
      errorOf(decodeChatRequest({ messages: [{ role: "user", content: "x" }], temperature: -1 }))
    ).toContain("temperature")
    expect(errorOf(decodeCompletionRequest({ prompt: 5 }))).toContain("prompt")
    expect(errorOf(decodeCompletionRequest(["not", "an object"]))).toContain("JSON object")
  })

  it("refuses n > 1, logprobs, tools and non-text response_format by name", () => {
    const base = { messages: [{ role: "user", content: "x" }] }
    expect(errorOf(decodeChatRequest({ ...base, n: 2 }))).toContain("n")
    expect(errorOf(decodeChatRequest({ ...base, logprobs: true }))).toContain("logprobs")
    expect(errorOf(decodeChatRequest({ ...base, tools: [{ type: "function" }] }))).toContain("tools")
    expect(errorOf(decodeChatRequest({ ...base, response_format: { type: "json_object" } }))).toContain(
      "response_format"
    )
    expect(
      Result.isSuccess(
        decodeChatRequest({ ...base, n: 1, logprobs: false, tools: [], response_format: { type: "text" } })
      )
    ).toBe(true)
  })

  it("takes prompt as a string, a list of one string, or token ids", () => {
    for (const prompt of ["hi", ["hi"], [1, 2, 3], [[1, 2, 3]]])
      expect(Result.isSuccess(decodeCompletionRequest({ prompt }))).toBe(true)
    expect(errorOf(decodeCompletionRequest({ prompt: ["a", "b"] }))).toContain("prompt")
  })

  it("resolves max_tokens against the context", () => {
    expect(resolveMaxTokens(undefined, 10, 100)).toEqual(Result.succeed(90))
    expect(resolveMaxTokens(20, 10, 100)).toEqual(Result.succeed(20))
    expect(errorOf(resolveMaxTokens(91, 10, 100))).toContain("max_tokens")
    expect(errorOf(resolveMaxTokens(undefined, 100, 100))).toContain("context")
  })

  it("property: decoding never throws and every failure carries a message", () => {
    fc.assert(
      fc.property(fc.anything(), (body) => {
        for (const r of [decodeChatRequest(body), decodeCompletionRequest(body)]) {
          if (Result.isFailure(r)) expect(r.failure.message.length).toBeGreaterThan(0)
        }
      }),
      { numRuns: 500 }
    )
  })
})

describe("OpenAI responses and usage", () => {
  it("clamps completion tokens to max_tokens and counts up to the stop string", () => {
    expect(completionTokensUsed({ reportedByNodes: 12, maxTokens: 10 })).toBe(10)
    expect(completionTokensUsed({ reportedByNodes: 12, maxTokens: 20, stopStringAtToken: 4 })).toBe(4)
    expect(usageOf(3, 4)).toEqual({ prompt_tokens: 3, completion_tokens: 4, total_tokens: 7 })
  })

  it("property: completion tokens never exceed max_tokens", () => {
    fc.assert(
      fc.property(
        fc.nat(10000),
        fc.integer({ min: 1, max: 5000 }),
        fc.option(fc.nat(10000), { nil: undefined }),
        (n, max, stopAt) => {
          expect(
            completionTokensUsed({ reportedByNodes: n, maxTokens: max, stopStringAtToken: stopAt })
          ).toBeLessThanOrEqual(max)
        }
      )
    )
  })

  it("builds chunks in the OpenAI shape", () => {
    const meta = { id: "chatcmpl-1", created: 1, model: "m" }
    expect(chatChunk(meta, { role: "assistant", content: "" }, null).choices[0]).toEqual({
      index: 0,
      delta: { role: "assistant", content: "" },
      logprobs: null,
      finish_reason: null
    })
    expect(usageChunk(meta, "chat", usageOf(1, 2)).choices).toEqual([])
  })
})
