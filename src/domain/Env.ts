/** Environment settings: `TANDEM_<name>` wins over the seed's `MLXCEL_<name>` when both are set. */
export const envSetting = (
  env: Readonly<Record<string, string | undefined>>,
  name: string
): string | undefined => env[`TANDEM_${name}`] ?? env[`MLXCEL_${name}`]

/** `1|true|yes|on` (trimmed, any case) is true; anything else, or unset, is false. */
export const envFlag = (value: string | undefined): boolean =>
  value !== undefined && ["1", "true", "yes", "on"].includes(value.trim().toLowerCase())
