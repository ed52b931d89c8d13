/**
 * The KV handoff checksum: CRC-32 (node:zlib, hardware-accelerated) over every tensor's bytes in
 * canonical order (layer 0 key, layer 0 value, layer 1 key, ...). It detects corruption; it is not a MAC
 * (the connection itself is authenticated). Receivers fold chunks in as they arrive, while they are in
 * cache, and fall back to one pass at the end when chunks came out of order.
 */
import { crc32 } from "node:zlib"

const hex = (v: number) => (v >>> 0).toString(16).padStart(8, "0")

export const kvChecksum = (tensors: ReadonlyArray<Uint8Array>): string =>
  hex(tensors.reduce((c, t) => crc32(t, c), 0))

export class InOrderKvChecksum {
  private crc = 0
  private tensor = 0
  private offset = 0
  private inOrder = true

  constructor(private readonly tensorBytes: number) {}

  add(tensor: number, offset: number, bytes: Uint8Array): void {
    if (!this.inOrder) return
    if (tensor !== this.tensor || offset !== this.offset) {
      this.inOrder = false
      return
    }
    this.crc = crc32(bytes, this.crc)
    this.offset += bytes.byteLength
    if (this.offset === this.tensorBytes) {
      this.tensor++
      this.offset = 0
    }
  }

  /** The checksum of the assembled tensors (computed now only if the chunks came out of order). */
  result(tensors: ReadonlyArray<Uint8Array>): string {
    return this.inOrder ? hex(this.crc) : kvChecksum(tensors)
  }
}
