/* proto_smtp.h - SMTP/LMTP STARTTLS module (proto_smtp_ops in proto.h), and the pure
 * helpers it is built from, exported for table tests. */
#ifndef STP_PROTO_SMTP_H
#define STP_PROTO_SMTP_H

#include <stddef.h>

#include "proto.h"

/* Bounds (octets, terminator included). RFC 5321 §4.5.3.1 sets 512 for commands, RFC 4954
 * allows 12288 for AUTH; one bound serves both. Longer lines get 500 5.5.2 and their tail
 * is dropped. A reply line may be 2048 octets, a whole reply 64 KiB and 512 lines. */
#define SMTP_CMD_MAX 12288
#define SMTP_REPLY_LINE_MAX 2048
#define SMTP_REPLY_MAX 65536
#define SMTP_REPLY_LINES_MAX 512
/* Client bytes held while a reply is awaited (DATA, AUTH) before the session is ended. */
#define SMTP_HOLD_MAX (1024 * 1024)
/* Commands in flight toward the upstream before the module stops reading commands. */
#define SMTP_PIPELINE_MAX 256

/* 1 when an EHLO reply line ("250-STARTTLS", "250 AUTH PLAIN") announces keyword: the
 * first word of its text, whole and case-insensitive ("AUTH" also matches "AUTH=..."). */
int smtp_line_has_keyword(const char *line, size_t len, const char *keyword);

/* Rewrites a complete EHLO/LHLO reply (lines of "250-..." / "250 ...", each ending in
 * CRLF or LF) for the client: STARTTLS, XCLIENT and XFORWARD lines are dropped; AUTH lines
 * too when hide_auth; "STARTTLS" is added when add_starttls. The first line (the domain)
 * is never dropped. Writes CRLF lines with correct continuation marks into out and
 * returns the length, or -1 when out is too small. */
long smtp_rewrite_ehlo(const char *reply, size_t len, int add_starttls, int hide_auth,
		       char *out, size_t cap);

#endif
