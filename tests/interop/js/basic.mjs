// matrix-js-sdk interop scenario, run by tests/interop_jssdk.rs against a
// real hearth: usage `node basic.mjs http://127.0.0.1:PORT`.
// Two users register, start their sync loops (startClient) and must reach
// the sync state PREPARED; A creates a room and invites B, B joins, A sends a
// message, B sees it arrive through its own sync loop. Exit 0 and the line
// "all interop steps passed" on success; any failure or the overall deadline
// exits 1 with the step and reason printed.
import * as sdk from "matrix-js-sdk";
import { logger } from "matrix-js-sdk/lib/logger.js";

const baseUrl = process.argv[2];
if (!baseUrl) {
    console.error("usage: node basic.mjs BASE_URL");
    process.exit(2);
}
// Every non-2xx answer is printed, so a failure names the request behind it
// (the SDK tolerates some, e.g. a 404 on /capabilities).
const realFetch = globalThis.fetch;
globalThis.fetch = async (url, opts) => {
    const r = await realFetch(url, opts);
    if (!r.ok) console.log(`HTTP ${r.status} ${opts?.method ?? "GET"} ${url} ${await r.clone().text()}`);
    return r;
};

const DEADLINE_MS = 60_000;
logger.setLevel?.("warn");

let step = "start";
const fail = (why) => {
    console.error(`FAILED at step "${step}": ${why?.stack ?? why}`);
    if (why?.httpStatus) console.error(`  http ${why.httpStatus} ${why.errcode ?? ""} ${why.data ? JSON.stringify(why.data) : ""} url=${why.url ?? ""}`);
    process.exit(1);
};
setTimeout(() => fail(`overall deadline of ${DEADLINE_MS} ms passed`), DEADLINE_MS).unref();
process.on("unhandledRejection", (e) => fail(`unhandled rejection: ${e?.stack ?? e}`));

const run = Date.now().toString(36);

async function register(user) {
    step = `register ${user}`;
    const anon = sdk.createClient({ baseUrl });
    let resp;
    try {
        resp = await anon.registerRequest({ username: user, password: "secret-pw", auth: { type: "m.login.dummy" } });
    } catch (e) {
        // A server may want a UIA session first: take it from the 401 and retry.
        const session = e?.data?.session;
        if (e?.httpStatus !== 401 || !session) throw e;
        resp = await anon.registerRequest({
            username: user,
            password: "secret-pw",
            auth: { type: "m.login.dummy", session },
        });
    }
    console.log(`registered ${resp.user_id} device ${resp.device_id}`);
    return sdk.createClient({
        baseUrl,
        userId: resp.user_id,
        deviceId: resp.device_id,
        accessToken: resp.access_token,
    });
}

/** startClient and wait for PREPARED; an ERROR sync state fails at once. */
function startAndPrepare(client, name) {
    step = `${name}: first sync (PREPARED)`;
    return new Promise((resolve, reject) => {
        client.on(sdk.ClientEvent.Sync, (state, _prev, data) => {
            if (state === "PREPARED") resolve();
            if (state === "ERROR") reject(new Error(`sync state ERROR: ${data?.error?.stack ?? data?.error}`));
        });
        client.startClient({ initialSyncLimit: 10 }).catch(reject);
    });
}

function waitFor(client, what, pred) {
    return new Promise((resolve) => {
        const check = (ev, room) => {
            if (pred(ev, room)) {
                client.off(sdk.RoomEvent.Timeline, check);
                resolve(ev);
            }
        };
        client.on(sdk.RoomEvent.Timeline, check);
    });
}

async function main() {
    const a = await register(`jsalice${run}`);
    const b = await register(`jsbob${run}`);
    await startAndPrepare(a, "alice");
    await startAndPrepare(b, "bob");
    console.log("both clients PREPARED");

    step = "alice createRoom + invite bob";
    const invited = new Promise((resolve) => {
        b.on(sdk.RoomMemberEvent.Membership, (_ev, member) => {
            if (member.userId === b.getUserId() && member.membership === "invite") resolve(member.roomId);
        });
    });
    const { room_id: roomId } = await a.createRoom({ name: "js interop", invite: [b.getUserId()] });
    console.log(`room ${roomId} created`);

    step = "bob sees the invite in its sync";
    const invitedRoom = await invited;
    if (invitedRoom !== roomId) throw new Error(`invite for ${invitedRoom}, expected ${roomId}`);

    step = "bob joins";
    await b.joinRoom(roomId);

    step = "alice sees bob joined";
    await new Promise((resolve) => {
        const done = () => {
            const m = a.getRoom(roomId)?.getMember(b.getUserId());
            if (m?.membership === "join") resolve();
        };
        a.on(sdk.RoomMemberEvent.Membership, done);
        done();
    });

    step = "alice sends, bob receives through sync";
    const body = `hello from js ${run}`;
    const got = waitFor(b, "message", (ev, room) =>
        room?.roomId === roomId && ev.getType() === "m.room.message" && ev.getContent().body === body);
    const { event_id } = await a.sendTextMessage(roomId, body);
    const ev = await got;
    if (ev.getId() !== event_id) throw new Error(`bob got ${ev.getId()}, alice sent ${event_id}`);
    if (ev.getSender() !== a.getUserId()) throw new Error(`sender ${ev.getSender()}`);
    console.log(`bob received ${event_id}`);

    a.stopClient();
    b.stopClient();
    console.log("all interop steps passed");
    process.exit(0);
}

main().catch(fail);
