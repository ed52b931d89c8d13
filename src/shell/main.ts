/** Composition root of the `tandem` command. */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Console, Effect } from "effect"
import { CliError, Command } from "effect/cli"
import { generateCommand } from "./commands/GenerateCommand.js"
import { modelCommand } from "./commands/ModelCommand.js"
import { VERSION } from "./Version.js"

const tandem = Command.make("tandem").pipe(
  Command.withDescription(
    "Disaggregated prefill/decode LLM serving: an OpenAI-compatible router, prefill and decode nodes"
  )
)

tandem.pipe(
  Command.withSubcommands([generateCommand, modelCommand]),
  Command.run({ version: VERSION }),
  // One clean line per failure on stderr (no stack trace), and a non-zero exit.
  // CLI errors were already printed with the help text.
  Effect.tapError((e) =>
    CliError.isCliError(e)
      ? Effect.void
      : Console.error(`tandem: ${e instanceof Error ? e.message : String(e)}`)
  ),
  Effect.provide(NodeServices.layer),
  (program) => NodeRuntime.runMain(program, { disableErrorReporting: true })
)
