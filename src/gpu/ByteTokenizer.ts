/**
 * The built-in byte-level tokenizer, in Hugging Face tokenizer.json form: 259 ids (`<unk>` 0, `<s>` 1,
 * `</s>` 2, then byte b = id 3 + b as GPT-2 byte-to-unicode characters), a ByteLevel pre-tokenizer and
 * decoder, BPE without merges. Any UTF-8 text round-trips; `</s>` is the end-of-sequence token.
 */

const byteToChar = (): ReadonlyArray<string> => {
  const printable = (b: number) => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255)
  const chars = new Array<string>(256)
  let extra = 0
  for (let b = 0; b < 256; b++) chars[b] = String.fromCodePoint(printable(b) ? b : 256 + extra++)
  return chars
}

const special = (id: number, content: string) => ({
  id,
  content,
  single_word: false,
  lstrip: false,
  rstrip: false,
  normalized: false,
  special: true
})

export const BYTE_TOKENIZER_VOCAB = 259
export const BYTE_EOS_ID = 2
export const BYTE_BOS_ID = 1

export const byteTokenizerJson = (): Record<string, unknown> => {
  const vocab: Record<string, number> = { "<unk>": 0, "<s>": 1, "</s>": 2 }
  byteToChar().forEach((c, b) => (vocab[c] = 3 + b))
  const byteLevel = { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false }
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: null,
    decoder: byteLevel,
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges: []
    }
  }
}

export const byteTokenizerConfig = (): Record<string, unknown> => ({
  tokenizer_class: "PreTrainedTokenizerFast",
  bos_token: "<s>",
  eos_token: "</s>",
  unk_token: "<unk>",
  add_bos_token: false,
  clean_up_tokenization_spaces: false,
  model_max_length: 4096,
  chat_template:
    "{% for m in messages %}<s>{{ m.role }}\n{{ m.content }}</s>\n{% endfor %}{% if add_generation_prompt %}<s>assistant\n{% endif %}"
})
