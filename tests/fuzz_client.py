"""A seeded random D-Bus client that throws hostile calls at schedcpd (run as any user).

    python tests/fuzz_client.py ADDRESS SEED CALLS [--scenario]

Sends CALLS calls, at most INFLIGHT at once, drawn with random.Random(SEED):
every Manager method with hostile values in its own signature, wrong
signatures (every basic type, arrays with NUL bytes, structs, variants,
dicts), unknown members, unknown interfaces and paths, the Properties and
Introspectable interfaces, and arguments over the daemon's size limit.
Values: empty and huge strings, odd unicode (RTL and zero-width marks,
non-BMP, the last code point), invalid and deeply nested JSON and TOML,
path traversal, integers at their type's limits, NaN and infinities, and
valid policies whose selectors match no process.

With ``--scenario`` it first walks the state-changing path once as a real
client would: SubmitPolicy, VerifyPolicy, Deploy, GetDeployment, Rollback,
and RotateVerifierKey (the daemon's state directory belongs to the test).

Prints one JSON object: the number of calls, the count per outcome (``ok``
or the error name), and up to 20 replies that break the rule (an error not
named org.schedcp.* / org.freedesktop.DBus.Error.*, an Internal error, no
reply within the time limit).  Only the standard library, dbus-fast, tomli-w
and schedcpd's EAGAIN-safe bus are used: it runs as ``nobody`` too.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections import Counter
from typing import Any

import tomli_w
from dbus_fast import Message, MessageType, Variant

from schedcpd.dbus.bus import MessageBus

BUS_NAME = "org.schedcp.Control1"
PATH = "/org/schedcp/Control1"
MANAGER = "org.schedcp.Control1.Manager"
INFLIGHT = 16
REPLY_SECONDS = 60.0
NAMED = ("org.schedcp.", "org.freedesktop.DBus.Error.")
# A defect, though named: an engine method raised something it should not.
DEFECTS = ("org.schedcp.Control1.Error.Internal",)

METHODS = {
    "Deploy": "s", "Explain": "s", "GetAudit": "us", "GetDeployment": "s", "GetFeedback": "s",
    "GetVerificationReport": "s",
    "GetPolicy": "s", "GetPolicyHistory": "s", "GetStatus": "", "GetSummary": "s",
    "GetVerifierKeys": "", "HoldDeployment": "s", "ListDeployments": "", "ListPolicies": "s",
    "ListProbes": "", "PlanDeployment": "s", "RecordVerdict": "ss", "ReleaseHold": "s",
    "Reload": "",
    "Rollback": "s", "RotateVerifierKey": "", "RunPerfStat": "isd", "RunProbe": "sdi",
    "SetPolicyState": "ss", "SubmitPolicy": "s", "VerifyPolicy": "s",
}
# Calls that take seconds when their arguments are valid (perf, probes) or
# change long-lived state; drawn rarely so the run stays short.
RARE = {"RotateVerifierKey": 0.05, "Reload": 0.2, "RunPerfStat": 0.3, "RunProbe": 0.3,
        "GetSummary": 0.5, "VerifyPolicy": 0.5}

ODD = ["\u202e\u200b\ufeff", "\U0010fffd", "\U0001f600" * 50, "e\u0301" * 40, "\u2028\u2029",
       "\uffff\ufffe", "\u0000".replace("\u0000", "\x01\x7f"), "Ω≈ç√∫", "\t\r\n"]


def policy(rng: random.Random, n: int) -> str:
    """A valid T1 policy whose only selector matches no process on the host."""
    return tomli_w.dumps({
        "policy": {"name": f"fuzz-{n}", "description": f"fuzz {rng.choice(ODD)}"},
        "group": [{"name": "g", "match": {"comm": [f"schedcp-fz-{n % 10000:04d}"]},
                   "task": {"nice": rng.randint(0, 19)}}]})


def hostile_string(rng: random.Random, n: int) -> str:
    """One hostile string."""
    pick = rng.randrange(16)
    if pick == 0:
        return ""
    if pick == 1:
        return "".join(chr(rng.choice([rng.randint(0x20, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]))
                       for _ in range(rng.randint(1, 200)))
    if pick == 2:
        return "x" * rng.choice([1000, 65536, 500_000])
    if pick == 3:
        return rng.choice(["{", '{"a": ', "[1,]", "nul\\u0000", '{"detail": NaN}', "]"])
    if pick == 4:
        depth = rng.choice([100, 3000, 20000])
        return "[" * depth + "]" * depth
    if pick == 5:
        depth = rng.choice([100, 3000])
        return "a = " + "[" * depth + "]" * depth
    if pick == 6:
        return rng.choice(["../../../etc/shadow", "/sys/fs/cgroup", "/", "/proc/1/mem",
                           "/sys/fs/cgroup/../../etc"])
    if pick == 7:
        return rng.choice(["brief", "normal", "full", "candidate", "verified", "proven",
                           "retired", "runqlat", "offcputime", "wakeup", "cpu-rqlat"])
    if pick == 8:
        return "".join(rng.choice("0123456789abcdef") for _ in range(64))
    if pick == 9:
        return policy(rng, n)
    if pick == 10:
        return "".join(rng.choice(ODD) for _ in range(rng.randint(1, 20)))
    if pick == 11:
        return f'[policy]\nname = "{rng.choice(ODD)}"\n[[group]]\nmatch = {{ pid = [-1] }}\n'
    if pick == 12:  # shaped like a token
        return "schedcp1." + "A" * rng.randint(0, 300) + "." + "B" * rng.randint(0, 99)
    if pick == 13:
        return json.dumps({"a": [1e308, -0.0, "\U0001f600"], "b": {"c": None}})
    if pick == 14:
        return "%s%n%x" * 20
    return str(rng.randint(-(2**63), 2**63))


INTS: dict[str, list[Any]] = {
        "i": [-(2**31), -1, 0, 1, 2**22 + 1, 2**31 - 1], "u": [0, 1, 1000, 1001, 2**32 - 1],
        "d": [float("nan"), float("inf"), float("-inf"), -1.0, 0.0, -0.0, 1e-300, 1e308,
              31.0, 0.05],
        "y": [0, 255], "n": [-(2**15), 2**15 - 1], "q": [0, 2**16 - 1],
        "x": [-(2**63), 2**63 - 1], "t": [0, 2**64 - 1], "b": [True, False]}


def value(rng: random.Random, code: str, n: int) -> Any:
    """A hostile value of the single complete type ``code``."""
    if code in INTS:
        return rng.choice(INTS[code])
    if code == "s":
        return hostile_string(rng, n)
    if code == "o":
        return rng.choice(["/", PATH, "/org/schedcp/Control1/x", "/a/b_c/" + "d" * 200])
    if code == "g":
        return rng.choice(["", "s", "a{sv}", "(ii)"])
    if code == "v":
        sig = rng.choice(["s", "i", "as", "a{sv}", "v", "d"])
        return Variant(sig, value(rng, sig, n))
    if code == "ay":
        return bytes(rng.choice([0, 0xFF, 0x80, ord("a")]) for _ in range(rng.randint(0, 64)))
    if code == "as":
        return [hostile_string(rng, n) for _ in range(rng.randint(0, 5))]
    if code == "ai":
        return [rng.choice(INTS["i"]) for _ in range(rng.randint(0, 1000))]
    if code == "a{sv}":
        return {f"k{i}": Variant("s", hostile_string(rng, n)) for i in range(rng.randint(0, 5))}
    if code == "a{ss}":
        return {hostile_string(rng, n)[:50] or "k": "v" for _ in range(rng.randint(0, 5))}
    if code == "(si)":
        return [hostile_string(rng, n), rng.choice(INTS["i"])]
    if code == "aai":
        return [[1, 2], []] * rng.randint(0, 50)
    raise ValueError(code)


TYPES = ["s", "i", "u", "d", "y", "n", "q", "x", "t", "b", "o", "g", "v", "ay", "as", "ai",
         "a{sv}", "a{ss}", "(si)", "aai"]


def _name(rng: random.Random) -> str:
    first = rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
    return first + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789_")
                           for _ in range(rng.randint(0, 200)))


def draw(rng: random.Random, n: int) -> Message:
    """The n-th call of the run."""
    kind = rng.random()
    iface, path = MANAGER, PATH
    if kind < 0.55:  # a Manager method, its own signature, hostile values
        member = rng.choice(list(METHODS))
        while rng.random() > RARE.get(member, 1.0):
            member = rng.choice(list(METHODS))
        codes = list(METHODS[member])
    elif kind < 0.80:  # a Manager method, a wrong signature
        member = rng.choice(list(METHODS))
        codes = [rng.choice(TYPES) for _ in range(rng.randint(0, 4))]
        if "".join(codes) == METHODS[member]:
            codes.append("i")
    elif kind < 0.87:  # no such member
        member = _name(rng)
        codes = [rng.choice(TYPES) for _ in range(rng.randint(0, 2))]
    elif kind < 0.90:  # no such interface, or no such object
        member = _name(rng)[:40]
        codes = []
        if rng.random() < 0.5:
            iface = "org.example." + _name(rng)[:60]
        else:
            path = rng.choice(["/", "/org", "/org/schedcp", "/org/schedcp/Control1/x"])
    elif kind < 0.97:  # Properties
        iface = "org.freedesktop.DBus.Properties"
        member = rng.choice(["Get", "GetAll", "Set", "Nope"])
        codes = {"Get": ["s", "s"], "GetAll": ["s"], "Set": ["s", "s", "v"], "Nope": []}[member]
        if rng.random() < 0.3:
            codes = [rng.choice(TYPES) for _ in range(rng.randint(0, 3))]
        body = [rng.choice([MANAGER, "Version", "Subsystems", "ActivePolicies", ""])
                if c == "s" and rng.random() < 0.7 else value(rng, c, n) for c in codes]
        return Message(destination=BUS_NAME, path=path, interface=iface, member=member,
                       signature="".join(codes), body=body)
    elif kind < 0.99:
        iface = rng.choice(["org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Peer"])
        member = rng.choice(["Introspect", "Ping", "GetMachineId", "Nope"])
        codes = []
        path = rng.choice([PATH, "/", "/org", "/org/schedcp"])
    else:  # over max_argument_bytes (1 MiB by default)
        member = rng.choice(["SubmitPolicy", "GetPolicy", "ListPolicies"])
        return Message(destination=BUS_NAME, path=PATH, interface=MANAGER, member=member,
                       signature="s", body=["p" * (1 << 20) + "x" * rng.randint(1, 4096)])
    return Message(destination=BUS_NAME, path=path, interface=iface, member=member,
                   signature="".join(codes), body=[value(rng, c, n) for c in codes])


class Run:
    """Counts outcomes and keeps the first violations."""

    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.bad: list[dict[str, Any]] = []

    def note(self, msg: Message, reply: Message | None, problem: str | None = None) -> None:
        if reply is None:
            outcome, problem = "no reply", problem or f"no reply in {REPLY_SECONDS:g} s"
        elif reply.message_type == MessageType.METHOD_RETURN:
            outcome = "ok"
        else:
            outcome = reply.error_name or "unnamed"
            if not outcome.startswith(NAMED):
                problem = "error not named org.schedcp.* or org.freedesktop.DBus.Error.*"
            elif outcome in DEFECTS:
                problem = "internal error"
        self.outcomes[outcome] += 1
        if problem and len(self.bad) < 20:
            text = reply.body[0] if reply is not None and reply.body else ""
            self.bad.append({"problem": problem, "interface": msg.interface,
                             "member": msg.member, "signature": msg.signature,
                             "body": repr(msg.body)[:300], "reply": outcome,
                             "text": str(text)[:300]})


async def call(bus: MessageBus, run: Run, msg: Message,
               steps: list[list[str]] | None = None) -> Message | None:
    try:
        reply = await asyncio.wait_for(bus.call(msg), REPLY_SECONDS)
    except TimeoutError:
        reply = None
    run.note(msg, reply)
    if steps is not None:
        outcome = "no reply" if reply is None else reply.error_name or "ok"
        steps.append([str(msg.member), outcome])
    return reply


async def scenario(bus: MessageBus, run: Run, rng: random.Random) -> list[list[str]]:
    """The state-changing path once, with a policy that matches no process.

    Returns each step as [member, outcome].
    """
    steps: list[list[str]] = []

    async def m(member: str, *body: str) -> Message | None:
        return await call(bus, run, Message(
            destination=BUS_NAME, path=PATH, interface=MANAGER, member=member,
            signature="s" * len(body), body=list(body)), steps)

    reply = await m("SubmitPolicy", policy(rng, rng.randint(0, 10**6)))
    if reply is not None and reply.message_type == MessageType.METHOD_RETURN:
        reply = await m("VerifyPolicy", reply.body[0])
    if reply is not None and reply.message_type == MessageType.METHOD_RETURN and reply.body[0]:
        token = reply.body[0]
        await m("PlanDeployment", token)
        dep = await m("Deploy", token)
        await m("Deploy", token)  # used twice: refused
        if dep is not None and dep.message_type == MessageType.METHOD_RETURN:
            for member in ("GetDeployment", "HoldDeployment", "ReleaseHold", "GetFeedback",
                           "Rollback", "GetDeployment"):
                await m(member, dep.body[0])
    await m("RotateVerifierKey")
    return steps


async def main(address: str, seed: int, calls: int, with_scenario: bool) -> None:
    rng = random.Random(seed)
    bus = await MessageBus(bus_address=address).connect()
    run = Run()
    walked = await scenario(bus, run, rng) if with_scenario else []
    gate = asyncio.Semaphore(INFLIGHT)

    async def one(n: int) -> None:
        async with gate:
            await call(bus, run, draw(rng, n))

    await asyncio.gather(*(one(n) for n in range(calls)))
    # The connection still works after everything it sent.
    status = await call(bus, run, Message(destination=BUS_NAME, path=PATH, interface=MANAGER,
                                          member="GetStatus"))
    bus.disconnect()
    print(json.dumps({"calls": sum(run.outcomes.values()), "outcomes": run.outcomes,
                      "bad": run.bad, "scenario": walked, "status_ok": status is not None
                      and status.message_type == MessageType.METHOD_RETURN}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]),
                     "--scenario" in sys.argv[4:]))
