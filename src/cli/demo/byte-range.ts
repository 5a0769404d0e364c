/**
 * The `Range` header as a server reads it: one `bytes=` range, resolved against the object's
 * size. Used by the demo's file server and the test object server.
 */

export type RangeSpec =
  | { readonly kind: 'none' }
  | { readonly kind: 'bounded'; readonly first: number; readonly last: number }
  | { readonly kind: 'open'; readonly first: number }
  | { readonly kind: 'suffix'; readonly length: number };

/** Parses a single `bytes=` range. Anything else (multiple ranges, other units, garbage) is
 * ignored and the whole object served, as RFC 9110 allows and S3 does. */
export function parseRange(header: string | undefined): RangeSpec {
  if (header === undefined) return { kind: 'none' };
  const m = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(header);
  if (m === null) return { kind: 'none' };
  const a = m[1] ?? '';
  const b = m[2] ?? '';
  if (a === '' && b === '') return { kind: 'none' };
  if (a === '') return { kind: 'suffix', length: Number(b) };
  if (b === '') return { kind: 'open', first: Number(a) };
  const first = Number(a);
  const last = Number(b);
  if (last < first) return { kind: 'none' };
  return { kind: 'bounded', first, last };
}

/** `[start, end)` to serve, 'unsatisfiable' for 416, or undefined for the whole object (200). */
export function resolveRange(spec: RangeSpec, size: number): { start: number; end: number } | 'unsatisfiable' | undefined {
  switch (spec.kind) {
    case 'none':
      return undefined;
    case 'bounded':
      if (spec.first >= size) return 'unsatisfiable';
      return { start: spec.first, end: Math.min(size, spec.last + 1) };
    case 'open':
      if (spec.first >= size) return 'unsatisfiable';
      return { start: spec.first, end: size };
    case 'suffix':
      if (spec.length === 0 || size === 0) return 'unsatisfiable';
      return { start: Math.max(0, size - spec.length), end: size };
    default: {
      const _exhaustive: never = spec;
      return _exhaustive;
    }
  }
}
