// Shared matrix-js-sdk helpers for the interop scenarios that talk to more
// than one homeserver (e2ee_federation.mjs): every helper takes the base
// URL of the server it talks to, and the failure reporting tracks a step.
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

export { sdk };
export const PASSWORD = "secret-pw";

logger.setLevel?.("warn");

/** The step being run, printed on failure. */
export const state = { step: "start" };

export function fail(why) {
    console.error(`FAILED at step "${state.step}": ${why?.stack ?? why}`);
    if (why?.httpStatus) console.error(`  http ${why.httpStatus} ${why.errcode ?? ""} ${why.data ? JSON.stringify(why.data) : ""}`);
    process.exit(1);
}

/** Exits with a failure after `ms`, and on an unhandled rejection. */
export function deadline(ms) {
    setTimeout(() => fail(`overall deadline of ${ms} ms passed`), ms).unref();
    process.on("unhandledRejection", (e) => fail(`unhandled rejection: ${e?.stack ?? e}`));
}

/** Prints every non-2xx answer (a UIA 401 at registration is expected). */
export function logHttpErrors() {
    const realFetch = globalThis.fetch;
    globalThis.fetch = async (url, opts) => {
        const r = await realFetch(url, opts);
        if (!r.ok) console.log(`HTTP ${r.status} ${opts?.method ?? "GET"} ${url} ${await r.clone().text()}`);
        return r;
    };
}

/** Registers `user` on `baseUrl` (m.login.dummy, in a UIA session if asked). */
export async function register(baseUrl, user) {
    state.step = `register ${user} on ${baseUrl}`;
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
    return sdk.createClient({
        baseUrl,
        userId: resp.user_id,
        deviceId: resp.device_id,
        accessToken: resp.access_token,
    });
}

/** initRustCrypto (in memory), startClient, wait for PREPARED. */
export async function start(client, name) {
    state.step = `${name}: initRustCrypto`;
    await client.initRustCrypto({ useIndexedDB: false });
    state.step = `${name}: first sync (PREPARED)`;
    await new Promise((resolve, reject) => {
        client.on(sdk.ClientEvent.Sync, (st, _prev, data) => {
            if (st === "PREPARED") resolve();
            if (st === "ERROR") reject(new Error(`sync state ERROR: ${data?.error?.stack ?? data?.error}`));
        });
        client.startClient({ initialSyncLimit: 20 }).catch(reject);
    });
}

/** Resolves once `pred()` is truthy, checking every 200 ms. */
export async function until(what, pred, ms = 30_000) {
    const end = Date.now() + ms;
    for (;;) {
        const v = await pred();
        if (v) return v;
        if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
        await new Promise((r) => setTimeout(r, 200));
    }
}

/** The decrypted body of the event `eventId` in `client`'s room, once known. */
export async function decrypted(client, roomId, eventId, ms = 30_000) {
    let last = null;
    try {
        return await until(`decryption of ${eventId}`, async () => {
            const ev = client.getRoom(roomId)?.findEventById(eventId);
            if (!ev) return null;
            last = ev;
            if (ev.isDecryptionFailure()) await client.decryptEventIfNeeded(ev, { isRetry: true });
            if (!ev.isEncrypted()) throw new Error(`${eventId} arrived unencrypted`);
            const body = ev.getClearContent()?.body;
            return typeof body === "string" ? body : null;
        }, ms);
    } catch (e) {
        if (last) e.message += ` (event ${last ? "seen" : "not seen"}, ${last.decryptionFailureReason ?? ""} ${JSON.stringify(last.getContent())})`;
        throw e;
    }
}

/** Whether `client`'s crypto knows a device of each of `userIds`. */
export async function knowsDevicesOf(client, userIds) {
    const map = await client.getCrypto().getUserDeviceInfo(userIds, true);
    return userIds.every((u) => (map.get(u)?.size ?? 0) > 0);
}
