/* policy.c - the policy table and the policy of a session (see policy.h). */
#include "policy.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define LINE_MAX_LEN 4096

struct load {
	const char *path;
	struct cfg_errors *errs;
	int nerr, oom;
};

#define ERR(L, LINE, ...)                                                                  \
	do {                                                                               \
		char m_[900];                                                              \
		snprintf(m_, sizeof(m_), __VA_ARGS__);                                     \
		cfg_errors_add((L)->errs, "%s:%d: %s", (L)->path, (LINE), m_);             \
		(L)->nerr++;                                                               \
	} while (0)

static void free_row(struct policy_row *r)
{
	free(r->host);
	for (size_t i = 0; i < r->nnames; i++)
		free(r->names[i]);
	free(r->names);
	free(r->pins);
	free(r->ca);
	/* r->ctx belongs to the configuration that built it (config.c frees it) */
}

void policy_free(struct policy_table *t)
{
	if (!t)
		return;
	for (size_t i = 0; i < t->n; i++)
		free_row(&t->rows[i]);
	free(t->rows);
	free(t->path);
	free(t);
}

/* ---- destinations ----------------------------------------------------------------- */

static int parse_port(const char *s, int *port)
{
	if (!strcmp(s, "*")) {
		*port = 0;
		return 0;
	}
	if (!*s || strlen(s) > 5)
		return -EINVAL;
	int v = 0;
	for (const char *p = s; *p; p++) {
		if (!isdigit((unsigned char)*p))
			return -EINVAL;
		v = v * 10 + (*p - '0');
	}
	if (v < 1 || v > 65535)
		return -EINVAL;
	*port = v;
	return 0;
}

/* A host name (labels of letters, digits, '-' and '_', not starting or ending with '-'),
 * optionally "*." before it. */
static int valid_host(const char *h)
{
	size_t n = strlen(h);
	if (n == 0 || n > 253)
		return 0;
	if (!strncmp(h, "*.", 2))
		h += 2;
	const char *label = h;
	for (const char *p = h;; p++) {
		if (*p == '.' || *p == '\0') {
			size_t l = (size_t)(p - label);
			if (l == 0 || l > 63 || label[0] == '-' || p[-1] == '-')
				return 0;
			if (*p == '\0')
				return 1;
			label = p + 1;
		} else if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_') {
			return 0;
		}
	}
}

/* DESTINATION into row. 0, or a negative errno with a message in why. */
static int parse_dest(const char *s, struct policy_row *row, char *why, size_t wl)
{
	char host[300];
	const char *port = NULL;
	if (s[0] == '[') {
		const char *rb = strchr(s, ']');
		if (!rb || (rb[1] && rb[1] != ':') || rb == s + 1) {
			snprintf(why, wl, "invalid destination \"%s\" (expected [IPv6]:PORT)", s);
			return -EINVAL;
		}
		size_t n = (size_t)(rb - s - 1);
		if (n >= sizeof(host))
			return -EINVAL;
		memcpy(host, s + 1, n);
		host[n] = '\0';
		if (rb[1] == ':')
			port = rb + 2;
		if (!strchr(host, ':')) {
			snprintf(why, wl, "invalid destination \"%s\": brackets are for IPv6", s);
			return -EINVAL;
		}
	} else {
		const char *colon = strchr(s, ':');
		if (colon && strchr(colon + 1, ':')) {
			/* a bare IPv6 address (no port) */
			snprintf(host, sizeof(host), "%s", s);
		} else {
			size_t n = colon ? (size_t)(colon - s) : strlen(s);
			if (n >= sizeof(host)) {
				snprintf(why, wl, "destination too long");
				return -EINVAL;
			}
			memcpy(host, s, n);
			host[n] = '\0';
			if (colon)
				port = colon + 1;
		}
	}
	row->port = 0;
	if (port && parse_port(port, &row->port) < 0) {
		snprintf(why, wl, "invalid port in \"%s\" (expected 1-65535 or *)", s);
		return -EINVAL;
	}
	if (!strcmp(host, "*")) {
		row->kind = DEST_ANY;
		return 0;
	}
	int rc = cfg_parse_cidr(host, &row->net);
	if (rc == 0) {
		row->kind = DEST_ADDR;
		return 0;
	}
	if (rc == -ERANGE) {
		snprintf(why, wl, "\"%s\" has bits set past its prefix", host);
		return -EINVAL;
	}
	if (strchr(host, '/') || strchr(host, ':') || !valid_host(host)) {
		snprintf(why, wl, "invalid destination \"%s\" (expected *, an address, CIDR or a "
			 "host name)", s);
		return -EINVAL;
	}
	row->kind = DEST_HOST;
	for (char *p = host; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	row->host = strdup(host);
	return row->host ? 0 : -ENOMEM;
}

/* ---- options ----------------------------------------------------------------------- */

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = tolower(c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* One SPKI pin in HEX (colons allowed, an optional "sha256:" before it). */
static int parse_pin(const char *s, size_t len, uint8_t out[32])
{
	if (len > 7 && !strncasecmp(s, "sha256:", 7)) {
		s += 7;
		len -= 7;
	}
	size_t n = 0, i = 0;
	while (i < len) {
		if (s[i] == ':') {
			i++;
			continue;
		}
		if (i + 1 >= len || n == 32)
			return -EINVAL;
		int hi = hexval((unsigned char)s[i]), lo = hexval((unsigned char)s[i + 1]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[n++] = (uint8_t)(hi << 4 | lo);
		i += 2;
	}
	return n == 32 ? 0 : -EINVAL;
}

static const char *const level_names[] = { "none",    "may",     "encrypt", "fingerprint",
					   "verify",  "mta-sts", "dane",    "auto",
					   NULL };
static const char *const tls_names[] = { "none", "starttls", "implicit", NULL };
static const char *const mode_names[] = { "enforce", "testing", NULL };

static int lookup(const char *const *names, const char *v)
{
	for (int i = 0; names[i]; i++)
		if (!strcasecmp(names[i], v))
			return i;
	return -1;
}

/* One OPTION (KEY=VALUE) into row; errors reported at line. */
static void parse_option(struct load *L, int line, char *opt, struct policy_row *row,
			 unsigned *seen)
{
	char *eq = strchr(opt, '=');
	if (!eq || eq == opt) {
		ERR(L, line, "invalid option \"%s\" (expected KEY=VALUE)", opt);
		return;
	}
	*eq = '\0';
	const char *key = opt, *val = eq + 1;
	static const char *const keys[] = { "names", "sha256", "tls", "mode", "min_tls", "ca",
					    NULL };
	int k = lookup(keys, key);
	if (k < 0) {
		ERR(L, line, "unknown option \"%s\" (expected names, sha256, tls, mode, min_tls or ca)",
		    key);
		return;
	}
	if (k != 1 && (*seen & (1u << k))) {
		ERR(L, line, "duplicate option \"%s\"", key);
		return;
	}
	*seen |= 1u << k;
	if (!*val) {
		ERR(L, line, "%s: empty value", key);
		return;
	}
	switch (k) {
	case 0: { /* names */
		for (const char *p = val; p && *p;) {
			const char *c = strchr(p, ',');
			size_t n = c ? (size_t)(c - p) : strlen(p);
			char name[300];
			if (n == 0 || n >= sizeof(name)) {
				ERR(L, line, "names: empty or overlong name in \"%s\"", val);
				return;
			}
			memcpy(name, p, n);
			name[n] = '\0';
			if (!valid_host(name)) {
				ERR(L, line, "names: invalid name \"%s\"", name);
				return;
			}
			char **nn = realloc(row->names, (row->nnames + 1) * sizeof(*nn));
			if (!nn || !(nn[row->nnames] = strdup(name))) {
				if (nn)
					row->names = nn;
				L->oom = 1;
				return;
			}
			row->names = nn;
			row->nnames++;
			p = c ? c + 1 : NULL;
			if (c && !*p) {
				ERR(L, line, "names: empty name at the end of \"%s\"", val);
				return;
			}
		}
		return;
	}
	case 1: { /* sha256, repeatable, comma-separated */
		for (const char *p = val; p && *p;) {
			const char *c = strchr(p, ',');
			size_t n = c ? (size_t)(c - p) : strlen(p);
			uint8_t pin[32];
			if (parse_pin(p, n, pin) < 0) {
				ERR(L, line, "sha256: invalid pin \"%.*s\" (expected 64 hex digits, "
				    "colons allowed)", (int)(n > 100 ? 100 : n), p);
				return;
			}
			uint8_t(*np)[32] = realloc(row->pins, (row->npins + 1) * sizeof(*np));
			if (!np) {
				L->oom = 1;
				return;
			}
			row->pins = np;
			memcpy(row->pins[row->npins++], pin, 32);
			p = c ? c + 1 : NULL;
		}
		return;
	}
	case 2: {
		int v = lookup(tls_names, val);
		if (v < 0) {
			ERR(L, line, "tls: invalid value \"%s\" (expected none, starttls or implicit)", val);
			return;
		}
		row->has_tls = 1;
		row->tls = (enum cfg_tls)v;
		return;
	}
	case 3: {
		int v = lookup(mode_names, val);
		if (v < 0) {
			ERR(L, line, "mode: invalid value \"%s\" (expected enforce or testing)", val);
			return;
		}
		row->has_mode = 1;
		row->mode = (enum cfg_mode)v;
		return;
	}
	case 4:
		if (cfg_parse_tls_version(val, &row->min_tls) < 0)
			ERR(L, line, "min_tls: invalid value \"%s\" (expected 1.0, 1.1, 1.2 or 1.3)", val);
		return;
	case 5:
		if (!(row->ca = strdup(val)))
			L->oom = 1;
		return;
	}
}

/* The rules between a row's fields. */
static void check_row(struct load *L, const struct policy_row *row)
{
	int tls_level = row->level >= CFG_POLICY_ENCRYPT;
	if (row->level == CFG_POLICY_FINGERPRINT && row->npins == 0)
		ERR(L, row->line, "fingerprint needs sha256=HEX");
	if (row->npins && row->level != CFG_POLICY_FINGERPRINT)
		ERR(L, row->line, "sha256= needs the fingerprint level");
	if (row->has_tls && row->tls == CFG_TLS_NONE && tls_level)
		ERR(L, row->line, "tls=none contradicts %s (TLS is required)",
		    level_names[row->level]);
	if (row->level == CFG_POLICY_NONE && row->has_tls && row->tls != CFG_TLS_NONE)
		ERR(L, row->line, "tls=%s contradicts none (no TLS)", tls_names[row->tls]);
	if (row->level == CFG_POLICY_NONE && (row->nnames || row->ca || row->min_tls))
		ERR(L, row->line, "names, ca and min_tls need a level with TLS");
	if (row->level >= CFG_POLICY_MTA_STS) {
		if (row->nnames || row->ca || row->min_tls)
			ERR(L, row->line, "%s takes no names, ca or min_tls (the recipient domain's "
				"policy names the MX host)", level_names[row->level]);
		if (row->has_tls && row->tls != CFG_TLS_STARTTLS)
			ERR(L, row->line, "%s needs tls=starttls (the MX speaks SMTP on port 25)",
			    level_names[row->level]);
	}
}

int policy_load(const char *path, struct policy_table **out, struct cfg_errors *errs)
{
	struct load L = { .path = path, .errs = errs };
	*out = NULL;
	FILE *f = fopen(path, "r");
	if (!f) {
		int e = errno;
		cfg_errors_add(errs, "%s:0: cannot open: %s", path, strerror(e));
		return -e;
	}
	struct policy_table *t = calloc(1, sizeof(*t));
	if (!t || !(t->path = strdup(path))) {
		free(t);
		fclose(f);
		return -ENOMEM;
	}
	size_t cap = 0;
	char buf[LINE_MAX_LEN + 2];
	int lineno = 0, toolong = 0;
	while (fgets(buf, sizeof(buf), f)) {
		size_t n = strlen(buf);
		if (n && buf[n - 1] != '\n' && !feof(f)) {
			if (!toolong)
				ERR(&L, lineno + 1, "line longer than %d characters", LINE_MAX_LEN);
			toolong = 1;
			continue;
		}
		lineno++;
		if (toolong) { /* the tail of the long line */
			toolong = 0;
			continue;
		}
		char *hash = strchr(buf, '#');
		if (hash)
			*hash = '\0';
		char *save = NULL, *tok = strtok_r(buf, " \t\r\n", &save);
		if (!tok)
			continue;
		struct policy_row row = { .line = lineno };
		char why[400] = "";
		int rc = parse_dest(tok, &row, why, sizeof(why));
		if (rc == -ENOMEM) {
			L.oom = 1;
			break;
		}
		if (rc < 0) {
			ERR(&L, lineno, "%s", why[0] ? why : "invalid destination");
			free_row(&row);
			continue;
		}
		char *lv = strtok_r(NULL, " \t\r\n", &save);
		int level = lv ? lookup(level_names, lv) : -1;
		if (level < 0) {
			if (lv)
				ERR(&L, lineno, "invalid level \"%s\" (expected none, may, encrypt, "
				    "fingerprint, verify, mta-sts, dane or auto)", lv);
			else
				ERR(&L, lineno, "missing level after \"%s\"", tok);
			free_row(&row);
			continue;
		}
		row.level = (enum cfg_policy)level;
		unsigned seen = 0;
		int before = L.nerr;
		char *opt;
		while ((opt = strtok_r(NULL, " \t\r\n", &save)))
			parse_option(&L, lineno, opt, &row, &seen);
		if (L.nerr == before)
			check_row(&L, &row);
		if (L.nerr != before || L.oom) {
			free_row(&row);
			if (L.oom)
				break;
			continue;
		}
		if (t->n == cap) {
			size_t nc = cap ? cap * 2 : 16;
			struct policy_row *nr = realloc(t->rows, nc * sizeof(*nr));
			if (!nr) {
				free_row(&row);
				L.oom = 1;
				break;
			}
			t->rows = nr;
			cap = nc;
		}
		t->rows[t->n++] = row;
	}
	fclose(f);
	if (L.oom) {
		cfg_errors_add(errs, "%s:0: out of memory", path);
		policy_free(t);
		return -ENOMEM;
	}
	if (L.nerr) {
		policy_free(t);
		return -EINVAL;
	}
	*out = t;
	return 0;
}

/* ---- matching ---------------------------------------------------------------------- */

static int host_matches(const struct policy_row *r, const char *host)
{
	if (!host)
		return 0;
	if (!strncmp(r->host, "*.", 2)) {
		/* "*.example" matches "mx.example", not "example" nor "a.mx.example" */
		const char *dot = strchr(host, '.');
		return dot && dot != host && !strcasecmp(dot + 1, r->host + 2);
	}
	return !strcasecmp(host, r->host);
}

const struct policy_row *policy_match(const struct policy_table *t, const struct sockaddr *dst,
				      const char *host, uint16_t port)
{
	if (!t)
		return NULL;
	for (size_t i = 0; i < t->n; i++) {
		const struct policy_row *r = &t->rows[i];
		if (r->port && r->port != port)
			continue;
		if (r->kind == DEST_ANY || (r->kind == DEST_ADDR && dst && cfg_cidr_match(&r->net, dst)) ||
		    (r->kind == DEST_HOST && host_matches(r, host)))
			return r;
	}
	return NULL;
}

/* ---- the policy of a session --------------------------------------------------------- */

void policy_decide(const struct cfg_route *r, const struct sockaddr *dst, uint16_t port,
		   struct session_policy *out)
{
	memset(out, 0, sizeof(*out));
	out->level = r->upstream_policy;
	out->mode = r->policy_mode;
	out->tls = r->upstream_tls;
	out->ctx = r->upstream_side_tls;
	if (r->upstream_name) {
		out->names = (const char *const *)&r->upstream_name;
		out->nnames = 1;
	}
	if (r->has_upstream_fingerprint) {
		out->pins = (const uint8_t(*)[32])r->upstream_fingerprint;
		out->npins = 1;
	}
	const struct policy_row *row =
		policy_match(r->policy, dst, r->upstream.original_dst ? NULL : r->upstream.host, port);
	if (!row)
		return;
	out->row = row->line;
	out->level = row->level;
	if (row->has_mode)
		out->mode = row->mode;
	if (row->has_tls)
		out->tls = row->tls;
	else if (row->level == CFG_POLICY_NONE)
		out->tls = CFG_TLS_NONE;
	else if (out->tls == CFG_TLS_NONE) /* a TLS level on a route whose own default is none */
		out->tls = r->protocol == CFG_PROTO_TCP ? CFG_TLS_IMPLICIT : CFG_TLS_STARTTLS;
	if (row->nnames) {
		out->names = (const char *const *)row->names;
		out->nnames = row->nnames;
	}
	if (row->npins) {
		out->pins = (const uint8_t(*)[32])row->pins;
		out->npins = row->npins;
	}
	if (row->ctx)
		out->ctx = row->ctx;
}

void policy_source(const struct session_policy *p, char *buf, size_t len)
{
	if (p->row)
		snprintf(buf, len, "table:%d", p->row);
	else
		snprintf(buf, len, "route");
}
