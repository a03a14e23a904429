/* test_proto_kit.c - the pieces protocol modules share (proto_kit.h): the bounded line
 * reader (table of inputs, each fed whole, one byte at a time and split at every
 * position), the expected-reply queue (order, growth, bound, "sent before" rule, unpop),
 * the capability word test, and the STARTTLS boundary; and the action list (proto.h):
 * merging, policy details, and allocation failure marking the list failed. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "proto_kit.h"

/* ---- line reader ------------------------------------------------------------------- */

/* What a reader yields for an input: lines as "L:text", overlong lines as "TOO_LONG",
 * joined with '|'. The reader is drained after each feed, like a module does. */
static void drain(struct line_reader *r, char *out, size_t cap)
{
	struct line l;
	int rc;
	while ((rc = lr_next(r, &l)) != LR_MORE) {
		size_t o = strlen(out);
		if (rc == LR_TOO_LONG)
			snprintf(out + o, cap - o, "TOO_LONG|");
		else {
			snprintf(out + o, cap - o, "L:%.*s|", (int)l.len, (const char *)l.p);
			assert_true(l.size == l.len + 1 || l.size == l.len + 2);
			lr_consume(r, l.size);
		}
	}
}

static void run_reader(const char *in, size_t max, size_t split, int bytes, char *out,
		       size_t cap)
{
	struct line_reader r;
	lr_init(&r, max);
	out[0] = '\0';
	size_t n = strlen(in);
	if (bytes) {
		for (size_t i = 0; i < n; i++) {
			assert_int_equal(lr_feed(&r, in + i, 1), 0);
			drain(&r, out, cap);
		}
	} else {
		assert_int_equal(lr_feed(&r, in, split), 0);
		drain(&r, out, cap);
		assert_int_equal(lr_feed(&r, in + split, n - split), 0);
		drain(&r, out, cap);
	}
	lr_free(&r);
}

static void test_line_reader(void **state)
{
	(void)state;
	static const struct {
		const char *in;
		size_t max;
		const char *want;
		size_t pending; /* bytes left unconsumed at the end */
	} cases[] = {
		{ "", 10, "", 0 },
		{ "abc\r\n", 10, "L:abc|", 0 },
		{ "abc\n", 10, "L:abc|", 0 },
		{ "abc\r\ndef\nghi", 10, "L:abc|L:def|", 3 },
		{ "\r\n\n", 10, "L:|L:|", 0 },
		{ "a\rb\r\n", 10, "L:a\rb|", 0 },          /* a bare CR stays in the line */
		{ "123456789\n", 10, "L:123456789|", 0 },  /* exactly max with its LF */
		{ "1234567890\nok\n", 10, "TOO_LONG|L:ok|", 0 },
		{ "12345678\r\n", 10, "L:12345678|", 0 },  /* max with CRLF */
		{ "123456789\r\n", 10, "TOO_LONG|", 0 },
		/* an overlong line is reported once however it arrives, its tail dropped */
		{ "1234567890123456789012345\nok\n", 10, "TOO_LONG|L:ok|", 0 },
		{ "12345678901234567890123456789012345678901234567890\n", 10, "TOO_LONG|", 0 },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t n = strlen(cases[i].in);
		for (size_t mode = 0; mode <= n + 1; mode++) {
			char out[512];
			int bytes = mode == n + 1;
			run_reader(cases[i].in, cases[i].max, bytes ? 0 : mode, bytes, out, sizeof(out));
			if (strcmp(out, cases[i].want) != 0) {
				print_message("case %zu (%s): got \"%s\" want \"%s\"\n", i,
					      bytes ? "bytes" : "split", out, cases[i].want);
				failures++;
				break;
			}
		}
		/* what stays after draining, fed whole */
		struct line_reader r;
		lr_init(&r, cases[i].max);
		lr_feed(&r, cases[i].in, n);
		char out[512] = "";
		drain(&r, out, sizeof(out));
		if (lr_pending(&r) != cases[i].pending) {
			print_message("case %zu: %zu bytes pending, want %zu\n", i, lr_pending(&r),
				      cases[i].pending);
			failures++;
		}
		lr_free(&r);
	}
	assert_int_equal(failures, 0);
}

/* A line not consumed is offered again; raw bytes and discard. */
static void test_line_reader_keep_and_raw(void **state)
{
	(void)state;
	struct line_reader r;
	struct line l;
	lr_init(&r, 100);
	assert_int_equal(lr_feed(&r, "BDAT 3\r\nabcQUIT\r\n", 17), 0);
	assert_int_equal(lr_next(&r, &l), LR_LINE);
	assert_int_equal(lr_next(&r, &l), LR_LINE); /* kept: the same line again */
	assert_int_equal(l.len, 6);
	assert_memory_equal(l.p, "BDAT 3", 6);
	lr_consume(&r, l.size);
	assert_int_equal(lr_pending(&r), 9);
	assert_memory_equal(lr_data(&r), "abc", 3); /* chunk octets, raw */
	lr_consume(&r, 3);
	assert_int_equal(lr_next(&r, &l), LR_LINE);
	assert_memory_equal(l.p, "QUIT", 4);
	lr_discard(&r);
	assert_int_equal(lr_pending(&r), 0);
	assert_int_equal(lr_next(&r, &l), LR_MORE);
	/* discard also ends the skipping of an overlong line */
	assert_int_equal(lr_feed(&r, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
				     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", 110), 0);
	assert_int_equal(lr_next(&r, &l), LR_TOO_LONG);
	lr_discard(&r);
	assert_int_equal(lr_feed(&r, "EHLO x\r\n", 8), 0);
	assert_int_equal(lr_next(&r, &l), LR_LINE);
	assert_memory_equal(l.p, "EHLO x", 6);
	lr_free(&r);
}

/* lr_partial (line_timeout): octets after the last LF, or an overlong line's tail, named by
 * the offset of the line's first octet (+ 1): the same line an octet further keeps its
 * name, the next line (even in the same read) gets another */
static void test_line_reader_partial(void **state)
{
	(void)state;
	struct line_reader r;
	struct line l;
	lr_init(&r, 8);
	assert_int_equal(lr_partial(&r), 0);
	assert_int_equal(lr_feed(&r, "NO", 2), 0);
	assert_int_equal(lr_partial(&r), 1);
	assert_int_equal(lr_feed(&r, "O", 1), 0);
	assert_int_equal(lr_partial(&r), 1); /* the same line */
	assert_int_equal(lr_feed(&r, "P\r\n", 3), 0);
	assert_int_equal(lr_partial(&r), 0); /* a whole line, not yet taken */
	assert_int_equal(lr_feed(&r, "QU", 2), 0);
	assert_int_equal(lr_partial(&r), 7);
	assert_int_equal(lr_next(&r, &l), LR_LINE);
	lr_consume(&r, l.size);
	assert_int_equal(lr_partial(&r), 7);
	assert_int_equal(lr_feed(&r, "IT\nRS", 5), 0);
	assert_int_equal(lr_partial(&r), 12); /* a bare LF ends a line too; the next one */
	lr_discard(&r);
	assert_int_equal(lr_partial(&r), 0);
	assert_int_equal(lr_feed(&r, "xxxxxxxxxx", 10), 0);
	assert_int_equal(lr_partial(&r), 14);
	assert_int_equal(lr_next(&r, &l), LR_TOO_LONG);
	assert_int_equal(lr_pending(&r), 0);
	assert_int_equal(lr_partial(&r), 14); /* dropping the rest of it: still that line */
	assert_int_equal(lr_feed(&r, "x", 1), 0);
	assert_int_equal(lr_next(&r, &l), LR_MORE);
	assert_int_equal(lr_partial(&r), 14);
	assert_int_equal(lr_feed(&r, "\r\n", 2), 0);
	assert_int_equal(lr_next(&r, &l), LR_MORE);
	assert_int_equal(lr_partial(&r), 0);
	/* octets taken raw (a BDAT chunk) are no line; what follows them is */
	assert_int_equal(lr_feed(&r, "abc", 3), 0); /* offsets 26-28 */
	lr_consume(&r, 3);
	assert_int_equal(lr_partial(&r), 0);
	assert_int_equal(lr_feed(&r, "defNO", 5), 0);
	lr_consume(&r, 3);
	assert_int_equal(lr_partial(&r), 33);
	lr_free(&r);
}

/* ---- expected replies -------------------------------------------------------------- */

static void test_expect_queue(void **state)
{
	(void)state;
	struct expect_queue q;
	eq_init(&q, 40);
	/* order across growth (8, 16, 32 entries) with the ring wrapped */
	for (int round = 0; round < 3; round++) {
		for (int i = 0; i < 5; i++)
			assert_non_null(eq_push(&q, 100 + i, NULL));
		for (int i = 0; i < 5; i++) {
			assert_int_equal(eq_head(&q)->kind, 100 + i);
			eq_pop(&q);
		}
	}
	for (int i = 0; i < 40; i++)
		assert_non_null(eq_push(&q, i, i % 3 ? NULL : "250 text"));
	assert_null(eq_push(&q, 99, NULL)); /* the bound */
	assert_int_equal(eq_len(&q), 40);
	for (int i = 0; i < 40; i++) {
		assert_int_equal(eq_at(&q, (size_t)i)->kind, i);
		if (i % 3 == 0)
			assert_string_equal(eq_at(&q, (size_t)i)->text, "250 text");
		else
			assert_null(eq_at(&q, (size_t)i)->text);
	}
	assert_null(eq_at(&q, 40));
	/* unpop: the entry just popped is the head again, with its fields */
	eq_head(&q)->count = 7;
	eq_pop(&q);
	eq_unpop(&q);
	assert_int_equal(eq_head(&q)->kind, 0);
	assert_int_equal(eq_head(&q)->count, 7);
	assert_int_equal(eq_len(&q), 40);
	eq_clear(&q);
	assert_int_equal(eq_len(&q), 0);
	assert_null(eq_head(&q));
	eq_pop(&q); /* popping an empty queue is harmless */
	eq_free(&q);
}

/* A reply can answer only a command sent before its first byte was received. */
static void test_expect_sent_before(void **state)
{
	(void)state;
	struct expect_queue q;
	eq_init(&q, 8);
	struct expect *g = eq_push(&q, 1, NULL); /* the greeting: expected from offset 0 */
	assert_int_equal(g->sent_at, 0);
	assert_true(eq_answers(g, 0));
	eq_received(&q, 30); /* greeting and EHLO reply, one read */
	struct expect *st = eq_push(&q, 2, NULL); /* STARTTLS sent after that read */
	assert_int_equal(st->sent_at, 30);
	assert_false(eq_answers(st, 20)); /* a "220" inside that read: written before */
	assert_true(eq_answers(st, 30));  /* the next read's first byte */
	assert_true(eq_answers(st, 31));
	eq_free(&q);
}

/* ---- capability words ---------------------------------------------------------------- */

static void test_cap_word(void **state)
{
	(void)state;
	static const struct {
		const char *text, *kw;
		int want;
	} cases[] = {
		{ "STARTTLS", "STARTTLS", 1 },	  { "starttls", "STARTTLS", 1 },
		{ "StartTLS\r\n", "STARTTLS", 1 }, { "STARTTLS x", "STARTTLS", 1 },
		{ "STARTTLSX", "STARTTLS", 0 },	  { "XSTARTTLS", "STARTTLS", 0 },
		{ "X-STARTTLS", "STARTTLS", 0 },	  { "START", "STARTTLS", 0 },
		{ "", "STARTTLS", 0 },		  { " STARTTLS", "STARTTLS", 0 },
		{ "STARTTLS\tx", "STARTTLS", 0 },	  /* tab is not a separator */
		{ "AUTH PLAIN", "AUTH", 1 },	  { "AUTH=LOGIN", "AUTH", 1 },
		{ "AUTHX", "AUTH", 0 },		  { "AUTH=PLAIN", "AUTH=", 1 },
		{ "AUTH", "AUTH=", 0 },		  { "auth=plain", "AUTH=", 1 },
		{ "LOGINDISABLED", "LOGINDISABLED", 1 }, { "SIZE=1000", "SIZE", 0 },
		{ "CHUNKING", "CHUNKING", 1 },	  { "SIZE 1000", "SIZE", 1 },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int got = cap_word_is(cases[i].text, strlen(cases[i].text), cases[i].kw);
		if (got != cases[i].want) {
			print_message("cap_word_is(\"%s\", \"%s\") = %d, want %d\n", cases[i].text,
				      cases[i].kw, got, cases[i].want);
			failures++;
		}
	}
	/* the length bounds the word: a longer buffer is not read */
	assert_int_equal(cap_word_is("STARTTLSX", 8, "STARTTLS"), 1);
	assert_int_equal(failures, 0);
}

/* ---- the STARTTLS boundary and the action list ------------------------------------------- */

static void test_boundary(void **state)
{
	(void)state;
	struct proto_actions a = { 0 };
	struct line_reader r;
	lr_init(&r, 100);
	lr_feed(&r, "MAIL FROM:<evil@x>\r\nRCPT", 24);
	assert_int_equal(kit_starttls(&a, PROTO_CLIENT, &r), 24); /* reported, for the log */
	assert_int_equal(lr_pending(&r), 0); /* what came after STARTTLS is gone */
	assert_int_equal(a.n, 1);
	assert_int_equal(a.a[0].type, PA_STARTTLS);
	assert_int_equal(a.a[0].side, PROTO_CLIENT);
	lr_free(&r);
	proto_actions_free(&a);
}

static void test_actions(void **state)
{
	(void)state;
	struct proto_actions a = { 0 };
	proto_send(&a, PROTO_CLIENT, "ab", 2);
	proto_sendf(&a, PROTO_CLIENT, "%s", "cd"); /* merged with the one before */
	proto_send(&a, PROTO_UPSTREAM, "x", 1);
	proto_send(&a, PROTO_UPSTREAM, "", 0); /* nothing */
	proto_policy(&a, "starttls-not-supported", "STARTTLS refused with 454");
	proto_send(&a, PROTO_UPSTREAM, "y", 1); /* not merged across the policy action */
	proto_close(&a, "quit");
	assert_int_equal(a.failed, 0);
	assert_int_equal(a.n, 5);
	assert_int_equal(a.a[0].type, PA_SEND);
	assert_int_equal(a.a[0].len, 4);
	assert_memory_equal(a.buf + a.a[0].off, "abcd", 4);
	assert_int_equal(a.a[1].side, PROTO_UPSTREAM);
	assert_int_equal(a.a[2].type, PA_POLICY);
	assert_string_equal(a.a[2].reason, "starttls-not-supported");
	assert_int_equal(a.a[2].len, strlen("STARTTLS refused with 454"));
	assert_memory_equal(a.buf + a.a[2].off, "STARTTLS refused with 454", a.a[2].len);
	assert_int_equal(a.a[3].len, 1);
	assert_memory_equal(a.buf + a.a[3].off, "y", 1);
	assert_int_equal(a.a[4].type, PA_CLOSE);
	proto_actions_clear(&a);
	assert_int_equal(a.n, 0);
	/* an allocation that cannot succeed marks the list failed instead of aborting */
	static char big[1];
	proto_send(&a, PROTO_CLIENT, big, (size_t)1 << 62);
	assert_int_equal(a.failed, 1);
	size_t n = a.n;
	proto_close(&a, "x"); /* later actions go nowhere */
	proto_send(&a, PROTO_CLIENT, "z", 1);
	assert_int_equal(a.n, n);
	proto_actions_clear(&a);
	assert_int_equal(a.failed, 0);
	proto_actions_free(&a);
}

static void test_lookup(void **state)
{
	(void)state;
	assert_ptr_equal(proto_lookup(CFG_PROTO_SMTP), &proto_smtp_ops);
	assert_ptr_equal(proto_lookup(CFG_PROTO_LMTP), &proto_smtp_ops);
	assert_null(proto_lookup(CFG_PROTO_TCP));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_line_reader),
		cmocka_unit_test(test_line_reader_keep_and_raw),
		cmocka_unit_test(test_line_reader_partial),
		cmocka_unit_test(test_expect_queue),
		cmocka_unit_test(test_expect_sent_before),
		cmocka_unit_test(test_cap_word),
		cmocka_unit_test(test_boundary),
		cmocka_unit_test(test_actions),
		cmocka_unit_test(test_lookup),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
