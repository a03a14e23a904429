/* tls.h - wolfSSL contexts and connections over memory buffers.
 *
 * Contract: this module never touches a socket and never calls libuv. Ciphertext that
 * arrived from the network is handed in with tls_conn_feed() (or lent, tls_conn_lend());
 * ciphertext to send is taken out with tls_conn_out_data()/tls_conn_out_consume(). Every
 * function returns 0 (or a byte count) on success, TLS_AGAIN when it needs more input from
 * the peer, TLS_CLOSED when the peer sent close_notify, or another negative TLS_E* code;
 * tls_strerror() names it. Certificate verification never aborts a handshake by itself:
 * the outcome is recorded (tls_conn_verify_result) and the caller applies its policy. */
#ifndef STP_TLS_H
#define STP_TLS_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

/* Negative errno values, like every other module's errors. */
enum {
	TLS_AGAIN = -EAGAIN,          /* needs more input */
	TLS_CLOSED = -ESHUTDOWN,      /* peer sent close_notify */
	TLS_E_HANDSHAKE = -EPROTO,
	TLS_E_IO = -EIO,              /* fatal TLS error after the handshake */
	TLS_E_NOMEM = -ENOMEM,
	TLS_E_CONFIG = -EINVAL,
};

/* Verification outcome of the peer certificate chain (RFC 8460 result names). */
enum tls_verify {
	TLS_VERIFY_OK = 0,
	TLS_VERIFY_NOT_TRUSTED,   /* certificate-not-trusted (unknown CA, self-signed) */
	TLS_VERIFY_EXPIRED,       /* certificate-expired (or not yet valid) */
	TLS_VERIFY_FAILURE,       /* validation-failure (bad signature, no certificate, ...) */
};

/* The largest plaintext one record carries. */
#define TLS_RECORD_MAX 16384

struct tls_ctx;
struct tls_conn;

/* The TLS 1.2 suites offered and accepted unless a route names others: ECDHE with AEAD
 * only (what a public audit, testssl.sh, finds clean). TLS 1.3 suites are always on. */
#define TLS_DEFAULT_CIPHERS                                                                \
	"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                       \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                       \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

/* Session-ticket keys shared by replicas (ticket_key_file): 80 bytes each, a 16-byte name
 * and 64 bytes of key material. key[0] encrypts new tickets; every key decrypts (a ticket
 * under an older key is accepted and replaced by one under key[0]). */
#define TLS_TICKET_KEY_LEN 80
struct tls_ticket_keys {
	size_t n;
	uint8_t (*key)[TLS_TICKET_KEY_LEN];
};

struct tls_server_opts {
	const char *cert;      /* PEM chain, leaf first */
	const char *key;       /* PEM private key */
	const char *client_ca; /* optional: require and verify client certificates */
	int min_version;       /* 10, 11, 12, 13 */
	const char *ciphers;   /* TLS 1.2 suites, OpenSSL syntax; NULL: TLS_DEFAULT_CIPHERS */
	const char *alpn;      /* ALPN protocols accepted, comma-separated: a ClientHello that
				  offers ALPN but none of these is refused (no_application_protocol);
				  one without ALPN is fine. NULL: ALPN is not looked at. */
	const struct tls_ticket_keys *tickets; /* NULL: a random key of this process, rotated by
						  the library; else these (outlive the context) */
};

struct tls_client_opts {
	const char *ca;        /* optional trust store (file or directory) */
	const char *cert;      /* optional client certificate toward the upstream */
	const char *key;
	int min_version;
	const char *ciphers;   /* as above */
};

int tls_global_init(void);
const char *tls_library_version(void);

/* Build contexts; on failure return TLS_E_CONFIG and write a message into err. */
int tls_ctx_server_new(const struct tls_server_opts *o, struct tls_ctx **out, char *err,
		       size_t errlen);
int tls_ctx_client_new(const struct tls_client_opts *o, struct tls_ctx **out, char *err,
		       size_t errlen);
void tls_ctx_free(struct tls_ctx *ctx);
/* When the first certificate of a PEM file (a chain's leaf) expires, in seconds since
 * the epoch: 0, or -ENOENT when the file holds no readable certificate. */
int tls_cert_file_not_after(const char *path, int64_t *not_after);

/* A client connection's TLS session, to resume a later connection to the same server. */
struct tls_session;
/* After a handshake (TLS 1.3: once the server's ticket has arrived): a copy of the session
 * for a later connection, or NULL when there is none to resume. */
struct tls_session *tls_conn_get_session(struct tls_conn *c);
/* Before the handshake: offer s for resumption (the server may refuse: a full handshake). */
int tls_conn_set_session(struct tls_conn *c, struct tls_session *s);
void tls_session_free(struct tls_session *s);
/* 1 when the finished handshake resumed an earlier session (no certificate was sent). */
int tls_conn_resumed(struct tls_conn *c);
/* The first bytes the peer sent (up to len): to tell a plaintext greeting from TLS. */
size_t tls_conn_first_bytes(const struct tls_conn *c, uint8_t *buf, size_t len);
/* The peer certificate's subject and issuer, one line each ("" without a certificate). */
void tls_conn_peer_names(struct tls_conn *c, char *subject, size_t slen, char *issuer,
			 size_t ilen);

/* server_name: SNI for client connections (NULL: none; IP literals are never sent). */
struct tls_conn *tls_conn_new(struct tls_ctx *ctx, const char *server_name);
void tls_conn_free(struct tls_conn *c);

int tls_conn_feed(struct tls_conn *c, const void *data, size_t len);
/* The same without a copy: the len octets at data are read in place by what follows (the
 * handshake, tls_conn_read) until tls_conn_unlend(), which must come before data changes or
 * goes. Octets fed earlier and not read yet are read first. A second lend before the
 * unlend copies, as tls_conn_feed. 0 or TLS_E_NOMEM. */
int tls_conn_lend(struct tls_conn *c, const void *data, size_t len);
/* What was lent and not read (a partial record) is copied in: 0 or TLS_E_NOMEM. Nothing
 * to do (0) when nothing is lent. */
int tls_conn_unlend(struct tls_conn *c);
/* Ciphertext to send is first offered to sink(arg, p, n) whenever nothing waits in the
 * outbound buffer (so that it can go to the network without a copy); the sink returns how
 * many octets it took, 0 to n, and the rest waits for tls_conn_out_data(). sink NULL:
 * everything waits there. */
void tls_conn_set_sink(struct tls_conn *c, size_t (*sink)(void *arg, const uint8_t *p, size_t n),
		       void *arg);
/* 0 when the handshake is complete, TLS_AGAIN, or TLS_E_HANDSHAKE. */
int tls_conn_handshake(struct tls_conn *c);
int tls_conn_handshake_done(const struct tls_conn *c);
/* Plaintext out: > 0 bytes, TLS_AGAIN, TLS_CLOSED or TLS_E_IO. */
int tls_conn_read(struct tls_conn *c, void *buf, size_t len);
/* Encrypts all of data into the outbound buffer: 0 or TLS_E_IO. */
int tls_conn_write(struct tls_conn *c, const void *data, size_t len);
/* Queues close_notify. */
int tls_conn_close_notify(struct tls_conn *c);

size_t tls_conn_out_len(const struct tls_conn *c);
const uint8_t *tls_conn_out_data(const struct tls_conn *c);
void tls_conn_out_consume(struct tls_conn *c, size_t n);
/* Ciphertext fed (or lent) but not yet consumed by the TLS engine. */
size_t tls_conn_in_len(const struct tls_conn *c);

const char *tls_conn_version(const struct tls_conn *c); /* "TLSv1.3" */
const char *tls_conn_cipher(const struct tls_conn *c);  /* IANA name */
/* Meaningful only for contexts built with a trust store (tls_client_opts.ca): without one,
 * nothing is verified and the result stays TLS_VERIFY_OK. */
enum tls_verify tls_conn_verify_result(const struct tls_conn *c);
const char *tls_conn_error_text(const struct tls_conn *c);
/* After a failed handshake: 1 when it failed on the protocol version (a client below the
 * route's client_min_tls); *offered the version its ClientHello named (its highest, for
 * clients before TLS 1.3), or NULL when not known. */
int tls_conn_version_too_low(const struct tls_conn *c, const char **offered); /* last wolfSSL error, or "" */
/* SHA-256 of the peer certificate's SubjectPublicKeyInfo: 0 or TLS_E_HANDSHAKE. */
int tls_conn_peer_spki_sha256(struct tls_conn *c, uint8_t out[32]);
/* 1 when the peer certificate's names (DNS SANs, or the CN when there is no SAN) match
 * name under RFC 6125 rules; 0 otherwise. */
int tls_conn_peer_name_matches(struct tls_conn *c, const char *name);
int tls_conn_has_peer_cert(struct tls_conn *c);
/* Frees the peer certificate wolfSSL kept from the handshake (its decoded form, DER and
 * names: about 4.7 KiB), once every check that reads it is done; the functions above then
 * see no certificate. A connection without one gives nothing back: the object is not
 * there (scripts/wolfssl-peer-cert-heap.patch). */
void tls_conn_drop_peer_cert(struct tls_conn *c);

/* RFC 6125 §6.4: case-insensitive; a wildcard only as the whole left-most label ("*."),
 * matching exactly one non-empty label; no wildcard on public-suffix-like two-label
 * patterns ("*.com"); IDNA A-labels ("xn--") never match a wildcard. 1 = match. */
int tls_name_match(const char *pattern, size_t pattern_len, const char *host);

const char *tls_verify_result_name(enum tls_verify v); /* RFC 8460 result type */

/* The peer's certificate chain as it was verified (--probe): collected only on a
 * connection asked to (tls_conn_collect_chain), by the verification callback, so a
 * context without a trust store collects nothing. Depth 0 is the server's certificate. */
#define TLS_CHAIN_MAX 8
struct tls_cert_info {
	int depth;
	char subject[256], issuer[256];
	char names[512];     /* DNS names of the subjectAltName, comma-separated */
	char not_after[32];  /* YYYY-MM-DDTHH:MM:SSZ */
	char error[64];      /* why it failed verification, or "" */
};
struct tls_chain {
	struct tls_cert_info certs[TLS_CHAIN_MAX];
	int n;
};
/* Before the handshake: fill *chain (owned by the caller, alive until the handshake ends). */
void tls_conn_collect_chain(struct tls_conn *c, struct tls_chain *chain);

/* What a policy asks of the peer certificate. */
enum tls_check { TLS_CHECK_NONE, TLS_CHECK_FINGERPRINT, TLS_CHECK_VERIFY };

/* Applies a check to a finished handshake: FINGERPRINT passes when the certificate's SPKI
 * SHA-256 is one of pins; VERIFY when the chain verified against the context's trust store
 * and one of names matches (RFC 6125). NULL when it passes, else the RFC 8460 result type
 * ("certificate-host-mismatch", "certificate-expired", "certificate-not-trusted",
 * "validation-failure"), with what was wrong in detail (the pin the server has, the names
 * wanted). */
const char *tls_conn_check(struct tls_conn *c, enum tls_check check, const char *const *names,
			   size_t nnames, const uint8_t (*pins)[32], size_t npins, char *detail,
			   size_t dlen);
/* DANE (RFC 7671, RFC 7672 for SMTP). A TLSA record: certificate usage (2 DANE-TA, 3
 * DANE-EE; 0 and 1 are unusable for SMTP), selector (0 full certificate, 1
 * SubjectPublicKeyInfo), matching type (0 exact, 1 SHA-256, 2 SHA-512) and data. */
struct tls_tlsa {
	uint8_t usage, selector, mtype;
	size_t len;
	const uint8_t *data;
};
/* 1 when the record can authenticate an SMTP server: usage 2 or 3, selector 0 or 1,
 * matching type 0 (data present), 1 (32 octets) or 2 (64 octets). */
int tls_tlsa_usable(const struct tls_tlsa *t);
/* Before the handshake: keep the chain the server presents (the context must verify, that
 * is have a trust store, for the chain to be seen). */
void tls_conn_want_dane(struct tls_conn *c);
/* After it: NULL when a usable record matches: DANE-EE (3) the server certificate (no name
 * or validity checks, RFC 7672 §3.1.1), DANE-TA (2) a CA certificate of the presented chain
 * with every certificate below it signed by the next and the server certificate naming one
 * of names (RFC 7672 §3.2.2). Else the RFC 8460 result: "tlsa-invalid" (no usable record),
 * "certificate-host-mismatch" (a DANE-TA match, wrong name), "validation-failure"; detail
 * says what. */
const char *tls_conn_dane_check(struct tls_conn *c, const struct tls_tlsa *t, size_t n,
				const char *const *names, size_t nnames, char *detail, size_t dlen);
const char *tls_strerror(int err);

#endif
