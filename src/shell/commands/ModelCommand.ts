/** `tandem model gen`: writes a built-in model directory. */
import { Console, Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { resolve } from "node:path"
import { writeModelDir } from "../../gpu/ModelStore.js"

const gen = Command.make(
  "gen",
  {
    size: Flag.Literals("size", ["tiny", "small"]).pipe(
      Flag.withDescription("tiny (~0.4M parameters) or small (~10M) (default tiny)"),
      Flag.withDefault("tiny" as const)
    ),
    out: Flag.String("out").pipe(
      Flag.withDescription(
        "Directory to write model.onnx, config.json, tokenizer.json and tokenizer_config.json into"
      )
    ),
    tokenizer: Flag.String("tokenizer").pipe(
      Flag.withDescription(
        "Build the model over this directory's tokenizer.json vocabulary and copy its tokenizer files"
      ),
      Flag.optional
    )
  },
  ({ size, out, tokenizer }) =>
    Effect.gen(function* () {
      const dir = resolve(out)
      yield* Effect.try({
        try: () => writeModelDir(dir, { size, tokenizerDir: Option.getOrUndefined(tokenizer) }),
        catch: (e) => new Error(`model gen: ${(e as Error).message}`)
      })
      yield* Console.error(`wrote builtin ${size} model to ${dir}`)
    })
).pipe(Command.withDescription("Generate the built-in LLaMA-style model (seeded: same bytes every time)"))

export const modelCommand = Command.make("model").pipe(
  Command.withDescription("Built-in model tools"),
  Command.withSubcommands([gen])
)
