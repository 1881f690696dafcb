/** The file registry's reader: it follows the owner's writes, and sync() catches up at once. */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { FileBackend } from '../discovery/file.js';
import { tempDir } from './support/node.js';

describe('file registry reader', () => {
  it('sync() loads a newer file at once, and is a no-op when nothing changed', async () => {
    const file = path.join(tempDir(), 'registry.json');
    const owner = new FileBackend({ path: file });
    await owner.start();
    const reader = new FileBackend({ path: file, writable: false });
    await reader.start();
    try {
      const events: string[] = [];
      reader.onChange((ev) => events.push(ev.kind));
      for (let i = 0; i < 20; i++) {
        await owner.put('tenants', `t${i}`, { targets: [{ host: '01', container: `c${i}` }] });
        await reader.sync();
        assert.deepEqual(await reader.get('tenants', `t${i}`), { targets: [{ host: '01', container: `c${i}` }] }, `write ${i} seen after sync()`);
      }
      assert.ok(events.includes('tenants'), 'a reload tells the cache above to drop what it holds');
      const before = events.length;
      await reader.sync();
      assert.equal(events.length, before, 'nothing changed: no reload');
      await assert.rejects(reader.put('tenants', 'x', { targets: [] }), /read-only/);
    } finally {
      await reader.close();
      await owner.close();
    }
  });
});

describe('file registry: snapshot and journal', () => {
  const rec = (i: number) => ({ targets: [{ host: '01', container: `c${i}` }] });

  it('writes append to the journal; past the threshold a new snapshot folds it in; a restart sees everything', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'registry.json');
    const owner = new FileBackend({ path: file, compactAtBytes: 2_000 });
    await owner.start();
    const reader = new FileBackend({ path: file, writable: false });
    await reader.start();
    try {
      await Promise.all(Array.from({ length: 40 }, (_, i) => owner.put('tenants', `t${i}`, rec(i))));
      for (let i = 40; i < 120; i++) await owner.put('tenants', `t${i}`, rec(i));
      await owner.delete('tenants', 't7');
      const journalBytes = fs.statSync(`${file}.journal`).size;
      assert.ok(journalBytes < 4_000, `the journal was folded into a snapshot (${journalBytes} bytes left)`);
      assert.ok(Object.keys((JSON.parse(fs.readFileSync(file, 'utf8')) as { tenants: object }).tenants).length > 40, 'the snapshot holds folded records');
      await reader.sync();
      assert.deepEqual(await reader.get('tenants', 't119'), rec(119));
      assert.equal(await reader.get('tenants', 't7'), undefined);
      assert.equal((await reader.list('tenants')).keys.length, 119);
    } finally {
      await reader.close();
      await owner.close();
    }
    const again = new FileBackend({ path: file });
    await again.start();
    try {
      assert.equal((await again.list('tenants')).keys.length, 119);
      assert.deepEqual(await again.get('tenants', 't0'), rec(0));
    } finally {
      await again.close();
    }
  });

  it('a torn last journal line (a crash mid-append) is dropped with a warning; a bad line before it stops start-up', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'registry.json');
    const owner = new FileBackend({ path: file });
    await owner.start();
    await owner.put('tenants', 'kept', rec(1));
    await owner.close();
    fs.appendFileSync(`${file}.journal`, '{"op":"put","kind":"tenants","key":"torn","val');
    const warnings: string[] = [];
    const again = new FileBackend({ path: file, warn: (m) => warnings.push(m) });
    await again.start();
    try {
      assert.deepEqual(await again.get('tenants', 'kept'), rec(1));
      assert.equal(await again.get('tenants', 'torn'), undefined);
      assert.match(warnings.join('\n'), /partial line/);
    } finally {
      await again.close();
    }
    fs.appendFileSync(`${file}.journal`, 'not json\n{"op":"delete","kind":"tenants","key":"kept"}\n');
    await assert.rejects(new FileBackend({ path: file }).start(), (err: Error) => err.message.includes(`${file}.journal`) && /line 1 is not valid JSON/.test(err.message));
    assert.match(fs.readFileSync(`${file}.journal`, 'utf8'), /not json/, 'left untouched');
    // The failed start released the file: fixing the journal lets the next start go on.
    fs.writeFileSync(`${file}.journal`, '');
    const fixed = new FileBackend({ path: file });
    await fixed.start();
    await fixed.close();
  });
});
