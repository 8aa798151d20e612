#!/usr/bin/env python3
"""Interop: drive hearth with matrix-nio, a real client library.

Usage: nio_basic.py HOMESERVER_URL

Scenario: register alice and bob (nio `register`, following the server's
user-interactive auth), alice creates a public room with an alias, invites
bob, bob joins by alias, alice sends a message, bob reads it back (by event
id, and through /messages when the server has it), alice sets a display
name that bob then sees in her member event, and both resolve the alias.

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
)
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

        sent = expect(
            await alice.room_send(
                room_id,
                "m.room.message",
                {"msgtype": "m.text", "body": f"hello bob {run}"},
            ),
            RoomSendResponse,
            "alice sends a message",
        )

        got = expect(
            await bob.room_get_event(room_id, sent.event_id),
            RoomGetEventResponse,
            "bob reads the message by id",
        )
        assert isinstance(got.event, RoomMessageText), type(got.event)
        assert got.event.body == f"hello bob {run}", got.event.body
        assert got.event.sender == alice.user_id

        # /messages is being built elsewhere; use it once the server has it.
        msgs = await bob.room_messages(room_id, start="", limit=20)
        if isinstance(msgs, RoomMessagesResponse):
            bodies = [e.body for e in msgs.chunk if isinstance(e, RoomMessageText)]
            assert f"hello bob {run}" in bodies, bodies
            print("ok: bob reads the message through /messages")
        elif getattr(msgs, "status_code", None) == "M_UNRECOGNIZED":
            print("note: server has no /messages yet; read back by event id only")
        else:
            raise AssertionError(f"/messages failed: {msgs}")

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
