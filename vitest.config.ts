import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    // e2e suites spawn real processes on a 2-core machine: keep files serial there.
    fileParallelism: false,
    maxWorkers: 2
  }
})
