/** JSON-lines logs on stderr: `{"ts","level","msg",...fields}`; `request_id` carried where there is one. */

export type LogLevel = "debug" | "info" | "warn" | "error"
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 }

export interface Logger {
  debug(msg: string, fields?: Record<string, unknown>): void
  info(msg: string, fields?: Record<string, unknown>): void
  warn(msg: string, fields?: Record<string, unknown>): void
  error(msg: string, fields?: Record<string, unknown>): void
  with(fields: Record<string, unknown>): Logger
}

export const makeLogger = (base: Record<string, unknown>, level: LogLevel = "info"): Logger => {
  const write = (l: LogLevel, msg: string, fields?: Record<string, unknown>) => {
    if (ORDER[l] < ORDER[level]) return
    process.stderr.write(
      JSON.stringify({ ts: new Date().toISOString(), level: l, ...base, msg, ...fields }) + "\n"
    )
  }
  return {
    debug: (m, f) => write("debug", m, f),
    info: (m, f) => write("info", m, f),
    warn: (m, f) => write("warn", m, f),
    error: (m, f) => write("error", m, f),
    with: (fields) => makeLogger({ ...base, ...fields }, level)
  }
}
