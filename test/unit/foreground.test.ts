import { describe, expect, it } from 'vitest';
import { Foreground } from '../../endpoint/foreground.ts';

/** A read of `steps` steps, each yielding first, that records when each step ran. */
async function read(fg: Foreground, steps: number, log: string[], name: string): Promise<void> {
  for (let i = 0; i < steps; i++) {
    await fg.yield();
    log.push(`${name}${i}`);
  }
}

describe('sends run ahead of long reads', () => {
  it('a read pauses between steps while a send runs, and resumes when it is done', async () => {
    const fg = new Foreground();
    const log: string[] = [];
    let finish = (): void => undefined;
    const reading = read(fg, 5, log, 'r');
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    const sending = fg.run(async () => {
      log.push('send start');
      await new Promise<void>((r) => (finish = r));
      log.push('send end');
    });
    // The read makes no progress while the send waits on its (here: held) write.
    const before = log.length;
    for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
    expect(log.length).toBe(before);
    expect(fg.active).toBe(1);
    finish();
    await sending;
    await reading;
    const end = log.indexOf('send end');
    expect(log.slice(end + 1).every((e) => e.startsWith('r'))).toBe(true);
    expect(log.filter((e) => e.startsWith('r'))).toHaveLength(5);
    expect(fg.active).toBe(0);
  });

  it('a flood of sends cannot starve a read: each step waits at most about 100 ms', async () => {
    const fg = new Foreground();
    const log: string[] = [];
    // A send always running: a new one every 20 ms, each 30 ms long.
    const sends: Promise<unknown>[] = [fg.run(() => new Promise((r) => setTimeout(r, 30)))];
    const flood = setInterval(() => {
      sends.push(fg.run(() => new Promise((r) => setTimeout(r, 30))));
    }, 20);
    const t = performance.now();
    await read(fg, 3, log, 'r');
    const ms = performance.now() - t;
    clearInterval(flood);
    await Promise.all(sends);
    expect(log).toEqual(['r0', 'r1', 'r2']);
    // It did give way (about 100 ms per step), and was not held back for longer.
    expect(ms).toBeGreaterThanOrEqual(270);
    expect(ms).toBeLessThan(2000);
  });

  it('a failing send still lets reads go on, and its error reaches the caller', async () => {
    const fg = new Foreground();
    await expect(fg.run(() => Promise.reject(new Error('disk full')))).rejects.toThrow('disk full');
    expect(fg.active).toBe(0);
    const log: string[] = [];
    await read(fg, 2, log, 'r');
    expect(log).toEqual(['r0', 'r1']);
  });
});
