/* config.c - INI configuration -> immutable struct cfg (see config.h).
 *
 * Two passes: the file is read into sections of (key, value, line) entries, then each
 * section is interpreted with every key in view, so cross-key rules can name the line of
 * the key at fault. Every error is collected; nothing stops at the first one. */
#include "config.h"

#include "log.h"
#include "policy.h"
#include "tls.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_LINE 4096
#define DEFAULT_CA "/etc/ssl/certs/ca-certificates.crt"
/* Debian's dns-root-data: the DNS root's key, the default DNSSEC trust anchor. */
#define DEFAULT_TRUST_ANCHOR "/usr/share/dns/root.key"

/* ---- errors ---------------------------------------------------------------------- */

void cfg_errors_add(struct cfg_errors *errs, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (!errs)
		return;
	if (errs->n == errs->cap) {
		size_t cap = errs->cap ? errs->cap * 2 : 8;
		char **m = realloc(errs->msg, cap * sizeof(*m));
		if (!m)
			return;
		errs->msg = m;
		errs->cap = cap;
	}
	char *s = strdup(buf);
	if (s)
		errs->msg[errs->n++] = s;
}

void cfg_errors_free(struct cfg_errors *errs)
{
	for (size_t i = 0; i < errs->n; i++)
		free(errs->msg[i]);
	free(errs->msg);
	errs->msg = NULL;
	errs->n = errs->cap = 0;
}

/* ---- value parsers --------------------------------------------------------------- */

int cfg_parse_duration(const char *s, uint64_t *ms)
{
	if (!s || !isdigit((unsigned char)*s))
		return -EINVAL;
	errno = 0;
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno)
		return -EINVAL;
	uint64_t mult;
	if (*end == '\0' || strcmp(end, "s") == 0)
		mult = 1000;
	else if (strcmp(end, "ms") == 0)
		mult = 1;
	else if (strcmp(end, "m") == 0)
		mult = 60000;
	else if (strcmp(end, "h") == 0)
		mult = 3600000;
	else if (strcmp(end, "d") == 0)
		mult = 86400000;
	else
		return -EINVAL;
	if (v > UINT64_MAX / mult / 1000) /* keep far from overflow in later arithmetic */
		return -EINVAL;
	*ms = v * mult;
	return 0;
}

static int parse_port(const char *s, uint16_t *port)
{
	if (!*s)
		return -EINVAL;
	unsigned long v = 0;
	for (const char *p = s; *p; p++) {
		if (!isdigit((unsigned char)*p))
			return -EINVAL;
		v = v * 10 + (unsigned long)(*p - '0');
		if (v > 65535)
			return -EINVAL;
	}
	if (v == 0)
		return -EINVAL;
	*port = (uint16_t)v;
	return 0;
}

int cfg_parse_hostport(const char *s, char *host, size_t hostlen, uint16_t *port)
{
	const char *colon;
	size_t hl;
	if (*s == '[') {
		const char *rb = strchr(s, ']');
		if (!rb || rb[1] != ':')
			return -EINVAL;
		hl = (size_t)(rb - s - 1);
		if (hl == 0 || !memchr(s + 1, ':', hl))
			return -EINVAL;
		s++;
		colon = rb + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return -EINVAL;
		hl = (size_t)(colon - s);
		if (hl == 0 || memchr(s, ':', hl))
			return -EINVAL;
		for (size_t i = 0; i < hl; i++)
			if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '-' && s[i] != '_' &&
			    s[i] != '*')
				return -EINVAL;
	}
	if (hl >= hostlen)
		return -EINVAL;
	if (parse_port(colon + 1, port) < 0)
		return -EINVAL;
	memcpy(host, s, hl);
	host[hl] = '\0';
	return 0;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

int cfg_parse_fingerprint(const char *s, uint8_t out[32])
{
	if (strncasecmp(s, "sha256:", 7) != 0)
		return -EINVAL;
	s += 7;
	size_t n = 0;
	while (*s) {
		if (*s == ':') {
			s++;
			continue;
		}
		int hi = hexval((unsigned char)s[0]);
		int lo = s[1] ? hexval((unsigned char)s[1]) : -1;
		if (hi < 0 || lo < 0 || n == 32)
			return -EINVAL;
		out[n++] = (uint8_t)(hi << 4 | lo);
		s += 2;
	}
	return n == 32 ? 0 : -EINVAL;
}

int cfg_parse_tls_version(const char *s, int *v)
{
	static const struct { const char *s; int v; } t[] = {
		{ "1.0", 10 }, { "1.1", 11 }, { "1.2", 12 }, { "1.3", 13 },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		if (strcmp(s, t[i].s) == 0) {
			*v = t[i].v;
			return 0;
		}
	return -EINVAL;
}

int cfg_parse_cidr(const char *s, struct cfg_cidr *out)
{
	char a[INET6_ADDRSTRLEN + 8];
	const char *slash = strchr(s, '/');
	size_t al = slash ? (size_t)(slash - s) : strlen(s);
	if (al == 0 || al >= sizeof(a))
		return -EINVAL;
	memcpy(a, s, al);
	a[al] = '\0';
	int max;
	memset(out, 0, sizeof(*out));
	if (inet_pton(AF_INET, a, out->addr) == 1) {
		out->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, a, out->addr) == 1) {
		out->family = AF_INET6;
		max = 128;
	} else {
		return -EINVAL;
	}
	out->prefix = max;
	if (slash) {
		const char *p = slash + 1;
		if (!*p || strlen(p) > 3)
			return -EINVAL;
		int v = 0;
		for (; *p; p++) {
			if (!isdigit((unsigned char)*p))
				return -EINVAL;
			v = v * 10 + (*p - '0');
		}
		if (v > max)
			return -EINVAL;
		out->prefix = v;
	}
	/* the bits past the prefix must be zero: "10.1.2.3/8" is a typo, not a network */
	for (int bit = out->prefix; bit < max; bit++)
		if (out->addr[bit / 8] & (0x80 >> (bit % 8)))
			return -ERANGE;
	return 0;
}

int cfg_cidr_match(const struct cfg_cidr *net, const struct sockaddr *sa)
{
	const uint8_t *a;
	if (sa->sa_family == AF_INET && net->family == AF_INET) {
		a = (const uint8_t *)&((const struct sockaddr_in *)(const void *)sa)->sin_addr;
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *s6 = (const void *)sa;
		a = s6->sin6_addr.s6_addr;
		if (net->family == AF_INET) { /* an IPv4-mapped IPv6 address is the IPv4 one */
			if (!IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
				return 0;
			a += 12;
		}
	} else {
		return 0;
	}
	int full = net->prefix / 8, rest = net->prefix % 8;
	if (memcmp(a, net->addr, (size_t)full) != 0)
		return 0;
	if (rest) {
		uint8_t mask = (uint8_t)(0xff << (8 - rest));
		if ((a[full] & mask) != (net->addr[full] & mask))
			return 0;
	}
	return 1;
}

static const char *const proto_names[] = { "smtp", "lmtp", "imap", "pop3", "tcp", NULL };
static const char *const tls_names[] = { "none", "starttls", "implicit", NULL };
static const char *const client_tls_names[] = { "none", "starttls", "implicit", "auto", NULL };
static const char *const policy_names[] = { "none",    "may",     "encrypt", "fingerprint",
					    "verify",  "mta-sts", "dane",    "auto",
					    NULL };
static const char *const mode_names[] = { "enforce", "testing", NULL };
static const char *const pp_names[] = { "none", "v1", "v2", NULL };
static const char *const format_names[] = { "text", "json", NULL };
static const char *const yesno_names[] = { "no", "yes", NULL };
static const char *const bare_newline_names[] = { "normalize", "reject", NULL };
static const char *const greeting_names[] = { "upstream", "local", NULL };
static const char *const transparent_names[] = { "no", "tproxy", NULL };

const char *cfg_proto_name(enum cfg_proto p) { return proto_names[p]; }
const char *cfg_tls_name(enum cfg_tls t) { return tls_names[t]; }
const char *cfg_policy_name(enum cfg_policy p) { return policy_names[p]; }

int cfg_route_late(const struct cfg_route *r)
{
	return r->upstream_policy >= CFG_POLICY_MTA_STS;
}

static int enum_lookup(const char *const *names, const char *v)
{
	for (int i = 0; names[i]; i++)
		if (strcasecmp(names[i], v) == 0)
			return i;
	return -1;
}

/* ---- pass 1: read sections ------------------------------------------------------- */

struct entry {
	char *key, *value;
	int line;
	int used;
};

struct section {
	int is_route;
	char *name;
	int line;
	struct entry *e;
	size_t n, cap;
};

struct parse {
	const char *path;
	int flags;
	struct cfg_errors *errs;
	int nerr;
	int oom; /* an allocation failed: the load fails with -ENOMEM */
	int global_identity_reported; /* [global] cert/key refused once, not once per route */
	struct section *s;
	size_t n, cap;
};

/* strdup that records a failure in P (every caller copes with NULL until the load ends). */
static char *pdup(struct parse *P, const char *s)
{
	char *d = strdup(s);
	if (!d)
		P->oom = 1;
	return d;
}

#define ERR(P, LINE, ...)                                                                  \
	do {                                                                               \
		char m_[900];                                                              \
		snprintf(m_, sizeof(m_), __VA_ARGS__);                                     \
		cfg_errors_add((P)->errs, "%s:%d: %s", (P)->path, (LINE), m_);             \
		(P)->nerr++;                                                               \
	} while (0)

static char *trim(char *s)
{
	while (*s == ' ' || *s == '\t')
		s++;
	char *e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
		*--e = '\0';
	return s;
}

/* A comment starts with ; or # at the start of the line or after white space. */
static void strip_comment(char *s)
{
	for (char *p = s; *p; p++)
		if ((*p == ';' || *p == '#') && (p == s || p[-1] == ' ' || p[-1] == '\t')) {
			*p = '\0';
			return;
		}
}

static int read_sections(struct parse *P)
{
	FILE *f = fopen(P->path, "r");
	if (!f) {
		int e = errno;
		cfg_errors_add(P->errs, "%s:0: cannot open: %s", P->path, strerror(e));
		P->nerr++;
		return -e;
	}
	char line[MAX_LINE + 2];
	int lineno = 0;
	struct section *cur = NULL;
	while (fgets(line, sizeof(line), f)) {
		lineno++;
		size_t len = strlen(line);
		if (len == sizeof(line) - 1 && line[len - 1] != '\n') {
			ERR(P, lineno, "line longer than %d characters", MAX_LINE);
			int c;
			while ((c = fgetc(f)) != EOF && c != '\n')
				;
			continue;
		}
		strip_comment(line);
		char *s = trim(line);
		if (!*s)
			continue;
		if (*s == '[') {
			char *rb = strchr(s, ']');
			if (!rb || *trim(rb + 1)) {
				ERR(P, lineno, "malformed section header");
				cur = NULL;
				continue;
			}
			*rb = '\0';
			char *name = trim(s + 1);
			int is_route = 0;
			char *rname = NULL;
			if (strcasecmp(name, "global") == 0) {
				for (size_t i = 0; i < P->n; i++)
					if (!P->s[i].is_route) {
						ERR(P, lineno, "duplicate [global] section (first at line %d)",
						    P->s[i].line);
						break;
					}
			} else if (strncasecmp(name, "route", 5) == 0 &&
				   (name[5] == ' ' || name[5] == '\t' || name[5] == '\0')) {
				is_route = 1;
				rname = trim(name + 5);
				if (!*rname) {
					ERR(P, lineno, "route section without a name: use [route NAME]");
					cur = NULL;
					continue;
				}
				for (char *c = rname; *c; c++)
					if (!isalnum((unsigned char)*c) && *c != '-' && *c != '_' && *c != '.') {
						ERR(P, lineno, "route name \"%s\": use letters, digits, '-', '_', '.'",
						    rname);
						break;
					}
				for (size_t i = 0; i < P->n; i++)
					if (P->s[i].is_route && strcmp(P->s[i].name, rname) == 0) {
						ERR(P, lineno, "duplicate route \"%s\" (first at line %d)", rname,
						    P->s[i].line);
						break;
					}
			} else {
				ERR(P, lineno, "unknown section [%s]: expected [global] or [route NAME]",
				    name);
				cur = NULL;
				continue;
			}
			if (P->n == P->cap) {
				size_t cap = P->cap ? P->cap * 2 : 8;
				struct section *ns = realloc(P->s, cap * sizeof(*ns));
				if (!ns) {
					P->oom = 1;
					break;
				}
				P->s = ns;
				P->cap = cap;
			}
			cur = &P->s[P->n++];
			memset(cur, 0, sizeof(*cur));
			cur->is_route = is_route;
			cur->name = pdup(P, is_route ? rname : "global");
			cur->line = lineno;
			continue;
		}
		char *eq = strchr(s, '=');
		if (!eq) {
			ERR(P, lineno, "expected key = value");
			continue;
		}
		*eq = '\0';
		char *k = trim(s), *v = trim(eq + 1);
		if (!*k) {
			ERR(P, lineno, "missing key before '='");
			continue;
		}
		if (!cur) {
			ERR(P, lineno, "key \"%s\" outside of a section", k);
			continue;
		}
		int dup = 0;
		for (size_t i = 0; i < cur->n; i++)
			if (strcasecmp(cur->e[i].key, k) == 0) {
				ERR(P, lineno, "duplicate key \"%s\" (first at line %d)", k, cur->e[i].line);
				dup = 1;
				break;
			}
		if (dup)
			continue;
		if (cur->n == cur->cap) {
			size_t cap = cur->cap ? cur->cap * 2 : 16;
			struct entry *ne = realloc(cur->e, cap * sizeof(*ne));
			if (!ne) {
				P->oom = 1;
				break;
			}
			cur->e = ne;
			cur->cap = cap;
		}
		char *dk = pdup(P, k), *dv = pdup(P, v);
		if (!dk || !dv) {
			free(dk);
			free(dv);
			break;
		}
		cur->e[cur->n++] = (struct entry){ dk, dv, lineno, 0 };
	}
	fclose(f);
	return 0;
}

/* ---- pass 2: interpret ----------------------------------------------------------- */

static struct entry *get(struct section *sec, const char *key)
{
	for (size_t i = 0; i < sec->n; i++)
		if (strcasecmp(sec->e[i].key, key) == 0) {
			sec->e[i].used = 1;
			return &sec->e[i];
		}
	return NULL;
}

static int line_of(struct section *sec, const char *key)
{
	for (size_t i = 0; i < sec->n; i++)
		if (strcasecmp(sec->e[i].key, key) == 0)
			return sec->e[i].line;
	return sec->line;
}

static void get_enum(struct parse *P, struct section *sec, const char *key,
		     const char *const *names, int *out)
{
	struct entry *e = get(sec, key);
	if (!e)
		return;
	int v = enum_lookup(names, e->value);
	if (v < 0) {
		char list[200] = "";
		for (int i = 0; names[i]; i++) {
			strncat(list, i ? " | " : "", sizeof(list) - strlen(list) - 1);
			strncat(list, names[i], sizeof(list) - strlen(list) - 1);
		}
		ERR(P, e->line, "%s: invalid value \"%s\" (expected %s)", key, e->value, list);
		return;
	}
	*out = v;
}

static void get_duration(struct parse *P, struct section *sec, const char *key, uint64_t *out)
{
	struct entry *e = get(sec, key);
	if (e && cfg_parse_duration(e->value, out) < 0)
		ERR(P, e->line, "%s: invalid duration \"%s\" (examples: 500ms, 30s, 5m)", key,
		    e->value);
}

static void get_uint(struct parse *P, struct section *sec, const char *key, unsigned min,
		     unsigned max, unsigned *out)
{
	struct entry *e = get(sec, key);
	if (!e)
		return;
	char *end;
	errno = 0;
	unsigned long v = strtoul(e->value, &end, 10);
	if (!isdigit((unsigned char)e->value[0]) || *end || errno || v < min || v > max) {
		ERR(P, e->line, "%s: expected a number from %u to %u, got \"%s\"", key, min, max,
		    e->value);
		return;
	}
	*out = (unsigned)v;
}

/* A file the daemon must read at start: existence and readability are checked here. */
static void get_file(struct parse *P, struct section *sec, const char *key, char **out)
{
	struct entry *e = get(sec, key);
	if (!e)
		return;
	if (!*e->value) {
		ERR(P, e->line, "%s: empty path", key);
		return;
	}
	free(*out);
	*out = pdup(P, e->value);
	if (!(P->flags & CFG_NO_FILES) && access(e->value, R_OK) < 0)
		ERR(P, e->line, "%s: cannot read \"%s\": %s", key, e->value, strerror(errno));
}

static void get_string(struct parse *P, struct section *sec, const char *key, char **out)
{
	struct entry *e = get(sec, key);
	if (e) {
		free(*out);
		*out = pdup(P, e->value);
	}
}

static int resolve(struct parse *P, int line, const char *what, struct cfg_addr *a, int passive)
{
	if (P->flags & CFG_NO_FILES)
		return 0;
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV };
	if (passive)
		hints.ai_flags |= AI_PASSIVE;
	char port[8];
	snprintf(port, sizeof(port), "%u", a->port);
	const char *host = a->host;
	if (strcmp(host, "*") == 0)
		host = NULL;
	struct addrinfo *res = NULL;
	int rc = getaddrinfo(host, port, &hints, &res);
	if (rc != 0 || !res) {
		ERR(P, line, "%s: cannot resolve \"%s\": %s", what, a->host, gai_strerror(rc));
		return -EINVAL;
	}
	memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
	a->sslen = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

static int is_ip_literal(const char *h);

static void get_addr(struct parse *P, struct section *sec, const char *key,
		     struct cfg_addr *a, int passive, int allow_orig)
{
	struct entry *e = get(sec, key);
	if (!e)
		return;
	a->line = e->line;
	if (allow_orig && strcasecmp(e->value, "original-destination") == 0) {
		a->original_dst = 1;
		snprintf(a->host, sizeof(a->host), "original-destination");
		return;
	}
	if (allow_orig && (strcasecmp(e->value, "mx") == 0 || strncasecmp(e->value, "mx:", 3) == 0)) {
		unsigned port = 25;
		char *end = NULL;
		if (e->value[2] == ':') {
			errno = 0;
			port = (unsigned)strtoul(e->value + 3, &end, 10);
			if (errno || !end || *end || end == e->value + 3 || port == 0 || port > 65535) {
				ERR(P, e->line, "%s: invalid port in \"%s\" (expected mx or mx:PORT)",
				    key, e->value);
				return;
			}
		}
		a->mx = 1;
		a->port = (uint16_t)port;
		snprintf(a->host, sizeof(a->host), "mx");
		return;
	}
	if (cfg_parse_hostport(e->value, a->host, sizeof(a->host), &a->port) < 0) {
		ERR(P, e->line, "%s: invalid address \"%s\" (expected HOST:PORT or [IPv6]:PORT)",
		    key, e->value);
		return;
	}
	if (!passive && !is_ip_literal(a->host)) {
		/* an upstream host name: each session resolves it (relays whose addresses rotate
		 * keep working; a start with DNS briefly down does not fail) */
		a->needs_dns = 1;
		return;
	}
	resolve(P, e->line, key, a, passive);
}

static const char *const global_keys[] = {
	"workers", "user", "log_level", "log_format", "admin_listen", "max_connections",
	"helo_name", "cert", "key", "ca", "drain_timeout", "drain_grace", "ticket_key_file", "resolver",
	"dnssec_trust_anchor", "mta_sts_cache", "mta_sts_port", "tlsrpt_dir", "tlsrpt_relay",
	"tlsrpt_org", "tlsrpt_interval", NULL
};
static const char *const route_keys[] = {
	"listen", "protocol", "client_tls", "client_policy", "upstream", "upstream_tls",
	"upstream_policy", "policy_mode", "upstream_name", "cert", "key", "client_ca",
	"client_min_tls", "upstream_min_tls", "upstream_ca", "upstream_fingerprint",
	"upstream_cert", "upstream_key", "policy_table", "proxy_protocol_in",
	"proxy_protocol_out", "xclient", "connect_timeout", "handshake_timeout", "idle_timeout",
	"max_connections_per_client", "transparent", "source", "bare_newline", "client_allow",
	"client_ciphers", "upstream_ciphers", "client_alpn", "detect_timeout", "line_timeout",
	"min_data_rate",
	"greeting", NULL
};

/* Optimal string alignment distance (edits, adjacent swaps counted as one), case-blind,
 * when it is at most max; max + 1 when it is more (keys are short: at most 64 bytes
 * compared, longer ones are max + 1 away). Only the band of cells within max of the
 * diagonal is computed: a cell further out is more than max edits already. */
static size_t edit_distance(const char *a, const char *b, size_t max)
{
	size_t n = strlen(a), m = strlen(b), far = max + 1;
	if (n > 64 || m > 64)
		return far;
	if ((n > m ? n - m : m - n) > max)
		return far;
	unsigned char la[64], lb[64];
	for (size_t i = 0; i < n; i++)
		la[i] = (unsigned char)tolower((unsigned char)a[i]);
	for (size_t j = 0; j < m; j++)
		lb[j] = (unsigned char)tolower((unsigned char)b[j]);
	size_t d[65][65];
#define CELL(i, j) ((i) > (j) + max || (j) > (i) + max ? far : d[i][j])
	for (size_t i = 0; i <= n && i <= max; i++)
		d[i][0] = i;
	for (size_t j = 0; j <= m && j <= max; j++)
		d[0][j] = j;
	size_t prev_min = 0; /* the least cell of row i - 1 in the band */
	for (size_t i = 1; i <= n; i++) {
		size_t lo = i > max ? i - max : 1, hi = i + max < m ? i + max : m;
		size_t row_min = i <= max ? i : far;
		for (size_t j = lo; j <= hi; j++) {
			size_t v = d[i - 1][j - 1] + (la[i - 1] != lb[j - 1]);
			if (CELL(i - 1, j) + 1 < v)
				v = CELL(i - 1, j) + 1;
			if (CELL(i, j - 1) + 1 < v)
				v = CELL(i, j - 1) + 1;
			if (i > 1 && j > 1 && la[i - 1] == lb[j - 2] && la[i - 2] == lb[j - 1] &&
			    d[i - 2][j - 2] + 1 < v)
				v = d[i - 2][j - 2] + 1;
			d[i][j] = v > far ? far : v;
			if (d[i][j] < row_min)
				row_min = d[i][j];
		}
		/* Every cell of the next row comes from this row or the one before plus at
		 * least nothing, or from its left neighbour plus one: when both rows are
		 * beyond max, so is every later row, and so d[n][m]. */
		if (row_min > max && prev_min > max)
			return far;
		prev_min = row_min;
	}
#undef CELL
	return d[n][m]; /* in the band: |n - m| <= max */
}

/* The known key closest to key (at most 2 edits, 1 for keys of 4 letters or fewer, and
 * fewer edits than half its length), or NULL. */
static const char *closest(const char *key, const char *const *known)
{
	const char *best = NULL;
	size_t bd = (size_t)-1, len = strlen(key), max = len <= 4 ? 1 : 2;
	for (size_t i = 0; known[i]; i++) {
		size_t d = edit_distance(key, known[i], max);
		if (d < bd) {
			bd = d;
			best = known[i];
		}
	}
	return bd <= max && bd * 2 < len ? best : NULL;
}

static void check_unknown(struct parse *P, struct section *sec, const char *const *known)
{
	const char *const *other = known == global_keys ? route_keys : global_keys;
	for (size_t i = 0; i < sec->n; i++) {
		if (sec->e[i].used)
			continue;
		const char *key = sec->e[i].key, *hint;
		if (enum_lookup(known, key) >= 0)
			continue;
		if (enum_lookup(other, key) >= 0)
			ERR(P, sec->e[i].line, "key \"%s\" belongs in %s, not in [%s%s]", key,
			    sec->is_route ? "[global]" : "a [route NAME] section",
			    sec->is_route ? "route " : "", sec->name);
		else if ((hint = closest(key, known)))
			ERR(P, sec->e[i].line, "unknown key \"%s\" in [%s%s]: did you mean \"%s\"?",
			    key, sec->is_route ? "route " : "", sec->name, hint);
		else
			ERR(P, sec->e[i].line, "unknown key \"%s\" in [%s%s]", key,
			    sec->is_route ? "route " : "", sec->name);
	}
}

/* resolver, dnssec_trust_anchor, mta_sts_cache, mta_sts_port; the TLSRPT keys are refused
 * until reports exist. */
static void parse_dns_keys(struct parse *P, struct section *sec, struct cfg *c)
{
	struct entry *e = get(sec, "resolver");
	if (e) {
		char host[256];
		uint16_t port = 53;
		struct in6_addr a6;
		struct in_addr a4;
		int ok = inet_pton(AF_INET, e->value, &a4) == 1 ||
			 inet_pton(AF_INET6, e->value, &a6) == 1 ||
			 (cfg_parse_hostport(e->value, host, sizeof(host), &port) == 0 &&
			  is_ip_literal(host));
		if (!ok)
			ERR(P, e->line, "resolver: invalid value \"%s\" (expected IP or IP:PORT)",
			    e->value);
		else
			c->resolver = pdup(P, e->value);
	}
	e = get(sec, "dnssec_trust_anchor");
	if (e && strcasecmp(e->value, "none") == 0) {
		free(c->dnssec_trust_anchor);
		c->dnssec_trust_anchor = NULL;
	} else if (e) {
		free(c->dnssec_trust_anchor);
		c->dnssec_trust_anchor = NULL;
		get_file(P, sec, "dnssec_trust_anchor", &c->dnssec_trust_anchor);
	}
	e = get(sec, "mta_sts_cache");
	if (e) {
		struct stat st;
		if (!*e->value)
			ERR(P, e->line, "mta_sts_cache: empty path");
		else if (!(P->flags & CFG_NO_FILES) &&
			 (stat(e->value, &st) < 0 || !S_ISDIR(st.st_mode) ||
			  access(e->value, W_OK | X_OK) < 0))
			ERR(P, e->line, "mta_sts_cache: \"%s\" is not a writable directory", e->value);
		c->mta_sts_cache = pdup(P, e->value);
	}
	unsigned port = c->mta_sts_port;
	get_uint(P, sec, "mta_sts_port", 1, 65535, &port);
	c->mta_sts_port = (uint16_t)port;
	/* TLSRPT (tlsrpt.c makes the directory when it is missing) */
	e = get(sec, "tlsrpt_dir");
	if (e && !*e->value)
		ERR(P, e->line, "tlsrpt_dir: empty path");
	else if (e)
		c->tlsrpt_dir = pdup(P, e->value);
	e = get(sec, "tlsrpt_relay");
	if (e) {
		char host[256];
		uint16_t port;
		if (cfg_parse_hostport(e->value, host, sizeof(host), &port) < 0 || port == 0)
			ERR(P, e->line, "tlsrpt_relay: invalid address \"%s\" (expected HOST:PORT)",
			    e->value);
		else
			c->tlsrpt_relay = pdup(P, e->value);
	}
	get_string(P, sec, "tlsrpt_org", &c->tlsrpt_org);
	uint64_t ms = 0;
	e = get(sec, "tlsrpt_interval");
	if (e) {
		get_duration(P, sec, "tlsrpt_interval", &ms);
		if (ms && (ms % 1000 || ms < 2000))
			ERR(P, e->line, "tlsrpt_interval: whole seconds, at least 2s (default 1d)");
		c->tlsrpt_interval_s = ms / 1000;
	}
	for (const char *const *k = (const char *const[]){ "tlsrpt_relay", "tlsrpt_org",
							  "tlsrpt_interval", NULL };
	     *k; k++)
		if (get(sec, *k) && !c->tlsrpt_dir)
			ERR(P, line_of(sec, *k), "%s needs tlsrpt_dir", *k);
}

/* The recipient-domain levels (mta-sts, dane, auto) and upstream = mx go together with
 * late binding: an SMTP route whose upstream is the recipient's MX. */
static void check_late(struct parse *P, struct section *sec, struct cfg *c, struct cfg_route *r)
{
	int pl = line_of(sec, "upstream_policy");
	if (!cfg_route_late(r)) {
		if (r->upstream.mx)
			ERR(P, r->upstream.line,
			    "upstream = mx needs upstream_policy = mta-sts, dane or auto (the "
			    "recipient's MX is known only per recipient domain)");
		return;
	}
	const char *lv = policy_names[r->upstream_policy];
	if (r->upstream_policy != CFG_POLICY_MTA_STS && !c->dnssec_trust_anchor)
		ERR(P, pl, "upstream_policy = %s needs DNSSEC validation: set dnssec_trust_anchor "
			   "(it is none, or the default %s is missing)", lv, DEFAULT_TRUST_ANCHOR);
	if (r->protocol != CFG_PROTO_SMTP)
		ERR(P, pl, "upstream_policy = %s needs protocol = smtp", lv);
	if (r->upstream_tls != CFG_TLS_STARTTLS)
		ERR(P, pl, "upstream_policy = %s needs upstream_tls = starttls", lv);
	if (!r->upstream.mx && !r->upstream.original_dst && get(sec, "upstream"))
		ERR(P, pl, "upstream_policy = %s needs upstream = mx or original-destination (the "
			   "recipient's MX)", lv);
	if (get(sec, "policy_table"))
		ERR(P, line_of(sec, "policy_table"),
		    "policy_table: not supported together with upstream_policy = %s", lv);
	if (get(sec, "upstream_name"))
		ERR(P, line_of(sec, "upstream_name"),
		    "upstream_name: the name is the recipient's MX host under upstream_policy = %s",
		    lv);
	c->late_binding = 1;
}

static void parse_global(struct parse *P, struct section *sec, struct cfg *c)
{
	struct entry *e = get(sec, "workers");
	if (e) {
		if (strcasecmp(e->value, "auto") == 0) {
			c->workers = 0;
		} else {
			unsigned w = 0;
			get_uint(P, sec, "workers", 1, 256, &w);
			c->workers = (int)w;
		}
	}
	e = get(sec, "user");
	if (e) {
		c->user = pdup(P, e->value);
		if (!(P->flags & CFG_NO_FILES) && !getpwnam(e->value))
			ERR(P, e->line, "user: no such user \"%s\"", e->value);
	}
	e = get(sec, "log_level");
	if (e) {
		int l = log_level_parse(e->value);
		if (l < 0)
			ERR(P, e->line, "log_level: invalid value \"%s\" (expected error | warn | info | debug)",
			    e->value);
		else
			c->log_level = l;
	}
	int fmt = CFG_LOG_TEXT;
	get_enum(P, sec, "log_format", format_names, &fmt);
	c->log_format = fmt;
	if (get(sec, "admin_listen")) {
		get_addr(P, sec, "admin_listen", &c->admin_listen, 1, 0);
		c->has_admin_listen = 1;
	}
	get_uint(P, sec, "max_connections", 1, 10000000, &c->max_connections);
	get_string(P, sec, "helo_name", &c->helo_name);
	get_file(P, sec, "cert", &c->cert);
	get_file(P, sec, "key", &c->key);
	get_file(P, sec, "ca", &c->ca);
	get_duration(P, sec, "drain_timeout", &c->drain_timeout_ms);
	get_duration(P, sec, "drain_grace", &c->drain_grace_ms);
	get_file(P, sec, "ticket_key_file", &c->ticket_key_file);
	parse_dns_keys(P, sec, c);
	check_unknown(P, sec, global_keys);
}

int cfg_addr_equal(const struct cfg_addr *a, const struct cfg_addr *b)
{
	if (a->sslen == 0 || b->sslen == 0)
		return strcmp(a->host, b->host) == 0 && a->port == b->port;
	if (a->ss.ss_family != b->ss.ss_family)
		return 0;
	if (a->ss.ss_family == AF_INET) {
		const struct sockaddr_in *x = (const void *)&a->ss, *y = (const void *)&b->ss;
		return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
	}
	const struct sockaddr_in6 *x = (const void *)&a->ss, *y = (const void *)&b->ss;
	return x->sin6_port == y->sin6_port &&
	       memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

static int is_ip_literal(const char *h)
{
	struct in6_addr a6;
	struct in_addr a4;
	return inet_pton(AF_INET, h, &a4) == 1 || inet_pton(AF_INET6, h, &a6) == 1;
}

/* One ALPN protocol id: 1 to 255 printable bytes, no comma. */
static int valid_alpn(const char *s, size_t n)
{
	if (n == 0 || n > 255)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (s[i] <= ' ' || s[i] > '~')
			return 0;
	return 1;
}

/* client_allow, client_ciphers, upstream_ciphers, client_alpn, detect_timeout. */
static void parse_client_keys(struct parse *P, struct section *sec, struct cfg_route *r)
{
	struct entry *e = get(sec, "client_allow");
	if (e) {
		size_t n = 1; /* at most one entry more than separators (those of strtok_r) */
		for (const char *p = e->value; *p; p++)
			n += *p == ',' || *p == ' ' || *p == '\t';
		r->client_allow = calloc(n, sizeof(*r->client_allow));
		if (!r->client_allow) {
			P->oom = 1;
			return;
		}
		char *copy = pdup(P, e->value), *save = NULL;
		for (char *t = copy ? strtok_r(copy, ", \t", &save) : NULL; t;
		     t = strtok_r(NULL, ", \t", &save)) {
			int rc = cfg_parse_cidr(t, &r->client_allow[r->nclient_allow]);
			if (rc < 0)
				ERR(P, e->line, "client_allow: \"%s\" %s", t,
				    rc == -ERANGE ? "has bits set past its prefix"
						  : "is not an address or CIDR network");
			else
				r->nclient_allow++;
		}
		free(copy);
		if (!r->nclient_allow && copy)
			ERR(P, e->line, "client_allow: no address or network");
	}
	get_string(P, sec, "client_ciphers", &r->client_ciphers);
	get_string(P, sec, "upstream_ciphers", &r->upstream_ciphers);
	if (r->client_ciphers && r->client_tls == CFG_TLS_NONE)
		ERR(P, line_of(sec, "client_ciphers"), "client_ciphers needs client_tls");
	if (r->upstream_ciphers && r->upstream_tls == CFG_TLS_NONE && !get(sec, "policy_table"))
		ERR(P, line_of(sec, "upstream_ciphers"), "upstream_ciphers needs upstream_tls");
	/* ALPN: a mail route accepts only its own protocol's name by default (ALPACA); tcp
	 * routes do not look at ALPN unless told. "none": not looked at. */
	static const char *const own[] = { "smtp", "lmtp", "imap", "pop3", NULL };
	e = get(sec, "client_alpn");
	if (e && strcasecmp(e->value, "none") == 0) {
		r->client_alpn = NULL;
	} else if (e) {
		for (const char *p = e->value; p && *p;) {
			const char *c = strchr(p, ',');
			size_t n = c ? (size_t)(c - p) : strlen(p);
			if (!valid_alpn(p, n)) {
				ERR(P, e->line, "client_alpn: invalid protocol id \"%.*s\"", (int)n, p);
				break;
			}
			p = c ? c + 1 : NULL;
		}
		r->client_alpn = pdup(P, e->value);
	} else if (r->protocol != CFG_PROTO_TCP) {
		r->client_alpn = pdup(P, own[r->protocol]);
	}
	r->detect_timeout_ms = 1000;
	get_duration(P, sec, "detect_timeout", &r->detect_timeout_ms);
	if (get(sec, "detect_timeout") && r->client_tls != CFG_TLS_AUTO)
		ERR(P, line_of(sec, "detect_timeout"), "detect_timeout needs client_tls = auto");
}

/* The rules between a route and the rows of its policy table, reported at the row. */
static void check_table(struct parse *P, struct cfg *c, struct cfg_route *r)
{
	const struct policy_table *t = r->policy;
	int has_name = r->upstream_name && !is_ip_literal(r->upstream_name);
	for (size_t i = 0; i < t->n; i++) {
		const struct policy_row *row = &t->rows[i];
		if (row->level >= CFG_POLICY_MTA_STS) {
			const char *lv = policy_names[row->level];
			if (r->protocol != CFG_PROTO_SMTP || !r->upstream.original_dst) {
				cfg_errors_add(P->errs, "%s:%d: %s needs an SMTP route with upstream = "
					       "original-destination (route \"%s\")", t->path,
					       row->line, lv, r->name);
				P->nerr++;
			} else if (row->level != CFG_POLICY_MTA_STS && !c->dnssec_trust_anchor) {
				cfg_errors_add(P->errs, "%s:%d: %s needs DNSSEC validation: set "
					       "dnssec_trust_anchor", t->path, row->line, lv);
				P->nerr++;
			} else {
				c->late_binding = 1;
			}
		}
		if (r->protocol == CFG_PROTO_TCP && row->has_tls && row->tls == CFG_TLS_STARTTLS) {
			cfg_errors_add(P->errs, "%s:%d: tls=starttls needs a mail protocol (route \"%s\" "
				       "is tcp; use tls=implicit)", t->path, row->line, r->name);
			P->nerr++;
		}
		if (row->level == CFG_POLICY_VERIFY && !row->nnames &&
		    (r->upstream.original_dst || !has_name)) {
			cfg_errors_add(P->errs, "%s:%d: verify needs names= here: %s", t->path,
				       row->line,
				       r->upstream.original_dst
					       ? "a transparent route knows only the address"
					       : "the route has no host name to verify");
			P->nerr++;
		}
		if (row->ca && !(P->flags & CFG_NO_FILES) && access(row->ca, R_OK) < 0) {
			cfg_errors_add(P->errs, "%s:%d: ca: cannot read \"%s\": %s", t->path,
				       row->line, row->ca, strerror(errno));
			P->nerr++;
		}
	}
}

static void parse_route(struct parse *P, struct section *sec, struct cfg *c, struct cfg_route *r)
{
	r->name = pdup(P, sec->name ? sec->name : "");
	r->line = sec->line;
	r->client_min_tls = r->upstream_min_tls = 12;
	r->connect_timeout_ms = 10000;
	r->handshake_timeout_ms = 30000;
	r->idle_timeout_ms = 300000;
	r->line_timeout_ms = 60000;
	r->min_data_rate = 500;
	r->max_connections_per_client = 50;
	int v;

	if (!get(sec, "listen"))
		ERR(P, sec->line, "route \"%s\": missing listen", r->name);
	get_addr(P, sec, "listen", &r->listen, 1, 0);
	struct entry *e = get(sec, "protocol");
	if (!e)
		ERR(P, sec->line, "route \"%s\": missing protocol (smtp | lmtp | imap | pop3 | tcp)",
		    r->name);
	v = CFG_PROTO_TCP;
	get_enum(P, sec, "protocol", proto_names, &v);
	r->protocol = v;

	v = CFG_TLS_NONE;
	get_enum(P, sec, "client_tls", client_tls_names, &v);
	r->client_tls = v;
	v = CFG_TLS_NONE;
	get_enum(P, sec, "upstream_tls", tls_names, &v);
	r->upstream_tls = v;
	if (r->protocol == CFG_PROTO_TCP) {
		if (r->client_tls == CFG_TLS_STARTTLS)
			ERR(P, line_of(sec, "client_tls"),
			    "client_tls: starttls needs a mail protocol, not tcp (use implicit)");
		if (r->upstream_tls == CFG_TLS_STARTTLS)
			ERR(P, line_of(sec, "upstream_tls"),
			    "upstream_tls: starttls needs a mail protocol, not tcp (use implicit)");
	}

	v = CFG_POLICY_MAY;
	e = get(sec, "client_policy");
	if (e) {
		get_enum(P, sec, "client_policy", policy_names, &v);
		if (v != CFG_POLICY_MAY && v != CFG_POLICY_ENCRYPT)
			ERR(P, e->line, "client_policy: invalid value \"%s\" (expected may | encrypt)",
			    e->value);
		else if (r->client_tls == CFG_TLS_NONE && v == CFG_POLICY_ENCRYPT)
			ERR(P, e->line, "client_policy = encrypt needs client_tls = starttls or implicit");
	}
	r->client_policy = v;

	if (!get(sec, "upstream"))
		ERR(P, sec->line, "route \"%s\": missing upstream", r->name);
	get_addr(P, sec, "upstream", &r->upstream, 0, 1);

	e = get(sec, "upstream_policy");
	v = r->upstream_tls == CFG_TLS_NONE ? CFG_POLICY_NONE : CFG_POLICY_VERIFY;
	if (e) {
		get_enum(P, sec, "upstream_policy", policy_names, &v);
		if (r->upstream_tls == CFG_TLS_NONE && v != CFG_POLICY_NONE)
			ERR(P, e->line, "upstream_policy = %s needs upstream_tls = starttls or implicit",
			    e->value);
		if (r->upstream_tls != CFG_TLS_NONE && v == CFG_POLICY_NONE)
			ERR(P, e->line, "upstream_policy = none contradicts upstream_tls = %s",
			    tls_names[r->upstream_tls]);
	}
	r->upstream_policy = v;
	v = CFG_MODE_ENFORCE;
	get_enum(P, sec, "policy_mode", mode_names, &v);
	r->policy_mode = v;
	check_late(P, sec, c, r);

	get_string(P, sec, "upstream_name", &r->upstream_name);
	if (!r->upstream_name && !r->upstream.original_dst && r->upstream.host[0])
		r->upstream_name = pdup(P, r->upstream.host);
	if (r->upstream_policy == CFG_POLICY_VERIFY && r->upstream_name &&
	    is_ip_literal(r->upstream_name))
		ERR(P, line_of(sec, get(sec, "upstream_name") ? "upstream_name" : "upstream"),
		    "upstream_policy = verify needs a host name to verify: set upstream_name");

	get_file(P, sec, "cert", &r->cert);
	get_file(P, sec, "key", &r->key);
	if (!r->cert && c->cert)
		r->cert = pdup(P, c->cert);
	if (!r->key && c->key)
		r->key = pdup(P, c->key);
	get_file(P, sec, "client_ca", &r->client_ca);
	if (r->client_ca && r->client_tls == CFG_TLS_NONE)
		ERR(P, line_of(sec, "client_ca"), "client_ca needs client_tls = starttls or implicit");
	if (r->client_tls != CFG_TLS_NONE && (!r->cert || !r->key))
		ERR(P, line_of(sec, "client_tls"),
		    "client_tls = %s needs cert and key (in the route or in [global])",
		    tls_names[r->client_tls]);

	e = get(sec, "client_min_tls");
	if (e && cfg_parse_tls_version(e->value, &r->client_min_tls) < 0)
		ERR(P, e->line, "client_min_tls: invalid value \"%s\" (expected 1.0 | 1.1 | 1.2 | 1.3)",
		    e->value);
	e = get(sec, "upstream_min_tls");
	if (e && cfg_parse_tls_version(e->value, &r->upstream_min_tls) < 0)
		ERR(P, e->line,
		    "upstream_min_tls: invalid value \"%s\" (expected 1.0 | 1.1 | 1.2 | 1.3)", e->value);

	get_file(P, sec, "upstream_ca", &r->upstream_ca);
	if (!r->upstream_ca && c->ca)
		r->upstream_ca = pdup(P, c->ca);
	if ((r->upstream_policy == CFG_POLICY_VERIFY || cfg_route_late(r)) && !r->upstream_ca) {
		if (access(DEFAULT_CA, R_OK) == 0)
			r->upstream_ca = pdup(P, DEFAULT_CA);
		else
			ERR(P, line_of(sec, "upstream_policy"),
			    "upstream_policy = verify needs a trust store: set upstream_ca or ca");
	}
	e = get(sec, "upstream_fingerprint");
	if (e) {
		if (cfg_parse_fingerprint(e->value, r->upstream_fingerprint) < 0)
			ERR(P, e->line,
			    "upstream_fingerprint: expected sha256: followed by 64 hex digits");
		else
			r->has_upstream_fingerprint = 1;
		if (r->upstream_policy != CFG_POLICY_FINGERPRINT)
			ERR(P, e->line, "upstream_fingerprint needs upstream_policy = fingerprint");
	} else if (r->upstream_policy == CFG_POLICY_FINGERPRINT) {
		ERR(P, line_of(sec, "upstream_policy"),
		    "upstream_policy = fingerprint needs upstream_fingerprint = sha256:HEX");
	}
	get_file(P, sec, "upstream_cert", &r->upstream_cert);
	get_file(P, sec, "upstream_key", &r->upstream_key);
	if (!r->upstream_cert != !r->upstream_key)
		ERR(P, line_of(sec, r->upstream_cert ? "upstream_cert" : "upstream_key"),
		    "upstream_cert and upstream_key go together");
	if (r->upstream_cert && r->upstream_tls == CFG_TLS_NONE)
		ERR(P, line_of(sec, "upstream_cert"),
		    "upstream_cert needs upstream_tls = starttls or implicit");

	if (get(sec, "policy_table")) {
		get_file(P, sec, "policy_table", &r->policy_table);
		if (r->policy_table && !(P->flags & CFG_NO_FILES) &&
		    access(r->policy_table, R_OK) == 0) {
			int rc = policy_load(r->policy_table, &r->policy, P->errs);
			if (rc == -ENOMEM)
				P->oom = 1;
			else if (rc < 0)
				P->nerr++;
			else
				check_table(P, c, r);
		}
	}
	v = CFG_PP_NONE;
	get_enum(P, sec, "proxy_protocol_in", pp_names, &v);
	r->proxy_protocol_in = v;
	v = CFG_PP_NONE;
	get_enum(P, sec, "proxy_protocol_out", pp_names, &v);
	r->proxy_protocol_out = v;
	if (r->proxy_protocol_out != CFG_PP_NONE && cfg_route_late(r))
		ERR(P, line_of(sec, "proxy_protocol_out"),
		    "proxy_protocol_out is for an upstream of one's own, not the recipients' MX "
		    "hosts (upstream_policy = %s)", policy_names[r->upstream_policy]);
	v = 0;
	get_enum(P, sec, "xclient", yesno_names, &v);
	r->xclient = v;
	if (v && r->protocol != CFG_PROTO_SMTP && r->protocol != CFG_PROTO_LMTP)
		ERR(P, line_of(sec, "xclient"), "xclient = yes needs protocol = smtp or lmtp");
	else if (v && cfg_route_late(r))
		ERR(P, line_of(sec, "xclient"),
		    "xclient = yes is for a Postfix upstream of one's own, not the recipients' MX "
		    "hosts (upstream_policy = %s)", policy_names[r->upstream_policy]);
	v = CFG_BARE_NORMALIZE;
	get_enum(P, sec, "bare_newline", bare_newline_names, &v);
	r->bare_newline = v;
	if (get(sec, "bare_newline") && r->protocol != CFG_PROTO_SMTP && r->protocol != CFG_PROTO_LMTP)
		ERR(P, line_of(sec, "bare_newline"), "bare_newline needs protocol = smtp or lmtp");
	v = 0;
	get_enum(P, sec, "greeting", greeting_names, &v);
	r->greeting_local = v;
	if (get(sec, "greeting") && r->protocol != CFG_PROTO_SMTP && r->protocol != CFG_PROTO_LMTP)
		ERR(P, line_of(sec, "greeting"), "greeting needs protocol = smtp or lmtp");
	else if (get(sec, "greeting") && !v && cfg_route_late(r))
		ERR(P, line_of(sec, "greeting"),
		    "greeting = upstream: a route with upstream_policy = %s greets its clients "
		    "itself (its upstream is chosen per recipient)", policy_names[r->upstream_policy]);
	parse_client_keys(P, sec, r);
	get_duration(P, sec, "connect_timeout", &r->connect_timeout_ms);
	get_duration(P, sec, "handshake_timeout", &r->handshake_timeout_ms);
	get_duration(P, sec, "idle_timeout", &r->idle_timeout_ms);
	get_duration(P, sec, "line_timeout", &r->line_timeout_ms);
	if (get(sec, "line_timeout") && r->protocol != CFG_PROTO_SMTP &&
	    r->protocol != CFG_PROTO_LMTP && r->protocol != CFG_PROTO_POP3)
		ERR(P, line_of(sec, "line_timeout"), "line_timeout needs protocol = smtp, lmtp or pop3");
	get_uint(P, sec, "min_data_rate", 0, 1000000000, &r->min_data_rate);
	if (get(sec, "min_data_rate") && r->protocol != CFG_PROTO_SMTP &&
	    r->protocol != CFG_PROTO_LMTP)
		ERR(P, line_of(sec, "min_data_rate"), "min_data_rate needs protocol = smtp or lmtp");
	get_uint(P, sec, "max_connections_per_client", 0, 10000000, &r->max_connections_per_client);
	v = CFG_TRANSPARENT_NO;
	get_enum(P, sec, "transparent", transparent_names, &v);
	r->transparent = v;
	r->listen.transparent = r->transparent == CFG_TRANSPARENT_TPROXY;
	if (r->upstream.original_dst && r->upstream_policy == CFG_POLICY_VERIFY &&
	    !r->upstream_name)
		ERR(P, line_of(sec, get(sec, "upstream_policy") ? "upstream_policy" : "upstream"),
		    "upstream = original-destination with upstream_policy = verify has no name to "
		    "verify: set upstream_name, or choose the level per destination in a "
		    "policy_table whose verify rows give names=");
	e = get(sec, "source");
	if (e) {
		if (strcasecmp(e->value, "client") != 0)
			ERR(P, e->line, "source: invalid value \"%s\" (expected client)", e->value);
		else if (r->transparent != CFG_TRANSPARENT_TPROXY)
			ERR(P, e->line, "source = client needs transparent = tproxy");
		else
			r->source_client = 1;
	}
	check_unknown(P, sec, route_keys);
}

/* The line of the key an error message starts with ("key ...", "upstream_ca ..."): in the
 * route, else in [global] (under its global name), else the route header. */
static int err_line(struct section *sec, struct section *glob, const char *err)
{
	static const struct { const char *key, *global; } keys[] = {
		{ "upstream_cert", NULL }, { "upstream_key", NULL }, { "upstream_ca", "ca" },
		{ "client_ca", NULL }, { "cert", "cert" }, { "key", "key" },
		{ "client_ciphers", NULL }, { "upstream_ciphers", NULL },
	};
	for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
		size_t n = strlen(keys[i].key);
		if (strncmp(err, keys[i].key, n) != 0 || err[n] != ' ')
			continue;
		for (size_t j = 0; j < sec->n; j++)
			if (strcasecmp(sec->e[j].key, keys[i].key) == 0)
				return sec->e[j].line;
		if (glob && keys[i].global)
			for (size_t j = 0; j < glob->n; j++)
				if (strcasecmp(glob->e[j].key, keys[i].global) == 0)
					return glob->e[j].line;
		break;
	}
	return sec->line;
}

int cfg_load_ticket_keys(const char *path, struct tls_ticket_keys *out,
			 struct cfg_errors *errs)
{
	memset(out, 0, sizeof(*out));
	FILE *f = fopen(path, "r");
	if (!f)
		return -errno;
	struct stat st;
	if (fstat(fileno(f), &st) == 0 && (st.st_mode & 077))
		log_event(LOG_WARN, NULL, NULL, "config", "file", path, "warning",
			  "ticket_key_file is readable by group or others (chmod 600)", NULL);
	char line[512];
	int lineno = 0, nerr = 0, rc = 0;
	while (fgets(line, sizeof(line), f)) {
		lineno++;
		size_t n = strlen(line);
		int whole = n > 0 && line[n - 1] == '\n';
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r' || line[n - 1] == ' ' ||
				 line[n - 1] == '\t'))
			line[--n] = '\0';
		const char *v = line + strspn(line, " \t");
		if (!whole && !feof(f)) { /* longer than any key: skip the rest of the line */
			int ch;
			while ((ch = fgetc(f)) != EOF && ch != '\n')
				;
			n = sizeof(line);
		}
		if (*v == '\0' || *v == '#')
			continue;
		size_t len = strlen(v), k;
		for (k = 0; k < len && hexval((unsigned char)v[k]) >= 0; k++)
			;
		const char *why = k < len ? "is not hex digits"
				  : len != 2 * TLS_TICKET_KEY_LEN || n >= sizeof(line)
				  ? "must be 160 hex digits (80 random bytes: openssl rand -hex 80)"
				  : NULL;
		if (why) {
			cfg_errors_add(errs, "%s:%d: ticket key %s", path, lineno, why);
			nerr++;
			continue;
		}
		void *grown = realloc(out->key, (out->n + 1) * sizeof(*out->key));
		if (!grown) {
			rc = -ENOMEM;
			break;
		}
		out->key = grown;
		for (k = 0; k < TLS_TICKET_KEY_LEN; k++)
			out->key[out->n][k] = (uint8_t)(hexval((unsigned char)v[2 * k]) << 4 |
							hexval((unsigned char)v[2 * k + 1]));
		out->n++;
	}
	memset(line, 0, sizeof(line));
	fclose(f);
	if (rc == 0 && nerr == 0 && out->n == 0) {
		cfg_errors_add(errs, "%s:%d: no ticket key (one line of 160 hex digits: openssl "
				     "rand -hex 80)", path, lineno ? lineno : 1);
		nerr++;
	}
	if (rc == 0 && nerr)
		rc = -EINVAL;
	if (rc < 0)
		cfg_ticket_keys_free(out);
	return rc;
}

void cfg_ticket_keys_free(struct tls_ticket_keys *k)
{
	if (k->key)
		memset(k->key, 0, k->n * sizeof(*k->key));
	free(k->key);
	k->key = NULL;
	k->n = 0;
}

static void load_ticket_keys(struct parse *P, struct cfg *c, int cfg_line)
{
	int rc = cfg_load_ticket_keys(c->ticket_key_file, &c->tickets, P->errs);
	if (rc == -ENOMEM)
		P->oom = 1;
	else if (rc == -EINVAL)
		P->nerr++;
	else if (rc < 0)
		ERR(P, cfg_line, "ticket_key_file: cannot read \"%s\": %s", c->ticket_key_file,
		    strerror(-rc));
}

/* The certificate's expiry: an expired certificate is a configuration error (clients
 * that check would fail every handshake); one close to expiry is reported by -t, the
 * log and the certificate_expiry_seconds gauge. */
static void check_expiry(struct parse *P, const struct cfg_route *r, const char *what,
			 const char *file, int line, int64_t *not_after)
{
	if (tls_cert_file_not_after(file, not_after) < 0) {
		*not_after = 0;
		return;
	}
	if (*not_after <= (int64_t)time(NULL)) {
		char when[64];
		time_t t = (time_t)*not_after;
		struct tm tm;
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S UTC", gmtime_r(&t, &tm));
		ERR(P, line, "route \"%s\": %s \"%s\" expired on %s", r->name, what, file, when);
	}
}

/* Builds the TLS contexts: this is where a certificate that does not parse, a key that
 * does not match its certificate, or a CA file without certificates is found. */
static void build_tls(struct parse *P, struct section *sec, struct section *glob,
		      const struct cfg *c, struct cfg_route *r)
{
	char err[512];
	if (r->client_tls != CFG_TLS_NONE && r->cert && r->key) {
		struct tls_server_opts o = { .cert = r->cert, .key = r->key,
					     .client_ca = r->client_ca,
					     .min_version = r->client_min_tls,
					     .ciphers = r->client_ciphers, .alpn = r->client_alpn,
					     .tickets = c->tickets.n ? &c->tickets : NULL };
		int global_identity = !get(sec, "cert") && !get(sec, "key");
		if (tls_ctx_server_new(&o, &r->client_side_tls, err, sizeof(err)) < 0) {
			if (!global_identity)
				ERR(P, err_line(sec, glob, err), "route \"%s\": %s", r->name, err);
			else if (!P->global_identity_reported++) /* the routes share it */
				ERR(P, err_line(sec, glob, err), "[global] %s", err);
		}
		r->cert_line = err_line(sec, glob, "cert ");
		check_expiry(P, r, "cert", r->cert, r->cert_line, &r->cert_not_after);
	}
	/* With a policy table any level may apply, so the trust store is always loaded (an
	 * outcome is only enforced where the policy is verify). */
	if (r->upstream_tls != CFG_TLS_NONE || r->policy) {
		struct tls_client_opts o = { .ca = r->upstream_policy == CFG_POLICY_VERIFY ||
								   cfg_route_late(r) || r->policy
							   ? r->upstream_ca : NULL,
					     .cert = r->upstream_cert, .key = r->upstream_key,
					     .min_version = r->upstream_min_tls,
					     .ciphers = r->upstream_ciphers };
		if (tls_ctx_client_new(&o, &r->upstream_side_tls, err, sizeof(err)) < 0)
			ERR(P, err_line(sec, glob, err), "route \"%s\": %s", r->name, err);
		if (r->upstream_cert) {
			r->upstream_cert_line = err_line(sec, glob, "upstream_cert ");
			check_expiry(P, r, "upstream_cert", r->upstream_cert, r->upstream_cert_line,
				     &r->upstream_cert_not_after);
		}
	}
	/* Rows with their own trust store or minimum version get their own context. */
	for (size_t i = 0; r->policy && i < r->policy->n; i++) {
		struct policy_row *row = &r->policy->rows[i];
		if (!row->ca && !row->min_tls)
			continue;
		struct tls_client_opts o = { .ca = row->ca ? row->ca : r->upstream_ca,
					     .cert = r->upstream_cert, .key = r->upstream_key,
					     .min_version = row->min_tls ? row->min_tls
									 : r->upstream_min_tls,
					     .ciphers = r->upstream_ciphers };
		if (tls_ctx_client_new(&o, &row->ctx, err, sizeof(err)) < 0) {
			cfg_errors_add(P->errs, "%s:%d: %s", r->policy->path, row->line, err);
			P->nerr++;
		}
	}
}

static void free_sections(struct parse *P)
{
	for (size_t i = 0; i < P->n; i++) {
		for (size_t j = 0; j < P->s[i].n; j++) {
			free(P->s[i].e[j].key);
			free(P->s[i].e[j].value);
		}
		free(P->s[i].e);
		free(P->s[i].name);
	}
	free(P->s);
}

/* The unspecified address of its family (0.0.0.0, ::). */
static int unspecified(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ((const struct sockaddr_in *)ss)->sin_addr.s_addr == htonl(INADDR_ANY);
	if (ss->ss_family == AF_INET6)
		return IN6_IS_ADDR_UNSPECIFIED(&((const struct sockaddr_in6 *)ss)->sin6_addr);
	return 0;
}

/* Two listening addresses that cannot both be bound: the same port, and the same address
 * or an unspecified one covering the other ([::] covers IPv4 too: it listens dual-stack). */
static int listen_overlap(const struct cfg_addr *a, const struct cfg_addr *b)
{
	if (a->port != b->port)
		return 0;
	if (cfg_addr_equal(a, b))
		return 1;
	int fa = a->ss.ss_family, fb = b->ss.ss_family;
	if ((fa == AF_INET6 && unspecified(&a->ss)) || (fb == AF_INET6 && unspecified(&b->ss)))
		return 1;
	return fa == fb && (unspecified(&a->ss) || unspecified(&b->ss));
}

int cfg_load_flags(const char *path, int flags, struct cfg **out, struct cfg_errors *errs)
{
	struct parse P = { .path = path, .flags = flags, .errs = errs };
	*out = NULL;
	struct cfg *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->path = pdup(&P, path);
	c->log_level = LOG_INFO;
	c->max_connections = 10000;
	c->drain_timeout_ms = 30000;
	c->mta_sts_port = 443;
	if (access(DEFAULT_TRUST_ANCHOR, R_OK) == 0)
		c->dnssec_trust_anchor = pdup(&P, DEFAULT_TRUST_ANCHOR);
	c->refs = 1;
	static uint64_t generations;
	c->generation = __atomic_add_fetch(&generations, 1, __ATOMIC_RELAXED);

	if (read_sections(&P) < 0 || P.oom) {
		free_sections(&P);
		cfg_free(c);
		if (P.oom)
			cfg_errors_add(errs, "%s:0: out of memory", path);
		return P.oom ? -ENOMEM : -EINVAL;
	}
	struct section *glob = NULL;
	size_t nroutes = 0;
	for (size_t i = 0; i < P.n; i++) {
		if (P.s[i].is_route)
			nroutes++;
		else if (!glob)
			glob = &P.s[i];
	}
	if (glob)
		parse_global(&P, glob, c);
	if (c->workers == 0) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		c->workers = n > 0 ? (int)(n > 64 ? 64 : n) : 1;
	}
	if (!c->helo_name) {
		char h[256] = "localhost";
		if (gethostname(h, sizeof(h) - 1) < 0)
			snprintf(h, sizeof(h), "localhost");
		c->helo_name = pdup(&P, h);
	}
	if (nroutes == 0) {
		cfg_errors_add(errs, "%s:%d: no [route NAME] section: nothing to do", path,
			       P.n ? P.s[P.n - 1].line : 1);
		P.nerr++;
	}
	c->routes = calloc(nroutes ? nroutes : 1, sizeof(*c->routes));
	if (!c->routes)
		P.oom = 1;
	for (size_t i = 0; i < P.n && c->routes; i++) {
		if (!P.s[i].is_route)
			continue;
		struct cfg_route *r = &c->routes[c->nroutes++];
		parse_route(&P, &P.s[i], c, r);
		for (size_t j = 0; j + 1 < c->nroutes; j++)
			if (r->listen.port && listen_overlap(&c->routes[j].listen, &r->listen)) {
				ERR(&P, line_of(&P.s[i], "listen"),
				    "listen address %s:%u overlaps that of route \"%s\" (line %d)",
				    r->listen.host, r->listen.port, c->routes[j].name,
				    c->routes[j].line);
				break;
			}
	}
	for (size_t j = 0; c->has_admin_listen && j < c->nroutes; j++)
		if (c->routes[j].listen.port &&
		    listen_overlap(&c->admin_listen, &c->routes[j].listen)) {
			ERR(&P, line_of(glob, "admin_listen"),
			    "admin_listen %s:%u overlaps the listen address of route \"%s\" (line %d)",
			    c->admin_listen.host, c->admin_listen.port, c->routes[j].name,
			    c->routes[j].line);
			break;
		}
	if (P.nerr == 0 && !P.oom && !(flags & CFG_NO_FILES) && c->ticket_key_file)
		load_ticket_keys(&P, c, line_of(glob, "ticket_key_file"));
	if (P.nerr == 0 && !P.oom && !(flags & CFG_NO_FILES)) {
		size_t k = 0;
		for (size_t i = 0; i < P.n; i++)
			if (P.s[i].is_route)
				build_tls(&P, &P.s[i], glob, c, &c->routes[k++]);
	}
	free_sections(&P);
	if (P.oom) {
		cfg_errors_add(errs, "%s:0: out of memory", path);
		cfg_free(c);
		return -ENOMEM;
	}
	if (P.nerr) {
		cfg_free(c);
		return -EINVAL;
	}
	*out = c;
	return 0;
}

int cfg_load(const char *path, struct cfg **out, struct cfg_errors *errs)
{
	return cfg_load_flags(path, 0, out, errs);
}

void cfg_free(struct cfg *c)
{
	if (!c)
		return;
	for (size_t i = 0; i < c->nroutes; i++) {
		struct cfg_route *r = &c->routes[i];
		free(r->name);
		free(r->upstream_name);
		free(r->cert);
		free(r->key);
		free(r->client_ca);
		free(r->upstream_ca);
		free(r->upstream_cert);
		free(r->upstream_key);
		free(r->policy_table);
		free(r->client_allow);
		free(r->client_ciphers);
		free(r->upstream_ciphers);
		free(r->client_alpn);
		for (size_t k = 0; r->policy && k < r->policy->n; k++)
			tls_ctx_free(r->policy->rows[k].ctx);
		policy_free(r->policy);
		tls_ctx_free(r->client_side_tls);
		tls_ctx_free(r->upstream_side_tls);
	}
	free(c->routes);
	free(c->path);
	free(c->user);
	free(c->helo_name);
	free(c->cert);
	free(c->key);
	free(c->ca);
	free(c->ticket_key_file);
	free(c->resolver);
	free(c->dnssec_trust_anchor);
	free(c->mta_sts_cache);
	free(c->tlsrpt_dir);
	free(c->tlsrpt_relay);
	free(c->tlsrpt_org);
	cfg_ticket_keys_free(&c->tickets);
	free(c);
}

struct cfg *cfg_ref(struct cfg *c)
{
	__atomic_add_fetch(&c->refs, 1, __ATOMIC_RELAXED);
	return c;
}

void cfg_unref(struct cfg *c)
{
	if (c && __atomic_sub_fetch(&c->refs, 1, __ATOMIC_ACQ_REL) == 0)
		cfg_free(c);
}
