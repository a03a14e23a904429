/* late.c - late binding: recipient domain -> upstream candidates and policy (see late.h). */
#include "late.h"

#include "config.h"
#include "dns.h"
#include "log.h"
#include "stsmgr.h"
#include "tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DEFAULT_CA "/etc/ssl/certs/ca-certificates.crt"

struct late_res {
	int refs;
	uv_loop_t *loop;
	uint64_t generation;
	struct dns *dns;
	struct stsmgr *sts;
	struct tls_ctx *tls;
	struct late_req *reqs;
};

struct host {
	struct late_req *q;
	char name[STS_NAME_MAX + 1];
	int sts_match;
	struct dns_query *q4, *q6, *qt;
	struct sockaddr_storage a[LATE_CAND_MAX];
	int na;
	int insecure_addr; /* an address answer was not DNSSEC-validated */
	/* TLSA: 0 not asked, 1 records (tlsa), 2 secure denial or insecure, -1 unusable host
	 * (bogus or failed lookup: tlsa_why) */
	int tlsa_state;
	char tlsa_why[200];
	size_t ntlsa;
	struct dns_tlsa tlsa[LATE_TLSA_MAX];
};

struct late_req {
	struct late_req *next, *prev;
	struct late_res *res;
	char domain[STS_NAME_MAX + 1];
	int level;
	int testing; /* the route's policy_mode: an enforce policy is only reported */
	int have_orig;
	struct sockaddr_storage orig;
	uint16_t port;
	late_cb *cb;
	void *arg;
	/* the domain's policy */
	struct stsmgr_lookup *sl;
	int sts_done, sts_found;
	struct sts_policy *pol; /* sts_found */
	char sts_id[STS_ID_MAX + 1];
	const char *sts_failure;
	char sts_detail[600];
	/* its MX hosts and their addresses */
	struct dns_query *mxq;
	int mx_done;
	enum dns_status mx_status;
	enum dns_security mx_security;
	char mx_bogus[160];
	struct dns_mx mx[DNS_RR_MAX];
	size_t nmx;
	struct host hosts[LATE_HOSTS_MAX];
	size_t nhosts;
	int pending;
};

/* ---- resources -------------------------------------------------------------------------- */

int late_res_new(uv_loop_t *loop, const struct cfg *cfg, struct sts_cache *cache,
		 struct late_res **out, char *err, size_t errlen)
{
	struct late_res *r = calloc(1, sizeof(*r));
	if (!r) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	r->refs = 1;
	r->loop = loop;
	r->generation = cfg->generation;
	struct dns_opts d = { .resolver = cfg->resolver, .trust_anchor = cfg->dnssec_trust_anchor };
	int rc = dns_new(loop, &d, &r->dns, err, errlen);
	if (rc < 0) {
		free(r);
		return rc;
	}
	const char *ca = cfg->ca ? cfg->ca : DEFAULT_CA;
	struct tls_client_opts t = { .ca = ca, .min_version = 12 };
	rc = tls_ctx_client_new(&t, &r->tls, err, errlen);
	if (rc == 0) {
		struct stsmgr_opts so = { .dns = r->dns, .tls = r->tls, .cache = cache,
					  .dir = cfg->mta_sts_cache, .port = cfg->mta_sts_port };
		rc = stsmgr_new(loop, &so, &r->sts);
		if (rc < 0)
			snprintf(err, errlen, "out of memory");
	}
	if (rc < 0) {
		tls_ctx_free(r->tls);
		dns_free(r->dns);
		free(r);
		return rc;
	}
	*out = r;
	return 0;
}

struct late_res *late_res_ref(struct late_res *r)
{
	r->refs++;
	return r;
}

uint64_t late_res_generation(const struct late_res *r)
{
	return r->generation;
}

static void release(struct late_req *q);

void late_res_unref(struct late_res *r)
{
	if (!r || --r->refs > 0)
		return;
	while (r->reqs)
		release(r->reqs);
	stsmgr_free(r->sts);
	dns_free(r->dns);
	tls_ctx_free(r->tls);
	free(r);
}

/* ---- one plan ----------------------------------------------------------------------------- */

static void release(struct late_req *q)
{
	if (q->sl)
		stsmgr_cancel(q->sl);
	if (q->mxq)
		dns_cancel(q->mxq);
	for (size_t i = 0; i < q->nhosts; i++) {
		if (q->hosts[i].q4)
			dns_cancel(q->hosts[i].q4);
		if (q->hosts[i].q6)
			dns_cancel(q->hosts[i].q6);
		if (q->hosts[i].qt)
			dns_cancel(q->hosts[i].qt);
	}
	struct late_res *r = q->res;
	if (q->prev)
		q->prev->next = q->next;
	else
		r->reqs = q->next;
	if (q->next)
		q->next->prev = q->prev;
	free(q->pol);
	free(q);
}

static void deliver(struct late_req *q, struct late_plan *p)
{
	late_cb *cb = q->cb;
	void *arg = q->arg;
	struct sts_policy *pol = q->pol;
	char domain[STS_NAME_MAX + 1];
	q->pol = NULL; /* the plan points at it and at domain until the callback returns */
	p->policy = pol;
	snprintf(domain, sizeof(domain), "%s", q->domain);
	p->domain = domain;
	q->sl = NULL;
	q->mxq = NULL;
	release(q);
	cb(arg, p);
	free(pol);
}

static int dane_level(const struct late_req *q)
{
	return q->level == CFG_POLICY_DANE || q->level == CFG_POLICY_AUTO;
}

/* Some MX host has TLSA records: the domain is a DANE domain. */
static int has_dane(const struct late_req *q)
{
	for (size_t i = 0; i < q->nhosts; i++)
		if (q->hosts[i].tlsa_state == 1)
			return 1;
	return 0;
}

static void plan_init(struct late_req *q, struct late_plan *p)
{
	memset(p, 0, sizeof(*p));
	p->domain = q->domain;
	p->dane = has_dane(q);
	if (!p->dane && q->sts_found && q->pol && q->pol->mode != STS_MODE_NONE) {
		p->sts = 1;
		p->mode = q->pol->mode;
		snprintf(p->sts_id, sizeof(p->sts_id), "%s", q->sts_id);
	}
	if (!q->sts_found && q->sts_failure) {
		p->result = q->sts_failure; /* reported; the domain is as one without policy */
		snprintf(p->detail, sizeof(p->detail), "%s", q->sts_detail);
	}
}

static void fail(struct late_req *q, const char *result, const char *reply, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void fail(struct late_req *q, const char *result, const char *reply, const char *fmt, ...)
{
	struct late_plan p;
	plan_init(q, &p);
	p.fail = 1;
	if (result)
		p.result = result;
	snprintf(p.reply, sizeof(p.reply), "%s", reply);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(p.detail, sizeof(p.detail), fmt, ap);
	va_end(ap);
	deliver(q, &p);
}

static int same_ip(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
	if (a->ss_family != b->ss_family)
		return 0;
	if (a->ss_family == AF_INET)
		return ((const struct sockaddr_in *)(const void *)a)->sin_addr.s_addr ==
		       ((const struct sockaddr_in *)(const void *)b)->sin_addr.s_addr;
	return !memcmp(&((const struct sockaddr_in6 *)(const void *)a)->sin6_addr,
		       &((const struct sockaddr_in6 *)(const void *)b)->sin6_addr, 16);
}

static void set_port(struct sockaddr_storage *a, uint16_t port)
{
	if (a->ss_family == AF_INET)
		((struct sockaddr_in *)(void *)a)->sin_port = htons(port);
	else
		((struct sockaddr_in6 *)(void *)a)->sin6_port = htons(port);
}

static void ip_text(const struct sockaddr_storage *a, char *buf, size_t len)
{
	const void *ip = a->ss_family == AF_INET
				 ? (const void *)&((const struct sockaddr_in *)(const void *)a)->sin_addr
				 : (const void *)&((const struct sockaddr_in6 *)(const void *)a)->sin6_addr;
	if (!inet_ntop(a->ss_family, ip, buf, (socklen_t)len))
		snprintf(buf, len, "?");
}

static void cand_dane(struct late_cand *c, const struct host *h)
{
	if (h->tlsa_state != 1)
		return;
	c->dane = 1;
	c->ntlsa = h->ntlsa;
	memcpy(c->tlsa, h->tlsa, sizeof(h->tlsa[0]) * h->ntlsa);
}

/* Every address lookup is done: the candidates. */
static void assemble(struct late_req *q)
{
	struct late_plan p;
	plan_init(q, &p);
	/* hosts whose TLSA lookup failed are never used (no downgrade to plaintext) */
	char unusable[300] = "";
	size_t uo = 0, usable = 0;
	for (size_t i = 0; i < q->nhosts; i++) {
		if (q->hosts[i].tlsa_state == -1) {
			if (uo < sizeof(unusable))
				uo += (size_t)snprintf(unusable + uo, sizeof(unusable) - uo, "%s%s: %s",
						       uo ? "; " : "", q->hosts[i].name,
						       q->hosts[i].tlsa_why);
			q->hosts[i].na = 0;
		} else {
			usable++;
		}
	}
	if (unusable[0])
		log_event(LOG_WARN, NULL, NULL, "dane", "domain", q->domain, "action",
			  "MX hosts skipped", "detail", unusable, NULL);
	if (q->nhosts && usable == 0) {
		fail(q, "dnssec-invalid",
		     "451 4.7.5 TLSA records of the recipient's mail servers cannot be validated; "
		     "try again later",
		     "%s", unusable);
		return;
	}
	if (q->have_orig) {
		char ip[INET6_ADDRSTRLEN];
		ip_text(&q->orig, ip, sizeof(ip));
		struct host *h = NULL;
		for (size_t i = 0; i < q->nhosts && !h; i++)
			for (int k = 0; k < q->hosts[i].na && !h; k++)
				if (same_ip(&q->hosts[i].a[k], &q->orig))
					h = &q->hosts[i];
		if (!h && p.sts && p.mode == STS_MODE_ENFORCE && !q->testing) {
			fail(q, "validation-failure",
			     "450 4.7.5 Recipient domain's MTA-STS policy does not allow this server",
			     "no MX host of %s in its MTA-STS policy is at %s", q->domain, ip);
			return;
		}
		if (!h && p.sts) {
			p.result = "validation-failure";
			snprintf(p.detail, sizeof(p.detail), "no MX host of %s in its MTA-STS policy is at %s",
				 q->domain, ip);
		}
		p.c[0].addr = q->orig;
		if (h) {
			snprintf(p.c[0].name, sizeof(p.c[0].name), "%s", h->name);
			p.c[0].sts_match = h->sts_match;
			cand_dane(&p.c[0], h);
		}
		p.n = 1;
		deliver(q, &p);
		return;
	}
	for (size_t i = 0; i < q->nhosts; i++)
		for (int k = 0; k < q->hosts[i].na && p.n < LATE_CAND_MAX; k++) {
			struct late_cand *c = &p.c[p.n++];
			c->addr = q->hosts[i].a[k];
			set_port(&c->addr, q->port);
			snprintf(c->name, sizeof(c->name), "%s", q->hosts[i].name);
			c->sts_match = q->hosts[i].sts_match;
			cand_dane(c, &q->hosts[i]);
		}
	if (p.n == 0) {
		fail(q, NULL, "451 4.4.3 Recipient domain's mail servers have no address; try again later",
		     "no address for the MX hosts of %s", q->domain);
		return;
	}
	deliver(q, &p);
}

static void assemble(struct late_req *q);

static void host_done(struct late_req *q)
{
	if (--q->pending > 0)
		return;
	for (size_t i = 0; i < q->nhosts; i++) /* TLSA of a host with insecure addresses */
		if (q->hosts[i].tlsa_state == 1 && q->hosts[i].insecure_addr)
			q->hosts[i].tlsa_state = 2;
	/* auto without DANE: an enforced MTA-STS policy filters the hosts now */
	if (q->level == CFG_POLICY_AUTO && !has_dane(q) && q->sts_found && q->pol &&
	    q->pol->mode == STS_MODE_ENFORCE && !q->testing) {
		size_t k = 0;
		for (size_t i = 0; i < q->nhosts; i++)
			if (q->hosts[i].sts_match)
				q->hosts[k++] = q->hosts[i];
		if (k == 0) {
			fail(q, "validation-failure",
			     "450 4.7.5 Recipient domain's MTA-STS policy allows none of its MX hosts",
			     "no MX host of %s matches its MTA-STS policy", q->domain);
			return;
		}
		q->nhosts = k;
	}
	assemble(q);
}

static void addr_answer(void *arg, const struct dns_result *r);
static void tlsa_answer(void *arg, const struct dns_result *r);

/* The MX answer and the policy are both in: which hosts, then their addresses. */
static void after_mx(struct late_req *q)
{
	if (!q->mx_done || !q->sts_done)
		return;
	if (q->mx_security == DNS_BOGUS) {
		fail(q, NULL, "451 4.4.3 DNS answer for the recipient domain failed validation; try again later",
		     "MX of %s: DNSSEC bogus (%s)", q->domain, q->mx_bogus);
		return;
	}
	if (q->mx_status == DNS_NXDOMAIN) {
		fail(q, NULL, "550 5.1.2 Recipient domain not found", "%s: no such domain (NXDOMAIN)",
		     q->domain);
		return;
	}
	if (q->mx_status != DNS_OK && q->mx_status != DNS_NODATA) {
		fail(q, NULL, "451 4.4.3 DNS lookup of the recipient domain failed; try again later",
		     "MX of %s: %s", q->domain, dns_status_name(q->mx_status));
		return;
	}
	if (q->mx_status == DNS_NODATA || q->nmx == 0) { /* the domain is its own MX */
		q->nmx = 1;
		q->mx[0].pref = 0;
		snprintf(q->mx[0].host, sizeof(q->mx[0].host), "%s", q->domain);
	}
	if (q->nmx == 1 && q->mx[0].host[0] == '\0') {
		fail(q, NULL, "556 5.1.10 Recipient domain accepts no mail (null MX)",
		     "%s publishes a null MX", q->domain);
		return;
	}
	/* preference order (stable) */
	for (size_t i = 1; i < q->nmx; i++)
		for (size_t k = i; k > 0 && q->mx[k].pref < q->mx[k - 1].pref; k--) {
			struct dns_mx t = q->mx[k];
			q->mx[k] = q->mx[k - 1];
			q->mx[k - 1] = t;
		}
	/* (level auto: MTA-STS filters hosts only when no host turns out to have TLSA
	 * records; assemble() applies it then) */
	int enforce = q->sts_found && q->pol && q->pol->mode == STS_MODE_ENFORCE && !q->testing &&
		      q->level != CFG_POLICY_AUTO;
	int sts = q->sts_found && q->pol && q->pol->mode != STS_MODE_NONE;
	char skipped[200] = "";
	size_t so = 0;
	for (size_t i = 0; i < q->nmx && q->nhosts < LATE_HOSTS_MAX; i++) {
		if (!q->mx[i].host[0])
			continue;
		int match = sts ? sts_mx_match(q->pol, q->mx[i].host) : 0;
		if (enforce && !match) {
			if (so < sizeof(skipped))
				so += (size_t)snprintf(skipped + so, sizeof(skipped) - so, "%s%s",
						       so ? "," : "", q->mx[i].host);
			continue;
		}
		struct host *h = &q->hosts[q->nhosts++];
		snprintf(h->name, sizeof(h->name), "%s", q->mx[i].host);
		h->sts_match = match;
	}
	if (skipped[0])
		log_event(LOG_WARN, NULL, NULL, "mta_sts", "domain", q->domain, "action",
			  "MX hosts outside the policy skipped", "hosts", skipped, NULL);
	if (q->nhosts == 0) {
		fail(q, "validation-failure",
		     "450 4.7.5 Recipient domain's MTA-STS policy allows none of its MX hosts",
		     "no MX host of %s matches its MTA-STS policy (MX: %s)", q->domain, skipped);
		return;
	}
	/* DANE only below a DNSSEC-validated MX answer (RFC 7672 §2.2.1) */
	int dane = dane_level(q) && q->mx_security == DNS_SECURE;
	q->pending = (int)q->nhosts * (dane ? 3 : 2);
	for (size_t i = 0; i < q->nhosts; i++) {
		struct host *h = &q->hosts[i];
		h->q = q;
		h->q4 = dns_query(q->res->dns, h->name, DNS_T_A, addr_answer, h);
		h->q6 = dns_query(q->res->dns, h->name, DNS_T_AAAA, addr_answer, h);
		if (!h->q4)
			q->pending--;
		if (!h->q6)
			q->pending--;
		if (dane) {
			char tname[STS_NAME_MAX + 32];
			snprintf(tname, sizeof(tname), "_%u._tcp.%s", q->port, h->name);
			h->qt = dns_query(q->res->dns, tname, DNS_T_TLSA, tlsa_answer, h);
			if (!h->qt) {
				q->pending--;
				h->tlsa_state = -1;
				snprintf(h->tlsa_why, sizeof(h->tlsa_why), "cannot look up TLSA");
			}
		}
	}
	if (q->pending == 0)
		assemble(q);
}

/* An A or AAAA answer for one of the hosts. */
static void addr_answer(void *arg, const struct dns_result *r)
{
	struct host *h = arg;
	if (r->rrtype == DNS_T_A)
		h->q4 = NULL;
	else
		h->q6 = NULL;
	if (r->security == DNS_BOGUS)
		log_event(LOG_WARN, NULL, NULL, "dns", "name", h->name, "result", "dnssec-invalid",
			  "detail", r->why_bogus, NULL);
	for (size_t k = 0; r->status == DNS_OK && r->security != DNS_BOGUS && k < r->n &&
			   h->na < LATE_CAND_MAX;
	     k++)
		h->a[h->na++] = r->u.addr[k];
	if (r->status == DNS_OK && r->security != DNS_SECURE)
		h->insecure_addr = 1;
	host_done(h->q);
}

/* The host's TLSA answer (RFC 7672 §2.2). Records are used only when the answer and the
 * host's addresses are secure (checked again in host_tlsa_final). */
static void tlsa_answer(void *arg, const struct dns_result *r)
{
	struct host *h = arg;
	h->qt = NULL;
	if (r->security == DNS_BOGUS) {
		h->tlsa_state = -1;
		snprintf(h->tlsa_why, sizeof(h->tlsa_why), "TLSA DNSSEC bogus (%s)", r->why_bogus);
	} else if (r->status == DNS_OK && r->security == DNS_SECURE) {
		h->tlsa_state = 1;
		h->ntlsa = 0;
		for (size_t k = 0; k < r->n && h->ntlsa < LATE_TLSA_MAX; k++)
			h->tlsa[h->ntlsa++] = r->u.tlsa[k];
	} else if (r->status == DNS_OK || r->status == DNS_NXDOMAIN || r->status == DNS_NODATA) {
		h->tlsa_state = 2; /* insecure, or securely none: no DANE for this host */
	} else {
		h->tlsa_state = -1;
		snprintf(h->tlsa_why, sizeof(h->tlsa_why), "TLSA lookup failed (%s)",
			 dns_status_name(r->status));
	}
	host_done(h->q);
}

static void mx_answer(void *arg, const struct dns_result *r)
{
	struct late_req *q = arg;
	q->mxq = NULL;
	q->mx_done = 1;
	q->mx_status = r->status;
	q->mx_security = r->security;
	snprintf(q->mx_bogus, sizeof(q->mx_bogus), "%s", r->why_bogus);
	q->nmx = 0;
	for (size_t i = 0; r->status == DNS_OK && r->security != DNS_BOGUS && i < r->n &&
			   i < DNS_RR_MAX;
	     i++)
		q->mx[q->nmx++] = r->u.mx[i];
	after_mx(q);
}

static void sts_answer(void *arg, const struct stsmgr_answer *a)
{
	struct late_req *q = arg;
	q->sl = NULL;
	q->sts_done = 1;
	q->sts_failure = a->failure;
	snprintf(q->sts_detail, sizeof(q->sts_detail), "%s", a->detail);
	if (a->found && (q->pol = malloc(sizeof(*q->pol)))) {
		*q->pol = *a->policy;
		q->sts_found = 1;
		snprintf(q->sts_id, sizeof(q->sts_id), "%s", a->id);
	}
	after_mx(q);
}

struct late_req *late_plan(struct late_res *res, const char *domain, int level,
			   const struct sockaddr_storage *orig, uint16_t port, int testing,
			   late_cb *cb, void *arg)
{
	struct late_req *q = calloc(1, sizeof(*q));
	if (!q)
		return NULL;
	q->res = res;
	q->testing = testing;
	snprintf(q->domain, sizeof(q->domain), "%s", domain);
	q->level = level;
	if (orig) {
		q->have_orig = 1;
		q->orig = *orig;
	}
	q->port = port;
	q->cb = cb;
	q->arg = arg;
	q->next = res->reqs;
	if (res->reqs)
		res->reqs->prev = q;
	res->reqs = q;
	int sts = level == CFG_POLICY_MTA_STS || level == CFG_POLICY_AUTO;
	q->mxq = dns_query(res->dns, domain, DNS_T_MX, mx_answer, q);
	if (sts)
		q->sl = stsmgr_get(res->sts, domain, sts_answer, q);
	else
		q->sts_done = 1;
	if (!q->mxq || (sts && !q->sl)) {
		release(q);
		return NULL;
	}
	return q;
}

void late_cancel(struct late_req *q)
{
	if (q)
		release(q);
}
