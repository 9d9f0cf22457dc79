// The engine's IndexedDB store: one object store `kv` of binary keys and
// values, the browser side of the core's key/value `StateStore`. Every
// commit is one readwrite transaction with strict durability that resolves
// on `complete`, so a commit is all-or-nothing and on disk when it resolves.

const STORE = "kv";
const VERSION = 1;

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error ?? new Error("IndexedDB request failed"));
  });
}

export class Kv {
  private constructor(private readonly db: IDBDatabase) {}

  static open(name: string): Promise<Kv> {
    return new Promise((resolve, reject) => {
      const req = indexedDB.open(name, VERSION);
      req.onupgradeneeded = () => {
        if (!req.result.objectStoreNames.contains(STORE)) req.result.createObjectStore(STORE);
      };
      req.onsuccess = () => {
        const db = req.result;
        // Another tab deleting the database (a wipe) must not wait for us.
        db.onversionchange = () => db.close();
        resolve(new Kv(db));
      };
      req.onerror = () => reject(req.error ?? new Error("cannot open IndexedDB"));
      req.onblocked = () => reject(new Error("IndexedDB is blocked by another tab"));
    });
  }

  /** Every key and value, in one read transaction (so they match up). */
  async loadAll(): Promise<{ keys: Uint8Array[]; values: Uint8Array[] }> {
    const tx = this.db.transaction(STORE, "readonly");
    const store = tx.objectStore(STORE);
    const [keys, values] = await Promise.all([request(store.getAllKeys()), request(store.getAll())]);
    return {
      keys: keys.map((k) => new Uint8Array(k as ArrayBuffer)),
      values: values.map((v) => (v instanceof Uint8Array ? v : new Uint8Array(v as ArrayBuffer))),
    };
  }

  /** Apply puts and deletes in one transaction; resolves once it committed. */
  commit(putKeys: Uint8Array[], putValues: Uint8Array[], deleteKeys: Uint8Array[]): Promise<void> {
    return new Promise((resolve, reject) => {
      let tx: IDBTransaction;
      try {
        tx = this.db.transaction(STORE, "readwrite", { durability: "strict" });
      } catch (e) {
        reject(e);
        return;
      }
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(tx.error ?? new Error("IndexedDB transaction failed"));
      tx.onabort = () => reject(tx.error ?? new Error("IndexedDB transaction aborted"));
      const store = tx.objectStore(STORE);
      // The core's keys are copies in their own ArrayBuffer (binary keys).
      for (const k of deleteKeys) store.delete(k as Uint8Array<ArrayBuffer>);
      for (let i = 0; i < putKeys.length; i++) store.put(putValues[i], putKeys[i] as Uint8Array<ArrayBuffer>);
    });
  }

  close(): void {
    this.db.close();
  }
}

/** Delete the whole database (logout, revocation). */
export function deleteDatabase(name: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const req = indexedDB.deleteDatabase(name);
    req.onsuccess = () => resolve();
    req.onerror = () => reject(req.error ?? new Error("cannot delete IndexedDB"));
    // Blocked: another tab still has it open; it closes on versionchange and
    // the deletion then completes.
  });
}
