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
/* The largest BDAT chunk the proxy takes when the upstream announced no SIZE (RFC 1870):
 * a larger one is refused with 552 and the session ends (its octets are not skipped). */
#define SMTP_BDAT_MAX (1ULL << 30)
/* A message record's recipients (PA_MESSAGE, event=message's to): whole addresses up to
 * this many octets with their commas, then ",..." once. */
#define SMTP_TO_MAX 2048

/* Late binding: the longest recipient domain, and how many domains a session remembers
 * as approved for its upstream. */
#define SMTP_DOMAIN_MAX 253
#define SMTP_LATE_DOMAINS 8

/* The domain of a "RCPT TO:<local@domain> [params]" command line (no terminator): lower
 * case, without a trailing dot, into out. The local part may be quoted; a source route is
 * skipped. 0, or -EINVAL: not a RCPT TO, no domain, an address literal, or not LDH labels
 * of 1 to 63 octets (at most SMTP_DOMAIN_MAX and cap - 1 octets). */
int smtp_rcpt_domain(const char *line, size_t len, char *out, size_t cap);

/* What smtp_rewrite_ehlo() leaves out besides STARTTLS, XCLIENT and XFORWARD. */
#define SMTP_HIDE_AUTH 1       /* AUTH and AUTH= lines (client_policy = encrypt before TLS) */
#define SMTP_HIDE_REQUIRETLS 2 /* REQUIRETLS (RFC 8689): never offered on a plaintext leg */

/* 1 when an EHLO reply line ("250-STARTTLS", "250 AUTH PLAIN") announces keyword: the
 * first word of its text, whole and case-insensitive ("AUTH" also matches "AUTH=..."). */
int smtp_line_has_keyword(const char *line, size_t len, const char *keyword);

/* Rewrites a complete EHLO/LHLO reply (lines of "250-..." / "250 ...", each ending in
 * CRLF or LF) for the client: STARTTLS, XCLIENT and XFORWARD lines are dropped, and the
 * lines hide (SMTP_HIDE_*) names; "STARTTLS" is added when add_starttls. The first line
 * (the domain) is never dropped. Writes CRLF lines with correct continuation marks into
 * out and returns the length, or -ENOBUFS when out is too small. */
long smtp_rewrite_ehlo(const char *reply, size_t len, int add_starttls, unsigned hide,
		       char *out, size_t cap);

/* For tests: 1 when the module ended the session because a reply arrived before its
 * command was sent. That check depends on how the upstream's bytes were cut into reads
 * (a reply read after the command went out cannot be told from a genuine one), so a test
 * comparing differently cut runs allows exactly this difference. */
int smtp_saw_early_reply(const void *st);

#endif
