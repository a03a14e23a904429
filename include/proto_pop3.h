/* proto_pop3.h - POP3 STLS module (RFC 1939, 2449, 2595; proto_pop3_ops in proto.h), and
 * the pure helpers it is built from, exported for table tests. */
#ifndef STP_PROTO_POP3_H
#define STP_PROTO_POP3_H

#include <stddef.h>

#include "proto.h"

/* Bounds (octets, terminator included). RFC 2449 §4 allows clients 255 octets per command
 * and servers 512 per response line; SASL responses (RFC 5034: XOAUTH2, OAUTHBEARER tokens)
 * are longer in practice, so commands and AUTH response lines may be POP3_CMD_MAX. A longer
 * client line gets "-ERR" and is not forwarded. Status lines and CAPA lines from the
 * upstream may be POP3_LINE_MAX: a longer one ends the session (a logged protocol error).
 * The lines of a RETR/TOP/LIST/UIDL response are relayed as they come, byte-exact and
 * without a bound (a message line may be long), up to the line "." that ends them. */
#define POP3_CMD_MAX 8192
#define POP3_LINE_MAX 4096
#define POP3_CAPA_LINES_MAX 256
/* Client bytes held while responses are awaited before the session is ended. */
#define POP3_HOLD_MAX (256 * 1024)
/* Commands in flight toward a PIPELINING upstream before the module stops reading. */
#define POP3_PIPELINE_MAX 64

/* The greeting line (no terminator) with every "<...>" (the APOP timestamp, RFC 1939 §7)
 * and the space before it removed, into out (NUL-terminated, at most cap - 1 octets).
 * Returns its length. */
size_t pop3_strip_timestamp(const char *line, size_t len, char *out, size_t cap);

/* What pop3_capa_line_shown() hides of a CAPA response. */
#define POP3_HIDE_AUTH 1 /* client_policy = encrypt before STLS: no USER, no SASL */
/* 1 when the client sees this CAPA line (no terminator) as it is, 0 when it is dropped: STLS
 * always (the module adds its own where the client may use it), USER and SASL under
 * POP3_HIDE_AUTH (every login is refused there, so none is offered). */
int pop3_capa_line_shown(const char *line, size_t len, unsigned hide);

/* 1 when the session ended on a response written before its command was sent (read in
 * smaller pieces it would have come after the command: the fuzz harness compares runs). */
int pop3_saw_early_response(const void *st);

#endif
