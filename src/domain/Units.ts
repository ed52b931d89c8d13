/** Durations and sizes as the CLI takes them. */

export type UnitParse =
  { readonly ok: true; readonly value: number } | { readonly ok: false; readonly reason: string }

const DURATION_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }

/** `500ms`, `2s`, `1m`, `1h`; a bare number means seconds. Returns milliseconds. */
export const parseDuration = (text: string): UnitParse => {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(text)
  if (m === null) return { ok: false, reason: `"${text}" is not a duration like 500ms, 2s, 1m or 30` }
  return { ok: true, value: Number(m[1]) * (DURATION_MS[m[2] ?? "s"] ?? 1000) }
}

const SIZE_BYTES: Record<string, number> = { "": 1, b: 1, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3 }

/** Bytes, or a number with `KiB` / `MiB` / `GiB`. Returns bytes. */
export const parseSize = (text: string): UnitParse => {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|kib|mib|gib)?\s*$/i.exec(text)
  if (m === null) return { ok: false, reason: `"${text}" is not a size like 4194304, 64KiB or 4MiB` }
  return { ok: true, value: Math.floor(Number(m[1]) * (SIZE_BYTES[(m[2] ?? "").toLowerCase()] ?? 1)) }
}
