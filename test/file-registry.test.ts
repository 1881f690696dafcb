/** The file registry's reader: it follows the owner's writes, and sync() catches up at once. */
import assert from 'node:assert/strict';
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
