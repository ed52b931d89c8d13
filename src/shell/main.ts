/** Composition root of the `tandem` command. */
import { NodeRuntime, NodeServices } from "@effect/platform-node"
import { Effect } from "effect"
import { Command } from "effect/cli"
import { VERSION } from "./Version.js"

const tandem = Command.make("tandem").pipe(
  Command.withDescription(
    "Disaggregated prefill/decode LLM serving: an OpenAI-compatible router, prefill and decode nodes"
  )
)

tandem.pipe(
  Command.withSubcommands([]),
  Command.run({ version: VERSION }),
  Effect.provide(NodeServices.layer),
  NodeRuntime.runMain
)
