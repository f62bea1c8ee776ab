// Starts CongoDB, the MongoDB wire-protocol emulator from @push.rocks/smartmongo 2.2.0, in memory
// on 127.0.0.1:<port> for the catalog tests. scripts/test installs it beside this file's copy.
//
// CongoDB 2.2.0 only stores documents whose `_id` is an ObjectId: its memory storage keys
// documents by `_id.toHexString()` and converts any other `_id` with `new ObjectId(…)`, which
// throws for a string such as a MusicBrainz id. MongoDB accepts any `_id` type, and the catalog
// uses strings (track and user ids), so this script keeps non-ObjectId ids as they are, keyed
// by a prefixed string that cannot collide with an ObjectId's 24 hex digits. Nothing else of
// the emulator is changed.
import { CongoServer } from './congodb/index.js';
import { MemoryStorageAdapter } from './congodb/storage/MemoryStorageAdapter.js';

for (const type of [String, Number]) {
  Object.defineProperty(type.prototype, 'toHexString', {
    value: function () { return `${typeof this.valueOf()}:${this.valueOf()}`; },
    enumerable: false,
  });
}
const insertOne = MemoryStorageAdapter.prototype.insertOne;
MemoryStorageAdapter.prototype.insertOne = async function (dbName, collName, doc) {
  const id = doc._id;
  if (typeof id !== 'string' && typeof id !== 'number') {
    return insertOne.call(this, dbName, collName, doc);
  }
  const collection = this.ensureCollection(dbName, collName);
  const key = id.toHexString();
  if (collection.has(key)) {
    throw new Error(`Duplicate key error: _id ${id}`);
  }
  const stored = { ...doc };
  collection.set(key, stored);
  return stored;
};

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0) {
  console.error('usage: node server.mjs <port>');
  process.exit(2);
}
const server = new CongoServer({ port, host: '127.0.0.1', storage: 'memory' });
await server.start();
console.log(`congodb listening on 127.0.0.1:${port}`);
