/** Flags shared by several commands, with their defaults in the description (help does not print them). */
import { Flag } from "effect/cli"

export const modelFlag = Flag.String("model").pipe(
  Flag.withDescription(
    "Model directory (Optimum decoder export) or builtin:tiny / builtin:small (default builtin:tiny)"
  ),
  Flag.withDefault("builtin:tiny")
)

export const threadsFlag = Flag.Int("threads").pipe(
  Flag.withDescription("onnxruntime intra-op threads (default 1)"),
  Flag.withDefault(1)
)

export const deviceFlag = Flag.Literals("device", ["cpu", "cuda"]).pipe(
  Flag.withDescription(
    "cpu, or cuda when onnxruntime's CUDA libraries are installed; never a silent fallback (default cpu)"
  ),
  Flag.withDefault("cpu" as const)
)
