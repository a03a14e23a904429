/* fuzz_admin.c - libFuzzer harness for the admin endpoint's request parsing
 * (admin_parse_request, admin.h).
 *
 * Input: what a client sends to admin_listen, parsed whole and as every prefix (how the
 * endpoint sees it arrive in pieces). Besides memory safety (ASan/UBSan) it checks the
 * contract: the answer is 0, -EAGAIN or -EINVAL with status 400, 405, 414 or 431; -EAGAIN
 * only without "\n\n" / "\r\n\r\n" in fewer than ADMIN_REQ_MAX octets, 431 only with
 * ADMIN_REQ_MAX octets and no end; a 0 has method "GET" and a path within the input's first
 * line, without white space, '?', CR, LF or NUL; every prefix answers -EAGAIN until the
 * answer is known, and every longer prefix the same answer (the same path) (past 300
 * octets the prefixes are sampled: at each CR and LF, around ADMIN_REQ_MAX, every 61st).
 * It also checks the answer against an independent model: the sscanf("%15s %199s %15s") the endpoint
 * parsed with before admin_parse_request (the same status, the same path). */
#include <stddef.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "fuzz_util.h"

/* The endpoint's parsing before admin_parse_request: the status (200 for a GET), the path. */
static int model(const char *req, size_t len, char path[200])
{
	if (len > ADMIN_REQ_MAX)
		len = ADMIN_REQ_MAX;
	if (!memmem(req, len, "\r\n\r\n", 4) && !memmem(req, len, "\n\n", 2))
		return len == ADMIN_REQ_MAX ? 431 : 0;
	const char *eol = memchr(req, '\n', len);
	size_t ll = (size_t)(eol - req);
	char line[256];
	if (ll >= sizeof(line))
		return 414;
	memcpy(line, req, ll);
	line[ll] = '\0';
	char method[16], version[16];
	if (sscanf(line, "%15s %199s %15s", method, path, version) != 3 ||
	    strncmp(version, "HTTP/1.", 7) != 0)
		return 400;
	if (strcmp(method, "GET") != 0)
		return 405;
	char *q = strchr(path, '?');
	if (q)
		*q = '\0';
	return 200;
}

struct answer {
	int rc;
	struct admin_req r;
};

static struct answer parse(const uint8_t *data, size_t size)
{
	struct answer a;
	a.rc = admin_parse_request((const char *)data, size, &a.r);
	CHECK(a.rc == 0 || a.rc == -EAGAIN || a.rc == -EINVAL, "answer %d", a.rc);
	if (a.rc == -EINVAL)
		CHECK(a.r.status == 400 || a.r.status == 405 || a.r.status == 414 ||
			      a.r.status == 431,
		      "status %d", a.r.status);
	if (a.rc != 0)
		return a;
	const char *in = (const char *)data;
	const char *eol = memchr(in, '\n', size);
	CHECK(eol, "a request without a line");
	CHECK(a.r.method >= in && a.r.method + 3 <= eol && a.r.method_len == 3 &&
		      !memcmp(a.r.method, "GET", 3),
		      "method not GET within the input");
	CHECK(a.r.path >= in && a.r.path + a.r.path_len <= eol && a.r.path > a.r.method,
	      "path %p+%zu outside the first line %p..%p", (const void *)a.r.path, a.r.path_len,
	      (const void *)in, (const void *)eol);
	CHECK(a.r.path_len < 200, "path of %zu octets", a.r.path_len);
	for (size_t i = 0; i < a.r.path_len; i++) {
		char ch = a.r.path[i];
		CHECK(ch != '\r' && ch != '\n' && ch != '\0' && ch != ' ' && ch != '\t' && ch != '?' &&
			      ch != '\v' && ch != '\f',
		      "path byte 0x%02x at %zu", (unsigned char)ch, i);
	}
	return a;
}

static int same(const struct answer *a, const struct answer *b)
{
	if (a->rc != b->rc)
		return 0;
	if (a->rc == -EINVAL)
		return a->r.status == b->r.status;
	if (a->rc == 0)
		return a->r.path == b->r.path && a->r.path_len == b->r.path_len;
	return 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct answer whole = parse(data, size);
	size_t clip = size < ADMIN_REQ_MAX ? size : ADMIN_REQ_MAX;
	int ended = memmem(data, clip, "\r\n\r\n", 4) || memmem(data, clip, "\n\n", 2);
	CHECK((whole.rc == -EAGAIN) == (!ended && clip < ADMIN_REQ_MAX),
	      "answer %d, ended %d, %zu octets", whole.rc, ended, size);
	CHECK(!(whole.rc == -EINVAL && whole.r.status == 431) || (!ended && clip == ADMIN_REQ_MAX),
	      "431 with an end or short: ended %d, %zu octets", ended, size);

	/* the model (the endpoint's sscanf) */
	char mpath[200] = "";
	int status = model((const char *)data, size, mpath);
	int got = whole.rc == 0 ? 200 : whole.rc == -EINVAL ? whole.r.status : 0;
	CHECK(status == got, "status %d, the model says %d", got, status);
	if (got == 200)
		CHECK(strlen(mpath) == whole.r.path_len &&
			      !memcmp(mpath, whole.r.path, whole.r.path_len),
		      "path \"%.*s\", the model says \"%s\"", (int)whole.r.path_len, whole.r.path,
		      mpath);

	/* the prefixes (all of the first 300 octets, those at each LF and CR, and every 61st:
	 * all of them would be quadratic): -EAGAIN until the answer is known, then that answer */
	int known = 0;
	for (size_t k = 0; k <= size; k++) {
		if (k > 300 && k % 61 && k + 2 < size && data[k] != '\n' && data[k] != '\r' &&
		    data[k - 1] != '\n' && (k < ADMIN_REQ_MAX - 2 || k > ADMIN_REQ_MAX + 2))
			continue;
		struct answer a = parse(data, k);
		if (!known && a.rc != -EAGAIN)
			known = 1;
		if (known)
			CHECK(same(&a, &whole), "prefix of %zu octets: %d (%d), the whole: %d (%d)", k,
			      a.rc, a.r.status, whole.rc, whole.r.status);
		else
			CHECK(a.rc == -EAGAIN, "prefix of %zu octets: %d", k, a.rc);
		if (k > ADMIN_REQ_MAX + 2)
			break; /* the rest is never looked at */
	}
	return 0;
}
