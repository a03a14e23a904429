/* config.h - configuration file (INI) -> immutable configuration.
 *
 * Contract: cfg_load() parses the whole file, validates every key and every cross-key
 * rule, and either returns 0 with *out set, or -EINVAL with every error appended to errs
 * as "FILE:LINE: message" (-ENOMEM when out of memory). Functions return 0 or a negative
 * errno. The returned struct is never modified
 * afterwards, so several worker threads may read it at once; a reload builds a new one. */
#ifndef STP_CONFIG_H
#define STP_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "tls.h"

struct tls_ctx;
struct metrics_route;
struct policy_table;

enum cfg_proto { CFG_PROTO_SMTP, CFG_PROTO_LMTP, CFG_PROTO_IMAP, CFG_PROTO_POP3, CFG_PROTO_TCP };
/* CFG_TLS_AUTO (client_tls only): a client whose first bytes are a TLS ClientHello gets
 * implicit TLS, any other client the plaintext greeting with STARTTLS offered. */
enum cfg_tls { CFG_TLS_NONE, CFG_TLS_STARTTLS, CFG_TLS_IMPLICIT, CFG_TLS_AUTO };
/* MTA_STS, DANE and AUTO are route levels decided per recipient domain at the first RCPT
 * (late binding, SMTP routes whose upstream is the recipient's MX): a session turns them
 * into one of the levels before them for each connection it makes. */
enum cfg_policy {
	CFG_POLICY_NONE, CFG_POLICY_MAY, CFG_POLICY_ENCRYPT, CFG_POLICY_FINGERPRINT, CFG_POLICY_VERIFY,
	CFG_POLICY_MTA_STS, CFG_POLICY_DANE, CFG_POLICY_AUTO
};
enum cfg_mode { CFG_MODE_ENFORCE, CFG_MODE_TESTING };
enum cfg_pp { CFG_PP_NONE, CFG_PP_V1, CFG_PP_V2 };
enum cfg_log_format { CFG_LOG_TEXT, CFG_LOG_JSON };
enum cfg_transparent { CFG_TRANSPARENT_NO, CFG_TRANSPARENT_TPROXY };
/* SMTP DATA: what a bare CR or LF (one not part of CRLF) in a message gets. */
enum cfg_bare_newline { CFG_BARE_NORMALIZE, CFG_BARE_REJECT };

/* An address or network: "192.0.2.7", "10.0.0.0/8", "2001:db8::/32". */
struct cfg_cidr {
	int family; /* AF_INET or AF_INET6 */
	uint8_t addr[16];
	int prefix; /* bits that must match */
};

/* A listen or upstream address. host is kept as written (for SNI and logs); ss holds the
 * address: listen addresses are resolved at load, an upstream IP literal too; an upstream
 * host name is resolved by each session that needs it (sslen 0, needs_dns 1). */
struct cfg_addr {
	char host[256];
	uint16_t port;
	struct sockaddr_storage ss;
	socklen_t sslen;
	int original_dst; /* upstream = original-destination */
	int mx;           /* upstream = mx: the recipient domain's MX hosts (port: 25, or mx:PORT) */
	int needs_dns;    /* a host name, resolved when a session connects */
	int transparent;  /* listen: IP_TRANSPARENT (transparent = tproxy) */
	int line;         /* where it was written */
};

struct cfg_route {
	char *name;
	int line; /* line of the [route NAME] header */
	struct cfg_addr listen;
	enum cfg_proto protocol;
	enum cfg_tls client_tls;
	enum cfg_policy client_policy;  /* CFG_POLICY_MAY or CFG_POLICY_ENCRYPT */
	struct cfg_addr upstream;
	enum cfg_tls upstream_tls;
	enum cfg_policy upstream_policy;
	enum cfg_mode policy_mode;
	char *upstream_name; /* SNI and name to verify; default: upstream host */
	char *cert, *key;    /* client-side identity (route or global) */
	char *client_ca;     /* require client certificates signed by this CA */
	int client_min_tls, upstream_min_tls; /* 10, 11, 12, 13 */
	char *upstream_ca;   /* trust store (route or global ca) */
	uint8_t upstream_fingerprint[32];
	int has_upstream_fingerprint;
	char *upstream_cert, *upstream_key;
	char *policy_table;
	struct policy_table *policy; /* loaded from policy_table (policy.h) */
	enum cfg_pp proxy_protocol_in, proxy_protocol_out;
	int xclient;
	enum cfg_bare_newline bare_newline;
	int greeting_local; /* greeting = local: the proxy greets, and connects at the client's
			       first command (smtp, lmtp) */
	struct cfg_cidr *client_allow; /* client_allow: who may use the route (NULL: anyone) */
	size_t nclient_allow;
	char *client_ciphers, *upstream_ciphers; /* TLS 1.2 suites (NULL: the defaults) */
	char *client_alpn;             /* ALPN protocols accepted, comma-separated (NULL: ALPN
					  not looked at) */
	uint64_t detect_timeout_ms;    /* client_tls = auto */
	uint64_t connect_timeout_ms, handshake_timeout_ms, idle_timeout_ms;
	uint64_t line_timeout_ms; /* one client command line, first octet to its end (0: none) */
	/* smtp, lmtp: message data (DATA, BDAT chunks) must come at this many octets per
	 * second on average, line_timeout_ms being the most time it may bank (0: no bound) */
	unsigned min_data_rate;
	unsigned max_connections_per_client; /* 0 = unlimited; default 50 */
	enum cfg_transparent transparent;
	int source_client; /* source = client */
	/* Built at load from the keys above; owned by the configuration. */
	struct tls_ctx *client_side_tls;   /* server context toward clients, or NULL */
	struct tls_ctx *upstream_side_tls; /* client context toward the upstream, or NULL */
	/* When the certificates of the two contexts expire (seconds since the epoch; 0: the
	 * side has none) and the configuration line that names each (route or [global]). */
	int64_t cert_not_after, upstream_cert_not_after;
	int cert_line, upstream_cert_line;
	struct metrics_route *metrics;     /* set by main.c; counters outlive the configuration */
};

struct cfg {
	char *path;
	int workers; /* resolved: auto -> number of cores */
	char *user;
	int log_level; /* LOG_ERROR .. LOG_DEBUG from log.h */
	enum cfg_log_format log_format;
	struct cfg_addr admin_listen;
	int has_admin_listen;
	unsigned max_connections;
	char *helo_name;
	char *cert, *key, *ca;
	uint64_t drain_timeout_ms;
	uint64_t drain_grace_ms; /* SIGTERM: /readyz 503 this long before listeners close */
	char *ticket_key_file;
	struct tls_ticket_keys tickets; /* read from ticket_key_file (n = 0 without it) */
	/* Recipient-domain policies (late binding): the DNS resolver (NULL: /etc/resolv.conf),
	 * the DNSSEC trust anchor file (NULL: no validation), where MTA-STS policies are kept
	 * across restarts (NULL: memory only), and the port policy files are fetched from. */
	char *resolver;
	char *dnssec_trust_anchor;
	char *mta_sts_cache;
	uint16_t mta_sts_port;
	int late_binding; /* some route binds its upstream late (needs DNS) */
	/* TLSRPT (RFC 8460) reports of those evaluations: directory (NULL: none), SMTP relay
	 * for mailto: rua, organization-name, period in seconds (0: 1 day) */
	char *tlsrpt_dir, *tlsrpt_relay, *tlsrpt_org;
	uint64_t tlsrpt_interval_s;
	struct cfg_route *routes;
	size_t nroutes;
	int refs; /* sessions keep the configuration they started with: cfg_ref/cfg_unref */
	uint64_t generation; /* distinct for every configuration the process loads */
};

/* Growable list of error lines. */
struct cfg_errors {
	char **msg;
	size_t n, cap;
};

int cfg_load(const char *path, struct cfg **out, struct cfg_errors *errs);
void cfg_free(struct cfg *cfg);
struct cfg *cfg_ref(struct cfg *cfg);
void cfg_unref(struct cfg *cfg); /* frees on the last reference */
/* Loads only the syntax and values, without resolving host names or loading certificates
 * and keys; used by unit tests of the syntax. flags: CFG_NO_FILES. */
#define CFG_NO_FILES 1
int cfg_load_flags(const char *path, int flags, struct cfg **out, struct cfg_errors *errs);
void cfg_errors_add(struct cfg_errors *errs, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void cfg_errors_free(struct cfg_errors *errs);

/* ticket_key_file: one key per line, 80 bytes as 160 hex digits; blank lines and lines
 * starting with '#' are skipped; the first key encrypts. 0 with out->n >= 1; -EINVAL with
 * each malformed line (or an empty file) in errs as "PATH:LINE: message" (key bytes never
 * appear in a message); -ENOMEM; or -errno when the file cannot be read. A group- or
 * world-readable file is logged as a warning. */
int cfg_load_ticket_keys(const char *path, struct tls_ticket_keys *out,
			 struct cfg_errors *errs);
void cfg_ticket_keys_free(struct tls_ticket_keys *k); /* wipes the key bytes */

/* Value parsers, exported for tests. Each returns 0 or -EINVAL. */
int cfg_parse_duration(const char *s, uint64_t *ms);      /* "250ms", "30s", "5m", "2h", "1d",
							     "30" (s) */
int cfg_parse_hostport(const char *s, char *host, size_t hostlen, uint16_t *port);
                                                           /* "h:p", "1.2.3.4:p", "[::1]:p" */
int cfg_parse_fingerprint(const char *s, uint8_t out[32]); /* "sha256:HEX" (colons allowed) */
int cfg_parse_tls_version(const char *s, int *v);          /* "1.0".."1.3" -> 10..13 */
/* "ADDRESS[/PREFIX]": 0, -EINVAL, or -ERANGE when bits are set past the prefix. */
int cfg_parse_cidr(const char *s, struct cfg_cidr *out);
/* 1 when sa (IPv4, IPv6, or IPv4-mapped IPv6) is inside the network. */
int cfg_cidr_match(const struct cfg_cidr *net, const struct sockaddr *sa);

/* Same resolved address and port. */
int cfg_addr_equal(const struct cfg_addr *a, const struct cfg_addr *b);

const char *cfg_proto_name(enum cfg_proto p);
const char *cfg_tls_name(enum cfg_tls t);
const char *cfg_policy_name(enum cfg_policy p);
/* The route learns its upstream and policy from the first recipient (mta-sts, dane, auto). */
int cfg_route_late(const struct cfg_route *r);

#endif
