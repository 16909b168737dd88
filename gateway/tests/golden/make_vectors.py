#!/usr/bin/env python3
"""Derives the audit log golden vectors from docs/audit-format.md, independently of the Rust.

Run from anywhere: `python3 gateway/tests/golden/make_vectors.py`. It rewrites, next to itself,

  audit-events.json   the events (inputs and expected canonical bytes, hashes), a checkpoint,
                      the anchor file text and an export manifest;
  audit-export.jsonl  a JSONL export of the same log, as `gatehouse audit export` writes it.

Only the Python 3 standard library is used: SHA-256 from hashlib and Ed25519 from the RFC 8032
reference algorithm below (checked against RFC 8032 test vector 1, and against the
`cryptography` package when it is installed). Nothing here calls or reads the Rust code; the
output is deterministic, so rerunning the script must leave both files unchanged.

The key below is a TEST-ONLY key. Its seed is published in this file and in the vectors.
"""

import hashlib
import json
import os
import sys
from decimal import Decimal

# ---------------------------------------------------------------------------------------------
# Ed25519 (RFC 8032, section 5.1), pure Python. Slow, not constant time: for test vectors only.

P = 2**255 - 19
L = 2**252 + 27742317777372353535851937790883648493
D = (-121665 * pow(121666, P - 2, P)) % P
SQRT_M1 = pow(2, (P - 1) // 4, P)


def _inv(x):
    return pow(x, P - 2, P)


def _add(a, b):
    x1, y1, z1, t1 = a
    x2, y2, z2, t2 = b
    aa = (y1 - x1) * (y2 - x2) % P
    bb = (y1 + x1) * (y2 + x2) % P
    cc = 2 * t1 * t2 * D % P
    dd = 2 * z1 * z2 % P
    e, f, g, h = bb - aa, dd - cc, dd + cc, bb + aa
    return (e * f % P, g * h % P, f * g % P, e * h % P)


def _mul(s, pt):
    q = (0, 1, 1, 0)
    while s > 0:
        if s & 1:
            q = _add(q, pt)
        pt = _add(pt, pt)
        s >>= 1
    return q


def _recover_x(y, sign):
    x2 = (y * y - 1) * _inv(D * y * y + 1) % P
    x = pow(x2, (P + 3) // 8, P)
    if (x * x - x2) % P != 0:
        x = x * SQRT_M1 % P
    if x & 1 != sign:
        x = P - x
    return x


_GY = 4 * _inv(5) % P
_GX = _recover_x(_GY, 0)
G = (_GX, _GY, 1, _GX * _GY % P)


def _encode_point(pt):
    x, y, z, _ = pt
    zi = _inv(z)
    x, y = x * zi % P, y * zi % P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _sha512_int(*parts):
    return int.from_bytes(hashlib.sha512(b"".join(parts)).digest(), "little")


def _expand(seed):
    h = hashlib.sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    return a, h[32:]


def ed25519_public(seed):
    a, _ = _expand(seed)
    return _encode_point(_mul(a, G))


def ed25519_sign(seed, msg):
    a, prefix = _expand(seed)
    pub = _encode_point(_mul(a, G))
    r = _sha512_int(prefix, msg) % L
    rs = _encode_point(_mul(r, G))
    k = _sha512_int(rs, pub, msg) % L
    s = (r + k * a) % L
    return rs + s.to_bytes(32, "little")


def _self_check_ed25519():
    # RFC 8032, 7.1, TEST 1 (empty message).
    seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    pub = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
    sig = bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
    )
    assert ed25519_public(seed) == pub, "Ed25519 public key derivation is wrong"
    assert ed25519_sign(seed, b"") == sig, "Ed25519 signing is wrong"


# ---------------------------------------------------------------------------------------------
# Canonical JSON (docs/audit-format.md, "Canonical JSON for detail").

U64_MAX = 2**64 - 1
I64_MIN = -(2**63)


def _parse_int(text):
    # Integers are kept exactly when they fit u64 (non-negative) or i64 (negative); "-0" and
    # integers outside those ranges become binary64 floats.
    v = int(text)
    if text.startswith("-") and v == 0:
        return -0.0
    if v > U64_MAX or v < I64_MIN:
        return float(text)
    return v


def parse_json(text):
    """Parses JSON text as the writer does: any literal with '.', 'e' or 'E' is a float."""
    return json.loads(text, parse_int=_parse_int, parse_float=float)


def format_float(x):
    """Shortest round-trip digits, laid out as docs/audit-format.md says."""
    if x != x or x in (float("inf"), float("-inf")):
        raise ValueError("non-finite numbers cannot occur in parsed JSON")
    sign = "-" if str(x).startswith("-") else ""  # keeps the sign of -0.0
    x = abs(x)
    if x == 0:
        return sign + "0.0"
    # repr() gives the shortest digit string that reads back as the same binary64 value.
    _, digits, exp = Decimal(repr(x)).as_tuple()
    digits = "".join(map(str, digits))
    stripped = digits.rstrip("0")
    exp += len(digits) - len(stripped)
    digits = stripped
    n = len(digits)
    point = n + exp  # value = 0.DIGITS * 10**point
    if 0 <= exp and point <= 16:
        body = digits + "0" * exp + ".0"
    elif 0 < point <= 16:
        body = digits[:point] + "." + digits[point:]
    elif -5 < point <= 0:
        body = "0." + "0" * (-point) + digits
    else:
        e = point - 1  # exponent: a sign always ("e+21", "e-7"), no leading zeros
        mantissa = digits if n == 1 else digits[0] + "." + digits[1:]
        body = mantissa + "e" + ("+" if e >= 0 else "-") + str(abs(e))
    return sign + body


def json_string(s):
    out = ['"']
    for ch in s:
        c = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\b":
            out.append("\\b")
        elif ch == "\f":
            out.append("\\f")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif c < 0x20:
            out.append("\\u%04x" % c)
        else:
            out.append(ch)  # everything else, non-ASCII included, as itself
    out.append('"')
    return "".join(out)


def dumps(v, sort_keys=True):
    """Compact JSON; with sort_keys, object keys in order of their UTF-8 bytes."""
    if v is None:
        return "null"
    if v is True:
        return "true"
    if v is False:
        return "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return format_float(v)
    if isinstance(v, str):
        return json_string(v)
    if isinstance(v, list):
        return "[" + ",".join(dumps(x, sort_keys) for x in v) + "]"
    if isinstance(v, dict):
        keys = sorted(v, key=lambda k: k.encode("utf-8")) if sort_keys else list(v)
        return "{" + ",".join(json_string(k) + ":" + dumps(v[k], sort_keys) for k in keys) + "}"
    if isinstance(v, Raw):
        return v.text
    raise TypeError(type(v))


class Raw:
    """Already-serialised JSON text, inserted verbatim."""

    def __init__(self, text):
        self.text = text


def canonical_detail(detail_json_text):
    v = parse_json(detail_json_text)
    if not isinstance(v, dict):
        v = {"value": v}
    return dumps(v)


# ---------------------------------------------------------------------------------------------
# Events (docs/audit-format.md, "Event encoding").

GENESIS = "0" * 64
TAG = "gatehouse-audit-event/v1"

# The controls each kind brings (only the kinds used below).
KIND_CONTROLS = {
    "gateway.start": ["8.15", "8.17"],
    "auth.failed": ["5.17", "8.5"],
    "access.decision": ["5.15", "8.3", "8.5"],
    "db.statement": ["8.15"],
    "session.cut": ["5.18", "6.5", "8.15"],
    "gateway.stop": ["8.15", "8.17"],
}


def control_key(c):
    parts = [int(p) if p.isdigit() else 2**32 - 1 for p in c.split(".")]
    parts += [2**32 - 1] * 2
    return (parts[0], parts[1])


def merge_controls(kind, extra):
    merged = sorted(KIND_CONTROLS[kind] + list(extra), key=control_key)  # stable
    out = []
    for c in merged:
        if not out or out[-1] != c:
            out.append(c)
    return out


def enc_str(s):
    b = s.encode("utf-8")
    return len(b).to_bytes(4, "big") + b


def enc_list(xs):
    return len(xs).to_bytes(4, "big") + b"".join(enc_str(x) for x in xs)


def canonical_bytes(e):
    out = enc_str(TAG) + enc_str(e["prev_hash"]) + e["seq"].to_bytes(8, "big")
    for f in ("ts", "kind", "actor", "resource", "action", "decision", "reason"):
        out += enc_str(e[f])
    out += enc_list(e["policy_ids"]) + enc_list(e["controls"])
    out += enc_str(e["session_id"]) + enc_str(e["detail"])
    return out


def checkpoint_message(seq, hash_hex, ts):
    return f"gatehouse-audit-checkpoint/v1\nseq={seq}\nhash={hash_hex}\nts={ts}\n".encode("utf-8")


def manifest_message(m):
    return (
        "gatehouse-audit-export/v1\n"
        f"first_seq={m['first_seq']}\nlast_seq={m['last_seq']}\ncount={m['count']}\n"
        f"first_prev_hash={m['first_prev_hash']}\nlast_hash={m['last_hash']}\n"
        f"from={m['from']}\nto={m['to']}\nexported_at={m['exported_at']}\n"
    ).encode("utf-8")


def b64(b):
    import base64

    return base64.b64encode(b).decode("ascii")


# ---------------------------------------------------------------------------------------------
# The log.

LONG_SQL = (
    "SELECT o.id, o.total, c.name FROM orders o JOIN customers c ON c.id = o.customer_id "
    "WHERE c.name = 'zoë' AND o.note <> '✓' AND o.created_at >= now() - interval '30 days' "
    "ORDER BY o.created_at DESC, o.id DESC LIMIT 100; -- the statement text is over 255 bytes "
    "long, so its length prefix needs a second byte"
)

INPUTS = [
    {
        "ts": "2026-11-28T19:00:00.000000Z",
        "kind": "gateway.start",
        "actor": "",
        "resource": "",
        "action": "",
        "decision": "",
        "reason": "",
        "policy_ids": [],
        "extra_controls": [],
        "session_id": "",
        "detail_input": "{}",
    },
    {
        "ts": "2026-11-28T19:00:01.000001Z",
        "kind": "auth.failed",
        "actor": "zoë",
        "resource": "orders-db",
        "action": "connect",
        "decision": "deny",
        "reason": "token expired\n\tat\u0007 \"exp\" 🙂",
        "policy_ids": [],
        "extra_controls": [],
        "session_id": "",
        "detail_input": '{"remote":"203.0.113.7:51234","attempt":3,"front_door":"pg"}',
    },
    {
        "ts": "2026-11-28T19:00:02.123456Z",
        "kind": "access.decision",
        "actor": "zoë@example.com",
        "resource": "orders-db 🐘",
        "action": "connect",
        "decision": "allow",
        "reason": "permitted by policy",
        "policy_ids": ["p-10", "p-2", "engineering-read"],
        "extra_controls": ["8.32", "5.15", "8.2", "5.3"],
        "session_id": "3f9c0d2e-7b1a-4c55-9e61-0a1b2c3d4e5f",
        "detail_input": (
            '{"zeta":{"y":[3,1,2],"x":-42,"w":{}},"role":"read","groups":["eng","ops"],'
            '"ttl_s":3600,"big":18446744073709551615,"huge":18446744073709551616,'
            '"neg":-9223372036854775808,"neg_zero":-0,"ratio":0.25,"float_one":1.0,'
            '"exp":1E2,"tiny":1e-7,"small":0.00001,"large":1e21,"flag":true,"off":false,'
            '"none":null,"empty":[]}'
        ),
    },
    {
        "ts": "2026-11-28T19:00:02.500000Z",
        "kind": "db.statement",
        "actor": "zoë@example.com",
        "resource": "orders-db 🐘",
        "action": "query",
        "decision": "",
        "reason": "",
        "policy_ids": [],
        "extra_controls": [],
        "session_id": "3f9c0d2e-7b1a-4c55-9e61-0a1b2c3d4e5f",
        "detail_input": json.dumps(
            {
                "sql": LONG_SQL,
                "rows": 12,
                "duration_ms": 1.5,
                "Z": "upper case sorts before lower case",
                "a": "ascii",
                "é": "U+00E9",
                "\uff21": "U+FF21, before the emoji in UTF-8 and code point order",
                "😀": "U+1F600, before U+FF21 in UTF-16 order (do not sort that way)",
                "esc": "quote\" backslash\\ slash/ bs\b ff\f nl\n cr\r tab\t nul\u0000 "
                "us\u001f del\u007f nbsp\u00a0 ls\u2028 emoji😀",
            },
            ensure_ascii=True,
        ),
    },
    {
        "ts": "2026-11-28T19:00:59.999999Z",
        "kind": "session.cut",
        "actor": "admin@example.com",
        "resource": "orders-db 🐘",
        "action": "cut",
        "decision": "",
        "reason": "user disabled",
        "policy_ids": ["leavers"],
        "extra_controls": ["8.15", "5.18", "8.16"],
        "session_id": "3f9c0d2e-7b1a-4c55-9e61-0a1b2c3d4e5f",
        "detail_input": '"cut by admin"',
    },
    {
        "ts": "2026-11-28T19:01:00.000000Z",
        "kind": "gateway.stop",
        "actor": "",
        "resource": "",
        "action": "",
        "decision": "",
        "reason": "",
        "policy_ids": [],
        "extra_controls": [],
        "session_id": "",
        "detail_input": '{"signal":"SIGTERM","sessions":0}',
    },
]

CHECKPOINT_TS = "2026-11-28T19:01:00.000100Z"
EXPORT = {"from": "", "to": "2026-11-29T00:00:00.000000Z", "exported_at": "2026-11-28T19:05:00.000000Z"}
SEED = hashlib.sha256(b"gatehouse golden vectors: TEST-ONLY Ed25519 key, never use it").digest()


def pkcs8_v2_pem(seed, pub):
    # RFC 8410 OneAsymmetricKey v2 (version 1) with the public key, as ring generates it.
    der = (
        bytes.fromhex("3053020101300506032b657004220420")
        + seed
        + bytes.fromhex("a123032100")
        + pub
    )
    body = b64(der)
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN PRIVATE KEY-----\n" + "\n".join(lines) + "\n-----END PRIVATE KEY-----\n"


def main():
    _self_check_ed25519()
    pub = ed25519_public(SEED)
    try:  # a second, independent Ed25519 when it is available
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        k = Ed25519PrivateKey.from_private_bytes(SEED)
        assert k.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) == pub
        assert k.sign(b"gatehouse") == ed25519_sign(SEED, b"gatehouse")
        cross = "cross-checked with the cryptography package"
    except ImportError:
        cross = "not cross-checked (cryptography not installed)"
    key_id = hashlib.sha256(pub).digest()[:8].hex()

    events = []
    prev = GENESIS
    for seq, inp in enumerate(INPUTS, start=1):
        stored = {
            "seq": seq,
            "ts": inp["ts"],
            "kind": inp["kind"],
            "actor": inp["actor"],
            "resource": inp["resource"],
            "action": inp["action"],
            "decision": inp["decision"],
            "reason": inp["reason"],
            "policy_ids": inp["policy_ids"],
            "controls": merge_controls(inp["kind"], inp["extra_controls"]),
            "session_id": inp["session_id"],
            "detail": canonical_detail(inp["detail_input"]),
            "prev_hash": prev,
        }
        cb = canonical_bytes(stored)
        stored["hash"] = hashlib.sha256(cb).hexdigest()
        events.append(
            {
                "input": dict(inp, seq=seq, prev_hash=prev),
                "stored": stored,
                "canonical_bytes_hex": cb.hex(),
                "canonical_bytes_len": len(cb),
            }
        )
        prev = stored["hash"]

    last = events[-1]["stored"]
    cp_msg = checkpoint_message(last["seq"], last["hash"], CHECKPOINT_TS)
    checkpoint = {
        "seq": last["seq"],
        "hash": last["hash"],
        "ts": CHECKPOINT_TS,
        "key_id": key_id,
        "signature": b64(ed25519_sign(SEED, cp_msg)),
    }
    anchor = dumps(checkpoint, sort_keys=False)

    manifest = {
        "first_seq": events[0]["stored"]["seq"],
        "last_seq": last["seq"],
        "count": len(events),
        "first_prev_hash": events[0]["stored"]["prev_hash"],
        "last_hash": last["hash"],
        "from": EXPORT["from"],
        "to": EXPORT["to"],
        "exported_at": EXPORT["exported_at"],
        "key_id": key_id,
    }
    m_msg = manifest_message(manifest)
    manifest["signature"] = b64(ed25519_sign(SEED, m_msg))

    doc = {
        "about": (
            "Golden vectors for the Gatehouse audit log (docs/audit-format.md). Generated by "
            "make_vectors.py, independently of the Rust code; do not edit by hand."
        ),
        "genesis_hash": GENESIS,
        "test_key": {
            "WARNING": "TEST-ONLY key: its private seed is public. Never use it to sign a real log.",
            "ed25519_seed_hex": SEED.hex(),
            "public_key_hex": pub.hex(),
            "public_key_base64": b64(pub),
            "key_id": key_id,
            "pkcs8_pem": pkcs8_v2_pem(SEED, pub),
            "ed25519": "RFC 8032 reference algorithm in make_vectors.py; " + cross,
        },
        "events": events,
        "checkpoint": {
            "checkpoint": checkpoint,
            "signed_message_hex": cp_msg.hex(),
            "signed_message_text": cp_msg.decode("utf-8"),
            "anchor_file_text": anchor,
        },
        "manifest": {
            "manifest": manifest,
            "signed_message_hex": m_msg.hex(),
            "signed_message_text": m_msg.decode("utf-8"),
        },
    }

    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "audit-events.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")

    # The export: event lines, the checkpoint line after its event, the manifest line last.
    lines = []
    for ev in events:
        s = ev["stored"]
        line = {k: s[k] for k in ("seq", "ts", "kind", "actor", "resource", "action",
                                  "decision", "reason", "policy_ids", "controls",
                                  "session_id")}
        line = dict({"type": "event"}, **line)
        line["detail"] = Raw(s["detail"])  # the detail object, its text as stored
        line["prev_hash"] = s["prev_hash"]
        line["hash"] = s["hash"]
        lines.append(dumps(line, sort_keys=False))
        if s["seq"] == checkpoint["seq"]:
            lines.append(dumps(dict(checkpoint, type="checkpoint"), sort_keys=False))
    lines.append(dumps(dict(manifest, type="manifest"), sort_keys=False))
    with open(os.path.join(here, "audit-export.jsonl"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {len(events)} events, 1 checkpoint, 1 manifest; key_id {key_id}; Ed25519 {cross}")


if __name__ == "__main__":
    sys.exit(main())
