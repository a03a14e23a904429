/* test_late.c - late binding (late.h): the bounds of late_plan() at their edge and one
 * beyond, live on a uv loop against a private NSD serving a DNSSEC-signed "example." zone
 * (tests/integration/dns_lib.sh, started from the group setup; a server that does not
 * start fails every test, it never skips them). The rest of late binding (MTA-STS, DANE
 * verdicts, the original destination) runs against real servers in
 * tests/integration/test_late_transparent.sh, test_mta_sts.sh and test_dane.sh.
 *
 * The bounds, their documented values written out (docs/limits.md), so that moving a
 * constant in include/late.h fails here:
 * - LATE_HOSTS_MAX (6): a domain of 6 MX hosts (one address each) gets all 6 as
 *   candidates, in preference order; one of 7 gets the first 6, the 7th never used;
 * - LATE_CAND_MAX (8): MX hosts with 5 + 3 addresses give 8 candidates; 5 + 4 give 8, the
 *   first host's 5 and 3 of the second's;
 * - LATE_TLSA_MAX (8): under level dane, a host with 8 DNSSEC-validated TLSA records
 *   keeps all 8; one with 9 keeps 8 of them. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#include "config.h"
#include "late.h"
#include "log.h"
#include "stsmgr.h"
#include "tls.h"
#include "unit_fixture.h"
#include "unit_net.h"
#include "unit_zone.h"

#define WAIT_MS 15000

#define HOSTS_EDGE 6
#define CAND_EDGE 8
#define TLSA_EDGE 8

static struct {
	int ok;
	struct unit_zone z; /* z.why: why the server did not start */
	char ca[600];
} L;

/* The zone: six and seven (MX hosts, one address each), c8 and c9 (two MX hosts with 5 + 3
 * and 5 + 4 addresses), t8 and t9 (one MX host with 8 and 9 TLSA records; the data of
 * record k, 32 octets of k). */
static void write_zone(FILE *f)
{
	for (int k = 1; k <= HOSTS_EDGE; k++)
		fprintf(f, "six IN MX %d h%d.six\nh%d.six IN A 192.0.2.%d\n", 10 * k, k, k, 100 + k);
	for (int k = 1; k <= HOSTS_EDGE + 1; k++)
		fprintf(f, "seven IN MX %d h%d.seven\nh%d.seven IN A 192.0.2.%d\n", 10 * k, k, k,
			110 + k);
	static const struct { const char *dom; int base_a, na, base_b, nb; } c[] = {
		{ "c8", 10, 5, 20, CAND_EDGE - 5 }, { "c9", 30, 5, 40, CAND_EDGE - 5 + 1 } };
	for (size_t i = 0; i < 2; i++) {
		fprintf(f, "%s IN MX 10 a.%s\n%s IN MX 20 b.%s\n", c[i].dom, c[i].dom, c[i].dom,
			c[i].dom);
		for (int k = 0; k < c[i].na; k++)
			fprintf(f, "a.%s IN A 192.0.2.%d\n", c[i].dom, c[i].base_a + k);
		for (int k = 0; k < c[i].nb; k++)
			fprintf(f, "b.%s IN A 192.0.2.%d\n", c[i].dom, c[i].base_b + k);
	}
	for (int n = TLSA_EDGE; n <= TLSA_EDGE + 1; n++) {
		fprintf(f, "t%d IN MX 10 mx.t%d\nmx.t%d IN A 192.0.2.%d\n", n, n, n, 200 + n);
		for (int k = 1; k <= n; k++) {
			fprintf(f, "_25._tcp.mx.t%d IN TLSA 3 1 1 ", n);
			for (int o = 0; o < 32; o++)
				fprintf(f, "%02x", k);
			fprintf(f, "\n");
		}
	}
}

static int group_setup(void **state)
{
	(void)state;
	log_setup(LOG_ERROR, 0);
	if (tls_global_init() != 0 || fixture_setup("late") != 0)
		return -1;
	snprintf(L.ca, sizeof L.ca, "%s/ca.pem", certdir);
	if (!have_certs)
		unit_copy_str(L.ca, sizeof L.ca, "/etc/ssl/certs/ca-certificates.crt");
	char body[600];
	snprintf(body, sizeof body, "%s/zone.body", tmpdir);
	FILE *f = fopen(body, "w");
	if (!f)
		return -1;
	write_zone(f);
	fclose(f);
	if (unit_zone_start(&L.z, tmpdir, body, "") != 0)
		return 0;
	L.ok = 1;
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	unit_zone_stop(&L.z);
	return fixture_teardown();
}

/* ---- one plan ---------------------------------------------------------------------- */

struct got {
	int calls;
	struct late_plan p; /* domain and policy cleared: valid only during the callback */
};

static void on_plan(void *arg, const struct late_plan *p)
{
	struct got *g = arg;
	g->calls++;
	g->p = *p;
	g->p.domain = NULL;
	g->p.policy = NULL;
}

static void tick(uv_timer_t *t)
{
	(void)t;
}

/* The plan for domain at level (port 25, upstream = mx), looked up on a loop of its own
 * with a fresh resolver (nothing cached between tests). */
static void plan(const char *domain, int level, struct got *g)
{
	if (!L.ok)
		fail_msg("no DNS server: %s", L.z.why);
	uv_loop_t loop;
	assert_int_equal(uv_loop_init(&loop), 0);
	struct cfg cfg;
	memset(&cfg, 0, sizeof cfg);
	cfg.resolver = L.z.resolver;
	cfg.dnssec_trust_anchor = L.z.anchor;
	cfg.ca = L.ca;
	cfg.generation = 1;
	struct sts_cache *cache = sts_cache_new();
	assert_non_null(cache);
	struct late_res *res = NULL;
	char err[300] = "";
	int rc = late_res_new(&loop, &cfg, cache, &res, err, sizeof err);
	if (rc != 0)
		fail_msg("late_res_new: %d %s", rc, err);
	memset(g, 0, sizeof *g);
	struct late_req *q = late_plan(res, domain, level, NULL, 25, 0, on_plan, g);
	assert_non_null(q);
	assert_int_equal(g->calls, 0);
	uv_timer_t guard;
	uv_timer_init(&loop, &guard);
	uv_timer_start(&guard, tick, 20, 20);
	int64_t end = now_ms() + WAIT_MS;
	while (g->calls == 0 && now_ms() < end)
		uv_run(&loop, UV_RUN_ONCE);
	uv_close((uv_handle_t *)&guard, NULL);
	if (g->calls == 0)
		late_cancel(q);
	late_res_unref(res);
	for (int i = 0; i < 100 && uv_loop_alive(&loop); i++)
		uv_run(&loop, UV_RUN_NOWAIT);
	assert_int_equal(uv_loop_close(&loop), 0);
	sts_cache_free(cache);
	if (g->calls != 1)
		fail_msg("%s: %d plans within %d ms", domain, g->calls, WAIT_MS);
	if (g->p.fail)
		fail_msg("%s: not bound: %s (%s)", domain, g->p.reply, g->p.detail);
}

/* The candidate's IPv4 address, last octet (192.0.2.X), and its port 25. */
static int last_octet(const struct late_cand *c)
{
	const struct sockaddr_in *sin = (const struct sockaddr_in *)&c->addr;
	assert_int_equal(sin->sin_family, AF_INET);
	assert_int_equal(ntohs(sin->sin_port), 25);
	uint32_t a = ntohl(sin->sin_addr.s_addr);
	assert_int_equal(a >> 8, 0xC00002);
	return (int)(a & 0xff);
}

/* LATE_HOSTS_MAX: 6 MX hosts all used, in preference order; of 7, the 7th never. */
static void test_hosts_max_edge(void **state)
{
	(void)state;
	static const struct { const char *dom; int nmx, base; } cases[] = {
		{ "six.example", HOSTS_EDGE, 100 }, { "seven.example", HOSTS_EDGE + 1, 110 } };
	for (size_t i = 0; i < 2; i++) {
		static struct got g;
		plan(cases[i].dom, CFG_POLICY_MAY, &g);
		size_t want = cases[i].nmx < HOSTS_EDGE ? (size_t)cases[i].nmx : HOSTS_EDGE;
		if (g.p.n != want)
			print_message("%s (%d MX hosts): %zu candidates, want %zu\n", cases[i].dom,
				      cases[i].nmx, g.p.n, want);
		assert_int_equal(g.p.n, want);
		const char *sub = strchr(cases[i].dom, '.');
		for (size_t k = 0; k < g.p.n; k++) {
			char name[64];
			snprintf(name, sizeof name, "h%zu.%.*s.example", k + 1,
				 (int)(sub - cases[i].dom), cases[i].dom);
			assert_string_equal(g.p.c[k].name, name);
			assert_int_equal(last_octet(&g.p.c[k]), cases[i].base + (int)k + 1);
			assert_int_equal(g.p.c[k].dane, 0);
		}
	}
}

/* LATE_CAND_MAX: 5 + 3 addresses are 8 candidates; of 5 + 4, the first host's 5 and 3 of
 * the second's (which 3 depends on the order the resolver answers in). */
static void test_cand_max_edge(void **state)
{
	(void)state;
	static const struct { const char *dom; int base_a, base_b, nb; } cases[] = {
		{ "c8.example", 10, 20, CAND_EDGE - 5 }, { "c9.example", 30, 40, CAND_EDGE - 5 + 1 } };
	for (size_t i = 0; i < 2; i++) {
		static struct got g;
		plan(cases[i].dom, CFG_POLICY_MAY, &g);
		size_t total = 5 + (size_t)cases[i].nb;
		size_t want = total < CAND_EDGE ? total : CAND_EDGE;
		if (g.p.n != want)
			print_message("%s (%zu addresses): %zu candidates, want %zu\n", cases[i].dom,
				      total, g.p.n, want);
		assert_int_equal(g.p.n, want);
		unsigned seen_a = 0, seen_b = 0;
		for (size_t k = 0; k < g.p.n; k++) {
			int o = last_octet(&g.p.c[k]);
			int first = k < 5;
			char name[64];
			snprintf(name, sizeof name, "%s.%s", first ? "a" : "b", cases[i].dom);
			assert_string_equal(g.p.c[k].name, name);
			int base = first ? cases[i].base_a : cases[i].base_b;
			int n = first ? 5 : cases[i].nb;
			if (o < base || o >= base + n)
				fail_msg("%s: candidate %zu is 192.0.2.%d", cases[i].dom, k, o);
			unsigned *seen = first ? &seen_a : &seen_b;
			assert_int_equal(*seen & (1u << (o - base)), 0); /* each address once */
			*seen |= 1u << (o - base);
		}
		assert_int_equal(seen_a, 0x1f);
	}
}

/* LATE_TLSA_MAX: level dane, a secure MX, a secure host: 8 TLSA records all kept; of 9,
 * 8 (distinct ones of the 9). */
static void test_tlsa_max_edge(void **state)
{
	(void)state;
	for (int n = TLSA_EDGE; n <= TLSA_EDGE + 1; n++) {
		char dom[32];
		snprintf(dom, sizeof dom, "t%d.example", n);
		static struct got g;
		plan(dom, CFG_POLICY_DANE, &g);
		assert_int_equal(g.p.dane, 1);
		assert_int_equal(g.p.n, 1);
		const struct late_cand *c = &g.p.c[0];
		assert_int_equal(last_octet(c), 200 + n);
		assert_int_equal(c->dane, 1);
		size_t want = n < TLSA_EDGE ? (size_t)n : TLSA_EDGE;
		if (c->ntlsa != want)
			print_message("%s (%d TLSA records): %zu kept, want %zu\n", dom, n, c->ntlsa,
				      want);
		assert_int_equal(c->ntlsa, want);
		unsigned seen = 0;
		for (size_t k = 0; k < c->ntlsa; k++) {
			const struct dns_tlsa *t = &c->tlsa[k];
			assert_int_equal(t->usage, 3);
			assert_int_equal(t->selector, 1);
			assert_int_equal(t->mtype, 1);
			assert_int_equal(t->len, 32);
			int id = t->data[0];
			if (id < 1 || id > n || t->data[31] != id)
				fail_msg("%s: record %zu has data %02x..%02x", dom, k, t->data[0],
					 t->data[31]);
			assert_int_equal(seen & (1u << id), 0);
			seen |= 1u << id;
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hosts_max_edge),
		cmocka_unit_test(test_cand_max_edge),
		cmocka_unit_test(test_tlsa_max_edge),
	};
	return cmocka_run_group_tests_name("late", tests, group_setup, group_teardown);
}
