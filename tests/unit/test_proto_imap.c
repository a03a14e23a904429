/* test_proto_imap.c - the IMAP parsing pieces (proto_imap.h), table-driven: the reader that
 * splits commands and responses into line segments and literal data, tag/verb extraction,
 * the response classifier, the capability list (found, flags, rewritten).
 *
 * Every reader input runs fed whole, one byte at a time, and split in two at every
 * position; the transcript (line segments with their first/last/literal marks, literal
 * data merged across pieces, too-long and bad-literal reports) must equal the expected one
 * each time. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "proto_imap.h"

/* ------------------------------------------------------------------ transcripts */

struct sbuf {
	char *p;
	size_t n, cap;
};

static void sb_add(struct sbuf *b, const void *d, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->n + n + 1)
			cap *= 2;
		b->p = realloc(b->p, cap);
		assert_non_null(b->p);
		b->cap = cap;
	}
	if (n)
		memcpy(b->p + b->n, d, n);
	b->n += n;
	b->p[b->n] = '\0';
}

static void sb_adds(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

/* Bytes with CR, LF, controls and '|' escaped. */
static void sb_esc(struct sbuf *b, const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		char t[8];
		if (p[i] == '\r')
			sb_adds(b, "\\r");
		else if (p[i] == '\n')
			sb_adds(b, "\\n");
		else if (p[i] < 32 || p[i] > 126) {
			snprintf(t, sizeof(t), "\\x%02x", p[i]);
			sb_adds(b, t);
		} else
			sb_add(b, p + i, 1);
	}
}

struct run {
	struct imap_reader r;
	struct sbuf out;
	int last_data; /* the transcript ends in a D record (merge the next data into it) */
};

/* Items ready in the reader, appended to the transcript:
 *   F|text|mark   a line segment starting a command (C| for a continuation segment);
 *                 mark "." when it ends the command, else the literal: "+" nonsync,
 *                 "~" binary, then its size
 *   D|bytes       literal data (pieces merged)
 *   TOO_LONG      a segment over the line bound
 *   BADLIT|text|size */
static void drain(struct run *x)
{
	struct imap_item it;
	int k;
	while ((k = ir_next(&x->r, &it)) != IR_MORE) {
		char t[64];
		assert_int_equal(k, it.kind);
		switch (k) {
		case IR_LINE:
			sb_adds(&x->out, it.first ? "F|" : "C|");
			sb_esc(&x->out, it.p, it.len);
			if (it.last)
				sb_adds(&x->out, "|.\n");
			else {
				snprintf(t, sizeof(t), "|%s%s%" PRIu64 "\n", it.nonsync ? "+" : "",
					 it.binary ? "~" : "", it.literal);
				sb_adds(&x->out, t);
			}
			x->last_data = 0;
			break;
		case IR_DATA:
			assert_true(it.len > 0);
			if (x->last_data)
				x->out.n--; /* reopen the D record */
			else
				sb_adds(&x->out, "D|");
			sb_esc(&x->out, it.p, it.len);
			sb_adds(&x->out, "\n");
			x->last_data = 1;
			break;
		case IR_TOO_LONG:
			sb_adds(&x->out, "TOO_LONG\n");
			x->last_data = 0;
			break;
		case IR_BAD_LITERAL:
			sb_adds(&x->out, "BADLIT|");
			sb_esc(&x->out, it.p, it.len);
			snprintf(t, sizeof(t), "|%" PRIu64 "\n", it.literal);
			sb_adds(&x->out, t);
			x->last_data = 0;
			break;
		default:
			fail_msg("ir_next returned %d", k);
		}
		ir_consume(&x->r, &it);
	}
}

#define T_LINE_MAX 64
#define T_LIT_MAX 100

/* The transcript of input fed in pieces: cut[0..ncut) are the offsets where a piece ends
 * (ascending); the rest is fed last. Returns a malloc'd string. */
static char *feed(const char *in, size_t n, const size_t *cut, size_t ncut)
{
	struct run x;
	memset(&x, 0, sizeof(x));
	ir_init(&x.r, T_LINE_MAX, T_LIT_MAX);
	size_t at = 0;
	for (size_t i = 0; i <= ncut; i++) {
		size_t end = i < ncut ? cut[i] : n;
		assert_int_equal(ir_feed(&x.r, in + at, end - at), 0);
		drain(&x);
		at = end;
	}
	sb_adds(&x.out, ""); /* never NULL */
	ir_free(&x.r);
	return x.out.p;
}

static void check_reader(const char *in, size_t n, const char *want)
{
	char *got = feed(in, n, NULL, 0);
	if (strcmp(got, want) != 0)
		print_message("whole: got\n%s\nwant\n%s\n", got, want);
	assert_string_equal(got, want);
	free(got);
	size_t *cuts = malloc((n + 1) * sizeof(*cuts));
	assert_non_null(cuts);
	for (size_t i = 0; i < n; i++)
		cuts[i] = i + 1;
	got = feed(in, n, cuts, n ? n - 1 : 0);
	if (strcmp(got, want) != 0)
		print_message("bytewise: got\n%s\nwant\n%s\n", got, want);
	assert_string_equal(got, want);
	free(got);
	for (size_t c = 1; c < n; c++) {
		got = feed(in, n, &c, 1);
		if (strcmp(got, want) != 0)
			print_message("split at %zu: got\n%s\nwant\n%s\n", c, got, want);
		assert_string_equal(got, want);
		free(got);
	}
	free(cuts);
}

/* ------------------------------------------------------------------ the reader */

static void test_reader(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		size_t n; /* 0: strlen */
		const char *want;
	} t[] = {
		/* plain commands, CRLF and bare LF */
		{ "A1 NOOP\r\nA2 CAPABILITY\nA3 LOGOUT\r\n", 0,
		  "F|A1 NOOP|.\nF|A2 CAPABILITY|.\nF|A3 LOGOUT|.\n" },
		/* nothing complete */
		{ "A1 NOOP", 0, "" },
		/* LOGIN with two synchronizing literals */
		{ "A1 LOGIN {4}\r\nuser {6}\r\nsecret\r\n", 0,
		  "F|A1 LOGIN {4}|4\nD|user\nC| {6}|6\nD|secret\nC||.\n" },
		/* a STARTTLS inside an APPENDed message is data, the next command is a command */
		{ "A2 APPEND INBOX {16}\r\nA3 STARTTLS\r\nx\r\n\r\nA4 NOOP\r\n", 0,
		  "F|A2 APPEND INBOX {16}|16\nD|A3 STARTTLS\\r\\nx\\r\\n\nC||.\nF|A4 NOOP|.\n" },
		/* the same with LITERAL+ */
		{ "A2 APPEND INBOX (\\Seen) {13+}\r\nA3 STARTTLS\r\n\r\nA4 STARTTLS\r\n", 0,
		  "F|A2 APPEND INBOX (\\Seen) {13+}|+13\nD|A3 STARTTLS\\r\\n\nC||.\n"
		  "F|A4 STARTTLS|.\n" },
		/* literal8 (RFC 3516), sync and nonsync, with NUL */
		{ "A5 APPEND INBOX ~{3}\r\na\0b\r\nA6 APPEND INBOX ~{2+}\r\n\0\n\r\n", 54,
		  "F|A5 APPEND INBOX ~{3}|~3\nD|a\\x00b\nC||.\nF|A6 APPEND INBOX ~{2+}|+~2\n"
		  "D|\\x00\\n\nC||.\n" },
		/* zero-length literals */
		{ "A6 LOGIN {0}\r\n {0+}\r\n\r\n", 0, "F|A6 LOGIN {0}|0\nC| {0+}|+0\nC||.\n" },
		/* a literal right after "(" */
		{ "A7 SEARCH ({3}\r\nabc)\r\n", 0, "F|A7 SEARCH ({3}|3\nD|abc\nC|)|.\n" },
		/* literal data that looks like a literal announcement is data */
		{ "A8 LOGIN {5}\r\n{99}\r\r\n", 0, "F|A8 LOGIN {5}|5\nD|{99}\\r\nC||.\n" },
		/* not literals: inside an atom, no digits, a space, a stray "+", text after */
		{ "B1 NOOP x{5}\r\nB2 X {}\r\nB3 X {5 }\r\nB4 X {+}\r\nB5 X {5} \r\nB6 X {5}x\r\n"
		  "B7 X ~{-1}\r\n",
		  0,
		  "F|B1 NOOP x{5}|.\nF|B2 X {}|.\nF|B3 X {5 }|.\nF|B4 X {+}|.\nF|B5 X {5} |.\n"
		  "F|B6 X {5}x|.\nF|B7 X ~{-1}|.\n" },
		/* a literal at the very start of a segment */
		{ "{2}\r\nab\r\n", 0, "F|{2}|2\nD|ab\nC||.\n" },
		/* too large: over lit_max (100), over 64 bits (20 digits), 21 digits (no literal) */
		{ "C1 APPEND INBOX {101}\r\nC2 NOOP\r\nC3 X {100}\r\n", 0,
		  "BADLIT|C1 APPEND INBOX {101}|101\nF|C2 NOOP|.\nF|C3 X {100}|100\n" },
		{ "C4 X {99999999999999999999+}\r\nC5 X {123456789012345678901}\r\n", 0,
		  "BADLIT|C4 X {99999999999999999999+}|18446744073709551615\n"
		  "F|C5 X {123456789012345678901}|.\n" },
		/* the line bound (64 with CRLF): 62 + CRLF passes, 63 + CRLF does not */
		{ "12345678901234567890123456789012345678901234567890123456789012\r\n"
		  "123456789012345678901234567890123456789012345678901234567890123\r\nD1 NOOP\r\n",
		  0,
		  "F|12345678901234567890123456789012345678901234567890123456789012|.\n"
		  "TOO_LONG\nF|D1 NOOP|.\n" },
		/* an overlong continuation segment: the next segment starts a new command */
		{ "D2 LOGIN {1}\r\nx"
		  "123456789012345678901234567890123456789012345678901234567890123\r\nD3 NOOP\r\n",
		  0, "F|D2 LOGIN {1}|1\nD|x\nTOO_LONG\nF|D3 NOOP|.\n" },
		/* a FETCH response whose literal holds a fake tagged OK */
		{ "* 1 FETCH (BODY[] {12}\r\nA1 OK done\r\n)\r\nA1 OK FETCH completed\r\n", 0,
		  "F|* 1 FETCH (BODY[] {12}|12\nD|A1 OK done\\r\\n\nC|)|.\n"
		  "F|A1 OK FETCH completed|.\n" },
		/* two literals in one response segment chain */
		{ "* 2 FETCH (BODY[HEADER] {2}\r\nh\n BODY[TEXT] {2}\r\nt\n)\r\n", 0,
		  "F|* 2 FETCH (BODY[HEADER] {2}|2\nD|h\\n\nC| BODY[TEXT] {2}|2\nD|t\\n\nC|)|.\n" },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		size_t n = t[i].n ? t[i].n : strlen(t[i].in);
		check_reader(t[i].in, n, t[i].want);
	}
}

/* A refused synchronizing literal, and the STARTTLS boundary. */
static void test_reader_cancel_discard(void **state)
{
	(void)state;
	struct run x;
	memset(&x, 0, sizeof(x));
	ir_init(&x.r, T_LINE_MAX, T_LIT_MAX);
	const char *a = "A1 LOGIN {5}\r\n";
	assert_int_equal(ir_feed(&x.r, a, strlen(a)), 0);
	drain(&x);
	/* the server said "A1 NO": the client sends no data */
	ir_cancel_literal(&x.r);
	const char *b = "A2 NOOP\r\nA3 STARTTLS\r\nA4 LOGIN a b\r\n";
	assert_int_equal(ir_feed(&x.r, b, strlen(b)), 0);
	struct imap_item it;
	assert_int_equal(ir_next(&x.r, &it), IR_LINE);
	assert_true(it.first && it.last);
	ir_consume(&x.r, &it);
	assert_int_equal(ir_next(&x.r, &it), IR_LINE);
	ir_consume(&x.r, &it);
	/* after STARTTLS, what the client pipelined is dropped */
	assert_int_equal(ir_discard(&x.r), strlen("A4 LOGIN a b\r\n"));
	assert_int_equal(ir_pending(&x.r), 0);
	assert_int_equal(ir_next(&x.r, &it), IR_MORE);
	/* and a boundary inside a literal leaves no literal pending */
	const char *c = "A5 APPEND X {10}\r\nabc";
	assert_int_equal(ir_feed(&x.r, c, strlen(c)), 0);
	assert_int_equal(ir_next(&x.r, &it), IR_LINE);
	ir_consume(&x.r, &it);
	assert_int_equal(ir_discard(&x.r), 3);
	const char *d = "A6 NOOP\r\n";
	assert_int_equal(ir_feed(&x.r, d, strlen(d)), 0);
	assert_int_equal(ir_next(&x.r, &it), IR_LINE);
	assert_true(it.first && it.last);
	assert_int_equal(it.len, 7);
	ir_consume(&x.r, &it);
	ir_free(&x.r);
	free(x.out.p);
}

/* ------------------------------------------------------------------ commands */

static void test_tag_verb(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		int rc;
		const char *tag, *verb, *uid_verb;
		size_t args;
	} t[] = {
		{ "A1 NOOP", 0, "A1", "NOOP", "", 7 },
		{ "a001 login user pass", 0, "a001", "LOGIN", "", 11 },
		{ "x StartTLS", 0, "x", "STARTTLS", "", 10 },
		{ "A1 UID fetch 1:* (FLAGS)", 0, "A1", "UID", "FETCH", 13 },
		{ "A]1 NOOP", 0, "A]1", "NOOP", "", 8 },
		{ "A.1-x NOOP", 0, "A.1-x", "NOOP", "", 10 },
		{ "A1 AUTHENTICATE PLAIN dGVzdA==", 0, "A1", "AUTHENTICATE", "", 16 },
		{ "A1 APPEND INBOX {5}", 0, "A1", "APPEND", "", 10 },
		/* bad tags */
		{ "", -EINVAL, "", "", "", 0 },
		{ "A1", -EINVAL, "", "", "", 0 },
		{ " NOOP", -EINVAL, "", "", "", 0 },
		{ "A+1 NOOP", -EINVAL, "", "", "", 0 },
		{ "* NOOP", -EINVAL, "", "", "", 0 },
		{ "A{1 NOOP", -EINVAL, "", "", "", 0 },
		{ "A\"1 NOOP", -EINVAL, "", "", "", 0 },
		{ "A%1 NOOP", -EINVAL, "", "", "", 0 },
		{ "A\x01 NOOP", -EINVAL, "", "", "", 0 },
		{ "A\xc3\xa9 NOOP", -EINVAL, "", "", "", 0 },
		{ "0123456789012345678901234567890123456789012345678901234567890123 NOOP", 0,
		  "0123456789012345678901234567890123456789012345678901234567890123", "NOOP", "",
		  69 },
		{ "01234567890123456789012345678901234567890123456789012345678901234 NOOP",
		  -EINVAL, "", "", "", 0 },
		/* bad verbs */
		{ "A1 ", -EINVAL, "", "", "", 0 },
		{ "A1  NOOP", -EINVAL, "", "", "", 0 },
		{ "A1 NO(OP", -EINVAL, "", "", "", 0 },
		{ "A1 UID", -EINVAL, "", "", "", 0 },
		{ "A1 UID ", -EINVAL, "", "", "", 0 },
		{ "A1 ABCDEFGHIJABCDEFGHIJABCDEFGHIJ1", 0, "A1", "ABCDEFGHIJABCDEFGHIJABCDEFGHIJ1",
		  "", 34 },
		{ "A1 ABCDEFGHIJABCDEFGHIJABCDEFGHIJ123", -EINVAL, "", "", "", 0 },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct imap_cmd_words w;
		int rc = imap_tag_verb((const uint8_t *)t[i].in, strlen(t[i].in), &w);
		if (rc != t[i].rc)
			print_message("\"%s\": %d, want %d\n", t[i].in, rc, t[i].rc);
		assert_int_equal(rc, t[i].rc);
		if (rc < 0)
			continue;
		assert_string_equal(w.tag, t[i].tag);
		assert_string_equal(w.verb, t[i].verb);
		assert_string_equal(w.uid_verb, t[i].uid_verb);
		assert_int_equal(w.args, t[i].args);
	}
}

/* ------------------------------------------------------------------ responses */

static void test_classify(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		int rc;
		enum imap_rkind kind;
		enum imap_status status;
		const char *tag;  /* tagged */
		const char *code; /* the response code, NULL none */
		int capability;
	} t[] = {
		{ "* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.", 0, IMAP_R_UNTAGGED,
		  IMAP_S_OK, NULL, "CAPABILITY IMAP4rev1 STARTTLS", 0 },
		{ "* OK IMAP4rev1 ready", 0, IMAP_R_UNTAGGED, IMAP_S_OK, NULL, NULL, 0 },
		{ "* ok", 0, IMAP_R_UNTAGGED, IMAP_S_OK, NULL, NULL, 0 },
		{ "* PREAUTH [CAPABILITY IMAP4rev1] hi", 0, IMAP_R_UNTAGGED, IMAP_S_PREAUTH, NULL,
		  "CAPABILITY IMAP4rev1", 0 },
		{ "* BYE [UNAVAILABLE] go away", 0, IMAP_R_UNTAGGED, IMAP_S_BYE, NULL,
		  "UNAVAILABLE", 0 },
		{ "* NO [ALERT] disk full", 0, IMAP_R_UNTAGGED, IMAP_S_NO, NULL, "ALERT", 0 },
		{ "* BAD nonsense", 0, IMAP_R_UNTAGGED, IMAP_S_BAD, NULL, NULL, 0 },
		{ "* CAPABILITY IMAP4rev1 STARTTLS", 0, IMAP_R_UNTAGGED, IMAP_S_NONE, NULL, NULL,
		  1 },
		{ "* capability", 0, IMAP_R_UNTAGGED, IMAP_S_NONE, NULL, NULL, 1 },
		{ "* CAPABILITYX", 0, IMAP_R_UNTAGGED, IMAP_S_NONE, NULL, NULL, 0 },
		{ "* 3 EXISTS", 0, IMAP_R_UNTAGGED, IMAP_S_NONE, NULL, NULL, 0 },
		{ "* OKAY", 0, IMAP_R_UNTAGGED, IMAP_S_NONE, NULL, NULL, 0 },
		{ "+ go ahead", 0, IMAP_R_CONTINUE, IMAP_S_NONE, NULL, NULL, 0 },
		{ "+", 0, IMAP_R_CONTINUE, IMAP_S_NONE, NULL, NULL, 0 },
		{ "+ ", 0, IMAP_R_CONTINUE, IMAP_S_NONE, NULL, NULL, 0 },
		{ "A1 OK Begin TLS negotiation now", 0, IMAP_R_TAGGED, IMAP_S_OK, "A1", NULL, 0 },
		{ "A1 OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] Logged in", 0, IMAP_R_TAGGED, IMAP_S_OK,
		  "A1", "CAPABILITY IMAP4rev1 AUTH=PLAIN", 0 },
		{ "tag.9 no [AUTHENTICATIONFAILED] bad", 0, IMAP_R_TAGGED, IMAP_S_NO, "tag.9",
		  "AUTHENTICATIONFAILED", 0 },
		{ "A1 BAD", 0, IMAP_R_TAGGED, IMAP_S_BAD, "A1", NULL, 0 },
		{ "A1 OK []", 0, IMAP_R_TAGGED, IMAP_S_OK, "A1", "", 0 },
		/* not responses */
		{ "", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "*", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "*OK", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "+go", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A1", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A1 ", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A1 PREAUTH hi", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A1 BYE hi", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A1 OKAY", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A1 3 EXISTS", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A+1 OK x", -EINVAL, 0, 0, NULL, NULL, 0 },
		{ "A1 OK [ALERT no close", -EINVAL, 0, 0, NULL, NULL, 0 },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct imap_resp r;
		const uint8_t *p = (const uint8_t *)t[i].in;
		int rc = imap_classify(p, strlen(t[i].in), &r);
		if (rc != t[i].rc)
			print_message("\"%s\": %d, want %d\n", t[i].in, rc, t[i].rc);
		assert_int_equal(rc, t[i].rc);
		if (rc < 0)
			continue;
		assert_int_equal(r.kind, t[i].kind);
		assert_int_equal(r.status, t[i].status);
		assert_int_equal(r.capability, t[i].capability);
		if (t[i].tag) {
			assert_int_equal(r.tag_len, strlen(t[i].tag));
			assert_memory_equal(p, t[i].tag, r.tag_len);
		}
		if (t[i].code) {
			assert_true(r.code > 0);
			assert_int_equal(r.code_len, strlen(t[i].code));
			assert_memory_equal(p + r.code, t[i].code, r.code_len);
		} else {
			assert_int_equal(r.code, 0);
		}
	}
}

/* ------------------------------------------------------------------ capabilities */

static void test_caps_find_flags(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		int rc;
		const char *list;
		unsigned flags;
	} t[] = {
		{ "* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN", 1, "IMAP4rev1 STARTTLS AUTH=PLAIN",
		  IMAP_CAP_IMAP4 | IMAP_CAP_STARTTLS | IMAP_CAP_AUTH },
		{ "* CAPABILITY", 1, "", 0 },
		{ "* CAPABILITY  imap4rev2  starttls", 1, "imap4rev2  starttls",
		  IMAP_CAP_IMAP4 | IMAP_CAP_STARTTLS },
		{ "* OK [CAPABILITY IMAP4rev1 LITERAL+ LOGINDISABLED] Dovecot ready.", 1,
		  "IMAP4rev1 LITERAL+ LOGINDISABLED",
		  IMAP_CAP_IMAP4 | IMAP_CAP_LITERALPLUS | IMAP_CAP_LOGINDISABLED },
		{ "A1 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE LITERAL-] Logged in", 1,
		  "IMAP4rev1 COMPRESS=DEFLATE LITERAL-",
		  IMAP_CAP_IMAP4 | IMAP_CAP_COMPRESS | IMAP_CAP_LITERALMINUS },
		{ "* PREAUTH [CAPABILITY] x", 1, "", 0 },
		/* look-alikes */
		{ "* CAPABILITY STARTTLSX XSTARTTLS AUTH LOGINDISABLEDX COMPRESS", 1,
		  "STARTTLSX XSTARTTLS AUTH LOGINDISABLEDX COMPRESS", 0 },
		/* no capability list */
		{ "* OK IMAP4rev1 STARTTLS ready", 0, NULL, 0 },
		{ "* OK [CAPABILITYX IMAP4rev1] ready", 0, NULL, 0 },
		{ "* 1 FETCH (BODY[] {5}", 0, NULL, 0 },
		{ "+ [CAPABILITY STARTTLS]", 0, NULL, 0 },
		{ "A1 OK done [CAPABILITY STARTTLS]", 0, NULL, 0 },
		{ "* ENABLED CAPABILITY", 0, NULL, 0 },
		{ "A1 CAPABILITY STARTTLS", -EINVAL, NULL, 0 },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		size_t off = 999, len = 999;
		const uint8_t *p = (const uint8_t *)t[i].in;
		int rc = imap_caps_find(p, strlen(t[i].in), &off, &len);
		if (rc != t[i].rc)
			print_message("\"%s\": %d, want %d\n", t[i].in, rc, t[i].rc);
		assert_int_equal(rc, t[i].rc);
		if (rc != 1)
			continue;
		assert_int_equal(len, strlen(t[i].list));
		assert_memory_equal(p + off, t[i].list, len);
		unsigned f = imap_caps_flags((const char *)p + off, len);
		if (f != t[i].flags)
			print_message("\"%s\": flags %#x, want %#x\n", t[i].in, f, t[i].flags);
		assert_int_equal(f, t[i].flags);
	}
}

static void test_caps_rewrite(void **state)
{
	(void)state;
	enum {
		ADD = IMAP_CAPS_ADD_STARTTLS,
		DEL = IMAP_CAPS_DEL_STARTTLS,
		LD = IMAP_CAPS_LOGINDISABLED,
		NOZ = IMAP_CAPS_DEL_COMPRESS,
	};
	static const struct {
		const char *in;
		unsigned ops;
		int rc;
		const char *out;
	} t[] = {
		{ "* CAPABILITY IMAP4rev1 AUTH=PLAIN", ADD, 1,
		  "* CAPABILITY IMAP4rev1 AUTH=PLAIN STARTTLS" },
		{ "* CAPABILITY IMAP4rev1 starttls AUTH=PLAIN", ADD, 1,
		  "* CAPABILITY IMAP4rev1 starttls AUTH=PLAIN" },
		{ "* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN STARTTLS", DEL, 1,
		  "* CAPABILITY IMAP4rev1 AUTH=PLAIN" },
		{ "* CAPABILITY", ADD | LD, 1, "* CAPABILITY STARTTLS LOGINDISABLED" },
		{ "* CAPABILITY IMAP4rev1 SASL-IR AUTH=PLAIN AUTH=LOGIN LOGIN-REFERRALS",
		  ADD | LD, 1,
		  "* CAPABILITY IMAP4rev1 SASL-IR LOGIN-REFERRALS STARTTLS LOGINDISABLED" },
		{ "* CAPABILITY IMAP4rev1 LOGINDISABLED AUTH=PLAIN", LD, 1,
		  "* CAPABILITY IMAP4rev1 LOGINDISABLED" },
		{ "* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE COMPRESS=X IDLE", NOZ, 1,
		  "* CAPABILITY IMAP4rev1 IDLE" },
		{ "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN] Dovecot ready.",
		  ADD | LD | NOZ, 1,
		  "* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR STARTTLS LOGINDISABLED] Dovecot "
		  "ready." },
		{ "A1 OK [CAPABILITY IMAP4rev1 STARTTLS IDLE] Logged in", DEL, 1,
		  "A1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in" },
		{ "* OK [CAPABILITY] x", ADD, 1, "* OK [CAPABILITY STARTTLS] x" },
		{ "* CAPABILITY  IMAP4rev1   IDLE ", 0, 1, "* CAPABILITY IMAP4rev1 IDLE" },
		/* ADD and DEL together: DEL wins */
		{ "* CAPABILITY STARTTLS", ADD | DEL, 1, "* CAPABILITY" },
		/* no list: untouched */
		{ "* OK IMAP4rev1 STARTTLS", DEL, 0, "unchanged" },
		{ "A1 NOOP", DEL, -EINVAL, "unchanged" },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		char out[256] = "unchanged";
		size_t olen = 0;
		const uint8_t *p = (const uint8_t *)t[i].in;
		size_t n = strlen(t[i].in);
		int rc = imap_caps_rewrite(p, n, t[i].ops, out, sizeof(out), &olen);
		if (rc != t[i].rc || strcmp(out, t[i].out) != 0)
			print_message("\"%s\": %d \"%s\", want %d \"%s\"\n", t[i].in, rc, out,
				      t[i].rc, t[i].out);
		assert_int_equal(rc, t[i].rc);
		assert_string_equal(out, t[i].out);
		if (rc == 1) {
			assert_int_equal(olen, strlen(out));
			/* the documented size always suffices, one octet less may not */
			char small[256];
			assert_int_equal(imap_caps_rewrite(p, n, t[i].ops, small, n + 32, &olen),
					 1);
			assert_int_equal(imap_caps_rewrite(p, n, t[i].ops, small, olen, &olen),
					 -ENOSPC);
		}
	}
}

/* Rewriting is bounded by the line and never grows it by more than 32 octets, on the
 * longest list a line can hold. */
static void test_caps_rewrite_bound(void **state)
{
	(void)state;
	char line[IMAP_LINE_MAX];
	size_t n = (size_t)snprintf(line, sizeof(line), "* CAPABILITY");
	while (n + 8 < sizeof(line) - 2)
		n += (size_t)snprintf(line + n, sizeof(line) - n, " AUTH=X%c", 'a' + (int)(n % 26));
	static char out[IMAP_LINE_MAX + 32];
	size_t olen;
	assert_int_equal(imap_caps_rewrite((const uint8_t *)line, n,
					   IMAP_CAPS_ADD_STARTTLS | IMAP_CAPS_LOGINDISABLED, out,
					   sizeof(out), &olen),
			 1);
	assert_string_equal(out, "* CAPABILITY STARTTLS LOGINDISABLED");
	assert_int_equal(imap_caps_rewrite((const uint8_t *)line, n, IMAP_CAPS_ADD_STARTTLS,
					   out, sizeof(out), &olen),
			 1);
	assert_int_equal(olen, n + strlen(" STARTTLS"));
}

int main(void)
{
	log_setup(LOG_ERROR, 0);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reader),
		cmocka_unit_test(test_reader_cancel_discard),
		cmocka_unit_test(test_tag_verb),
		cmocka_unit_test(test_classify),
		cmocka_unit_test(test_caps_find_flags),
		cmocka_unit_test(test_caps_rewrite),
		cmocka_unit_test(test_caps_rewrite_bound),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
