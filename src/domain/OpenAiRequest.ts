/**
 * OpenAI-compatible request bodies (`/v1/chat/completions`, `/v1/completions`) with the vLLM extensions
 * users rely on (`top_k`, `min_p`, `repetition_penalty`, `ignore_eos`, `min_tokens`). Unknown fields are
 * ignored; known but unsupported ones (`n` > 1, `logprobs`, `tools`, `response_format` other than text)
 * are refused with a message that names them. Every error message names the field.
 */
import { Result, Schema } from "effect"
import type { SamplingParams } from "./Sampling.js"

const opt = <S extends Schema.Top>(s: S) => Schema.optionalKey(Schema.NullOr(s))
const NonNegInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))
const PositiveInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(1))
const TokenId = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 0x7fffffff }))

const TextPart = Schema.Struct({ type: Schema.Literal("text"), text: Schema.String })
const MessageContent = Schema.Union([Schema.String, Schema.Array(TextPart)])
export const ChatMessageSchema = Schema.Struct({
  role: Schema.Literals(["system", "developer", "user", "assistant"]),
  content: Schema.NullOr(MessageContent)
})

const StopSchema = Schema.Union([
  Schema.String.check(Schema.isMaxLength(1024)),
  Schema.Array(Schema.String.check(Schema.isMaxLength(1024))).check(Schema.isMaxLength(16))
])

const commonFields = {
  model: opt(Schema.String),
  max_tokens: opt(PositiveInt),
  temperature: opt(Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 100 }))),
  top_p: opt(Schema.Finite.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(1))),
  top_k: opt(Schema.Int.check(Schema.isGreaterThanOrEqualTo(-1))),
  min_p: opt(Schema.Finite.check(Schema.isBetween({ minimum: 0, maximum: 1 }))),
  repetition_penalty: opt(Schema.Finite.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(100))),
  frequency_penalty: opt(Schema.Finite.check(Schema.isBetween({ minimum: -2, maximum: 2 }))),
  presence_penalty: opt(Schema.Finite.check(Schema.isBetween({ minimum: -2, maximum: 2 }))),
  seed: opt(Schema.Int),
  stop: opt(StopSchema),
  stream: opt(Schema.Boolean),
  stream_options: opt(Schema.Struct({ include_usage: opt(Schema.Boolean) })),
  ignore_eos: opt(Schema.Boolean),
  min_tokens: opt(NonNegInt),
  n: opt(Schema.Int),
  logprobs: opt(Schema.Union([Schema.Boolean, Schema.Int])),
  top_logprobs: opt(Schema.Int),
  tools: opt(Schema.Array(Schema.Unknown)),
  response_format: opt(Schema.Struct({ type: Schema.String }))
}

export const ChatCompletionRequestSchema = Schema.Struct({
  ...commonFields,
  messages: Schema.Array(ChatMessageSchema).check(Schema.isMinLength(1), Schema.isMaxLength(4096)),
  max_completion_tokens: opt(PositiveInt)
})

export const CompletionRequestSchema = Schema.Struct({
  ...commonFields,
  prompt: Schema.Union([
    Schema.String,
    Schema.Array(Schema.String),
    Schema.Array(TokenId),
    Schema.Array(Schema.Array(TokenId))
  ]),
  echo: opt(Schema.Boolean)
})

export interface ChatMessage {
  readonly role: "system" | "developer" | "user" | "assistant"
  readonly content: string
}

export type PromptInput =
  | { readonly _tag: "Text"; readonly text: string }
  | { readonly _tag: "Tokens"; readonly tokens: ReadonlyArray<number> }

/** A validated request, in the terms the router works in. */
export interface GenerationRequest {
  readonly kind: "chat" | "completion"
  readonly model: string | undefined
  readonly messages: ReadonlyArray<ChatMessage>
  readonly prompt: PromptInput | undefined
  /** Requested completion budget; undefined means "what fits in the context". */
  readonly maxTokens: number | undefined
  readonly sampling: SamplingParams
  readonly seed: number | undefined
  readonly stop: ReadonlyArray<string>
  readonly stream: boolean
  readonly includeUsage: boolean
  readonly ignoreEos: boolean
  readonly minTokens: number
}

export interface RequestError {
  readonly _tag: "InvalidRequest"
  /** Names the field or limit. */
  readonly message: string
  readonly param: string | undefined
}

const invalid = (message: string, param?: string): RequestError => ({
  _tag: "InvalidRequest",
  message,
  param
})

/** Schema's multi-line message made into one line: `Expected number at ["max_tokens"]; ...`. */
const schemaMessage = (message: string): string =>
  message
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l.length > 0)
    .join(" ")

type Common = {
  readonly [K in keyof typeof commonFields]?: (typeof commonFields)[K]["Type"]
}

const unsupported = (body: Common): RequestError | undefined => {
  if (body.n !== undefined && body.n !== null && body.n !== 1) {
    return invalid("n: only n = 1 is supported", "n")
  }
  if (body.logprobs !== undefined && body.logprobs !== null && body.logprobs !== false) {
    return invalid("logprobs is not supported", "logprobs")
  }
  if (body.top_logprobs !== undefined && body.top_logprobs !== null) {
    return invalid("top_logprobs is not supported", "top_logprobs")
  }
  if (body.tools !== undefined && body.tools !== null && body.tools.length > 0) {
    return invalid("tools are not supported", "tools")
  }
  if (
    body.response_format !== undefined &&
    body.response_format !== null &&
    body.response_format.type !== "text"
  ) {
    return invalid(
      `response_format ${body.response_format.type} is not supported (only text)`,
      "response_format"
    )
  }
  if (
    body.min_tokens !== undefined &&
    body.min_tokens !== null &&
    body.max_tokens !== undefined &&
    body.max_tokens !== null &&
    body.min_tokens > body.max_tokens
  ) {
    return invalid("min_tokens must not exceed max_tokens", "min_tokens")
  }
  return undefined
}

const samplingFrom = (body: Common): SamplingParams => ({
  temperature: body.temperature ?? 1,
  topP: body.top_p ?? 1,
  topK: body.top_k !== undefined && body.top_k !== null && body.top_k > 0 ? body.top_k : 0,
  minP: body.min_p ?? 0,
  repetitionPenalty: body.repetition_penalty ?? 1,
  frequencyPenalty: body.frequency_penalty ?? 0,
  presencePenalty: body.presence_penalty ?? 0
})

const commonFrom = (body: Common) => ({
  model: body.model ?? undefined,
  sampling: samplingFrom(body),
  seed: body.seed ?? undefined,
  stop: typeof body.stop === "string" ? [body.stop] : [...(body.stop ?? [])],
  stream: body.stream ?? false,
  includeUsage: body.stream_options?.include_usage ?? false,
  ignoreEos: body.ignore_eos ?? false,
  minTokens: body.min_tokens ?? 0
})

const isObject = (u: unknown): u is object => typeof u === "object" && u !== null && !Array.isArray(u)

export const decodeChatRequest = (input: unknown): Result.Result<GenerationRequest, RequestError> => {
  if (!isObject(input)) return Result.fail(invalid("the request body must be a JSON object"))
  const decoded = Schema.decodeUnknownResult(ChatCompletionRequestSchema)(input, { errors: "all" })
  if (Result.isFailure(decoded)) return Result.fail(invalid(schemaMessage(decoded.failure.message)))
  const body = decoded.success
  const refused = unsupported(body)
  if (refused !== undefined) return Result.fail(refused)
  const messages = body.messages.map((m) => ({
    role: m.role,
    content: typeof m.content === "string" ? m.content : (m.content ?? []).map((p) => p.text).join("")
  }))
  return Result.succeed({
    kind: "chat",
    messages,
    prompt: undefined,
    maxTokens: body.max_completion_tokens ?? body.max_tokens ?? undefined,
    ...commonFrom(body)
  })
}

export const decodeCompletionRequest = (input: unknown): Result.Result<GenerationRequest, RequestError> => {
  if (!isObject(input)) return Result.fail(invalid("the request body must be a JSON object"))
  const decoded = Schema.decodeUnknownResult(CompletionRequestSchema)(input, { errors: "all" })
  if (Result.isFailure(decoded)) return Result.fail(invalid(schemaMessage(decoded.failure.message)))
  const body = decoded.success
  const refused = unsupported(body)
  if (refused !== undefined) return Result.fail(refused)
  if (body.echo === true) return Result.fail(invalid("echo is not supported", "echo"))
  const p = body.prompt
  let prompt: PromptInput
  if (typeof p === "string") prompt = { _tag: "Text", text: p }
  else if (p.length === 0) return Result.fail(invalid("prompt must not be empty", "prompt"))
  else if (p.every((x): x is number => typeof x === "number")) prompt = { _tag: "Tokens", tokens: p }
  else if (p.length > 1)
    return Result.fail(
      invalid(
        "prompt: a list of more than one prompt is not supported (send one request per prompt)",
        "prompt"
      )
    )
  else {
    const only = p[0]
    prompt = typeof only === "string" ? { _tag: "Text", text: only } : { _tag: "Tokens", tokens: only ?? [] }
  }
  if (prompt._tag === "Tokens" && prompt.tokens.length === 0)
    return Result.fail(invalid("prompt must not be empty", "prompt"))
  return Result.succeed({
    kind: "completion",
    messages: [],
    prompt,
    maxTokens: body.max_tokens ?? undefined,
    ...commonFrom(body)
  })
}

/**
 * The completion budget: the requested `max_tokens`, or what fits in the context when none was asked.
 * Prompt + budget over the context is a 400 naming the limit.
 */
export const resolveMaxTokens = (
  requested: number | undefined,
  promptTokens: number,
  contextLength: number
): Result.Result<number, RequestError> => {
  const room = contextLength - promptTokens
  if (room < 1) {
    return Result.fail(
      invalid(`the prompt has ${promptTokens} tokens; the model's context is ${contextLength}`, "messages")
    )
  }
  if (requested === undefined) return Result.succeed(room)
  if (requested > room) {
    return Result.fail(
      invalid(
        `max_tokens ${requested} + prompt ${promptTokens} tokens exceeds the context length ${contextLength}`,
        "max_tokens"
      )
    )
  }
  return Result.succeed(requested)
}
