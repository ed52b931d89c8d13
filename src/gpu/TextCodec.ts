/**
 * Tokenizing and chat templates for one model directory: `@huggingface/tokenizers` over tokenizer.json
 * and `@huggingface/jinja` over tokenizer_config.json's chat template, with its special tokens. The
 * router needs only this (no weights).
 */
import { Template } from "@huggingface/jinja"
import { Tokenizer } from "@huggingface/tokenizers"
import { join } from "node:path"
import type { ChatMessage } from "../domain/OpenAiRequest.js"
import {
  ModelLoadError,
  readModelConfig,
  readTokenizerFiles,
  tokenizerFingerprint,
  type ModelConfig
} from "./ModelDir.js"

const tokenText = (t: unknown): string | undefined =>
  typeof t === "string"
    ? t
    : typeof t === "object" && t !== null && "content" in t && typeof t.content === "string"
      ? t.content
      : undefined

export class TextCodec {
  private constructor(
    readonly dir: string,
    private readonly tokenizer: Tokenizer,
    private readonly template: Template | undefined,
    private readonly specialTokens: Record<string, string>,
    readonly config: ModelConfig,
    /** End-of-sequence ids: config.json's `eos_token_id` plus tokenizer_config's `eos_token`. */
    readonly eosTokenIds: ReadonlySet<number>,
    /** Ids below the model's vocab size that have no token (their logits are masked out). */
    readonly idsWithoutToken: Int32Array,
    readonly fingerprint: string
  ) {}

  static load(dir: string): TextCodec {
    const config = readModelConfig(dir)
    const { tokenizerJson, tokenizerConfig } = readTokenizerFiles(dir)
    let tokenizer: Tokenizer
    try {
      tokenizer = new Tokenizer(tokenizerJson, tokenizerConfig)
    } catch (e) {
      throw new ModelLoadError(join(dir, "tokenizer.json"), `cannot be loaded (${(e as Error).message})`)
    }
    const rawTemplate = tokenizerConfig["chat_template"]
    const templateText =
      typeof rawTemplate === "string"
        ? rawTemplate
        : Array.isArray(rawTemplate)
          ? tokenText(
              (rawTemplate as Array<{ name?: string; template?: string }>).find((t) => t.name === "default")
                ?.template
            )
          : undefined
    let template: Template | undefined
    if (templateText !== undefined) {
      try {
        template = new Template(templateText)
      } catch (e) {
        throw new ModelLoadError(
          join(dir, "tokenizer_config.json"),
          `chat_template does not parse (${(e as Error).message})`
        )
      }
    }
    const specialTokens: Record<string, string> = {}
    for (const key of ["bos_token", "eos_token", "unk_token", "pad_token"]) {
      const text = tokenText(tokenizerConfig[key])
      if (text !== undefined) specialTokens[key] = text
    }
    const eos = new Set(config.eosTokenIds)
    const eosText = specialTokens["eos_token"]
    const eosId = eosText === undefined ? undefined : tokenizer.token_to_id(eosText)
    if (eosId !== undefined) eos.add(eosId)
    const missing: Array<number> = []
    for (let id = 0; id < config.vocabSize; id++)
      if (tokenizer.id_to_token(id) === undefined) missing.push(id)
    return new TextCodec(
      dir,
      tokenizer,
      template,
      specialTokens,
      config,
      eos,
      Int32Array.from(missing),
      tokenizerFingerprint(dir)
    )
  }

  get hasChatTemplate(): boolean {
    return this.template !== undefined
  }

  /** Token ids of a raw prompt; special tokens (e.g. BOS) as the tokenizer's post-processor says. */
  encode(text: string, addSpecialTokens = true): Array<number> {
    return this.tokenizer.encode(text, { add_special_tokens: addSpecialTokens }).ids
  }

  /** The conversation rendered by the chat template, with `add_generation_prompt`. */
  renderChat(messages: ReadonlyArray<ChatMessage>): string {
    if (this.template === undefined) {
      throw new ModelLoadError(
        join(this.dir, "tokenizer_config.json"),
        "has no chat_template: use /v1/completions"
      )
    }
    return this.template.render({
      messages: messages.map((m) => ({
        role: m.role === "developer" ? "system" : m.role,
        content: m.content
      })),
      add_generation_prompt: true,
      ...this.specialTokens
    })
  }

  /** Prompt ids of a conversation (the rendered template already carries its special tokens). */
  encodeChat(messages: ReadonlyArray<ChatMessage>): Array<number> {
    return this.encode(this.renderChat(messages), false)
  }

  decode(ids: ReadonlyArray<number>, skipSpecialTokens = true): string {
    if (ids.length === 0) return ""
    // No clean-up of tokenization spaces (" ," -> ","): it is not prefix-stable, so streamed and
    // non-streamed text would differ.
    return this.tokenizer.decode([...ids], {
      skip_special_tokens: skipSpecialTokens,
      clean_up_tokenization_spaces: false
    })
  }
}

/**
 * Turns a stream of token ids into text that is only ever complete UTF-8: the bytes of a character split
 * across tokens are held (decoding yields U+FFFD at the end) until the character completes; an invalid
 * sequence is released as U+FFFD once text follows it, or at `flush`. Decodes a small window, not the
 * whole output, per token.
 */
export class IncrementalDetokenizer {
  private readonly ids: Array<number> = []
  private prefixOffset = 0
  private readOffset = 0

  constructor(private readonly decode: (ids: ReadonlyArray<number>) => string) {}

  push(id: number): string {
    this.ids.push(id)
    const prefix = this.decode(this.ids.slice(this.prefixOffset, this.readOffset))
    const full = this.decode(this.ids.slice(this.prefixOffset))
    if (full.length <= prefix.length || full.endsWith("\uFFFD")) return ""
    this.prefixOffset = this.readOffset
    this.readOffset = this.ids.length
    return full.slice(prefix.length)
  }

  /** Whatever is still held, at the end of generation. */
  flush(): string {
    const prefix = this.decode(this.ids.slice(this.prefixOffset, this.readOffset))
    const full = this.decode(this.ids.slice(this.prefixOffset))
    this.prefixOffset = this.readOffset = this.ids.length
    return full.length > prefix.length ? full.slice(prefix.length) : ""
  }
}
