/**
 * OpenAI-shaped response bodies, SSE chunks, errors and usage accounting. The router owns usage: prompt
 * tokens are counted by itself; completion tokens are, when a stop string matched, the tokens up to and
 * including the one that completed it, otherwise the nodes' `Done` count, clamped to `max_tokens`.
 */

import type { FinishReason } from "./WireFrames.js"

export interface Usage {
  readonly prompt_tokens: number
  readonly completion_tokens: number
  readonly total_tokens: number
}

export const usageOf = (promptTokens: number, completionTokens: number): Usage => ({
  prompt_tokens: promptTokens,
  completion_tokens: completionTokens,
  total_tokens: promptTokens + completionTokens
})

export const completionTokensUsed = (facts: {
  readonly reportedByNodes: number
  readonly maxTokens: number
  /** 1-based count of tokens up to and including the one that completed a stop string. */
  readonly stopStringAtToken?: number | undefined
}): number => {
  const n = facts.stopStringAtToken ?? facts.reportedByNodes
  return Math.max(0, Math.min(n, facts.maxTokens))
}

export interface ResponseMeta {
  readonly id: string
  /** Unix seconds. */
  readonly created: number
  readonly model: string
}

export const chatCompletionBody = (
  meta: ResponseMeta,
  text: string,
  finishReason: FinishReason,
  usage: Usage
) => ({
  id: meta.id,
  object: "chat.completion" as const,
  created: meta.created,
  model: meta.model,
  choices: [
    {
      index: 0,
      message: { role: "assistant" as const, content: text },
      logprobs: null,
      finish_reason: finishReason
    }
  ],
  usage
})

export const completionBody = (
  meta: ResponseMeta,
  text: string,
  finishReason: FinishReason,
  usage: Usage
) => ({
  id: meta.id,
  object: "text_completion" as const,
  created: meta.created,
  model: meta.model,
  choices: [{ index: 0, text, logprobs: null, finish_reason: finishReason }],
  usage
})

/** One chat SSE chunk: the first carries the role, the last the finish reason. */
export const chatChunk = (
  meta: ResponseMeta,
  delta: { readonly role?: "assistant"; readonly content?: string },
  finishReason: FinishReason | null
) => ({
  id: meta.id,
  object: "chat.completion.chunk" as const,
  created: meta.created,
  model: meta.model,
  choices: [{ index: 0, delta, logprobs: null, finish_reason: finishReason }]
})

export const completionChunk = (meta: ResponseMeta, text: string, finishReason: FinishReason | null) => ({
  id: meta.id,
  object: "text_completion" as const,
  created: meta.created,
  model: meta.model,
  choices: [{ index: 0, text, logprobs: null, finish_reason: finishReason }]
})

/** The `stream_options.include_usage` chunk: empty choices, usage set. */
export const usageChunk = (meta: ResponseMeta, kind: "chat" | "completion", usage: Usage) => ({
  id: meta.id,
  object: kind === "chat" ? ("chat.completion.chunk" as const) : ("text_completion" as const),
  created: meta.created,
  model: meta.model,
  choices: [],
  usage
})

export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "not_found_error"
  | "rate_limit_error"
  | "server_error"
  | "service_unavailable"
  | "timeout"

export const errorBody = (
  message: string,
  type: ErrorType,
  code: string | null = null,
  param: string | null = null
) => ({
  error: { message, type, code, param }
})

export const modelsBody = (modelId: string, created: number) => ({
  object: "list" as const,
  data: [{ id: modelId, object: "model" as const, created, owned_by: "tandem" }]
})
