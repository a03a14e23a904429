#!/usr/bin/python3
"""Sends one message with Python's smtplib (a real-world client library).

  smtp_send.py --connect HOST:PORT --file MSG --from ADDR --to ADDR [--to ADDR...]
               [--tls none|starttls|implicit] [--ca FILE] [--name NAME] [--lmtp]
               [--source IP] [--helo NAME] [--login USER:PASS] [--timeout SEC]

MSG holds CRLF lines; smtplib dot-stuffs it. Prints one JSON line: ok, the EHLO keywords
seen before and after TLS, refused recipients (code and text), or the error. Exit 0 when
the message was accepted for at least one recipient.
"""

import argparse
import json
import smtplib
import ssl
import sys

p = argparse.ArgumentParser()
p.add_argument("--connect", required=True)
p.add_argument("--file", required=True)
p.add_argument("--from", dest="sender", required=True)
p.add_argument("--to", action="append", required=True)
p.add_argument("--tls", default="none", choices=["none", "starttls", "implicit"])
p.add_argument("--ca")
p.add_argument("--name", default="localhost")
p.add_argument("--lmtp", action="store_true")
p.add_argument("--source")
p.add_argument("--helo", default="smtplib.client.test")
p.add_argument("--login")
p.add_argument("--timeout", type=float, default=10.0, help="socket timeout, seconds")
a = p.parse_args()

host, port = a.connect.rsplit(":", 1)
host = host.strip("[]")  # [IPv6]:PORT
src = (a.source, 0) if a.source else None
res = {"ok": False}


def ctx():
    c = ssl.create_default_context(cafile=a.ca)
    return c


try:
    if a.lmtp:
        s = smtplib.LMTP(host, int(port), local_hostname=a.helo, source_address=src)
    elif a.tls == "implicit":
        s = smtplib.SMTP_SSL(host, int(port), local_hostname=a.helo, source_address=src,
                             context=ctx(), timeout=a.timeout)
    else:
        s = smtplib.SMTP(host, int(port), local_hostname=a.helo, source_address=src,
                         timeout=a.timeout)
    s.ehlo()
    res["ehlo"] = sorted(s.esmtp_features)
    if a.tls == "starttls":
        s.starttls(context=ctx())
        s.ehlo()
        res["ehlo_tls"] = sorted(s.esmtp_features)
    if a.login:
        u, pw = a.login.split(":", 1)
        s.login(u, pw)
    msg = open(a.file, "rb").read()
    refused = s.sendmail(a.sender, a.to, msg)
    res["refused"] = {k: [v[0], v[1].decode("utf-8", "replace")] for k, v in refused.items()}
    s.quit()
    res["ok"] = True
except smtplib.SMTPRecipientsRefused as e:
    res["error"] = "recipients refused: %r" % (e.recipients,)
except smtplib.SMTPResponseException as e:
    res["error"] = "%d %s" % (e.smtp_code, e.smtp_error.decode("utf-8", "replace"))
except (smtplib.SMTPException, OSError) as e:
    res["error"] = "%s: %s" % (type(e).__name__, e)
print(json.dumps(res))
sys.exit(0 if res["ok"] else 1)
