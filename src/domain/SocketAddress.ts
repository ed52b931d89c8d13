/**
 * Numeric socket addresses, parsed and compared the way Rust's `SocketAddr` does (the seed's semantics):
 * `a.b.c.d:port` or `[ipv6]:port`; no hostnames, no zone ids, no leading zeros in IPv4 octets.
 * An IPv4-mapped IPv6 address (`[::ffff:1.2.3.4]:p`) is a different address from `1.2.3.4:p`.
 */

export interface SocketAddress {
  readonly family: 4 | 6
  /** 4 bytes (IPv4) or 16 bytes (IPv6), network order. */
  readonly octets: ReadonlyArray<number>
  readonly port: number
}

export type SocketAddressParse =
  { readonly ok: true; readonly address: SocketAddress } | { readonly ok: false; readonly reason: string }

const fail = (reason: string): SocketAddressParse => ({ ok: false, reason })

const parseIpv4 = (text: string): ReadonlyArray<number> | undefined => {
  const parts = text.split(".")
  if (parts.length !== 4) return undefined
  const octets: Array<number> = []
  for (const part of parts) {
    if (!/^\d{1,3}$/.test(part)) return undefined
    if (part.length > 1 && part.startsWith("0")) return undefined
    const n = Number(part)
    if (n > 255) return undefined
    octets.push(n)
  }
  return octets
}

const parseHextets = (text: string): Array<number> | undefined => {
  if (text === "") return []
  const out: Array<number> = []
  for (const group of text.split(":")) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(group)) return undefined
    out.push(parseInt(group, 16))
  }
  return out
}

const parseIpv6 = (text: string): ReadonlyArray<number> | undefined => {
  if (text.includes("%")) return undefined
  let body = text
  let tail: ReadonlyArray<number> = []
  const lastColon = body.lastIndexOf(":")
  if (lastColon >= 0 && body.slice(lastColon + 1).includes(".")) {
    const v4 = parseIpv4(body.slice(lastColon + 1))
    if (v4 === undefined) return undefined
    tail = [((v4[0] ?? 0) << 8) | (v4[1] ?? 0), ((v4[2] ?? 0) << 8) | (v4[3] ?? 0)]
    body = body.slice(0, lastColon + 1)
    // "::1.2.3.4" keeps its "::"; "a:b:...:1.2.3.4" leaves a trailing ":" to drop.
    if (body.endsWith(":") && !body.endsWith("::")) body = body.slice(0, -1)
  }
  const halves = body.split("::")
  let hextets: Array<number>
  if (halves.length === 1) {
    const all = parseHextets(halves[0] ?? "")
    if (all === undefined) return undefined
    hextets = [...all, ...tail]
    if (hextets.length !== 8) return undefined
  } else if (halves.length === 2) {
    const head = parseHextets(halves[0] ?? "")
    const rest = parseHextets(halves[1] ?? "")
    if (head === undefined || rest === undefined) return undefined
    const known = head.length + rest.length + tail.length
    if (known > 7) return undefined
    hextets = [...head, ...new Array<number>(8 - known).fill(0), ...rest, ...tail]
  } else {
    return undefined
  }
  return hextets.flatMap((h) => [h >> 8, h & 0xff])
}

const parsePort = (text: string, allowZero: boolean): number | undefined => {
  if (!/^\d{1,5}$/.test(text)) return undefined
  const port = Number(text)
  if (port > 65535 || (port === 0 && !allowZero)) return undefined
  return port
}

/** Parses `ip:port` / `[ipv6]:port`. `allowPortZero` is for bind addresses ("any free port"). */
export const parseSocketAddress = (
  input: string,
  options: { readonly allowPortZero?: boolean } = {}
): SocketAddressParse => {
  const text = input.trim()
  const allowZero = options.allowPortZero === true
  if (text.startsWith("[")) {
    const close = text.indexOf("]")
    if (close < 0 || text[close + 1] !== ":") return fail(`"${input}" is not [IPv6]:port`)
    const octets = parseIpv6(text.slice(1, close))
    if (octets === undefined) return fail(`"${input}" has no valid IPv6 address (zone ids are not accepted)`)
    const port = parsePort(text.slice(close + 2), allowZero)
    if (port === undefined) return fail(`"${input}" has no valid port`)
    return { ok: true, address: { family: 6, octets, port } }
  }
  const colon = text.lastIndexOf(":")
  if (colon < 0) return fail(`"${input}" has no port`)
  const octets = parseIpv4(text.slice(0, colon))
  if (octets === undefined) return fail(`"${input}" is not a numeric IPv4:port or [IPv6]:port address`)
  const port = parsePort(text.slice(colon + 1), allowZero)
  if (port === undefined) return fail(`"${input}" has no valid port`)
  return { ok: true, address: { family: 4, octets, port } }
}

/** RFC 5952 text of an IPv6 address (IPv4-mapped shown as `::ffff:a.b.c.d`, as Rust prints it). */
const formatIpv6 = (octets: ReadonlyArray<number>): string => {
  const h = Array.from({ length: 8 }, (_, i) => ((octets[2 * i] ?? 0) << 8) | (octets[2 * i + 1] ?? 0))
  if (h.slice(0, 5).every((x) => x === 0) && h[5] === 0xffff) {
    return `::ffff:${octets.slice(12).join(".")}`
  }
  let bestStart = -1
  let bestLen = 0
  for (let i = 0; i < 8;) {
    if (h[i] !== 0) {
      i++
      continue
    }
    let j = i
    while (j < 8 && h[j] === 0) j++
    if (j - i > bestLen && j - i >= 2) {
      bestStart = i
      bestLen = j - i
    }
    i = j
  }
  const hex = (xs: ReadonlyArray<number>) => xs.map((x) => x.toString(16)).join(":")
  if (bestStart < 0) return hex(h)
  return `${hex(h.slice(0, bestStart))}::${hex(h.slice(bestStart + bestLen))}`
}

/** The host part alone: `1.2.3.4` or `::1` (no brackets). */
export const formatHost = (address: SocketAddress): string =>
  address.family === 4 ? address.octets.join(".") : formatIpv6(address.octets)

/** Canonical `ip:port` / `[ipv6]:port`; equal addresses, however spelled, give equal strings. */
export const formatSocketAddress = (address: SocketAddress): string =>
  address.family === 4 ? `${formatHost(address)}:${address.port}` : `[${formatHost(address)}]:${address.port}`

/** Canonical spelling of a parseable address, or undefined. */
export const canonicalSocketAddress = (input: string): string | undefined => {
  const parsed = parseSocketAddress(input)
  return parsed.ok ? formatSocketAddress(parsed.address) : undefined
}
