/**
 * Stop strings found across token boundaries. Text that could still be the start of a stop string is
 * held back (never streamed), so a client never sees part of a stop string; when one completes, the text
 * before it is released and generation stops.
 */

export interface StopScan {
  /** Text not yet released because it may be the start of a stop string. */
  readonly held: string
}

export const initialStopScan: StopScan = { held: "" }

export interface StopStep {
  readonly scan: StopScan
  /** Text safe to release now. */
  readonly release: string
  /** True when a stop string completed: `release` ends right before it and nothing more is released. */
  readonly stopped: boolean
}

/** Longest suffix of `text` that is a proper prefix of some stop string. */
const heldSuffixLength = (text: string, stops: ReadonlyArray<string>): number => {
  let best = 0
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > best; n--) {
      if (text.endsWith(s.slice(0, n))) {
        best = n
        break
      }
    }
  }
  return best
}

export const scanStop = (scan: StopScan, delta: string, stopStrings: ReadonlyArray<string>): StopStep => {
  const stops = stopStrings.filter((s) => s.length > 0)
  const text = scan.held + delta
  if (stops.length === 0) return { scan: initialStopScan, release: text, stopped: false }
  let at = -1
  for (const s of stops) {
    const i = text.indexOf(s)
    if (i >= 0 && (at < 0 || i < at)) at = i
  }
  if (at >= 0) return { scan: initialStopScan, release: text.slice(0, at), stopped: true }
  const keep = heldSuffixLength(text, stops)
  return {
    scan: { held: text.slice(text.length - keep) },
    release: text.slice(0, text.length - keep),
    stopped: false
  }
}

/** At the end of generation (no stop matched), what was held is released. */
export const flushStop = (scan: StopScan): string => scan.held
