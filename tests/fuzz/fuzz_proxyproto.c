/* fuzz_proxyproto.c - libFuzzer harness for the PROXY protocol (proxyproto.h).
 *
 * Input: byte 0 picks the version the route expects (bit 0: 0 v1, 1 v2); the rest is what
 * a client sends first. It is parsed whole and as every prefix (how a session sees it
 * arrive in pieces). Besides memory safety (ASan/UBSan) it checks the contract: the answer
 * is a length (1..PP_HEADER_MAX, at most PP_V1_MAX for v1, never more than the input),
 * -EAGAIN, or -EINVAL with a reason (one printable line); every prefix shorter than a
 * header's length answers -EAGAIN and every longer one the same length; once a prefix
 * answers an error, every longer one answers the same error; a header with an address has
 * two addresses of one family (AF_INET or AF_INET6), one without has none; a header
 * rebuilt from the result (pp_build_v1 / pp_build_v2) parses back to the same addresses
 * and, for a v2 header without TLVs, is the same bytes. When the input is long enough,
 * its bytes 1..41 also make two socket addresses (families from byte 1) that are built
 * into both versions and parsed back. */
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxyproto.h"
#include "fuzz_util.h"

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return 0;
	if (a->ss_family == AF_INET)
		return !memcmp(a, b, sizeof(struct sockaddr_in));
	if (a->ss_family == AF_INET6)
		return !memcmp(a, b, sizeof(struct sockaddr_in6));
	return 0;
}

static int mapped(const struct sockaddr_storage *a)
{
	return a->ss_family == AF_INET6 &&
	       IN6_IS_ADDR_V4MAPPED(&((const struct sockaddr_in6 *)(const void *)a)->sin6_addr);
}

static void check_reason(const char *why)
{
	CHECK(why && why[0], "an error without a reason");
	for (const char *p = why; *p; p++)
		CHECK(*p >= 0x20 && *p < 0x7f, "reason with byte 0x%02x: %s", (unsigned char)*p, why);
}

static void check_result(enum pp_version v, const struct pp_result *r)
{
	CHECK(r->version == (int)v, "version %d, expected %d", r->version, v);
	CHECK(v == PP_V2 || !r->local, "LOCAL in a v1 header");
	CHECK(!r->local || !r->has_addr, "LOCAL with an address");
	if (r->has_addr) {
		CHECK(r->src.ss_family == r->dst.ss_family &&
			      (r->src.ss_family == AF_INET || r->src.ss_family == AF_INET6),
		      "families %d, %d", r->src.ss_family, r->dst.ss_family);
	} else {
		CHECK(r->src.ss_family == 0 && r->dst.ss_family == 0, "addresses without has_addr");
	}
}

/* Builds v from src and dst, parses it back: the same addresses (has_addr expected), or
 * none. Returns the header's length; the header in out. */
static int round_trip(enum pp_version v, const struct sockaddr_storage *src,
		      const struct sockaddr_storage *dst, int expect_addr, uint8_t *out)
{
	int n = v == PP_V1 ? pp_build_v1((const struct sockaddr *)src, (const struct sockaddr *)dst,
					 out, PP_HEADER_MAX)
			   : pp_build_v2((const struct sockaddr *)src, (const struct sockaddr *)dst,
					 out, PP_HEADER_MAX);
	CHECK(n > 0 && n <= (v == PP_V1 ? PP_V1_MAX : PP_V2_HDR + 36), "build v%d: %d", v, n);
	struct pp_result r;
	const char *why = NULL;
	int rc = pp_parse(v, out, (size_t)n, &r, &why);
	CHECK(rc == n, "built v%d header of %d bytes parses as %d (%s)", v, n, rc, why ? why : "");
	check_result(v, &r);
	CHECK(r.has_addr == expect_addr, "built v%d: has_addr %d, expected %d", v, r.has_addr,
	      expect_addr);
	if (expect_addr)
		CHECK(same_addr(&r.src, src) && same_addr(&r.dst, dst), "v%d round trip changed the addresses", v);
	/* one byte short: -ENOBUFS */
	uint8_t small[PP_HEADER_MAX];
	int m = v == PP_V1 ? pp_build_v1((const struct sockaddr *)src, (const struct sockaddr *)dst,
					 small, (size_t)n - 1)
			   : pp_build_v2((const struct sockaddr *)src, (const struct sockaddr *)dst,
					 small, (size_t)n - 1);
	CHECK(m == -ENOBUFS, "build v%d into %d bytes: %d", v, n - 1, m);
	return n;
}

static void make_addr(struct sockaddr_storage *ss, int kind, const uint8_t *a, uint16_t port)
{
	memset(ss, 0, sizeof(*ss));
	if (kind == 0) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)(void *)ss;
		s4->sin_family = AF_INET;
		memcpy(&s4->sin_addr, a, 4);
		s4->sin_port = htons(port);
	} else if (kind == 1) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)(void *)ss;
		s6->sin6_family = AF_INET6;
		memcpy(&s6->sin6_addr, a, 16);
		s6->sin6_port = htons(port);
	} else {
		ss->ss_family = kind == 2 ? AF_UNIX : AF_UNSPEC;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 1)
		return 0;
	enum pp_version v = data[0] & 1 ? PP_V2 : PP_V1;
	const uint8_t *d = data + 1;
	size_t len = size - 1;
	struct pp_result r;
	const char *why = NULL;
	int rc = pp_parse(v, d, len, &r, &why);
	if (rc > 0) {
		CHECK((size_t)rc <= len && rc <= PP_HEADER_MAX, "length %d of %zu", rc, len);
		CHECK(v == PP_V2 || rc <= PP_V1_MAX, "v1 header of %d bytes", rc);
		check_result(v, &r);
	} else if (rc == -EINVAL) {
		check_reason(why);
	} else {
		CHECK(rc == -EAGAIN, "rc %d", rc);
		CHECK(len < PP_HEADER_MAX, "still -EAGAIN after %zu bytes", len);
		CHECK(v == PP_V2 || len < PP_V1_MAX, "v1 still -EAGAIN after %zu bytes", len);
	}
	/* every prefix: more needed, then the whole input's answer */
	int decided = 0;
	for (size_t k = 0; k <= len; k++) {
		struct pp_result pr;
		const char *pw = NULL;
		int prc = pp_parse(v, d, k, &pr, &pw);
		if (prc == -EAGAIN) {
			CHECK(!decided, "-EAGAIN after an answer, at %zu of %zu bytes", k, len);
			continue;
		}
		decided = 1;
		CHECK(prc == rc, "prefix of %zu answers %d, the whole %zu bytes %d", k, prc, len, rc);
		if (rc == -EINVAL)
			CHECK(!strcmp(pw, why), "prefix of %zu: \"%s\", whole: \"%s\"", k, pw, why);
		else
			CHECK(k >= (size_t)rc && pr.has_addr == r.has_addr &&
				      (!r.has_addr || (same_addr(&pr.src, &r.src) && same_addr(&pr.dst, &r.dst))),
			      "prefix of %zu: another header", k);
	}
	uint8_t out[PP_HEADER_MAX];
	if (rc > 0 && r.has_addr && !mapped(&r.src) && !mapped(&r.dst)) {
		int n = round_trip(v, &r.src, &r.dst, 1, out);
		size_t alen = r.src.ss_family == AF_INET ? 12 : 36;
		if (v == PP_V2 && (size_t)rc == PP_V2_HDR + alen)
			CHECK(n == rc && !memcmp(out, d, (size_t)n), "v2 header rebuilt differently");
	}
	if (rc > 0 && !r.has_addr)
		round_trip(v, &r.src, &r.dst, 0, out);
	/* addresses from the input's bytes */
	if (len >= 41) {
		struct sockaddr_storage s, t;
		int ks = d[0] & 3, kt = (d[0] >> 2) & 3;
		make_addr(&s, ks, d + 1, (uint16_t)(d[33] << 8 | d[34]));
		make_addr(&t, kt, d + 17, (uint16_t)(d[35] << 8 | d[36]));
		if (mapped(&s) || mapped(&t))
			return 0; /* carried as IPv4: the unit test compares those */
		int both = ks < 2 && ks == kt;
		round_trip(PP_V1, &s, &t, both, out);
		round_trip(PP_V2, &s, &t, both, out);
	}
	return 0;
}
