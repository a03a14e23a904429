#!/usr/bin/env python3
"""Writes the seed corpora in tests/fuzz/corpus/ (run from anywhere; idempotent).

fuzz_proto_smtp seeds are scripts in the format described at the top of
fuzz_proto_smtp.c: two parameter bytes, then records. Each seed is a complete, realistic
session so that the fuzzer starts from deep states (after STARTTLS, in DATA, in BDAT...).
"""
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# ---- fuzz_proto_smtp -------------------------------------------------------------------
SMTP, LMTP = 0, 1
C_NONE, C_STLS, C_IMPL = 0, 1, 2
U_NONE, U_STLS, U_IMPL = 0, 1, 2
P_NONE, P_MAY, P_ENCRYPT, P_FPR, P_VERIFY = 0, 1, 2, 3, 4


def params(proto=SMTP, ctls=C_NONE, cenc=False, xclient=False, testing=False, v6=False,
           utls=U_NONE, upol=P_NONE, defer=False):
    """defer: greeting = local (the module greets; the upstream is connected once it asks)"""
    b0 = proto | (ctls << 1) | (8 if cenc else 0) | (16 if xclient else 0) | \
        (32 if testing else 0) | (64 if v6 else 0)
    b1 = utls | (upol << 2) | (32 if defer else 0)
    return bytes([b0, b1])


def data(op, text):
    raw = text.encode() if isinstance(text, str) else text
    out = b""
    for i in range(0, max(len(raw), 1), 255):
        chunk = raw[i:i + 255]
        out += bytes([op, len(chunk)]) + chunk
    return out


def cl(text):
    return data(0, text)


def up(text):
    return data(2, text)


def rep_cl(text, arg):
    """client bytes repeated (arg + 1) * 64 times"""
    raw = text.encode()
    return bytes([1 | (arg << 3), len(raw)]) + raw


def rep_up(text, arg):
    """upstream bytes repeated (arg + 1) * 64 times"""
    raw = text.encode()
    return bytes([3 | (arg << 3), len(raw)]) + raw


def tls(side="first"):
    return bytes([4 | (8 if side == "up" else 0)])


def fail(why):
    return bytes([5 | (why << 3)])


EOF_ = bytes([6])
RETRY = bytes([7])
PF_UNREACHABLE, PF_LOST, PF_TLS_POLICY, PF_IDLE, PF_SHUTDOWN = range(5)

GREET = "220 mx.test ESMTP\r\n"
CAPS = "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n" \
       "250-XCLIENT NAME ADDR PORT PROTO HELO\r\n250-CHUNKING\r\n250 8BITMIME\r\n"
TX = "MAIL FROM:<a@client.test>\r\nRCPT TO:<b@mx.test>\r\nDATA\r\n"
TX_REPLY = "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 go\r\n"
BODY = "Subject: hi\r\n\r\nMAIL FROM:<x@y>\r\nSTARTTLS\r\n..dot\r\n.\r\n"

proto_seeds = {
    "inject_encrypt": params(utls=U_STLS, upol=P_ENCRYPT)
    + cl("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n") + up(GREET) + up(CAPS)
    + up("220 2.0.0 go\r\n250 injected\r\n") + tls("up") + up(CAPS) + up("250 2.1.0 Ok\r\n")
    + cl("RCPT TO:<b@mx.test>\r\nDATA\r\n") + up("250 Ok\r\n354 go\r\n") + cl(BODY + "QUIT\r\n")
    + up("250 queued\r\n221 bye\r\n"),
    "inject_not_offered": params(utls=U_STLS, upol=P_VERIFY) + cl("EHLO client.test\r\n")
    + up(GREET) + up("250-mx.test\r\n250-STARTTLSX\r\n250 SIZE\r\n") + up("221 bye\r\n"),
    "inject_refused_testing": params(utls=U_STLS, upol=P_VERIFY, testing=True)
    + cl("EHLO client.test\r\n") + up(GREET) + up(CAPS) + up("454 4.7.0 no\r\n") + up(CAPS)
    + cl("QUIT\r\n") + up("221 bye\r\n"),
    "inject_may_retry": params(utls=U_STLS, upol=P_MAY) + cl("EHLO client.test\r\n")
    + up(GREET) + up(CAPS) + up("220 go\r\n") + RETRY + up(GREET) + up(CAPS) + cl(TX)
    + up(TX_REPLY) + cl(BODY) + up("250 queued\r\n"),
    "inject_lmtp": params(proto=LMTP, utls=U_STLS, upol=P_FPR) + up(GREET) + up(CAPS)
    + up("220 go\r\n") + tls("up") + cl("LHLO client.test\r\n") + up(CAPS)
    + cl("MAIL FROM:<a@b>\r\nRCPT TO:<u1@d>\r\nRCPT TO:<u2@d>\r\nRCPT TO:<u3@d>\r\nDATA\r\n")
    + up("250 Ok\r\n250 Ok\r\n550 no\r\n250 Ok\r\n354 go\r\n") + cl("x\r\n.\r\n")
    + up("250 u1\r\n452 u2\r\n250 u3\r\n"),
    "inject_policy_fail": params(utls=U_STLS, upol=P_VERIFY) + cl("EHLO c\r\n") + up(GREET)
    + up(CAPS) + up("220 go\r\n") + fail(PF_TLS_POLICY),
    "terminate_encrypt": params(ctls=C_STLS, cenc=True) + up(GREET)
    + cl("EHLO client.test\r\n") + up(CAPS) + cl("MAIL FROM:<a@b>\r\nAUTH PLAIN x\r\nNOOP\r\n")
    + up("250 ok\r\n") + cl("STARTTLS\r\nMAIL FROM:<evil@b>\r\n") + tls() + up("250 reset\r\n")
    + cl("EHLO client.test\r\n") + up(CAPS) + cl("AUTH LOGIN\r\n") + up("334 VXNlcm5hbWU6\r\n")
    + cl("dXNlcg==\r\n") + up("334 UGFzc3dvcmQ6\r\n") + cl("cGFzcw==\r\n") + up("235 ok\r\n")
    + cl(TX) + up(TX_REPLY) + cl(BODY) + up("250 queued\r\n") + cl("QUIT\r\n") + up("221 bye\r\n"),
    "terminate_pipelined": params(ctls=C_STLS) + up(GREET)
    + cl("EHLO c\r\nNOOP\r\nSTARTTLS x\r\nNOOP\r\nMAIL FROM:<a@b>\r\nSTARTTLS\r\nRSET\r\n")
    + up(CAPS) + up("250 ok\r\n250 ok\r\n") + up("250 ok\r\n") + cl("RSET\r\n") + up("250 ok\r\n")
    + cl("STARTTLS\r\n") + tls() + up("250 ok\r\n") + cl("STARTTLS\r\n"),
    "bridge": params(ctls=C_STLS, cenc=True, utls=U_STLS, upol=P_ENCRYPT) + cl("EHLO c\r\n")
    + up(GREET) + up(CAPS) + up("220 go\r\n") + tls("up") + up(CAPS) + cl("STARTTLS\r\n")
    + tls() + up("250 ok\r\n") + cl("EHLO c\r\n") + up(CAPS),
    "implicit_client": params(ctls=C_IMPL, utls=U_IMPL, upol=P_VERIFY) + up(GREET)
    + cl("EHLO c\r\nSTARTTLS\r\n") + up(CAPS) + cl(TX) + up(TX_REPLY) + cl(BODY)
    + fail(PF_LOST),
    "plain_bdat": params() + up(GREET) + cl("EHLO c\r\n") + up(CAPS)
    + cl("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nBDAT 11\r\n\r\n.\r\nQUIT\r\nBDAT 3 LAST\r\nabcNOOP\r\n")
    + up("250 ok\r\n250 ok\r\n250 11\r\n250 queued\r\n250 ok\r\n") + cl("BDAT x\r\nQUIT\r\n")
    + up("221 bye\r\n"),
    "plain_lf_body": params() + up("220 mx\n") + cl("HELO c\nMAIL FROM:<a@b>\nRCPT TO:<c@d>\nDATA\n")
    + up("250 mx\n250 ok\n250 ok\n354 go\n") + cl("a\nb\r.\r\n.\nQUIT\n")
    + up("250 ok\n221 bye\n"),
    "plain_eof": params() + up(GREET) + cl("NOOP\r\nQUIT\r\n") + EOF_ + up("250 ok\r\n221 bye\r\n"),
    "plain_lost_in_data": params() + up(GREET) + cl(TX) + up(TX_REPLY) + cl("partial\r\n")
    + fail(PF_LOST),
    "plain_421": params() + up(GREET) + cl("NOOP\r\n") + up("250 ok\r\n421 4.3.2 bye\r\n"),
    "xclient": params(xclient=True) + up(GREET) + cl("EHLO client.test\r\nMAIL FROM:<a@b>\r\n")
    + up(CAPS) + up("220 mx\r\n") + up(CAPS) + up("250 ok\r\n"),
    "xclient_v6_helo": params(xclient=True, v6=True, ctls=C_STLS, cenc=True) + up(GREET)
    + cl("HELO client.test\r\n") + up("250-mx\r\n250 XCLIENT ADDR PROTO HELO\r\n")
    + up("550 no\r\n") + up("250 mx\r\n") + cl("STARTTLS\r\n") + tls() + up("250 ok\r\n"),
    "long_command": params(ctls=C_STLS, cenc=True) + up(GREET) + cl("EHLO c\r\nNOOP ")
    + rep_cl("aaaaaaaaaaaaaaaa", 15) + cl("QUIT\r\nNOOP\r\n") + up(CAPS) + up("250 ok\r\n"),
    "big_body": params() + up(GREET) + cl(TX) + up(TX_REPLY)
    + rep_cl("line of text\r\n..dot\r\nbare\nlf\r", 20) + cl("\r\n.\r\nQUIT\r\n")
    + up("250 ok\r\n221 bye\r\n"),
    "big_bdat": params(proto=LMTP) + up(GREET)
    + cl("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nRCPT TO:<e@f>\r\nBDAT 32768 LAST\r\n")
    + rep_cl("0123456789abcdef", 31) + cl("NOOP\r\n")
    + up("250 ok\r\n250 ok\r\n250 ok\r\n250 c\r\n250 e\r\n250 ok\r\n"),
    "many_reply_lines": params(utls=U_STLS, upol=P_VERIFY) + up(GREET) + up("250-mx\r\n")
    + rep_up("250-X\r\n", 7) + up("250 STARTTLS\r\n"),
    "long_reply_line": params() + up(GREET) + cl("EHLO c\r\n") + up("250-mx\r\n250-")
    + rep_up("xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 0) + up("\r\n250 SIZE\r\n"),
    "unreachable": params(utls=U_STLS, upol=P_ENCRYPT) + cl("EHLO c\r\n") + fail(PF_UNREACHABLE),
    # greeting = local: the upstream is connected after the first whole client line
    "defer_plain": params(defer=True) + cl("EHLO cli") + cl("ent.test\r\n" + TX) + up(GREET)
    + up(CAPS) + up(TX_REPLY) + cl(BODY + "QUIT\r\n") + up("250 queued\r\n221 bye\r\n"),
    "defer_inject": params(utls=U_STLS, upol=P_VERIFY, defer=True)
    + cl("EHLO client.test\r\nMAIL FROM:<a@client.test>\r\n") + up(GREET) + up(CAPS)
    + up("220 2.0.0 go\r\n250 injected\r\n") + tls("up") + up(CAPS) + up("250 2.1.0 Ok\r\n"),
    "defer_terminate_pipelined": params(ctls=C_STLS, cenc=True, defer=True)
    + cl("EHLO c\r\nSTARTTLS\r\nMAIL FROM:<evil@b>\r\n") + up(GREET) + up(CAPS) + tls()
    + up("250 reset\r\n") + cl("EHLO c\r\n") + up(CAPS),
    "defer_quit": params(defer=True) + cl("QUIT\r\n"),
    "defer_long_then_lost": params(defer=True) + cl("NOOP ") + rep_cl("aaaaaaaaaaaaaaaa", 15)
    + cl("QUIT\r\nNOOP\r\n") + fail(PF_LOST),
    "defer_lmtp_refused": params(proto=LMTP, defer=True) + cl("LHLO c\r\n")
    + up("554 5.7.1 no\r\n"),
}

# ---- fuzz_ehlo: flags, cap selector, text ---------------------------------------------
ehlo_seeds = {
    "structured": bytes([0, 0]) + b"mx.test\nPIPELINING\nSTARTTLS\nAUTH PLAIN LOGIN\nAUTH=LOGIN\n"
    b"XCLIENT NAME ADDR\nXFORWARD NAME\nSTARTTLSX\nX-STARTTLS\nSIZE 1000\n8BITMIME",
    "structured_add_hide": bytes([3, 1]) + b"STARTTLS\nauth plain\nstarttls\nSIZE",
    "structured_lf_short": bytes([7, 2]) + b"mx.test\nAUTH PLAIN\nCHUNKING",
    "raw": bytes([8, 0]) + b"250-mx.test\r\n250-STARTTLS\r\n250-AUTH PLAIN\r\n250 SIZE\r\n",
    "raw_lf_add": bytes([11, 5]) + b"250-mx.test\n250 STARTTLS\n",
    "raw_garbage": bytes([9, 1]) + b"25\n\n\r\n250",
}


def config_seeds():
    seeds = {}
    for name in ("starttls-proxy.conf", "demo.conf"):
        path = os.path.join(ROOT, "etc", name)
        if os.path.exists(path):
            text = open(path).read()
            text = re.sub(r"@[A-Z_]+@", "2525", text)  # demo.conf placeholders
            seeds[name] = text.encode()
    seeds["minimal"] = b"[route r]\nlisten = 127.0.0.1:2525\nprotocol = smtp\nupstream = 127.0.0.1:25\n"
    # entries separated by blanks and tabs, bad ones after a good one (the list's room was
    # once counted by commas: regress-client-allow-blanks is the finding)
    seeds["client_allow_blanks"] = (b"[route r]\nlisten = 127.0.0.1:2525\nprotocol = smtp\n"
                                    b"upstream = 127.0.0.1:25\n"
                                    b"client_allow = 10.0.0.1 10.0.0.2\t10.0.0.3 ::53 { :\n")
    seeds["errors"] = (b"[global]\nworkers = many\n[global]\n[route a b]\nlisten = 1.2.3.4\n"
                       b"[route r]\nlisten=[::1]:99999\nupstream_policy = sometimes\n"
                       b"connect_timeout = 5h\nupstream_fingerprint = sha256:zz\n[bogus]\n")
    seeds["full_route"] = (
        b"[global]\nworkers = 2\nlog_level = debug\nlog_format = json\nhelo_name = p.test\n"
        b"max_connections = 10\ndrain_timeout = 250ms\n\n"
        b"[route in]\nlisten = 0.0.0.0:587\nprotocol = lmtp\nclient_tls = starttls\n"
        b"client_policy = encrypt\nupstream = 10.0.0.5:24\nupstream_tls = none\nxclient = yes\n"
        b"client_min_tls = 1.3\nidle_timeout = 5m\nmax_connections_per_client = 3\n\n"
        b"[route out]\nlisten = [::1]:2525 ; comment\nprotocol = smtp # comment\n"
        b"upstream = smtp.example.com:587\nupstream_tls = starttls\nupstream_policy = fingerprint\n"
        b"upstream_fingerprint = sha256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08\n"
        b"policy_mode = testing\nupstream_name = smtp.example.com\n")
    return seeds


def write(name, seeds):
    d = os.path.join(HERE, "corpus", name)
    os.makedirs(d, exist_ok=True)
    for k, v in seeds.items():
        with open(os.path.join(d, k), "wb") as f:
            f.write(v)


write("proto_smtp", proto_seeds)
write("ehlo", ehlo_seeds)
write("config", config_seeds())


def ticket_key_seeds():
    k1 = bytes((i * 7 + 1) & 0xFF for i in range(80)).hex().encode()
    k2 = bytes((i * 11 + 3) & 0xFF for i in range(80)).hex().encode()
    return {
        "one": k1 + b"\n",
        "rotated": b"# rotated\n\n  " + k2.upper() + b"  \r\n" + k1,
        "errors": k1[:100] + b"\n" + k1[:20] + b"zz" + k1[22:] + b"\n" + k1 + b" " + k2 + b"\n",
        "empty": b"# nothing\n",
    }


write("ticket_keys", ticket_key_seeds())


def mtasts_seeds():
    return {
        "policy": b"\x00version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\n"
                  b"mx: *.example.net\r\nmax_age: 604800\r\n",
        "policy_none": b"\x00version: STSv1\nmode: none\nmax_age: 0\n",
        "policy_bad": b"\x00version: STSv2\nmode: Enforce\nmx: a..b\nmax_age: -1\nfoo\n",
        "txt": b"\x01v=spf1 -all\nv=STSv1; id=20160831085700Z;\next=1",
        "txt_two": b"\x01v=STSv1; id=1\nv=STSv1; id=2",
        # an error after an mx line left the pattern in the output (found by this harness)
        "regress-mx-kept-after-error": b"\x00mx: a.b\nversion STSv1\n",
    }


write("mtasts", mtasts_seeds())


def proxyproto_seeds():
    """byte 0: the version the route expects (0 v1, 1 v2), then what the client sends."""
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    v4 = sig + b"\x21\x11\x00\x0c" + bytes([127, 0, 0, 2, 127, 0, 0, 1, 0x30, 0x39, 0, 25])
    v6 = sig + b"\x21\x21\x00\x24" + bytes(15) + b"\x02" + bytes(15) + b"\x01" + b"\xff\xff\x00\x19"
    tlv = sig + b"\x21\x11\x00\x1b" + bytes([10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 1, 187]) \
        + b"\x01\x00\x02h2\x04\x00\x00\x03\x00\x04abcd"
    return {
        "v1_tcp4": b"\x00PROXY TCP4 127.0.0.2 127.0.0.1 12345 25\r\nEHLO x\r\n",
        "v1_tcp6": b"\x00PROXY TCP6 2001:db8::7 ::ffff:192.0.2.1 65535 0\r\n",
        "v1_unknown": b"\x00PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:fffe 65535 65535\r\n",
        "v1_on_v2": b"\x01PROXY TCP4 127.0.0.2 127.0.0.1 12345 25\r\n",
        "v2_tcp4": b"\x01" + v4 + b"\x16\x03\x01\x00\x05hello",
        "v2_tcp6": b"\x01" + v6,
        "v2_tlv": b"\x01" + tlv,
        "v2_local": b"\x01" + sig + b"\x20\x00\x00\x00",
        "v2_unix": b"\x01" + sig + b"\x21\x31\x00\xd8" + bytes(216),
        "v2_on_v1": b"\x00" + v4,
        "smtp": b"\x01EHLO client.example\r\n",
    }


write("proxyproto", proxyproto_seeds())


# ---- fuzz_proto_imap: byte 0 rewrite ops, bytes 1-2 a split point, then one side's bytes
def imap_seeds():
    def s(ops, cut, text):
        return bytes([ops, cut & 0xFF, cut >> 8]) + text
    return {
        "commands": s(1, 10, b"A1 CAPABILITY\r\nA2 STARTTLS\r\nA3 LOGIN a b\r\nA4 UID FETCH 1 (FLAGS)\r\n"),
        "login_literals": s(4, 15, b"A1 LOGIN {4}\r\nuser {6}\r\nsecret\r\nA2 LOGOUT\r\n"),
        "append_starttls": s(2, 30, b"A2 APPEND INBOX (\\Seen) {16}\r\nA3 STARTTLS\r\nx\r\n\r\n"
                             b"A4 APPEND INBOX {13+}\r\nA5 STARTTLS\r\n\r\nA6 NOOP\r\n"),
        "literal8": s(0, 25, b"A5 APPEND INBOX ~{3}\r\na\0b\r\nA6 APPEND INBOX ~{2+}\r\n\0\n\r\n"),
        "greeting": s(15, 40, b"* OK [CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE "
                      b"LITERAL+ STARTTLS AUTH=PLAIN COMPRESS=DEFLATE] Dovecot ready.\r\n"
                      b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n"
                      b"A1 OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Logged in\r\n"),
        "fetch": s(2, 20, b"* 1 FETCH (BODY[] {12}\r\nA1 OK done\r\n)\r\n+ go ahead\r\n"
                   b"* 2 FETCH (BODY[HEADER] {2}\r\nh\n BODY[TEXT] {2}\r\nt\n)\r\n"
                   b"A1 OK FETCH completed\r\n* PREAUTH hi\r\n* BYE [UNAVAILABLE] x\r\n"),
        "bounds": s(3, 200, b"B1 APPEND INBOX {301}\r\nB2 NOOP\r\nB3 X {99999999999999999999+}\r\n"
                    + b"x" * 300 + b"\r\nB4 NOOP\r\n"),
    }


write("proto_imap", imap_seeds())


# ---- fuzz_imap_session: fuzz_session.h scripts (bytes 0-1 route, then op records; the last
# byte also chooses the cut of the third run)
def imap_session_seeds():
    def rec(op, text):
        out = b""
        for i in range(0, len(text), 255):
            part = text[i:i + 255]
            out += bytes([op, len(part)]) + part
        return out

    def c(text):
        return rec(0, text)

    def u(text):
        return rec(2, text)

    tls_client, tls_up, eof = bytes([4]), bytes([4 | 8]), bytes([6])
    greet = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ STARTTLS AUTH=PLAIN] ready\r\n"
    # byte 0: client_tls starttls = 2, encrypt = 8; byte 1: upstream starttls = 1,
    # implicit = 2; upstream_policy encrypt = 2 << 2
    return {
        "inject": bytes([0, 1 | 8]) + c(b"A1 LOGIN a b\r\n") + u(greet)
        + u(b"* OK [ALERT] fake\r\n@ OK go\r\nA1 OK injected\r\n") + tls_up
        + u(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN COMPRESS=DEFLATE\r\nP0 OK done\r\n")
        + u(b"A1 OK [CAPABILITY IMAP4rev1 IDLE STARTTLS] in\r\n") + eof + b"\x11",
        "terminate": bytes([2 | 8, 0]) + u(b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] hi\r\n")
        + c(b"A1 LOGIN a b\r\nA2 CAPABILITY\r\n") + u(b"* CAPABILITY IMAP4rev1\r\nA2 OK done\r\n")
        + c(b"A3 STARTTLS\r\nA4 LOGIN evil x\r\n") + tls_client + c(b"A5 LOGIN a b\r\n")
        + u(b"A5 OK [CAPABILITY IMAP4rev1 STARTTLS COMPRESS=DEFLATE] in\r\n") + b"\x07",
        "compress": bytes([2, 0]) + u(b"* PREAUTH [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] hi\r\n")
        + c(b"A1 COMPRESS DEFLATE\r\n\x01\x02") + u(b"A1 OK on\r\n\xff\xfe* CAPABILITY STARTTLS\r\n")
        + c(b"\x03A2 STARTTLS\r\n") + bytes([5]) + b"\x21",
        "literals": bytes([2, 0]) + u(b"* OK hi\r\n") + c(b"A1 APPEND INBOX {13}\r\n")
        + u(b"+ go\r\n") + c(b"A2 STARTTLS\r\n\r\nB1 APPEND INBOX {13+}\r\nB2 STARTTLS\r\n\r\n")
        + u(b"A1 OK x\r\n") + u(b"B1 OK x\r\n")
        + c(b"C1 FETCH 1 BODY[]\r\n") + u(b"* 1 FETCH (BODY[] {12}\r\nC1 OK done\r\n)\r\nC1 OK\r\n")
        + c(b"D1 IDLE\r\n") + u(b"+ idling\r\n") + c(b"DONE\r\n") + u(b"D1 OK\r\n") + b"\x05",
        "bridge": bytes([2 | 8, 1 | 16]) + u(greet) + u(b"P0 OK go\r\n") + tls_up
        + u(b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\nP0 OK\r\n") + c(b"A1 STARTTLS\r\n")
        + tls_client + c(b"A2 AUTHENTICATE PLAIN\r\n") + u(b"+ \r\n") + c(b"AGEAYg==\r\n")
        + u(b"A2 OK in\r\n") + eof + b"\x3f",
        "preauth": bytes([0, 1 | 8]) + u(b"* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n") + b"\x01",
        "long": bytes([2, 0]) + u(b"* OK hi\r\n") + bytes([1 | 8 * 3, 40]) + b"A" * 40 + c(b"\r\n")
        + bytes([3 | 8 * 2, 20]) + b"* 1 EXISTS\r\n* 2 EX" + b"\x02",
    }


write("imap_session", imap_session_seeds())


# ---- fuzz_admin: what a client sends to admin_listen
def admin_seeds():
    return {
        "metrics": b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:9100\r\nAccept: */*\r\n\r\n",
        "healthz_lf": b"GET /healthz HTTP/1.0\n\n",
        "readyz_query": b"GET /readyz?verbose=1 HTTP/1.1\r\n\r\n",
        "post": b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
        "garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n\n",
        "two_tokens": b"GET /healthz\r\n\r\n",
        "long_tokens": b"GETGETGETGETGETGET /" + b"a" * 210 + b"HTTP/1.1 HTTP/1.1\r\n\r\n",
        "long_line": b"GET /" + b"x" * 260 + b" HTTP/1.1\r\n\r\n",
        "nul": b"GET /healthz\x00 HTTP/1.1\r\n\r\n",
        "tabs": b"\t GET\t/metrics\vHTTP/1.1\f\r\n\r\n",
        "incomplete": b"GET /metrics HTTP/1.1\r\nHost: x\r\n",
        "oversized": b"GET /metrics HTTP/1.1\r\n" + b"X-Pad: " + b"p" * 4080 + b"\r\n",
    }


write("admin", admin_seeds())


# ---- fuzz_probe: byte 0 the kind (probe.h's enum probe_reply_kind), byte 1 the text
# buffer (an index into 1, 2, 5, 16, 64, 300, 512, 1024, 2048, 4096), then the server's bytes
def probe_seeds():
    SMTP, IMAP_GREETING, IMAP_CAPABILITY, IMAP_STARTTLS = 0, 1, 2, 3
    POP3_GREETING, POP3_CAPA, POP3_STLS, LINE = 4, 5, 6, 7

    def s(kind, cap, text):
        return bytes([kind, cap]) + text
    return {
        "smtp_greeting": s(SMTP, 7, b"220 mx.example.com ESMTP Postfix\r\n"),
        "smtp_greeting_multi": s(SMTP, 7, b"220-mx.example.com ESMTP\r\n220-second\r\n220 third\r\n"),
        "smtp_ehlo": s(SMTP, 9, b"250-mx.example.com\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n"
                       b"250-STARTTLS\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\nextra\r\n"),
        "smtp_ehlo_no_tls": s(SMTP, 9, b"250-mx\r\n250-STARTTLSX\r\n250 SIZE\r\n"),
        "smtp_ehlo_small_text": s(SMTP, 3, b"250-mx.example.com\r\n250-" + b"X" * 80 + b"\r\n250 STARTTLS\r\n"),
        "smtp_refused": s(SMTP, 9, b"454 4.7.0 TLS not available due to local problem\r\n"),
        "smtp_bad": s(SMTP, 7, b"SSH-2.0-OpenSSH_9.6\r\n"),
        "smtp_bare": s(SMTP, 7, b"220\n"),
        "smtp_long_line": s(SMTP, 9, b"250-" + b"L" * 4100 + b"\r\n250 OK\r\n"),
        "imap_greeting": s(IMAP_GREETING, 7, b"* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.\r\n"),
        "imap_bye": s(IMAP_GREETING, 7, b"* BYE too many connections\r\n"),
        "imap_not": s(IMAP_GREETING, 7, b"+OK POP3 ready\r\n"),
        "imap_capability": s(IMAP_CAPABILITY, 8, b"* CAPABILITY IMAP4rev1 SASL-IR STARTTLS "
                             b"LOGINDISABLED\r\nP1 OK Pre-login capabilities listed\r\n"),
        "imap_capability_none": s(IMAP_CAPABILITY, 8, b"* OK still here\r\n* capability IMAP4rev1  "
                                  b"AUTH=PLAIN\r\np1 OK no\r\nP1 NO\r\n"),
        "imap_starttls": s(IMAP_STARTTLS, 8, b"* OK noise\r\nP2 OK Begin TLS negotiation now\r\n"),
        "imap_starttls_no": s(IMAP_STARTTLS, 4, b"P2 BAD STARTTLS not available\r\n"),
        "pop3_greeting": s(POP3_GREETING, 7, b"+OK Dovecot ready.\r\n"),
        "pop3_greeting_err": s(POP3_GREETING, 7, b"-ERR busy\r\n"),
        "pop3_capa": s(POP3_CAPA, 8, b"+OK\r\nCAPA\r\nTOP\r\nUIDL\r\nSTLS\r\nSASL PLAIN\r\n.\r\n"),
        "pop3_capa_err": s(POP3_CAPA, 8, b"-ERR unknown command\r\n"),
        "pop3_capa_long": s(POP3_CAPA, 8, b"+OK\r\n" + b"X\r\n" * 520 + b"STLS\r\n.\r\n"),
        "pop3_stls": s(POP3_STLS, 8, b"+OK Begin TLS\r\n"),
        "pop3_stls_no": s(POP3_STLS, 8, b"-ERR TLS unavailable\r\n"),
        "line": s(LINE, 7, b"* OK [CAPABILITY IMAP4rev1] ready\r\n"),
        "nul": s(SMTP, 7, b"250\x00-continued\r\n"),
    }


write("probe", probe_seeds())
