/** fast-check arbitraries shared by the domain property tests. */
import fc from "fast-check"
import type { SocketAddress } from "../../src/domain/SocketAddress.js"

export const ipv4Address: fc.Arbitrary<SocketAddress> = fc
  .record({
    octets: fc.array(fc.integer({ min: 0, max: 255 }), { minLength: 4, maxLength: 4 }),
    port: fc.integer({ min: 1, max: 65535 })
  })
  .map(({ octets, port }) => ({ family: 4 as const, octets, port }))

export const ipv6Address: fc.Arbitrary<SocketAddress> = fc
  .record({
    // Bias towards zero runs so "::" compression is exercised.
    hextets: fc.array(fc.oneof(fc.constant(0), fc.constant(0), fc.integer({ min: 0, max: 0xffff })), {
      minLength: 8,
      maxLength: 8
    }),
    port: fc.integer({ min: 1, max: 65535 })
  })
  .map(({ hextets, port }) => ({
    family: 6 as const,
    octets: hextets.flatMap((h) => [h >> 8, h & 0xff]),
    port
  }))

export const socketAddress = fc.oneof(ipv4Address, ipv6Address)

/** Other valid spellings of an IPv6 address: full, uppercase, leading zeros. */
export const ipv6Spellings = (a: SocketAddress): ReadonlyArray<string> => {
  const h = Array.from({ length: 8 }, (_, i) => ((a.octets[2 * i] ?? 0) << 8) | (a.octets[2 * i + 1] ?? 0))
  return [
    `[${h.map((x) => x.toString(16)).join(":")}]:${a.port}`,
    `[${h.map((x) => x.toString(16).toUpperCase().padStart(4, "0")).join(":")}]:${a.port}`,
    ` [${h.map((x) => x.toString(16)).join(":")}]:${a.port} `
  ]
}
