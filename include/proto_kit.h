/* proto_kit.h - the pieces every protocol module (proto_smtp.c, and IMAP and POP3 after
 * it) is built from, so that each rule is written once:
 *
 *   struct line_reader   bounded line reader over one side's bytes (commands or replies),
 *                        which can also hand out raw bytes (message data, literals)
 *   struct expect_queue  the replies due to the client, in order: answers to commands sent
 *                        upstream (each knowing when it was sent, so that a reply written
 *                        before its command can never be taken as its answer) and replies
 *                        the module gives itself
 *   cap_word_is()        the capability keyword test (EHLO lines, CAPA lines, IMAP atoms)
 *   kit_starttls()       the STARTTLS boundary
 *
 * Contract: no I/O and no libuv here; functions return 0 or a negative errno (-ENOMEM when
 * an allocation fails: the caller ends its session, never the process). */
#ifndef STP_PROTO_KIT_H
#define STP_PROTO_KIT_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "proto.h"

/* ---- line reader ------------------------------------------------------------------- */

struct line_reader {
	struct buf in;  /* bytes fed and not yet consumed */
	size_t max;     /* the longest line, terminator included */
	int skipping;   /* the rest of an overlong line is being dropped up to its LF */
	/* lr_partial: octets fed so far; the stream offset just after the last LF fed; while
	 * skipping, the name of the overlong line */
	uint64_t fed, line_start, skip_line;
};

struct line {
	const uint8_t *p;
	size_t len;  /* without the terminator (LF, or CRLF) */
	size_t size; /* with it: what lr_consume() takes */
};

enum { LR_MORE = 0, LR_LINE = 1, LR_TOO_LONG = 2 };

void lr_init(struct line_reader *r, size_t max);
void lr_free(struct line_reader *r);
int lr_feed(struct line_reader *r, const void *data, size_t n);
/* The next line, not consumed: LR_LINE (*l set: consume it with lr_consume(r, l->size), or
 * leave it to be looked at again), LR_MORE (no whole line yet), or LR_TOO_LONG: a line
 * longer than max, reported once; its bytes are dropped up to and including its LF, also
 * those still to come. */
int lr_next(struct line_reader *r, struct line *l);
void lr_consume(struct line_reader *r, size_t n);
/* Raw access for data that is not lines (message data, BDAT chunks, literals). */
static inline size_t lr_pending(const struct line_reader *r)
{
	return r->in.len;
}
static inline const uint8_t *lr_data(const struct line_reader *r)
{
	return buf_ptr(&r->in);
}
/* Everything not yet consumed is dropped (the STARTTLS boundary). */
void lr_discard(struct line_reader *r);
/* A line has begun and its end has not come (octets not yet consumed after the last LF,
 * or an overlong line whose tail is being dropped): 1 + the stream offset of its first
 * octet, which names that line (a later line gets another value); 0 when none has
 * (line_timeout). Octets taken raw (lr_consume) are no line. */
uint64_t lr_partial(const struct line_reader *r);

/* ---- expected replies -------------------------------------------------------------- */

struct expect {
	int kind;          /* the module's own enumeration */
	int count;         /* the module's own use (LMTP: replies still due; -1 not known) */
	uint64_t sent_at;  /* bytes received from the upstream when the command was sent */
	char *text;        /* a reply the module gives itself (malloc'd), or NULL */
};

struct expect_queue {
	struct expect *e;  /* ring of cap entries */
	size_t head, len, cap, max;
	uint64_t rx;       /* bytes received from the upstream so far (eq_received) */
};

/* max: the most entries the queue holds (more is a module bug or abuse: -ENOBUFS). */
void eq_init(struct expect_queue *q, size_t max);
void eq_free(struct expect_queue *q);
/* Appends an entry for a command sent now (sent_at = bytes received so far) or, with text,
 * a reply of the module's own. Returns the entry, or NULL (-ENOMEM, or full). */
struct expect *eq_push(struct expect_queue *q, int kind, const char *text);
struct expect *eq_head(struct expect_queue *q);
void eq_pop(struct expect_queue *q);
/* Puts the entry just popped back at the head (a command with several replies). */
void eq_unpop(struct expect_queue *q);
static inline size_t eq_len(const struct expect_queue *q)
{
	return q->len;
}
struct expect *eq_at(struct expect_queue *q, size_t i); /* 0 = head */
void eq_clear(struct expect_queue *q);
static inline void eq_received(struct expect_queue *q, size_t n)
{
	q->rx += n;
}
/* 1 when a reply whose first byte is at stream offset reply_start may answer e: it was
 * received after e's command went out. */
static inline int eq_answers(const struct expect *e, uint64_t reply_start)
{
	return reply_start >= e->sent_at;
}

/* ---- capabilities -------------------------------------------------------------------- */

/* 1 when the capability text (an EHLO line's text after "250-", a CAPA line, an IMAP atom)
 * names keyword: its first word, up to SP, CR, LF or the end, equals keyword ignoring case; a
 * keyword ending in '=' ("AUTH=") matches words that start with it ("AUTH=PLAIN"), and
 * "AUTH" also matches "AUTH=..." (the old SMTP form). */
int cap_word_is(const char *text, size_t len, const char *keyword);

/* ---- the STARTTLS boundary ----------------------------------------------------------- */

/* TLS starts on side now (the 220 / OK that allows it has just been queued or read):
 * whatever that side sent after the STARTTLS exchange and the module has not processed is
 * dropped (CVE-2011-0411, CVE-2014-3556) and the session is asked to switch. The module
 * forgets, in its tls_done, everything it learned from that side before TLS. Returns the
 * count of bytes dropped: more than 0 is an injection attempt (or a broken peer), which the
 * module logs as a security event (event=starttls_injection). */
size_t kit_starttls(struct proto_actions *a, enum proto_side side, struct line_reader *r);
/* Bytes a side sent in plaintext after STARTTLS/STLS, dropped at the boundary: the command
 * injection of CVE-2011-0411 (client) or a response injected before the upstream's
 * handshake (CVE-2014-3556's kind). Logged as a security event (event=starttls_injection);
 * nothing when dropped is 0. */
void kit_injection(const struct proto_params *p, enum proto_side side, size_t dropped);
/* The upstream does not offer STARTTLS/STLS, or refused it: a policy failure under encrypt
 * and stricter (PA_POLICY starttls-not-supported). 1 when the session goes on in plaintext
 * (policy may, or testing mode; logged as event=upstream_tls tls=none), 0 when the module
 * must end it with its protocol's temporary failure. */
int kit_starttls_unavailable(struct proto_actions *a, const struct proto_params *p,
			     const char *detail);

#endif
