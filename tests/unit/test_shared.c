/* test_shared.c - what the workers share (shared.h): session ids, the open-session count
 * and the per route and client address counts, single-threaded tables and under
 * concurrent use from several threads. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "shared.h"

static int cmp(const void *a, const void *b)
{
	return strcmp(a, b);
}

static void test_session_ids(void **state)
{
	(void)state;
	struct stp_shared sh;
	assert_int_equal(shared_init(&sh), 0);
	enum { N = 20000 };
	char(*ids)[17] = calloc(N, 17);
	assert_non_null(ids);
	for (int i = 0; i < N; i++) {
		shared_session_id(&sh, ids[i]);
		assert_int_equal(strlen(ids[i]), 16);
		for (int k = 0; k < 16; k++)
			assert_true(isxdigit((unsigned char)ids[i][k]) && !isupper((unsigned char)ids[i][k]));
	}
	qsort(ids, N, 17, cmp);
	for (int i = 1; i < N; i++)
		assert_string_not_equal(ids[i - 1], ids[i]);
	/* another process (another key) does not repeat this one's first ids */
	struct stp_shared other;
	assert_int_equal(shared_init(&other), 0);
	char a[17], b[17];
	struct stp_shared s1, s2;
	assert_int_equal(shared_init(&s1), 0);
	assert_int_equal(shared_init(&s2), 0);
	shared_session_id(&s1, a);
	shared_session_id(&s2, b);
	assert_string_not_equal(a, b);
	shared_destroy(&s1);
	shared_destroy(&s2);
	shared_destroy(&other);
	free(ids);
	shared_destroy(&sh);
}

static void test_active(void **state)
{
	(void)state;
	struct stp_shared sh;
	assert_int_equal(shared_init(&sh), 0);
	assert_int_equal(shared_session_opened(&sh), 1);
	assert_int_equal(shared_session_opened(&sh), 2);
	shared_session_closed(&sh);
	assert_int_equal(shared_session_opened(&sh), 2);
	shared_session_closed(&sh);
	shared_session_closed(&sh);
	assert_int_equal(sh.active, 0);
	shared_destroy(&sh);
}

/* Per (route, address): counts are separate per route and per address, release frees. */
static void test_clients(void **state)
{
	(void)state;
	struct stp_shared sh;
	assert_int_equal(shared_init(&sh), 0);
	static const int route_a = 1, route_b = 2;
	static const struct {
		const void *route;
		const char *ip;
		int acquire; /* 1 acquire, 0 release */
		unsigned want;
	} steps[] = {
		{ &route_a, "192.0.2.1", 1, 1 },   { &route_a, "192.0.2.1", 1, 2 },
		{ &route_b, "192.0.2.1", 1, 1 },   /* another route: its own count */
		{ &route_a, "192.0.2.10", 1, 1 },  /* another address */
		{ &route_a, "2001:db8::1", 1, 1 }, { &route_a, "192.0.2.1", 0, 0 },
		{ &route_a, "192.0.2.1", 1, 2 },   { &route_a, "192.0.2.1", 0, 0 },
		{ &route_a, "192.0.2.1", 0, 0 },   /* count 0: the entry is freed */
		{ &route_a, "192.0.2.1", 1, 1 },   /* and starts again at 1 */
		{ &route_b, "192.0.2.1", 1, 2 },
		{ &route_a, "198.51.100.7", 0, 0 }, /* releasing an unknown address: nothing */
		{ &route_a, "198.51.100.7", 1, 1 },
	};
	for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++) {
		if (steps[i].acquire) {
			unsigned n = shared_client_acquire(&sh, steps[i].route, steps[i].ip);
			if (n != steps[i].want)
				print_message("step %zu: %s got %u want %u\n", i, steps[i].ip, n,
					      steps[i].want);
			assert_int_equal(n, steps[i].want);
		} else {
			shared_client_release(&sh, steps[i].route, steps[i].ip);
		}
	}
	/* thousands of addresses share 1024 buckets: each keeps its own count */
	char ip[64];
	for (int i = 0; i < 5000; i++) {
		snprintf(ip, sizeof ip, "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
		assert_int_equal(shared_client_acquire(&sh, &route_a, ip), 1);
		assert_int_equal(shared_client_acquire(&sh, &route_a, ip), 2);
	}
	for (int i = 0; i < 5000; i++) {
		snprintf(ip, sizeof ip, "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
		shared_client_release(&sh, &route_a, ip);
		assert_int_equal(shared_client_acquire(&sh, &route_a, ip), 2);
		shared_client_release(&sh, &route_a, ip);
		shared_client_release(&sh, &route_a, ip);
	}
	size_t left = 0;
	for (size_t b = 0; b < sizeof sh.clients / sizeof sh.clients[0]; b++)
		left += sh.clients[b] != NULL;
	/* what remains: the entries of the table steps, not the 5000 released ones */
	assert_true(left <= 6);
	shared_destroy(&sh);
}

struct worker_arg {
	struct stp_shared *sh;
	int id;
};

static void *hammer(void *p)
{
	struct worker_arg *w = p;
	static const int route = 7;
	char ip[32];
	for (int i = 0; i < 20000; i++) {
		snprintf(ip, sizeof ip, "192.0.2.%d", i % 5);
		shared_session_opened(w->sh);
		unsigned n = shared_client_acquire(w->sh, &route, ip);
		assert_true(n >= 1);
		shared_client_release(w->sh, &route, ip);
		shared_session_closed(w->sh);
	}
	return NULL;
}

static void test_concurrent(void **state)
{
	(void)state;
	struct stp_shared sh;
	assert_int_equal(shared_init(&sh), 0);
	pthread_t t[4];
	struct worker_arg args[4];
	for (int i = 0; i < 4; i++) {
		args[i] = (struct worker_arg){ &sh, i };
		assert_int_equal(pthread_create(&t[i], NULL, hammer, &args[i]), 0);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(sh.active, 0);
	for (size_t b = 0; b < sizeof sh.clients / sizeof sh.clients[0]; b++)
		assert_null(sh.clients[b]); /* every count went back to 0 and was freed */
	shared_destroy(&sh);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_session_ids),
		cmocka_unit_test(test_active),
		cmocka_unit_test(test_clients),
		cmocka_unit_test(test_concurrent),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
