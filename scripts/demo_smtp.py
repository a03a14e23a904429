#!/usr/bin/python3
"""The two legacy peers of `make demo`, from Python's standard library only (make demo
installs nothing but what the build needs):

  demo_smtp.py server PORTFILE OUTFILE   a plaintext SMTP server without TLS (the legacy
                                         server); prints each message it accepts to OUTFILE
  demo_smtp.py send PORT                 a plaintext client (the legacy app): one message
"""
import smtplib
import socket
import socketserver
import sys
from email.message import EmailMessage


class Handler(socketserver.StreamRequestHandler):
    def reply(self, line):
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self):
        out = self.server.out
        self.reply("220 legacy.demo.test ESMTP (no TLS here)")
        mail_from, rcpts = None, []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            cmd = line.decode("latin-1").rstrip("\r\n")
            verb = cmd.split(" ", 1)[0].upper()
            if verb in ("EHLO", "HELO"):
                self.reply("250-legacy.demo.test" if verb == "EHLO" else "250 legacy.demo.test")
                if verb == "EHLO":
                    self.reply("250 8BITMIME")
            elif verb == "MAIL":
                mail_from, rcpts = cmd[10:], []
                self.reply("250 2.1.0 Ok")
            elif verb == "RCPT":
                rcpts.append(cmd[8:])
                self.reply("250 2.1.5 Ok")
            elif verb == "DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                lines = []
                while True:
                    l = self.rfile.readline()
                    if not l or l == b".\r\n":
                        break
                    lines.append(l[1:] if l.startswith(b".") else l)
                with open(out, "a") as f:
                    f.write("---------- MESSAGE FOLLOWS ----------\n")
                    f.write("mail from: %s, rcpt to: %s\n" % (mail_from, ", ".join(rcpts)))
                    f.write(b"".join(lines).decode("utf-8", "replace").replace("\r\n", "\n"))
                    f.write("------------ MESSAGE END ------------\n")
                self.reply("250 2.0.0 Ok: queued")
            elif verb == "QUIT":
                self.reply("221 2.0.0 Bye")
                return
            elif verb in ("RSET", "NOOP"):
                self.reply("250 2.0.0 Ok")
            else:
                self.reply("502 5.5.2 Command not recognized")


def server(portfile, outfile):
    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
    srv = Server(("127.0.0.1", 0), Handler)
    srv.out = outfile
    open(outfile, "a").close()
    with open(portfile + ".tmp", "w") as f:
        f.write("%d\n" % srv.server_address[1])
    import os
    os.rename(portfile + ".tmp", portfile)
    srv.serve_forever()


def send(port):
    msg = EmailMessage()
    msg["From"] = "app@legacy.demo.test"
    msg["To"] = "ops@legacy.demo.test"
    msg["Subject"] = "starttls-proxy demo"
    msg.set_content("Hello from a client that cannot speak TLS.")
    with smtplib.SMTP("127.0.0.1", int(port), local_hostname="legacy-app.demo.test") as s:
        s.set_debuglevel(1)
        s.send_message(msg)


if __name__ == "__main__":
    if sys.argv[1] == "server":
        server(sys.argv[2], sys.argv[3])
    else:
        send(sys.argv[2])
