// another-json (the canonical JSON encoder matrix-js-sdk uses) ships no types.
declare module 'another-json' {
  /** Compact JSON with object keys sorted by code unit, as Matrix signing needs. */
  export function stringify(value: unknown): string;
}
