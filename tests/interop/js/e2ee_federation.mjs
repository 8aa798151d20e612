// matrix-js-sdk with its Rust crypto (matrix-sdk-crypto-wasm) across
// federation, run by tests/interop_jssdk_federation.rs:
// `node e2ee_federation.mjs HEARTH_URL SYNAPSE_URL`.
//
// Alice registers on hearth, Bob on a real Synapse. Twice — a room hearth
// creates, then a room Synapse creates — the creator makes a room with
// m.room.encryption (m.megolm.v1.aes-sha2) and invites the other, who
// joins over federation; each side's crypto waits for the other's devices
// (remote /keys/query, device lists), then each sends an encrypted message
// the other must decrypt (Olm sessions from remote /keys/claim, room keys
// as to-device messages over federation).
// Exit 0 and "all federated e2ee steps passed" on success; on failure the
// step and reason are printed and the exit code is 1.
import { deadline, decrypted, fail, knowsDevicesOf, logHttpErrors, register, start, state, until } from "./lib.mjs";

const [hearthUrl, synapseUrl] = process.argv.slice(2);
if (!hearthUrl || !synapseUrl) {
    console.error("usage: node e2ee_federation.mjs HEARTH_URL SYNAPSE_URL");
    process.exit(2);
}
logHttpErrors();
deadline(240_000);
const run = Date.now().toString(36);

/** `creator` makes an encrypted room and invites `joiner` (other server). */
async function conversation(creator, joiner, label) {
    const [c, j] = [creator.client, joiner.client];
    state.step = `${label}: ${creator.name} creates an encrypted room, invites ${joiner.name}`;
    const { room_id: roomId } = await c.createRoom({
        name: `e2ee federation ${label}`,
        invite: [j.getUserId()],
        initial_state: [{ type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" } }],
    });
    await until(`${joiner.name}'s invite`, () => j.getRoom(roomId)?.getMyMembership() === "invite", 60_000);
    state.step = `${label}: ${joiner.name} joins over federation`;
    await j.joinRoom(roomId);
    await until(`${joiner.name}'s join seen by ${creator.name}`,
        () => c.getRoom(roomId)?.getMember(j.getUserId())?.membership === "join", 60_000);
    await until(`room encrypted for ${creator.name}`, () => c.getCrypto().isEncryptionEnabledInRoom(roomId));
    await until(`room encrypted for ${joiner.name}`, () => j.getCrypto().isEncryptionEnabledInRoom(roomId));

    state.step = `${label}: each crypto sees the other's devices`;
    await until(`${creator.name} knows ${joiner.name}'s devices`, () => knowsDevicesOf(c, [j.getUserId()]), 60_000);
    await until(`${joiner.name} knows ${creator.name}'s devices`, () => knowsDevicesOf(j, [c.getUserId()]), 60_000);

    state.step = `${label}: ${creator.name} sends, ${joiner.name} decrypts`;
    const m1 = `secret from ${creator.name} ${label} ${run}`;
    const { event_id: e1 } = await c.sendTextMessage(roomId, m1);
    const got1 = await decrypted(j, roomId, e1, 60_000);
    if (got1 !== m1) throw new Error(`${joiner.name} decrypted ${JSON.stringify(got1)}`);
    console.log(`${label}: ${joiner.name} decrypted ${creator.name}'s ${e1}`);

    state.step = `${label}: ${joiner.name} sends, ${creator.name} decrypts`;
    const m2 = `secret from ${joiner.name} ${label} ${run}`;
    const { event_id: e2 } = await j.sendTextMessage(roomId, m2);
    const got2 = await decrypted(c, roomId, e2, 60_000);
    if (got2 !== m2) throw new Error(`${creator.name} decrypted ${JSON.stringify(got2)}`);
    console.log(`${label}: ${creator.name} decrypted ${joiner.name}'s ${e2}`);
}

async function main() {
    const alice = { name: "alice (hearth)", client: await register(hearthUrl, `fedalice${run}`) };
    const bob = { name: "bob (synapse)", client: await register(synapseUrl, `fedbob${run}`) };
    await start(alice.client, alice.name);
    await start(bob.client, bob.name);
    console.log("both clients PREPARED with rust crypto");

    await conversation(alice, bob, "room on hearth");
    await conversation(bob, alice, "room on synapse");

    for (const c of [alice.client, bob.client]) c.stopClient();
    console.log("all federated e2ee steps passed");
    process.exit(0);
}

main().catch(fail);
