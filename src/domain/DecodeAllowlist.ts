/**
 * The prefill node's decode-target allowlist (from the seed's PR #393): the router chooses a decode node
 * per request and the prefill node ships the prompt's KV there, so the prefill node checks the target
 * against `TANDEM_DECODE_ALLOWLIST` before it connects. `--decode-peers` is NOT the allowlist.
 */
import { formatSocketAddress, parseSocketAddress } from "./SocketAddress.js"

export interface DecodeAllowlist {
  /** Canonical `ip:port` spellings of the listed addresses, in list order, without duplicates. */
  readonly entries: ReadonlyArray<string>
}

export interface DecodeAllowlistParse {
  readonly allowlist: DecodeAllowlist
  /** One per skipped entry, each naming it; the shell logs them. */
  readonly warnings: ReadonlyArray<string>
}

export type DecodeTargetDecision =
  | { readonly _tag: "Allow"; readonly target: string }
  | { readonly _tag: "AllowUnchecked"; readonly target: string }
  | { readonly _tag: "Reject"; readonly target: string; readonly reason: string }

const fromEntries = (entries: ReadonlyArray<string>): DecodeAllowlist => ({ entries: [...new Set(entries)] })

export const DecodeAllowlist = {
  empty: fromEntries([]),

  /** Parses the env value (comma-separated numeric `IPv4:port` / `[IPv6]:port`). Never throws. */
  fromEnv(value: string | undefined): DecodeAllowlistParse {
    const warnings: Array<string> = []
    const entries: Array<string> = []
    for (const raw of (value ?? "").split(",")) {
      const entry = raw.trim()
      if (entry === "") continue
      const parsed = parseSocketAddress(entry)
      if (parsed.ok) entries.push(formatSocketAddress(parsed.address))
      else warnings.push(`TANDEM_DECODE_ALLOWLIST: skipping entry "${entry}": ${parsed.reason}`)
    }
    return { allowlist: fromEntries(entries), warnings }
  },

  /** True when at least one valid entry is listed (otherwise decisions are `AllowUnchecked`). */
  isConfigured: (allowlist: DecodeAllowlist): boolean => allowlist.entries.length > 0,

  /** The warning a permissive node logs once per process. */
  permissiveWarning:
    "TANDEM_DECODE_ALLOWLIST has no valid entry: this prefill node ships KV to any decode target the router names (set it to the decode pool, e.g. 10.0.0.5:7202,10.0.0.6:7202)"
}

/** Decides whether the prefill node may ship KV to `target` (the router-supplied decode address). */
export const decideDecodeTarget = (allowlist: DecodeAllowlist, target: string): DecodeTargetDecision => {
  if (!DecodeAllowlist.isConfigured(allowlist)) return { _tag: "AllowUnchecked", target }
  const parsed = parseSocketAddress(target)
  if (!parsed.ok) {
    return {
      _tag: "Reject",
      target,
      reason: `decode target "${target}" is not a numeric IP:port address; KV handoff rejected`
    }
  }
  const canonical = formatSocketAddress(parsed.address)
  if (allowlist.entries.includes(canonical)) return { _tag: "Allow", target: canonical }
  return {
    _tag: "Reject",
    target,
    reason: `decode target ${canonical} is not in TANDEM_DECODE_ALLOWLIST; KV handoff rejected`
  }
}
