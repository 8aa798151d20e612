#!/usr/bin/env python3
"""Interop: drive hearth with matrix-nio, a real client library.

Usage: nio_basic.py HOMESERVER_URL

Scenario: register alice and bob (nio `register`, following the server's
user-interactive auth), alice creates a public room with an alias, invites
bob, bob joins by alias and does an initial sync, alice sends a message
while bob is parked in a long-poll sync that must return it, bob reads it
back (by event id and through /messages), alice's own sync carries her
transaction id, alice sets a display name that bob then sees in her member
event, and both resolve the alias.

Every step checks nio's parsed response type: a response nio cannot parse
(schema mismatch) fails the step. Exit status 0 only if all steps pass.
"""

import asyncio
import sys
import uuid

from nio import (
    AsyncClient,
    JoinResponse,
    ProfileGetDisplayNameResponse,
    ProfileSetDisplayNameResponse,
    RegisterResponse,
    RoomCreateResponse,
    RoomGetEventResponse,
    RoomGetStateEventResponse,
    RoomInviteResponse,
    RoomMessagesResponse,
    RoomMessageText,
    RoomResolveAliasResponse,
    RoomSendResponse,
    RoomVisibility,
    SyncResponse,
)
from nio.events.misc import BadEvent, UnknownBadEvent
from nio.responses import RegisterInteractiveResponse


def expect(resp, kind, what):
    if not isinstance(resp, kind):
        raise AssertionError(f"{what}: expected {kind.__name__}, got {type(resp).__name__}: {resp}")
    print(f"ok: {what}")
    return resp


async def register(hs, user):
    """nio's `register`; if the server wants a UIA session first (401 with
    flows), get one with `register_interactive` and register again."""
    client = AsyncClient(hs, user)
    resp = await client.register(user, "secret-pw", device_name="nio")
    if not isinstance(resp, RegisterResponse):
        first = await client.register_interactive(user, "secret-pw", auth_dict={})
        expect(first, RegisterInteractiveResponse, f"{user}: UIA session")
        resp = await client.register(user, "secret-pw", device_name="nio", session_token=first.session)
    expect(resp, RegisterResponse, f"register {user}")
    assert client.access_token, "nio stored no access token"
    assert client.user_id == resp.user_id
    return client


def timeline_of(sync, room_id, who):
    """The timeline nio parsed for a joined room; nio must have understood
    every event of it (no BadEvent: a schema mismatch)."""
    assert room_id in sync.rooms.join, f"{who}: room not in rooms.join: {list(sync.rooms.join)}"
    events = sync.rooms.join[room_id].timeline.events
    bad = [e for e in events if isinstance(e, (BadEvent, UnknownBadEvent))]
    assert not bad, f"{who}: nio could not parse {bad}"
    return events


async def main(hs):
    run = uuid.uuid4().hex[:8]
    alice = await register(hs, f"alice{run}")
    bob = await register(hs, f"bob{run}")
    server = alice.user_id.split(":", 1)[1]
    alias = f"#nio{run}:{server}"
    try:
        created = expect(
            await alice.room_create(
                visibility=RoomVisibility.public,
                alias=f"nio{run}",
                name="nio interop",
                topic="matrix-nio against hearth",
            ),
            RoomCreateResponse,
            "alice creates a room with an alias",
        )
        room_id = created.room_id

        expect(await alice.room_invite(room_id, bob.user_id), RoomInviteResponse, "alice invites bob")

        resolved = expect(await bob.room_resolve_alias(alias), RoomResolveAliasResponse, "bob resolves the alias")
        assert resolved.room_id == room_id, (resolved.room_id, room_id)
        assert server in resolved.servers, resolved.servers

        joined = expect(await bob.join(alias), JoinResponse, "bob joins by alias")
        assert joined.room_id == room_id, (joined.room_id, room_id)

        initial = expect(await bob.sync(timeout=0), SyncResponse, "bob's initial sync")
        timeline_of(initial, room_id, "bob's initial sync")
        assert initial.next_batch, "no next_batch"

        # Bob parks in a long poll; alice's message must end it.
        poll = asyncio.create_task(bob.sync(timeout=30000, since=initial.next_batch))
        await asyncio.sleep(0.5)
        assert not poll.done(), f"bob's long poll returned before any message: {poll.result()}"
        txn = f"txn-{run}"
        sent = expect(
            await alice.room_send(
                room_id,
                "m.room.message",
                {"msgtype": "m.text", "body": f"hello bob {run}"},
                tx_id=txn,
            ),
            RoomSendResponse,
            "alice sends a message",
        )
        woken = expect(await asyncio.wait_for(poll, 20), SyncResponse, "bob's long poll returns")
        events = timeline_of(woken, room_id, "bob's long poll")
        mine = [e for e in events if e.event_id == sent.event_id]
        assert mine, f"bob's long poll lacks the message: {[e.event_id for e in events]}"
        assert isinstance(mine[0], RoomMessageText), type(mine[0])
        assert mine[0].body == f"hello bob {run}", mine[0].body
        assert mine[0].sender == alice.user_id
        assert mine[0].transaction_id is None, "bob sees alice's transaction id"
        print("ok: bob's long-poll sync carries the message in rooms.join[room].timeline")

        own = expect(await alice.sync(timeout=0), SyncResponse, "alice's sync")
        echo = [e for e in timeline_of(own, room_id, "alice's sync") if e.event_id == sent.event_id]
        assert echo and echo[0].transaction_id == txn, f"no local echo match: {echo}"
        print("ok: alice's own message carries her transaction id")

        got = expect(
            await bob.room_get_event(room_id, sent.event_id),
            RoomGetEventResponse,
            "bob reads the message by id",
        )
        assert isinstance(got.event, RoomMessageText), type(got.event)
        assert got.event.body == f"hello bob {run}", got.event.body
        assert got.event.sender == alice.user_id

        msgs = expect(
            await bob.room_messages(room_id, start=woken.next_batch, limit=20),
            RoomMessagesResponse,
            "bob pages /messages back from his sync token",
        )
        bodies = [e.body for e in msgs.chunk if isinstance(e, RoomMessageText)]
        assert f"hello bob {run}" in bodies, bodies

        expect(
            await alice.set_displayname("Alice Nio"),
            ProfileSetDisplayNameResponse,
            "alice sets her display name",
        )
        name = expect(
            await bob.get_displayname(alice.user_id),
            ProfileGetDisplayNameResponse,
            "bob reads alice's display name",
        )
        assert name.displayname == "Alice Nio", name.displayname
        member = expect(
            await bob.room_get_state_event(room_id, "m.room.member", alice.user_id),
            RoomGetStateEventResponse,
            "bob reads alice's member event",
        )
        assert member.content.get("displayname") == "Alice Nio", member.content
        assert member.content.get("membership") == "join", member.content

        canonical = expect(
            await bob.room_get_state_event(room_id, "m.room.canonical_alias"),
            RoomGetStateEventResponse,
            "bob reads the canonical alias",
        )
        assert canonical.content.get("alias") == alias, canonical.content
        print("all interop steps passed")
    finally:
        await alice.close()
        await bob.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: nio_basic.py HOMESERVER_URL")
    asyncio.run(main(sys.argv[1]))
