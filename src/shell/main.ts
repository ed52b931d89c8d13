/** Composition root of the `tandem` command. */
import { NodeServices } from "@effect/platform-node"
import { Cause, Effect, Exit } from "effect"
import { CliError, Command } from "effect/cli"
import { benchCommand } from "./commands/BenchCommand.js"
import { generateCommand } from "./commands/GenerateCommand.js"
import { modelCommand } from "./commands/ModelCommand.js"
import { decodeCommand, prefillCommand, routerCommand, serveCommand } from "./commands/RoleCommands.js"
import { upCommand } from "./commands/UpCommand.js"
import { VERSION } from "./Version.js"

const tandem = Command.make("tandem").pipe(
  Command.withDescription(
    "Disaggregated prefill/decode LLM serving: an OpenAI-compatible router, prefill and decode nodes"
  )
)

const program = tandem.pipe(
  Command.withSubcommands([
    serveCommand,
    upCommand,
    routerCommand,
    prefillCommand,
    decodeCommand,
    generateCommand,
    benchCommand,
    modelCommand
  ]),
  Command.run({ version: VERSION }),
  Effect.provide(NodeServices.layer)
)

// Long-running roles handle SIGINT/SIGTERM themselves (drain, then exit 0), so no runtime-level handler.
void Effect.runPromiseExit(program).then((exit) => {
  if (Exit.isSuccess(exit)) return
  const error = Cause.squash(exit.cause)
  if (CliError.isCliError(error)) {
    // Already printed with the help text.
    process.exitCode = error._tag === "ShowHelp" && error.errors.length === 0 ? 0 : 1
    return
  }
  process.stderr.write(`tandem: ${error instanceof Error ? error.message : String(error)}\n`)
  process.exitCode = 1
})
