/** `tandem generate`: offline completion of a raw prompt (no chat template). */
import { Console, Effect } from "effect"
import { Command, Flag } from "effect/cli"
import { greedySampling } from "../../domain/Sampling.js"
import { defaultSchedulerLimits } from "../../domain/Scheduler.js"
import type { FinishReason } from "../../domain/WireFrames.js"
import { Engine } from "../../gpu/Engine.js"
import { resolveModelDir } from "../../gpu/ModelStore.js"
import { Flags } from "../Flags.js"
import { LocalBackend } from "../LocalBackend.js"
import { makeLogger } from "../Log.js"
import { Runtime } from "../../gpu/Runtime.js"
import { TextCodec } from "../../gpu/TextCodec.js"

export const generateCommand = Command.make(
  "generate",
  {
    model: Flags.model,
    prompt: Flag.String("prompt").pipe(
      Flag.withDescription("The raw prompt (special tokens as the tokenizer config says)")
    ),
    maxTokens: Flag.Int("max-tokens").pipe(
      Flag.withDescription("Tokens to generate at most (default 16)"),
      Flag.withDefault(16)
    ),
    temperature: Flag.Finite("temperature").pipe(
      Flag.withDescription("0 = greedy (default 1)"),
      Flag.withDefault(1)
    ),
    seed: Flag.Int("seed").pipe(Flag.withDescription("PRNG seed (default 0)"), Flag.withDefault(0)),
    ignoreEos: Flag.Boolean("ignore-eos").pipe(
      Flag.withDescription("Keep generating past EOS (default false)"),
      Flag.withDefault(false)
    ),
    json: Flag.Boolean("json").pipe(
      Flag.withDescription("Print {prompt_token_ids, token_ids, text, finish_reason} as JSON"),
      Flag.withDefault(false)
    ),
    threads: Flags.threads,
    device: Flags.device
  },
  (flags) =>
    Effect.gen(function* () {
      if (flags.maxTokens < 1) return yield* Effect.fail(new Error("--max-tokens must be at least 1"))
      if (flags.temperature < 0) return yield* Effect.fail(new Error("--temperature must not be negative"))
      const result = yield* Effect.tryPromise({
        try: async () => {
          const dir = resolveModelDir(flags.model)
          const codec = TextCodec.load(dir)
          const runtime = await Runtime.load(dir, {
            device: flags.device,
            threads: flags.threads,
            maskedIds: codec.idsWithoutToken
          })
          const promptIds = codec.encode(flags.prompt)
          if (promptIds.length === 0) throw new Error("--prompt encodes to no tokens")
          if (promptIds.length + flags.maxTokens > codec.config.maxPositions) {
            throw new Error(
              `--max-tokens ${flags.maxTokens} + prompt ${promptIds.length} tokens exceeds the context ${codec.config.maxPositions}`
            )
          }
          // The same engine and backend as `tandem serve`, so `generate` gives what a server would.
          const backend = new LocalBackend(new Engine(runtime, defaultSchedulerLimits), codec.eosTokenIds)
          const out = await new Promise<{ tokenIds: Array<number>; finishReason: FinishReason }>(
            (resolve, reject) => {
              const tokenIds: Array<number> = []
              backend.start(
                {
                  id: "generate",
                  promptTokens: promptIds,
                  generation: {
                    sampling: { ...greedySampling, temperature: flags.temperature },
                    maxTokens: flags.maxTokens,
                    minTokens: 0,
                    ignoreEos: flags.ignoreEos,
                    seed: flags.seed >>> 0
                  },
                  log: makeLogger({ role: "generate" }, "warn")
                },
                {
                  token: (_index, token) => void tokenIds.push(token),
                  done: (finishReason) => resolve({ tokenIds, finishReason }),
                  fail: (f) => reject(new Error(f.message))
                }
              )
            }
          )
          return { promptIds, ...out, text: codec.decode(out.tokenIds) }
        },
        catch: (e) => new Error(`generate: ${(e as Error).message}`)
      })
      if (flags.json) {
        yield* Console.log(
          JSON.stringify({
            prompt_token_ids: result.promptIds,
            token_ids: result.tokenIds,
            text: result.text,
            finish_reason: result.finishReason
          })
        )
      } else {
        yield* Console.log(result.text)
      }
    })
).pipe(Command.withDescription("Complete a raw prompt offline on a local runtime"))
