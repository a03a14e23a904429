/* test_buf.c - the byte queue of buf.h against a reference model.
 *
 * The model: every byte ever appended has a stream index k and a pseudo-random value of k,
 * so the queue must always hold exactly the bytes [head, tail) of the stream. Sizes sit on and
 * around the growth points (4096 doubling, the 64 KiB release threshold). Allocation
 * failure is reached with sizes realloc cannot satisfy (and sizes whose capacity would
 * overflow size_t); under ASan the allocator is told to return NULL instead of aborting. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "buf.h"

const char *__asan_default_options(void);
const char *__asan_default_options(void)
{
	return "allocator_may_return_null=1";
}

#define KEEP_MAX 65536 /* buf.h: consuming everything releases allocations above this */

/* The stream: byte k is table[k % PERIOD], the table long enough that any window of up
 * to WINDOW bytes is contiguous (appends read straight from it, checks are memcmp). */
#define PERIOD (1u << 21)
#define WINDOW (1u << 20)
static uint8_t *table;

static int group_setup(void **state)
{
	(void)state;
	table = malloc(PERIOD + WINDOW);
	if (!table)
		return -1;
	for (uint64_t k = 0; k < PERIOD + WINDOW; k++) {
		uint64_t x = k % PERIOD;
		x ^= x >> 31;
		x *= 0x9e3779b97f4a7c15ull;
		x ^= x >> 29;
		table[k] = (uint8_t)(x >> 24);
	}
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	free(table);
	return 0;
}

static const uint8_t *stream_at(uint64_t k)
{
	return table + k % PERIOD;
}

struct model {
	struct buf b;
	uint64_t head, tail; /* the stream bytes the queue must hold */
	size_t peak;         /* largest len since the buffer last had no memory */
};

static void model_append(struct model *m, size_t n)
{
	assert_true(n <= WINDOW);
	assert_int_equal(buf_append(&m->b, stream_at(m->tail), n), 0);
	m->tail += n;
	if (m->tail - m->head > m->peak)
		m->peak = (size_t)(m->tail - m->head);
}

static void model_consume(struct model *m, size_t n)
{
	size_t len = (size_t)(m->tail - m->head);
	buf_consume(&m->b, n);
	m->head += n < len ? n : len;
	if (!m->b.data)
		m->peak = 0;
}

/* Every invariant of the queue, and its bytes against the stream. Returns 0 or -1 with
 * a message naming what is wrong. */
static int model_check(const struct model *m, const char *where)
{
	const struct buf *b = &m->b;
	size_t want = (size_t)(m->tail - m->head);
	if (b->len != want) {
		print_message("%s: len %zu, want %zu\n", where, b->len, want);
		return -1;
	}
	if (b->off + b->len > b->cap || (b->cap == 0) != (b->data == NULL)) {
		print_message("%s: off %zu len %zu cap %zu data %p\n", where, b->off, b->len,
			      b->cap, (void *)b->data);
		return -1;
	}
	if (b->len == 0)
		return 0;
	if (b->len > WINDOW) {
		print_message("%s: len %zu beyond the model's window\n", where, b->len);
		return -1;
	}
	const uint8_t *p = buf_ptr(b), *want_p = stream_at(m->head);
	if (memcmp(p, want_p, b->len) != 0) {
		size_t i = 0;
		while (p[i] == want_p[i])
			i++;
		print_message("%s: byte %zu of %zu is %02x, want %02x\n", where, i, b->len, p[i],
			      want_p[i]);
		return -1;
	}
	return 0;
}

static void model_free(struct model *m)
{
	buf_free(&m->b);
	memset(m, 0, sizeof(*m));
}

/* ------------------------------------------------------------------ interleavings */

static const size_t sizes[] = { 0, 1, 4095, 4096, 4097, 65535, 65536, 65537, 131073 };
#define NSIZES (sizeof sizes / sizeof sizes[0])
#define ALL ((size_t)-1)

struct op {
	int append; /* else consume */
	size_t n;   /* ALL: consume everything */
};

static void op_name(const struct op *o, char *out, size_t outlen)
{
	if (o->append)
		snprintf(out, outlen, "append(%zu)", o->n);
	else if (o->n == ALL)
		snprintf(out, outlen, "consume(all)");
	else
		snprintf(out, outlen, "consume(%zu)", o->n);
}

/* Every sequence of three operations (append or consume of every size, consume of
 * everything) from an empty buffer, checked after each step. */
static void test_interleavings(void **state)
{
	(void)state;
	struct op ops[2 * NSIZES + 1];
	size_t nops = 0;
	for (size_t i = 0; i < NSIZES; i++) {
		ops[nops++] = (struct op){ 1, sizes[i] };
		ops[nops++] = (struct op){ 0, sizes[i] };
	}
	ops[nops++] = (struct op){ 0, ALL };
	int failures = 0;
	size_t sequences = 0;
	struct model m = { 0 };
	for (size_t a = 0; a < nops; a++)
		for (size_t b = 0; b < nops; b++)
			for (size_t c = 0; c < nops && failures < 5; c++) {
				const struct op *seq[3] = { &ops[a], &ops[b], &ops[c] };
				char where[160] = "";
				size_t wl = 0;
				for (int s = 0; s < 3; s++) {
					char nm[40];
					op_name(seq[s], nm, sizeof nm);
					wl += (size_t)snprintf(where + wl, sizeof where - wl,
							       "%s%s", s ? " " : "", nm);
					if (seq[s]->append)
						model_append(&m, seq[s]->n);
					else
						model_consume(&m, seq[s]->n == ALL ? SIZE_MAX
										   : seq[s]->n);
					if (model_check(&m, where) < 0) {
						failures++;
						break;
					}
				}
				sequences++;
				model_free(&m);
			}
	assert_int_equal(failures, 0);
	assert_int_equal(sequences, nops * nops * nops);
}

/* A long pseudo-random run (fixed seed) with sizes around the growth points; the memory
 * contract is checked every time the queue becomes empty. */
static void test_random_run(void **state)
{
	(void)state;
	uint64_t x = 0x243f6a8885a308d3ull;
	struct model m = { 0 };
	int failures = 0;
	for (int step = 0; step < 20000 && failures < 5; step++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		size_t base = sizes[x % NSIZES];
		size_t jitter = (size_t)((x >> 8) % 5);
		size_t n = base + jitter >= 2 ? base + jitter - 2 : base;
		char where[64];
		size_t len = m.b.len;
		if (((x >> 20) % 3 == 0 || len == 0) && len + n <= WINDOW) {
			model_append(&m, n);
			snprintf(where, sizeof where, "step %d append(%zu)", step, n);
		} else {
			size_t c = (x >> 24) % 4 == 0 ? len : n % (len + 1);
			size_t cap = m.b.cap;
			model_consume(&m, c);
			snprintf(where, sizeof where, "step %d consume(%zu of %zu)", step, c, len);
			if (c == len) {
				if (cap > KEEP_MAX && (m.b.data || m.b.cap)) {
					print_message(
						"%s: cap %zu kept after consuming everything\n",
						where, cap);
					failures++;
				}
			}
		}
		if (model_check(&m, where) < 0)
			failures++;
		/* Never twice what was held at the peak (the doubling), above the first block. */
		if (m.b.cap > 4096 && m.b.cap >= 2 * m.peak) {
			print_message("%s: cap %zu for a peak of %zu\n", where, m.b.cap, m.peak);
			failures++;
		}
	}
	model_free(&m);
	assert_int_equal(failures, 0);
}

/* ------------------------------------------------------------------ memory contract */

struct release_case {
	size_t fill;  /* appended in one call */
	size_t cap;   /* the capacity that takes */
	int released; /* consuming everything gives the memory back */
};

static void test_consume_all_releases_large(void **state)
{
	(void)state;
	static const struct release_case cases[] = {
		{ 1, 4096, 0 },          { 4095, 4096, 0 },     { 4096, 4096, 0 },
		{ 4097, 8192, 0 },       { 65535, 65536, 0 },   { 65536, 65536, 0 },
		{ 65537, 131072, 1 },    { 131072, 131072, 1 }, { 131073, 262144, 1 },
		{ 1 << 20, 1 << 20, 1 },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct release_case *t = &cases[i];
		/* In one piece, and in two consumes (the second takes the rest). */
		for (int split = 0; split < 2; split++) {
			struct model m = { 0 };
			model_append(&m, t->fill);
			if (m.b.cap != t->cap) {
				print_message("fill %zu: cap %zu, want %zu\n", t->fill, m.b.cap,
					      t->cap);
				failures++;
			}
			if (split) {
				model_consume(&m, t->fill / 2);
				if (!m.b.data || m.b.cap != t->cap) {
					print_message(
						"fill %zu: a partial consume released memory\n",
						t->fill);
					failures++;
				}
				model_consume(&m, t->fill - t->fill / 2);
			} else {
				model_consume(&m, t->fill);
			}
			int released = m.b.data == NULL && m.b.cap == 0;
			if (released != t->released || m.b.len != 0 || m.b.off != 0) {
				print_message("fill %zu split %d: data %p cap %zu len %zu off %zu, "
					      "want %s\n",
					      t->fill, split, (void *)m.b.data, m.b.cap, m.b.len,
					      m.b.off, t->released ? "released" : "kept");
				failures++;
			}
			/* The buffer is usable again either way. */
			model_append(&m, 10);
			if (model_check(&m, "append after consume-all") < 0)
				failures++;
			model_free(&m);
		}
	}
	assert_int_equal(failures, 0);
}

static void test_trim_and_free(void **state)
{
	(void)state;
	struct buf b = { 0 };
	buf_trim(&b); /* zeroed: nothing to do */
	buf_free(&b);
	assert_null(b.data);
	assert_int_equal(b.cap, 0);

	/* n == 0 allocates nothing, whatever p is. */
	assert_int_equal(buf_append(&b, NULL, 0), 0);
	assert_null(b.data);
	assert_int_equal(b.len, 0);

	assert_int_equal(buf_append(&b, "hello", 5), 0);
	uint8_t *data = b.data;
	buf_trim(&b); /* not empty: kept */
	assert_ptr_equal(b.data, data);
	assert_int_equal(b.len, 5);
	assert_memory_equal(buf_ptr(&b), "hello", 5);

	buf_consume(&b, 5); /* small: consume-all keeps the allocation */
	assert_non_null(b.data);
	assert_int_equal(b.cap, 4096);
	buf_trim(&b); /* ... and trim gives it back */
	assert_null(b.data);
	assert_int_equal(b.cap, 0);
	assert_int_equal(b.len, 0);
	assert_int_equal(b.off, 0);

	assert_int_equal(buf_append(&b, "again", 5), 0);
	assert_memory_equal(buf_ptr(&b), "again", 5);
	buf_free(&b);
	assert_null(b.data);
	assert_int_equal(b.cap + b.len + b.off, 0);
	buf_free(&b); /* twice is harmless */
}

/* ------------------------------------------------------------------ compaction */

struct compact_case {
	size_t first, consumed, second;
	size_t cap;     /* capacity afterwards */
	size_t off;     /* offset afterwards */
	int same_block; /* no reallocation happened */
};

static void test_offset_compaction(void **state)
{
	(void)state;
	static const struct compact_case cases[] = {
		/* Fits after the tail: nothing moves. */
		{ 4000, 3000, 96, 4096, 3000, 1 },
		/* Fits only once moved to the front: compacted in place. */
		{ 4000, 3000, 97, 4096, 0, 1 },
		{ 4000, 3000, 2000, 4096, 0, 1 },
		{ 4096, 4095, 4095, 4096, 0, 1 },
		{ 65536, 60000, 60000, 65536, 0, 1 },
		/* Does not fit even at the front: grows, offset reset. */
		{ 4000, 3000, 3097, 8192, 0, 0 },
		{ 4096, 1, 2, 8192, 0, 0 },
	};
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct compact_case *t = &cases[i];
		struct model m = { 0 };
		model_append(&m, t->first);
		model_consume(&m, t->consumed);
		uint8_t *block = m.b.data;
		model_append(&m, t->second);
		if (m.b.cap != t->cap || m.b.off != t->off ||
		    (t->same_block && m.b.data != block)) {
			print_message(
				"case %zu (%zu, -%zu, +%zu): cap %zu off %zu moved %d, want cap "
				"%zu off %zu moved %d\n",
				i, t->first, t->consumed, t->second, m.b.cap, m.b.off,
				m.b.data != block, t->cap, t->off, !t->same_block);
			failures++;
		}
		if (model_check(&m, "compaction") < 0)
			failures++;
		model_free(&m);
	}
	assert_int_equal(failures, 0);
}

/* ------------------------------------------------------------------ allocation failure */

struct fail_case {
	const char *name;
	size_t fill, consumed; /* the buffer before the failing append */
	int n_from_len;        /* n = base - len (1) or base (0) */
	size_t base;
};

static void test_append_failure_leaves_buffer(void **state)
{
	(void)state;
	static const struct fail_case cases[] = {
		{ "empty, SIZE_MAX/2 (realloc fails)", 0, 0, 0, SIZE_MAX / 2 },
		{ "empty, SIZE_MAX/2 + 1", 0, 0, 0, SIZE_MAX / 2 + 1 },
		{ "empty, SIZE_MAX/2 + 2", 0, 0, 0, SIZE_MAX / 2 + 2 },
		{ "empty, SIZE_MAX", 0, 0, 0, SIZE_MAX },
		{ "held, SIZE_MAX/2 (realloc fails)", 5000, 1000, 0, SIZE_MAX / 2 },
		{ "held, SIZE_MAX/2 - len (realloc fails)", 5000, 1000, 1, SIZE_MAX / 2 },
		{ "held, SIZE_MAX/2 - len + 2", 5000, 1000, 1, SIZE_MAX / 2 + 2 },
		{ "held, len + n wraps to 0", 5000, 1000, 1, 0 },
		{ "held, len + n wraps below cap", 5000, 1000, 1, 100 },
		{ "held, SIZE_MAX", 5000, 1000, 0, SIZE_MAX },
		{ "offset only, SIZE_MAX - off", 4096, 4000, 0, SIZE_MAX - 4000 },
	};
	static const uint8_t src[16];
	int failures = 0;
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		const struct fail_case *t = &cases[i];
		struct model m = { 0 };
		model_append(&m, t->fill);
		model_consume(&m, t->consumed);
		size_t len = m.b.len, cap = m.b.cap;
		uint8_t *data = m.b.data;
		size_t n = t->n_from_len ? t->base - len : t->base;
		int rc = buf_append(&m.b, src, n);
		if (rc != -ENOMEM || m.b.len != len || m.b.cap != cap || m.b.data != data) {
			print_message("%s (n = %zu): rc %d len %zu cap %zu data %s\n", t->name, n,
				      rc, m.b.len, m.b.cap, m.b.data == data ? "same" : "changed");
			failures++;
		}
		if (model_check(&m, t->name) < 0)
			failures++;
		/* Still usable. */
		model_append(&m, 4097);
		if (model_check(&m, "append after failure") < 0)
			failures++;
		model_free(&m);
	}
	assert_int_equal(failures, 0);
}

int main(void)
{
	alarm(30); /* a hang (e.g. a capacity loop that never ends) fails instead of blocking */
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_interleavings),
		cmocka_unit_test(test_random_run),
		cmocka_unit_test(test_consume_all_releases_large),
		cmocka_unit_test(test_trim_and_free),
		cmocka_unit_test(test_offset_compaction),
		cmocka_unit_test(test_append_failure_leaves_buffer),
	};
	return cmocka_run_group_tests_name("buf", tests, group_setup, group_teardown);
}
