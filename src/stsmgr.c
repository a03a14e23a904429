/* stsmgr.c - MTA-STS policies of recipient domains: TXT, HTTPS, cache (see stsmgr.h). */
#include "stsmgr.h"

#include "dns.h"
#include "fetch.h"
#include "log.h"

#include <ctype.h>
#include <stdarg.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define ADDRS_MAX 8
#define FILE_MAX (STS_POLICY_MAX + 1024)

struct sts_entry {
	char domain[STS_NAME_MAX + 1];
	char id[STS_ID_MAX + 1];
	int64_t fetched, expires;
	uint64_t used; /* for eviction */
	struct sts_policy pol;
};

struct sts_cache {
	struct sts_entry *e[STSMGR_CACHE_SIZE];
	uint64_t tick;
};

struct stsmgr {
	uv_loop_t *loop;
	struct stsmgr_opts o;
	char *dir;
	struct stsmgr_lookup *lookups;
};

struct stsmgr_lookup {
	struct stsmgr_lookup *next, *prev;
	struct stsmgr *m;
	char domain[STS_NAME_MAX + 1];
	char host[STS_NAME_MAX + 16]; /* mta-sts.DOMAIN */
	stsmgr_cb *cb;
	void *arg;
	struct dns_query *q_txt, *q_a, *q_aaaa;
	struct fetch *f;
	char id[STS_ID_MAX + 1];       /* of the TXT record */
	struct sockaddr_storage addrs[ADDRS_MAX];
	size_t naddrs;
	struct sts_entry cached;       /* a copy of the cache entry, when have_cached */
	int have_cached;
	struct sts_policy fetched;
};

/* ---- the memory cache -------------------------------------------------------------- */

struct sts_cache *sts_cache_new(void)
{
	return calloc(1, sizeof(struct sts_cache));
}

void sts_cache_free(struct sts_cache *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < STSMGR_CACHE_SIZE; i++)
		free(c->e[i]);
	free(c);
}

static struct sts_entry *cache_find(struct sts_cache *c, const char *domain)
{
	for (size_t i = 0; c && i < STSMGR_CACHE_SIZE; i++)
		if (c->e[i] && !strcmp(c->e[i]->domain, domain)) {
			c->e[i]->used = ++c->tick;
			return c->e[i];
		}
	return NULL;
}

static void cache_put(struct sts_cache *c, const struct sts_entry *e)
{
	if (!c)
		return;
	struct sts_entry **slot = NULL;
	for (size_t i = 0; i < STSMGR_CACHE_SIZE && !slot; i++)
		if (c->e[i] && !strcmp(c->e[i]->domain, e->domain))
			slot = &c->e[i];
	for (size_t i = 0; i < STSMGR_CACHE_SIZE && !slot; i++)
		if (!c->e[i])
			slot = &c->e[i];
	if (!slot) { /* the least recently used one goes */
		slot = &c->e[0];
		for (size_t i = 1; i < STSMGR_CACHE_SIZE; i++)
			if (c->e[i]->used < (*slot)->used)
				slot = &c->e[i];
	}
	if (!*slot && !(*slot = malloc(sizeof(**slot))))
		return;
	**slot = *e;
	(*slot)->used = ++c->tick;
}

/* ---- the cache directory ----------------------------------------------------------- */

int stsmgr_file_parse(const char *text, size_t len, char *domain, size_t dlen, char *id,
		      int64_t *fetched, int64_t *expires, struct sts_policy *pol, char *err,
		      size_t errlen)
{
	size_t i = 0;
	int have = 0, ended = 0;
	domain[0] = id[0] = '\0';
	*fetched = *expires = 0;
	while (i < len) {
		const char *nl = memchr(text + i, '\n', len - i);
		if (!nl) {
			snprintf(err, errlen, "header not ended");
			return -EINVAL;
		}
		size_t n = (size_t)(nl - (text + i));
		const char *l = text + i;
		i += n + 1;
		if (n == 0) {
			ended = 1;
			break;
		}
		if (l[0] == '#')
			continue;
		const char *colon = memchr(l, ':', n);
		if (!colon || colon[1] != ' ') {
			snprintf(err, errlen, "bad header line");
			return -EINVAL;
		}
		size_t kl = (size_t)(colon - l), vl = n - kl - 2;
		const char *v = colon + 2;
		char val[STS_NAME_MAX + 1];
		if (vl >= sizeof(val)) {
			snprintf(err, errlen, "header value too long");
			return -EINVAL;
		}
		memcpy(val, v, vl);
		val[vl] = '\0';
		if (kl == 6 && !memcmp(l, "domain", 6) && vl < dlen) {
			memcpy(domain, val, vl + 1);
			have |= 1;
		} else if (kl == 2 && !memcmp(l, "id", 2) && vl >= 1 && vl <= STS_ID_MAX) {
			memcpy(id, val, vl + 1);
			have |= 2;
		} else if (kl == 7 && !memcmp(l, "fetched", 7)) {
			*fetched = strtoll(val, NULL, 10);
			have |= 4;
		} else if (kl == 7 && !memcmp(l, "expires", 7)) {
			*expires = strtoll(val, NULL, 10);
			have |= 8;
		}
	}
	if (!ended) {
		snprintf(err, errlen, "header not ended");
		return -EINVAL;
	}
	if (have != 15) {
		snprintf(err, errlen, "header incomplete");
		return -EINVAL;
	}
	return sts_parse_policy(text + i, len - i, pol, err, errlen);
}

/* The file of a domain in the cache directory (the domain is an LDH name: no '/'). */
static int file_path(const struct stsmgr *m, const char *domain, char *path, size_t len)
{
	int n = snprintf(path, len, "%s/%s", m->dir, domain);
	return n > 0 && (size_t)n < len ? 0 : -ENAMETOOLONG;
}

static int file_load(struct stsmgr *m, const char *domain, struct sts_entry *e)
{
	char path[4096], err[200];
	if (!m->dir || file_path(m, domain, path, sizeof(path)) < 0)
		return -ENOENT;
	FILE *f = fopen(path, "r");
	if (!f)
		return -ENOENT;
	char *text = malloc(FILE_MAX);
	size_t n = text ? fread(text, 1, FILE_MAX, f) : 0;
	fclose(f);
	if (!text)
		return -ENOMEM;
	int rc = n < FILE_MAX ? stsmgr_file_parse(text, n, e->domain, sizeof(e->domain), e->id,
						  &e->fetched, &e->expires, &e->pol, err,
						  sizeof(err))
			      : -EINVAL;
	free(text);
	if (rc == 0 && strcmp(e->domain, domain) != 0)
		rc = -EINVAL;
	if (rc < 0)
		log_event(LOG_WARN, NULL, NULL, "mta_sts_cache", "domain", domain, "file", path,
			  "error", rc == -EINVAL ? err : "unreadable", "action", "ignored", NULL);
	return rc;
}

static void file_store(struct stsmgr *m, const struct sts_entry *e, const char *body, size_t len)
{
	char path[4096], tmp[4200];
	if (!m->dir || file_path(m, e->domain, path, sizeof(path)) < 0)
		return;
	snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		goto fail;
	char head[512];
	int hl = snprintf(head, sizeof(head),
			  "# starttls-proxy MTA-STS policy cache\ndomain: %s\nid: %s\nfetched: "
			  "%lld\nexpires: %lld\n\n",
			  e->domain, e->id, (long long)e->fetched, (long long)e->expires);
	if (write(fd, head, (size_t)hl) != hl || write(fd, body, len) != (ssize_t)len ||
	    fsync(fd) < 0) {
		close(fd);
		unlink(tmp);
		goto fail;
	}
	close(fd);
	if (rename(tmp, path) < 0) {
		unlink(tmp);
		goto fail;
	}
	return;
fail:
	log_event(LOG_WARN, NULL, NULL, "mta_sts_cache", "domain", e->domain, "file", path,
		  "error", strerror(errno), NULL);
}

/* ---- lookups ------------------------------------------------------------------------- */

static void unlink_lookup(struct stsmgr_lookup *l)
{
	struct stsmgr *m = l->m;
	if (l->prev)
		l->prev->next = l->next;
	else
		m->lookups = l->next;
	if (l->next)
		l->next->prev = l->prev;
}

static void release(struct stsmgr_lookup *l)
{
	if (l->q_txt)
		dns_cancel(l->q_txt);
	if (l->q_a)
		dns_cancel(l->q_a);
	if (l->q_aaaa)
		dns_cancel(l->q_aaaa);
	if (l->f)
		fetch_cancel(l->f);
	unlink_lookup(l);
	free(l);
}

/* Answers and ends the lookup. */
static void answer(struct stsmgr_lookup *l, const struct sts_entry *e, int from_cache,
		   const char *failure, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

static void answer(struct stsmgr_lookup *l, const struct sts_entry *e, int from_cache,
		   const char *failure, const char *fmt, ...)
{
	struct stsmgr_answer a = { .found = e != NULL, .policy = e ? &e->pol : NULL,
				   .id = e ? e->id : NULL, .from_cache = from_cache,
				   .failure = failure };
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(a.detail, sizeof(a.detail), fmt, ap);
	va_end(ap);
	stsmgr_cb *cb = l->cb;
	void *arg = l->arg;
	log_event(failure ? LOG_WARN : LOG_INFO, NULL, NULL, "mta_sts", "domain", l->domain,
		  "policy", e ? sts_mode_name(e->pol.mode) : "none", "id", e ? e->id : NULL,
		  "source", e ? from_cache ? "cache" : "fetched" : NULL, "result", failure,
		  "detail", a.detail[0] ? a.detail : NULL, NULL);
	/* the entry may be l->cached: answer from a copy that outlives l */
	struct sts_entry *copy = NULL;
	if (e) {
		copy = malloc(sizeof(*copy));
		if (copy) {
			*copy = *e;
			a.policy = &copy->pol;
			a.id = copy->id;
		} else {
			a.found = 0, a.policy = NULL, a.id = NULL;
			a.failure = "sts-policy-fetch-error";
			snprintf(a.detail, sizeof(a.detail), "out of memory");
		}
	}
	l->q_txt = l->q_a = l->q_aaaa = NULL;
	l->f = NULL;
	release(l);
	cb(arg, &a);
	free(copy);
}

/* What a lookup falls back on when the policy could not be had now: the cached one while
 * it has not expired (RFC 8461 §5.1), else none, with the failure reported. */
static void fall_back(struct stsmgr_lookup *l, const char *failure, const char *detail)
{
	if (l->have_cached && l->cached.expires > (int64_t)time(NULL))
		answer(l, &l->cached, 1, failure, "%s; the cached policy (id %s) applies", detail,
		       l->cached.id);
	else
		answer(l, NULL, 0, failure, "%s", detail);
}

static void fetched(void *arg, const struct fetch_result *r)
{
	struct stsmgr_lookup *l = arg;
	l->f = NULL;
	if (r->error != FETCH_OK) {
		char d[600];
		snprintf(d, sizeof(d), "policy fetch from %s failed: %s: %s", l->host,
			 fetch_error_name(r->error), r->detail);
		fall_back(l, r->error == FETCH_E_CERT ? "sts-webpki-invalid" : "sts-policy-fetch-error",
			  d);
		return;
	}
	char err[200];
	struct sts_entry e;
	memset(&e, 0, sizeof(e));
	if (sts_parse_policy(r->body, r->len, &e.pol, err, sizeof(err)) < 0) {
		char d[600];
		snprintf(d, sizeof(d), "policy of %s invalid: %s", l->domain, err);
		fall_back(l, "sts-policy-invalid", d);
		return;
	}
	snprintf(e.domain, sizeof(e.domain), "%s", l->domain);
	snprintf(e.id, sizeof(e.id), "%s", l->id);
	e.fetched = (int64_t)time(NULL);
	e.expires = e.fetched + e.pol.max_age;
	cache_put(l->m->o.cache, &e);
	file_store(l->m, &e, r->body, r->len);
	answer(l, &e, 0, NULL, "%s", "");
}

static void start_fetch(struct stsmgr_lookup *l)
{
	struct fetch_opts o = { .host = l->host, .path = "/.well-known/mta-sts.txt",
				.addrs = l->addrs, .naddrs = l->naddrs, .port = l->m->o.port,
				.ctx = l->m->o.tls, .timeout_ms = l->m->o.fetch_timeout_ms,
				.max_body = STS_POLICY_MAX, .content_type = "text/plain" };
	l->f = fetch_start(l->m->loop, &o, fetched, l);
	if (!l->f)
		fall_back(l, "sts-policy-fetch-error", "cannot start the policy fetch");
}

static void addr_answer(void *arg, const struct dns_result *r)
{
	struct stsmgr_lookup *l = arg;
	if (r->rrtype == DNS_T_A)
		l->q_a = NULL;
	else
		l->q_aaaa = NULL;
	for (size_t i = 0; r->status == DNS_OK && r->security != DNS_BOGUS && i < r->n &&
			   l->naddrs < ADDRS_MAX;
	     i++)
		l->addrs[l->naddrs++] = r->u.addr[i];
	if (l->q_a || l->q_aaaa)
		return; /* the other family is still due */
	if (l->naddrs == 0) {
		char d[600];
		snprintf(d, sizeof(d), "%s has no address", l->host);
		fall_back(l, "sts-policy-fetch-error", d);
		return;
	}
	start_fetch(l);
}

static void txt_answer(void *arg, const struct dns_result *r)
{
	struct stsmgr_lookup *l = arg;
	l->q_txt = NULL;
	char d[600];
	if (r->security == DNS_BOGUS) {
		snprintf(d, sizeof(d), "_mta-sts.%s: DNSSEC bogus (%s)", l->domain, r->why_bogus);
		fall_back(l, NULL, d);
		return;
	}
	if (r->status == DNS_SERVFAIL || r->status == DNS_TIMEOUT || r->status == DNS_ERROR) {
		snprintf(d, sizeof(d), "_mta-sts.%s: DNS %s", l->domain, dns_status_name(r->status));
		fall_back(l, NULL, d);
		return;
	}
	const char *recs[DNS_RR_MAX];
	size_t lens[DNS_RR_MAX], n = 0;
	for (size_t i = 0; r->status == DNS_OK && i < r->n && i < DNS_RR_MAX; i++) {
		recs[n] = r->txt[i];
		lens[n++] = r->txt_len[i];
	}
	char err[200];
	int rc = sts_parse_txt(recs, lens, n, l->id, err, sizeof(err));
	if (rc == -ENOENT) {
		snprintf(d, sizeof(d), "no MTA-STS record at _mta-sts.%s", l->domain);
		fall_back(l, NULL, d);
		return;
	}
	if (rc < 0) {
		snprintf(d, sizeof(d), "_mta-sts.%s: %s", l->domain, err);
		fall_back(l, NULL, d);
		return;
	}
	if (l->have_cached && l->cached.expires > (int64_t)time(NULL) &&
	    !strcmp(l->cached.id, l->id)) {
		answer(l, &l->cached, 1, NULL, "%s", "");
		return;
	}
	/* a new id, or nothing cached: fetch (mta-sts.DOMAIN's addresses first) */
	l->q_a = dns_query(l->m->o.dns, l->host, DNS_T_A, addr_answer, l);
	l->q_aaaa = dns_query(l->m->o.dns, l->host, DNS_T_AAAA, addr_answer, l);
	if (!l->q_a || !l->q_aaaa)
		fall_back(l, "sts-policy-fetch-error", "cannot resolve the policy host");
}

static int ldh_lower(const char *d)
{
	size_t n = strlen(d);
	if (n == 0 || n > STS_NAME_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!(islower((unsigned char)d[i]) || isdigit((unsigned char)d[i]) || d[i] == '-' ||
		      (d[i] == '.' && i > 0 && d[i - 1] != '.')))
			return 0;
	return d[0] != '.' && d[n - 1] != '.';
}

struct stsmgr_lookup *stsmgr_get(struct stsmgr *m, const char *domain, stsmgr_cb *cb, void *arg)
{
	if (!ldh_lower(domain)) {
		errno = EINVAL;
		return NULL;
	}
	struct stsmgr_lookup *l = calloc(1, sizeof(*l));
	if (!l)
		return NULL;
	l->m = m;
	l->cb = cb;
	l->arg = arg;
	snprintf(l->domain, sizeof(l->domain), "%s", domain);
	snprintf(l->host, sizeof(l->host), "mta-sts.%s", domain);
	struct sts_entry *e = cache_find(m->o.cache, domain);
	if (e) {
		l->cached = *e;
		l->have_cached = 1;
	} else if (file_load(m, domain, &l->cached) == 0) {
		l->have_cached = 1;
		cache_put(m->o.cache, &l->cached);
	}
	char name[STS_NAME_MAX + 16];
	snprintf(name, sizeof(name), "_mta-sts.%s", domain);
	l->next = m->lookups;
	if (m->lookups)
		m->lookups->prev = l;
	m->lookups = l;
	l->q_txt = dns_query(m->o.dns, name, DNS_T_TXT, txt_answer, l);
	if (!l->q_txt) {
		release(l);
		errno = ENOMEM;
		return NULL;
	}
	return l;
}

void stsmgr_cancel(struct stsmgr_lookup *l)
{
	if (l)
		release(l);
}

int stsmgr_new(uv_loop_t *loop, const struct stsmgr_opts *o, struct stsmgr **out)
{
	struct stsmgr *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->loop = loop;
	m->o = *o;
	if (!m->o.port)
		m->o.port = 443;
	if (o->dir && !(m->dir = strdup(o->dir))) {
		free(m);
		return -ENOMEM;
	}
	*out = m;
	return 0;
}

void stsmgr_free(struct stsmgr *m)
{
	if (!m)
		return;
	while (m->lookups)
		release(m->lookups);
	free(m->dir);
	free(m);
}
