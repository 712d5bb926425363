import type { Linter } from 'eslint';

/** The per-folder import boundaries (eslint.boundaries.js). */
export declare const boundaries: Linter.Config[];
