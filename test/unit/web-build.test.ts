import { execFile } from 'node:child_process';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';

// The web UI's build: three files, minified, no source map, no comments.

const run = promisify(execFile);
const BUILD = new URL('../../endpoint/untrusted/web/build.ts', import.meta.url).pathname;
const dirs: string[] = [];

afterAll(async () => {
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

describe('web build', () => {
  it('writes index.html, app.js and app.css to --out, and says so in one line', async () => {
    const out = await mkdtemp(join(tmpdir(), 'mte-web-'));
    dirs.push(out);
    const { stdout } = await run(process.execPath, [BUILD, '--out', out]);
    expect(stdout).toMatch(new RegExp(`^web: built ${out} \\(3 files, \\d+ KiB\\)\\n$`));
    expect((await readdir(out)).sort()).toEqual(['app.css', 'app.js', 'index.html']);
    const js = await readFile(join(out, 'app.js'), 'utf8');
    expect(js).not.toMatch(/sourceMappingURL/);
    expect(js).not.toMatch(/\/\*!|@license/);
    expect(js).not.toMatch(/\beval\(|new Function\(/);
  }, 30_000);

  it('fails with one line and exit code 1', async () => {
    const error = await run(process.execPath, [BUILD, '--bogus']).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 1, stdout: '' });
    expect((error as { stderr: string }).stderr).toMatch(/^web: build failed: [^\n]+\n$/);
  });
});
