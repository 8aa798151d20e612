// matrix-js-sdk end-to-end encryption scenario with its Rust crypto
// (@matrix-org/matrix-sdk-crypto-wasm, what Element uses), run by
// tests/interop_jssdk.rs against a real hearth: `node e2ee.mjs BASE_URL`.
//
// 1. Alice and Bob register; each client runs initRustCrypto (in-memory
//    store) and its sync loop.
// 2. Alice bootstraps cross-signing (its UIA callback answers with the
//    password), then secret storage with a new key backup.
// 3. In a room with m.room.encryption each sends a message and each
//    decrypts the other's (Olm sessions from /keys/claim, room keys over
//    /sendToDevice).
// 4. Alice's room keys reach the backup (/room_keys/keys); a second login
//    of Alice (a new device) reads the backup key from secret storage,
//    restores the backup and decrypts the earlier message.
// 5. The new device resets cross-signing: this time UIA is required (a
//    first upload needs none, spec v1.11) and answered with the password.
// Exit 0 and "all e2ee steps passed" on success; on failure the step and
// reason are printed and the exit code is 1.
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const baseUrl = process.argv[2];
if (!baseUrl) {
    console.error("usage: node e2ee.mjs BASE_URL");
    process.exit(2);
}
// Every non-2xx answer is printed (a UIA 401 is expected once or twice).
const realFetch = globalThis.fetch;
globalThis.fetch = async (url, opts) => {
    const r = await realFetch(url, opts);
    if (!r.ok) console.log(`HTTP ${r.status} ${opts?.method ?? "GET"} ${url} ${await r.clone().text()}`);
    // A signature the server refused is a 200 with `failures`.
    if (r.ok && String(url).includes("/keys/signatures/upload")) {
        const failures = (await r.clone().json()).failures ?? {};
        if (Object.keys(failures).length) console.log(`signature failures: ${JSON.stringify(failures)} for ${opts?.body}`);
    }
    return r;
};

const DEADLINE_MS = 150_000;
logger.setLevel?.("warn");

let step = "start";
const fail = (why) => {
    console.error(`FAILED at step "${step}": ${why?.stack ?? why}`);
    if (why?.httpStatus) console.error(`  http ${why.httpStatus} ${why.errcode ?? ""} ${why.data ? JSON.stringify(why.data) : ""}`);
    process.exit(1);
};
setTimeout(() => fail(`overall deadline of ${DEADLINE_MS} ms passed`), DEADLINE_MS).unref();
process.on("unhandledRejection", (e) => fail(`unhandled rejection: ${e?.stack ?? e}`));

const run = Date.now().toString(36);
const PASSWORD = "secret-pw";

/** The secret storage key Alice makes; her second device is given it too. */
let ssssKey = null;
const cryptoCallbacks = {
    getSecretStorageKey: async ({ keys }) => {
        const id = Object.keys(keys)[0];
        return ssssKey && id ? [id, ssssKey.privateKey] : null;
    },
    cacheSecretStorageKey: (_id, _info, key) => {
        if (ssssKey) ssssKey.privateKey = key;
    },
};

function clientFor(resp) {
    return sdk.createClient({
        baseUrl,
        userId: resp.user_id,
        deviceId: resp.device_id,
        accessToken: resp.access_token,
        cryptoCallbacks,
    });
}

async function register(user) {
    step = `register ${user}`;
    const anon = sdk.createClient({ baseUrl });
    let resp;
    try {
        resp = await anon.registerRequest({ username: user, password: PASSWORD, auth: { type: "m.login.dummy" } });
    } catch (e) {
        const session = e?.data?.session;
        if (e?.httpStatus !== 401 || !session) throw e;
        resp = await anon.registerRequest({ username: user, password: PASSWORD, auth: { type: "m.login.dummy", session } });
    }
    console.log(`registered ${resp.user_id} device ${resp.device_id}`);
    return clientFor(resp);
}

async function login(userId) {
    step = `login ${userId} (new device)`;
    const anon = sdk.createClient({ baseUrl });
    const resp = await anon.login("m.login.password", {
        identifier: { type: "m.id.user", user: userId },
        password: PASSWORD,
    });
    console.log(`logged in ${resp.user_id} device ${resp.device_id}`);
    return clientFor(resp);
}

/** initRustCrypto (in memory), startClient, wait for PREPARED. */
async function start(client, name) {
    step = `${name}: initRustCrypto`;
    await client.initRustCrypto({ useIndexedDB: false });
    step = `${name}: first sync (PREPARED)`;
    await new Promise((resolve, reject) => {
        client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
            if (state === "PREPARED") resolve();
            if (state === "ERROR") reject(new Error(`sync state ERROR: ${data?.error?.stack ?? data?.error}`));
        });
        client.startClient({ initialSyncLimit: 20 }).catch(reject);
    });
}

/** Resolves once `pred()` is truthy, checking every 200 ms. */
async function until(what, pred, ms = 30_000) {
    const end = Date.now() + ms;
    for (;;) {
        const v = await pred();
        if (v) return v;
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 200));
    }
}

/** The decrypted body of the event `eventId` in `client`'s room, once known. */
async function decrypted(client, roomId, eventId) {
    return until(`decryption of ${eventId}`, async () => {
        const ev = client.getRoom(roomId)?.findEventById(eventId);
        if (!ev) return null;
        if (ev.isDecryptionFailure()) await client.decryptEventIfNeeded(ev, { isRetry: true });
        if (!ev.isEncrypted()) throw new Error(`${eventId} arrived unencrypted`);
        const body = ev.getClearContent()?.body;
        return typeof body === "string" ? body : null;
    });
}

/** A UIA callback as an app has one: try without auth; on a 401 challenge
 * answer m.login.password in its session. `used.uia` tells which happened. */
function passwordAuth(client, used) {
    return async (makeRequest) => {
        try {
            await makeRequest(null);
            used.uia = false;
            return;
        } catch (e) {
            if (e?.httpStatus !== 401 || !e?.data?.flows) throw e;
            const stages = e.data.flows.map((f) => f.stages.join(","));
            if (!stages.includes("m.login.password")) throw new Error(`flows ${JSON.stringify(e.data.flows)}`);
            used.uia = true;
            await makeRequest({
                type: "m.login.password",
                session: e.data.session,
                identifier: { type: "m.id.user", user: client.getUserId() },
                password: PASSWORD,
            });
        }
    };
}

async function main() {
    const a = await register(`e2alice${run}`);
    const b = await register(`e2bob${run}`);
    await start(a, "alice");
    await start(b, "bob");
    console.log("both clients PREPARED with rust crypto");

    step = "alice bootstraps cross-signing";
    const first = {};
    await a.getCrypto().bootstrapCrossSigning({ authUploadDeviceSigningKeys: passwordAuth(a, first) });
    if (first.uia !== false) throw new Error("the first cross-signing upload asked for UIA");
    await until("alice cross-signing ready", () => a.getCrypto().isCrossSigningReady());
    step = "bob sees alice's cross-signing keys";
    await until("alice's keys for bob", () => b.getCrypto().userHasCrossSigningKeys(a.getUserId(), true));
    step = "alice's device is cross-signed (signature uploaded, queried back)";
    await until("alice's device cross-signed", async () => {
        const own = await a.getCrypto().getDeviceVerificationStatus(a.getUserId(), a.getDeviceId());
        return own?.crossSigningVerified;
    });
    console.log("cross-signing bootstrapped, alice's device cross-signed");

    step = "alice sets up secret storage and a key backup";
    await a.getCrypto().bootstrapSecretStorage({
        createSecretStorageKey: async () => {
            ssssKey = await a.getCrypto().createRecoveryKeyFromPassphrase();
            return ssssKey;
        },
        setupNewSecretStorage: true,
        setupNewKeyBackup: true,
    });
    const backup = await until("an active backup", () => a.getCrypto().getActiveSessionBackupVersion());
    console.log(`secret storage ready, backup version ${backup}`);

    step = "alice creates an encrypted room, bob joins";
    const { room_id: roomId } = await a.createRoom({
        name: "e2ee interop",
        invite: [b.getUserId()],
        initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    });
    await until("bob's invite", () => b.getRoom(roomId)?.getMyMembership() === "invite");
    await b.joinRoom(roomId);
    await until("bob joined, seen by alice", () => a.getRoom(roomId)?.getMember(b.getUserId())?.membership === "join");
    await until("room encrypted for alice", () => a.getCrypto().isEncryptionEnabledInRoom(roomId));
    await until("room encrypted for bob", () => b.getCrypto().isEncryptionEnabledInRoom(roomId));

    step = "alice sends, bob decrypts";
    const fromAlice = `secret from alice ${run}`;
    const { event_id: e1 } = await a.sendTextMessage(roomId, fromAlice);
    const got1 = await decrypted(b, roomId, e1);
    if (got1 !== fromAlice) throw new Error(`bob decrypted ${JSON.stringify(got1)}`);
    console.log(`bob decrypted alice's ${e1}`);

    step = "bob sends, alice decrypts";
    const fromBob = `secret from bob ${run}`;
    const { event_id: e2 } = await b.sendTextMessage(roomId, fromBob);
    const got2 = await decrypted(a, roomId, e2);
    if (got2 !== fromBob) throw new Error(`alice decrypted ${JSON.stringify(got2)}`);
    console.log(`alice decrypted bob's ${e2}`);

    step = "alice's room keys reach the backup";
    // Asked of the server itself (the SDK caches the version's info).
    const count = await until("keys in the backup", async () => {
        const info = await a.http.authedRequest(sdk.Method.Get, "/room_keys/version");
        return info?.version === backup && info?.count >= 1 ? info.count : null;
    });
    console.log(`backup ${backup} holds ${count} keys`);

    step = "a new device of alice restores the backup";
    const a2 = await login(a.getUserId());
    await start(a2, "alice's new device");
    step = "new device: backup key from secret storage";
    await a2.getCrypto().loadSessionBackupPrivateKeyFromSecretStorage();
    await a2.getCrypto().checkKeyBackupAndEnable();
    step = "new device: restore the backup";
    const restored = await a2.getCrypto().restoreKeyBackup();
    console.log(`restored ${restored.imported} of ${restored.total} keys`);
    if (restored.imported < 1) throw new Error(`nothing restored: ${JSON.stringify(restored)}`);
    step = "new device decrypts the earlier message";
    await until("the room on the new device", () => a2.getRoom(roomId));
    const got3 = await decrypted(a2, roomId, e1);
    if (got3 !== fromAlice) throw new Error(`new device decrypted ${JSON.stringify(got3)}`);
    console.log(`new device decrypted ${e1} from the backup`);

    step = "the new device resets cross-signing (UIA with the password)";
    // Asked of the server (as Bob): the new keys, and the new device signed
    // by the new self-signing key. (The client's own view is not waited
    // for: a /keys/query of its own still in flight while UIA runs answers
    // the old keys, and the Rust crypto then drops its new private keys —
    // a client-side race of a reset right after login.)
    const ownKeys = async () => {
        const q = await b.http.authedRequest(sdk.Method.Post, "/keys/query", undefined, {
            device_keys: { [a.getUserId()]: [] },
        });
        const ssk = Object.keys(q.self_signing_keys?.[a.getUserId()]?.keys ?? {})[0];
        const sigs = q.device_keys?.[a.getUserId()]?.[a2.getDeviceId()]?.signatures?.[a.getUserId()] ?? {};
        return { master: JSON.stringify(q.master_keys?.[a.getUserId()]?.keys ?? null), ssk, signedBySsk: ssk in sigs };
    };
    await until("the new device settled", () => a2.getCrypto().userHasCrossSigningKeys(a.getUserId(), true));
    const before = await ownKeys();
    const reset = {};
    await a2.getCrypto().bootstrapCrossSigning({
        setupNewCrossSigning: true,
        authUploadDeviceSigningKeys: passwordAuth(a2, reset),
    });
    if (reset.uia !== true) throw new Error("replacing cross-signing keys did not ask for UIA");
    const after = await until("the new device signed by the new self-signing key", async () => {
        const k = await ownKeys();
        return k.signedBySsk ? k : null;
    });
    if (after.master === before.master || after.ssk === before.ssk) {
        throw new Error(`keys did not change: ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);
    }
    console.log("cross-signing reset behind UIA");

    for (const c of [a, b, a2]) c.stopClient();
    console.log("all e2ee steps passed");
    process.exit(0);
}

main().catch(fail);
