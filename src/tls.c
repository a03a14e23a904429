/* tls.c - wolfSSL over memory buffers (see tls.h). No sockets, no libuv. */
#include "tls.h"

#include "buf.h"

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/openssl/x509v3.h>
#include <wolfssl/version.h>
#include <wolfssl/wolfcrypt/chacha20_poly1305.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/sha256.h>
#include <wolfssl/wolfcrypt/sha512.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <arpa/inet.h>

struct tls_ctx {
	WOLFSSL_CTX *ctx;
	int is_server;
	char *alpn; /* server: the ALPN protocols accepted (see tls_server_opts) */
};

struct tls_conn {
	WOLFSSL *ssl;
	struct tls_ctx *ctx;
	struct buf in, out;
	int handshake_done;
	enum tls_verify verify;
	int verify_error; /* wolfSSL error code of the first chain failure */
	char err[128];
	struct tls_chain *chain; /* --probe: where the verification callback records the chain */
	uint8_t first[16];       /* the first bytes the peer sent */
	int err_code;            /* wolfSSL's error of the failed handshake */
	size_t nfirst;
	uint8_t offered[32];     /* SHA-256 of the ticket offered for resumption */
	int has_offered;
	/* DANE (tls_conn_want_dane): the chain as the server presented it, DER by depth */
	int dane;
	uint8_t *der[TLS_CHAIN_MAX];
	int der_len[TLS_CHAIN_MAX];
	/* tls_conn_lend: input read in place (lent_len octets at lent) while in is empty */
	const uint8_t *lent;
	size_t lent_len;
	size_t (*sink)(void *, const uint8_t *, size_t); /* tls_conn_set_sink */
	void *sink_arg;
};

static int io_recv(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	(void)ssl;
	struct tls_conn *c = arg;
	if (c->in.len == 0 && c->lent_len) { /* octets fed earlier come first */
		size_t n = (size_t)sz < c->lent_len ? (size_t)sz : c->lent_len;
		memcpy(buf, c->lent, n);
		c->lent += n;
		c->lent_len -= n;
		return (int)n;
	}
	if (c->in.len == 0)
		return WOLFSSL_CBIO_ERR_WANT_READ;
	size_t n = (size_t)sz < c->in.len ? (size_t)sz : c->in.len;
	memcpy(buf, buf_ptr(&c->in), n);
	buf_consume(&c->in, n);
	buf_trim(&c->in); /* an idle connection keeps no buffer */
	return (int)n;
}

static int io_send(WOLFSSL *ssl, char *buf, int sz, void *arg)
{
	(void)ssl;
	struct tls_conn *c = arg;
	const uint8_t *p = (const uint8_t *)buf;
	size_t n = (size_t)sz;
	if (c->sink && c->out.len == 0) {
		size_t took = c->sink(c->sink_arg, p, n);
		p += took;
		n -= took;
	}
	if (n && buf_append(&c->out, p, n) < 0)
		return WOLFSSL_CBIO_ERR_GENERAL;
	return sz;
}

int tls_global_init(void)
{
	return wolfSSL_Init() == WOLFSSL_SUCCESS ? 0 : TLS_E_CONFIG;
}

const char *tls_library_version(void)
{
	return LIBWOLFSSL_VERSION_STRING;
}

static int min_version_const(int v)
{
	switch (v) {
	case 10: return WOLFSSL_TLSV1;
	case 11: return WOLFSSL_TLSV1_1;
	case 13: return WOLFSSL_TLSV1_3;
	default: return WOLFSSL_TLSV1_2;
	}
}

/* Messages start with the configuration key at fault: config.c picks the line by it. */
static void load_err(char *err, size_t errlen, const char *key, const char *file,
		     const char *why)
{
	snprintf(err, errlen, "%s \"%s\": %s", key, file, why);
}

/* The TLS 1.3 suites, always enabled along with the TLS 1.2 list a route chooses. */
#define TLS13_CIPHERS "TLS13-AES128-GCM-SHA256:TLS13-AES256-GCM-SHA384:TLS13-CHACHA20-POLY1305-SHA256"

static int ctx_common(WOLFSSL_CTX *ctx, int min_version, const char *ciphers, const char *key,
		      char *err, size_t errlen)
{
	if (wolfSSL_CTX_SetMinVersion(ctx, min_version_const(min_version)) != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "TLS minimum version %d.%d is not available", min_version / 10,
			 min_version % 10);
		return -1;
	}
	char list[2048];
	snprintf(list, sizeof(list), "%s:%s", TLS13_CIPHERS, ciphers ? ciphers : TLS_DEFAULT_CIPHERS);
	if (wolfSSL_CTX_set_cipher_list(ctx, list) != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "%s \"%s\": no cipher suite this TLS library knows", key,
			 ciphers ? ciphers : TLS_DEFAULT_CIPHERS);
		return -1;
	}
	wolfSSL_CTX_SetIORecv(ctx, io_recv);
	wolfSSL_CTX_SetIOSend(ctx, io_send);
	return 0;
}

/* 1 when the PEM file holds an encrypted private key (PKCS#8 "ENCRYPTED PRIVATE KEY", or
 * a traditional key with "Proc-Type: 4,ENCRYPTED"). */
static int pem_encrypted(const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	char line[256];
	int enc = 0;
	for (int i = 0; i < 64 && !enc && fgets(line, sizeof(line), f); i++)
		enc = strstr(line, "-----BEGIN ENCRYPTED PRIVATE KEY-----") != NULL ||
		      strstr(line, "Proc-Type: 4,ENCRYPTED") != NULL;
	fclose(f);
	return enc;
}

static int load_identity(WOLFSSL_CTX *ctx, const char *cert, const char *key,
			 const char *certname, const char *keyname, char *err, size_t errlen)
{
	if (wolfSSL_CTX_use_certificate_chain_file(ctx, cert) != WOLFSSL_SUCCESS) {
		load_err(err, errlen, certname, cert, "not a PEM certificate chain");
		return -1;
	}
	if (wolfSSL_CTX_use_PrivateKey_file(ctx, key, WOLFSSL_FILETYPE_PEM) != WOLFSSL_SUCCESS) {
		load_err(err, errlen, keyname, key,
			 pem_encrypted(key) ? "an encrypted (passphrase-protected) private key: "
					      "the proxy cannot ask for a passphrase; store it "
					      "decrypted (openssl pkey -in KEY -out KEY.new), "
					      "readable only by the proxy's user"
					    : "not a PEM private key");
		return -1;
	}
	if (wolfSSL_CTX_check_private_key(ctx) != WOLFSSL_SUCCESS) {
		snprintf(err, errlen, "%s \"%s\" does not match %s \"%s\"", keyname, key, certname,
			 cert);
		return -1;
	}
	return 0;
}

static int load_ca(WOLFSSL_CTX *ctx, const char *path, const char *what, char *err,
		   size_t errlen)
{
	struct stat st;
	int rc;
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
		rc = wolfSSL_CTX_load_verify_locations_ex(ctx, NULL, path,
							  WOLFSSL_LOAD_FLAG_IGNORE_ERR);
	else
		rc = wolfSSL_CTX_load_verify_locations_ex(ctx, path, NULL,
							  WOLFSSL_LOAD_FLAG_IGNORE_ERR);
	if (rc != WOLFSSL_SUCCESS) {
		load_err(err, errlen, what, path, "no usable CA certificate in it");
		return -1;
	}
	return 0;
}

/* Wraps a configured wolfSSL context; frees it on failure. */
static int ctx_wrap(WOLFSSL_CTX *ctx, int is_server, struct tls_ctx **out)
{
	struct tls_ctx *t = calloc(1, sizeof(*t));
	if (!t) {
		wolfSSL_CTX_free(ctx);
		return TLS_E_NOMEM;
	}
	t->ctx = ctx;
	t->is_server = is_server;
	*out = t;
	return 0;
}

static WOLFSSL_CTX *ctx_new(int is_server, int min_version, const char *ciphers, char *err,
			    size_t errlen)
{
	WOLFSSL_CTX *ctx = wolfSSL_CTX_new(is_server ? wolfSSLv23_server_method()
						     : wolfSSLv23_client_method());
	if (!ctx) {
		snprintf(err, errlen, "cannot create a TLS context");
		return NULL;
	}
	if (ctx_common(ctx, min_version, ciphers, is_server ? "client_ciphers" : "upstream_ciphers",
		       err, errlen) < 0) {
		wolfSSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

/* Session tickets under the shared keys: ChaCha20-Poly1305 with a key derived from the 64
 * bytes of key material (SHA-256), a random 96-bit nonce in the ticket's IV, the key name
 * and IV authenticated with it, the tag in the ticket's MAC field. */
static int ticket_cb(WOLFSSL *ssl, unsigned char name[WOLFSSL_TICKET_NAME_SZ],
		     unsigned char iv[WOLFSSL_TICKET_IV_SZ], unsigned char mac[WOLFSSL_TICKET_MAC_SZ],
		     int enc, unsigned char *ticket, int len, int *out_len, void *user)
{
	const struct tls_ticket_keys *k = user;
	size_t idx = 0;
	if (!k || !k->n || len < 0)
		return WOLFSSL_TICKET_RET_FATAL;
	if (enc) {
		memcpy(name, k->key[0], WOLFSSL_TICKET_NAME_SZ);
		if (wolfSSL_RAND_bytes(iv, WOLFSSL_TICKET_IV_SZ) != WOLFSSL_SUCCESS)
			return WOLFSSL_TICKET_RET_FATAL;
	} else {
		while (idx < k->n && memcmp(name, k->key[idx], WOLFSSL_TICKET_NAME_SZ) != 0)
			idx++;
		if (idx == k->n)
			return WOLFSSL_TICKET_RET_REJECT; /* unknown key: a full handshake */
	}
	uint8_t key[32], aad[WOLFSSL_TICKET_NAME_SZ + WOLFSSL_TICKET_IV_SZ];
	if (wc_Sha256Hash(k->key[idx] + 16, TLS_TICKET_KEY_LEN - 16, key) != 0)
		return WOLFSSL_TICKET_RET_FATAL;
	memcpy(aad, name, WOLFSSL_TICKET_NAME_SZ);
	memcpy(aad + WOLFSSL_TICKET_NAME_SZ, iv, WOLFSSL_TICKET_IV_SZ);
	int rc;
	if (enc) {
		rc = wc_ChaCha20Poly1305_Encrypt(key, iv, aad, sizeof(aad), ticket, (word32)len, ticket,
						 mac);
		memset(mac + CHACHA20_POLY1305_AEAD_AUTHTAG_SIZE, 0,
		       WOLFSSL_TICKET_MAC_SZ - CHACHA20_POLY1305_AEAD_AUTHTAG_SIZE);
	} else {
		rc = wc_ChaCha20Poly1305_Decrypt(key, iv, aad, sizeof(aad), ticket, (word32)len, mac,
						 ticket);
	}
	memset(key, 0, sizeof(key));
	if (rc != 0)
		return enc ? WOLFSSL_TICKET_RET_FATAL : WOLFSSL_TICKET_RET_REJECT;
	*out_len = len;
	/* A TLS 1.2 ticket under an older key is good, and is replaced by one under the
	 * current key (TLS 1.3 sends a new ticket after every handshake anyway, and wolfSSL
	 * resumes a TLS 1.3 ticket only on RET_OK). */
	return !enc && idx > 0 && wolfSSL_version(ssl) != TLS1_3_VERSION
		       ? WOLFSSL_TICKET_RET_CREATE
		       : WOLFSSL_TICKET_RET_OK;
}

int tls_ctx_server_new(const struct tls_server_opts *o, struct tls_ctx **out, char *err,
		       size_t errlen)
{
	*out = NULL;
	WOLFSSL_CTX *ctx = ctx_new(1, o->min_version, o->ciphers, err, errlen);
	if (!ctx)
		return TLS_E_CONFIG;
	if (load_identity(ctx, o->cert, o->key, "cert", "key", err, errlen) < 0 ||
	    (o->client_ca && load_ca(ctx, o->client_ca, "client_ca", err, errlen) < 0)) {
		wolfSSL_CTX_free(ctx);
		return TLS_E_CONFIG;
	}
	wolfSSL_CTX_set_verify(ctx, o->client_ca ? WOLFSSL_VERIFY_PEER |
							   WOLFSSL_VERIFY_FAIL_IF_NO_PEER_CERT
						 : WOLFSSL_VERIFY_NONE, NULL);
	if (o->tickets && (wolfSSL_CTX_set_TicketEncCb(ctx, ticket_cb) != WOLFSSL_SUCCESS ||
			   wolfSSL_CTX_set_TicketEncCtx(ctx, (void *)o->tickets) != WOLFSSL_SUCCESS)) {
		snprintf(err, errlen, "ticket_key_file: the TLS library refused the keys");
		wolfSSL_CTX_free(ctx);
		return TLS_E_CONFIG;
	}
	int rc = ctx_wrap(ctx, 1, out);
	if (rc == 0 && o->alpn && !((*out)->alpn = strdup(o->alpn))) {
		tls_ctx_free(*out);
		*out = NULL;
		return TLS_E_NOMEM;
	}
	return rc;
}

static enum tls_verify classify(int error)
{
	switch (error) {
	case ASN_AFTER_DATE_E:
	case ASN_BEFORE_DATE_E:
		return TLS_VERIFY_EXPIRED;
	case ASN_NO_SIGNER_E:
	case ASN_SELF_SIGNED_E:
	case ASN_PATHLEN_INV_E:
	case ASN_PATHLEN_SIZE_E:
		return TLS_VERIFY_NOT_TRUSTED;
	default:
		return TLS_VERIFY_FAILURE;
	}
}

/* Records the first chain failure on the connection and lets the handshake go on: the
 * session decides under its policy (enforce or testing) what a failure means. */
static void record_cert(struct tls_chain *chain, WOLFSSL_X509_STORE_CTX *store, int ok)
{
	WOLFSSL_X509 *x = store->current_cert;
	if (!x || chain->n >= TLS_CHAIN_MAX)
		return;
	for (int i = 0; i < chain->n; i++)
		if (chain->certs[i].depth == store->error_depth)
			return; /* called again for the same certificate */
	struct tls_cert_info *ci = &chain->certs[chain->n++];
	memset(ci, 0, sizeof(*ci));
	ci->depth = store->error_depth;
	WOLFSSL_X509_NAME *n = wolfSSL_X509_get_subject_name(x);
	if (n)
		wolfSSL_X509_NAME_oneline(n, ci->subject, (int)sizeof(ci->subject));
	n = wolfSSL_X509_get_issuer_name(x);
	if (n)
		wolfSSL_X509_NAME_oneline(n, ci->issuer, (int)sizeof(ci->issuer));
	struct tm tm;
	const WOLFSSL_ASN1_TIME *t = wolfSSL_X509_get_notAfter(x);
	if (t && wolfSSL_ASN1_TIME_to_tm(t, &tm) == WOLFSSL_SUCCESS)
		strftime(ci->not_after, sizeof(ci->not_after), "%Y-%m-%dT%H:%M:%SZ", &tm);
	WOLFSSL_STACK *gens = wolfSSL_X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	if (gens) {
		size_t o = 0;
		int k = wolfSSL_sk_GENERAL_NAME_num(gens);
		for (int i = 0; i < k; i++) {
			WOLFSSL_GENERAL_NAME *g = wolfSSL_sk_GENERAL_NAME_value(gens, i);
			if (!g || g->type != GEN_DNS || !g->d.dNSName)
				continue;
			const char *d = (const char *)wolfSSL_ASN1_STRING_data(g->d.dNSName);
			int dl = wolfSSL_ASN1_STRING_length(g->d.dNSName);
			if (d && dl > 0 && o + (size_t)dl + 2 < sizeof(ci->names))
				o += (size_t)snprintf(ci->names + o, sizeof(ci->names) - o, "%s%.*s",
						      o ? "," : "", dl, d);
		}
		wolfSSL_sk_GENERAL_NAME_pop_free(gens, wolfSSL_GENERAL_NAME_free);
	}
	if (!ok)
		snprintf(ci->error, sizeof(ci->error), "%s",
			 wolfSSL_X509_verify_cert_error_string(store->error));
}

/* DANE: a copy of each presented certificate, by its depth. */
static void record_der(struct tls_conn *c, WOLFSSL_X509_STORE_CTX *store)
{
	int d = store->error_depth, n = 0;
	if (!store->current_cert || d < 0 || d >= TLS_CHAIN_MAX || c->der[d])
		return;
	const unsigned char *der = wolfSSL_X509_get_der(store->current_cert, &n);
	if (!der || n <= 0 || !(c->der[d] = malloc((size_t)n)))
		return;
	memcpy(c->der[d], der, (size_t)n);
	c->der_len[d] = n;
}

static int verify_cb(int preverify, WOLFSSL_X509_STORE_CTX *store)
{
	struct tls_conn *cc = store->userCtx;
	if (cc && cc->chain)
		record_cert(cc->chain, store, preverify);
	if (cc && cc->dane)
		record_der(cc, store);
	if (preverify)
		return 1;
	struct tls_conn *c = store->userCtx;
	if (c && c->verify == TLS_VERIFY_OK) {
		c->verify_error = store->error;
		c->verify = classify(store->error);
	}
	return 1;
}

int tls_ctx_client_new(const struct tls_client_opts *o, struct tls_ctx **out, char *err,
		       size_t errlen)
{
	*out = NULL;
	WOLFSSL_CTX *ctx = ctx_new(0, o->min_version, o->ciphers, err, errlen);
	if (!ctx)
		return TLS_E_CONFIG;
	if ((o->cert && load_identity(ctx, o->cert, o->key, "upstream_cert", "upstream_key", err,
				      errlen) < 0) ||
	    (o->ca && load_ca(ctx, o->ca, "upstream_ca", err, errlen) < 0)) {
		wolfSSL_CTX_free(ctx);
		return TLS_E_CONFIG;
	}
	if (o->ca)
		wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_PEER, verify_cb);
	else
		wolfSSL_CTX_set_verify(ctx, WOLFSSL_VERIFY_NONE, NULL);
	return ctx_wrap(ctx, 0, out);
}

void tls_ctx_free(struct tls_ctx *t)
{
	if (!t)
		return;
	wolfSSL_CTX_free(t->ctx);
	free(t->alpn);
	free(t);
}

static int is_ip_literal(const char *h)
{
	struct in6_addr a6;
	struct in_addr a4;
	return inet_pton(AF_INET, h, &a4) == 1 || inet_pton(AF_INET6, h, &a6) == 1;
}

struct tls_conn *tls_conn_new(struct tls_ctx *ctx, const char *server_name)
{
	struct tls_conn *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->ctx = ctx;
	c->ssl = wolfSSL_new(ctx->ctx);
	if (!c->ssl) {
		free(c);
		return NULL;
	}
	wolfSSL_SetIOReadCtx(c->ssl, c);
	wolfSSL_SetIOWriteCtx(c->ssl, c);
	wolfSSL_SetCertCbCtx(c->ssl, c);
	if (!ctx->is_server && server_name && *server_name && !is_ip_literal(server_name))
		wolfSSL_UseSNI(c->ssl, WOLFSSL_SNI_HOST_NAME, server_name,
			       (unsigned short)strlen(server_name));
	if (!ctx->is_server)
		wolfSSL_UseSessionTicket(c->ssl); /* TLS 1.2 tickets, to resume later */
	/* ALPACA: a client that asks for another application protocol (http/1.1 on a mail
	 * port) gets no_application_protocol; a client without ALPN is served. */
	if (ctx->is_server && ctx->alpn &&
	    wolfSSL_UseALPN(c->ssl, ctx->alpn, (unsigned)strlen(ctx->alpn),
			    WOLFSSL_ALPN_FAILED_ON_MISMATCH) != WOLFSSL_SUCCESS) {
		tls_conn_free(c);
		return NULL;
	}
	return c;
}

void tls_conn_free(struct tls_conn *c)
{
	if (!c)
		return;
	wolfSSL_free(c->ssl);
	buf_free(&c->in);
	buf_free(&c->out);
	for (int i = 0; i < TLS_CHAIN_MAX; i++)
		free(c->der[i]);
	free(c);
}

void tls_conn_want_dane(struct tls_conn *c)
{
	c->dane = 1;
}

/* The certificate's DER (selector 0) or SubjectPublicKeyInfo (1) hashed per the matching
 * type (0 exact, 1 SHA-256, 2 SHA-512) equals the record's data. */
static int tlsa_matches(const struct tls_tlsa *t, WOLFSSL_X509 *x)
{
	unsigned char spki[4096], h[64];
	const unsigned char *d;
	int n = 0;
	if (t->selector == 0) {
		d = wolfSSL_X509_get_der(x, &n);
	} else {
		n = (int)sizeof(spki);
		if (wolfSSL_X509_get_pubkey_buffer(x, spki, &n) != WOLFSSL_SUCCESS)
			return 0;
		d = spki;
	}
	if (!d || n <= 0)
		return 0;
	if (t->mtype == 0)
		return t->len == (size_t)n && !memcmp(t->data, d, t->len);
	if (t->mtype == 1)
		return t->len == 32 && wc_Sha256Hash(d, (word32)n, h) == 0 && !memcmp(h, t->data, 32);
	return t->len == 64 && wc_Sha512Hash(d, (word32)n, h) == 0 && !memcmp(h, t->data, 64);
}

int tls_tlsa_usable(const struct tls_tlsa *t)
{
	return (t->usage == 2 || t->usage == 3) && t->selector <= 1 &&
	       ((t->mtype == 0 && t->len > 0) || (t->mtype == 1 && t->len == 32) ||
		(t->mtype == 2 && t->len == 64));
}

/* Certificate d of the presented chain, parsed (NULL when it was not presented). */
static WOLFSSL_X509 *chain_cert(struct tls_conn *c, int d)
{
	if (d < 0 || d >= TLS_CHAIN_MAX || !c->der[d])
		return NULL;
	return wolfSSL_X509_d2i(NULL, c->der[d], c->der_len[d]);
}

/* Each certificate from the leaf up to depth top is signed by the next one. */
static int chain_signed(struct tls_conn *c, int top)
{
	for (int d = 0; d < top; d++) {
		WOLFSSL_X509 *x = chain_cert(c, d), *issuer = chain_cert(c, d + 1);
		WOLFSSL_EVP_PKEY *k = issuer ? wolfSSL_X509_get_pubkey(issuer) : NULL;
		int ok = x && k && wolfSSL_X509_verify(x, k) == WOLFSSL_SUCCESS;
		wolfSSL_EVP_PKEY_free(k);
		wolfSSL_X509_free(issuer);
		wolfSSL_X509_free(x);
		if (!ok)
			return 0;
	}
	return 1;
}

const char *tls_conn_dane_check(struct tls_conn *c, const struct tls_tlsa *t, size_t n,
				const char *const *names, size_t nnames, char *detail, size_t dlen)
{
	detail[0] = '\0';
	size_t usable = 0;
	for (size_t i = 0; i < n; i++)
		usable += tls_tlsa_usable(&t[i]) ? 1 : 0;
	if (usable == 0) {
		snprintf(detail, dlen, "no usable TLSA record (%zu unusable)", n);
		return "tlsa-invalid";
	}
	WOLFSSL_X509 *leaf = chain_cert(c, 0);
	if (!leaf) {
		snprintf(detail, dlen, "no server certificate");
		return "validation-failure";
	}
	int name_ok = 0;
	for (size_t i = 0; i < nnames && !name_ok; i++)
		name_ok = names[i] && tls_conn_peer_name_matches(c, names[i]);
	const char *result = NULL;
	int matched = 0;
	for (size_t i = 0; i < n && !matched; i++) {
		if (!tls_tlsa_usable(&t[i]))
			continue;
		if (t[i].usage == 3) { /* DANE-EE: the server's own key; no name or date checks */
			matched = tlsa_matches(&t[i], leaf);
			continue;
		}
		/* DANE-TA: a CA certificate the server presents, the chain below it signed, the
		 * leaf naming the MX host (RFC 7672 §3.2.2) */
		for (int d = 1; d < TLS_CHAIN_MAX && !matched; d++) {
			WOLFSSL_X509 *x = chain_cert(c, d);
			if (!x)
				continue;
			if (tlsa_matches(&t[i], x)) {
				if (!chain_signed(c, d))
					result = "validation-failure";
				else if (!name_ok)
					result = "certificate-host-mismatch";
				else
					matched = 1;
			}
			wolfSSL_X509_free(x);
		}
	}
	wolfSSL_X509_free(leaf);
	if (matched)
		return NULL;
	if (result && !strcmp(result, "certificate-host-mismatch"))
		snprintf(detail, dlen, "a DANE-TA record matches but the certificate does not name %s",
			 nnames && names[0] ? names[0] : "the MX host");
	else if (result)
		snprintf(detail, dlen, "a DANE-TA record matches but the chain below it does not verify");
	else
		snprintf(detail, dlen, "none of the %zu usable TLSA records matches the server's certificate",
			 usable);
	return result ? result : "validation-failure";
}

static void note_first(struct tls_conn *c, const void *data, size_t len)
{
	if (c->nfirst < sizeof(c->first)) {
		size_t k = sizeof(c->first) - c->nfirst < len ? sizeof(c->first) - c->nfirst : len;
		memcpy(c->first + c->nfirst, data, k);
		c->nfirst += k;
	}
}

int tls_conn_feed(struct tls_conn *c, const void *data, size_t len)
{
	note_first(c, data, len);
	return buf_append(&c->in, data, len) < 0 ? TLS_E_NOMEM : 0;
}

int tls_conn_lend(struct tls_conn *c, const void *data, size_t len)
{
	if (c->lent_len) /* already lending: copied behind */
		return tls_conn_feed(c, data, len);
	note_first(c, data, len);
	c->lent = data;
	c->lent_len = len;
	return 0;
}

int tls_conn_unlend(struct tls_conn *c)
{
	if (!c->lent_len) {
		c->lent = NULL;
		return 0;
	}
	int rc = buf_append(&c->in, c->lent, c->lent_len) < 0 ? TLS_E_NOMEM : 0;
	c->lent = NULL;
	c->lent_len = 0;
	return rc;
}

void tls_conn_set_sink(struct tls_conn *c, size_t (*sink)(void *arg, const uint8_t *p, size_t n),
		       void *arg)
{
	c->sink = sink;
	c->sink_arg = arg;
}

size_t tls_conn_first_bytes(const struct tls_conn *c, uint8_t *buf, size_t len)
{
	size_t n = c->nfirst < len ? c->nfirst : len;
	memcpy(buf, c->first, n);
	return n;
}

static void record_error(struct tls_conn *c, int rc)
{
	int e = wolfSSL_get_error(c->ssl, rc);
	c->err_code = e;
	char buf[WOLFSSL_MAX_ERROR_SZ];
	wolfSSL_ERR_error_string_n((unsigned long)(e < 0 ? -e : e), buf, sizeof(buf));
	snprintf(c->err, sizeof(c->err), "%s", buf);
}

int tls_conn_handshake(struct tls_conn *c)
{
	if (c->handshake_done)
		return 0;
	int rc = c->ctx->is_server ? wolfSSL_accept(c->ssl) : wolfSSL_connect(c->ssl);
	if (rc == WOLFSSL_SUCCESS) {
		c->handshake_done = 1;
		return 0;
	}
	int e = wolfSSL_get_error(c->ssl, rc);
	if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE)
		return TLS_AGAIN;
	record_error(c, rc);
	return TLS_E_HANDSHAKE;
}

int tls_conn_handshake_done(const struct tls_conn *c)
{
	return c->handshake_done;
}

int tls_conn_read(struct tls_conn *c, void *buf, size_t len)
{
	if (len > 1 << 30)
		len = 1 << 30;
	int rc = wolfSSL_read(c->ssl, buf, (int)len);
	if (rc > 0)
		return rc;
	int e = wolfSSL_get_error(c->ssl, rc);
	if (e == WOLFSSL_ERROR_WANT_READ || e == WOLFSSL_ERROR_WANT_WRITE)
		return TLS_AGAIN;
	if (e == WOLFSSL_ERROR_ZERO_RETURN)
		return TLS_CLOSED;
	record_error(c, rc);
	return TLS_E_IO;
}

int tls_conn_write(struct tls_conn *c, const void *data, size_t len)
{
	const uint8_t *p = data;
	while (len > 0) {
		int n = len > (1 << 20) ? (1 << 20) : (int)len;
		int rc = wolfSSL_write(c->ssl, p, n);
		if (rc <= 0) {
			record_error(c, rc);
			return TLS_E_IO;
		}
		p += rc;
		len -= (size_t)rc;
	}
	return 0;
}

int tls_conn_close_notify(struct tls_conn *c)
{
	int rc = wolfSSL_shutdown(c->ssl);
	return rc == WOLFSSL_SUCCESS || rc == WOLFSSL_SHUTDOWN_NOT_DONE ? 0 : TLS_E_IO;
}

size_t tls_conn_out_len(const struct tls_conn *c) { return c->out.len; }
const uint8_t *tls_conn_out_data(const struct tls_conn *c) { return buf_ptr(&c->out); }
void tls_conn_out_consume(struct tls_conn *c, size_t n)
{
	buf_consume(&c->out, n);
	buf_trim(&c->out);
}
size_t tls_conn_in_len(const struct tls_conn *c) { return c->in.len + c->lent_len; }

const char *tls_conn_version(const struct tls_conn *c)
{
	return wolfSSL_get_version(c->ssl);
}

const char *tls_conn_cipher(const struct tls_conn *c)
{
	int suite = wolfSSL_get_current_cipher_suite(c->ssl);
	const char *n = suite >= 0 ? wolfSSL_get_cipher_name_iana_from_suite(
					     (unsigned char)(suite >> 8), (unsigned char)suite)
				   : NULL;
	if (!n)
		n = wolfSSL_get_cipher_name(c->ssl);
	return n ? n : "none";
}

enum tls_verify tls_conn_verify_result(const struct tls_conn *c)
{
	return c->verify;
}

const char *tls_conn_error_text(const struct tls_conn *c)
{
	return c->err;
}

int tls_conn_version_too_low(const struct tls_conn *c, const char **offered)
{
	*offered = NULL;
	if (c->err_code != VERSION_ERROR)
		return 0;
	/* record header (5), handshake header (4), then ClientHello.legacy_version */
	if (c->nfirst >= 11 && c->first[0] == 0x16 && c->first[5] == 0x01 && c->first[9] == 3) {
		static const char *const names[] = { "SSLv3", "TLSv1", "TLSv1.1", "TLSv1.2" };
		if (c->first[10] <= 3)
			*offered = names[c->first[10]];
	}
	return 1;
}

int tls_conn_has_peer_cert(struct tls_conn *c)
{
	WOLFSSL_X509 *x = wolfSSL_get_peer_certificate(c->ssl);
	if (!x)
		return 0;
	wolfSSL_X509_free(x);
	return 1;
}

void tls_conn_drop_peer_cert(struct tls_conn *c)
{
	wolfSSL_FreePeerCert(c->ssl);
}

int tls_conn_peer_spki_sha256(struct tls_conn *c, uint8_t out[32])
{
	WOLFSSL_X509 *x = wolfSSL_get_peer_certificate(c->ssl);
	if (!x)
		return TLS_E_HANDSHAKE;
	int rc = TLS_E_HANDSHAKE;
	unsigned char der[4096];
	int n = (int)sizeof(der);
	if (wolfSSL_X509_get_pubkey_buffer(x, der, &n) == WOLFSSL_SUCCESS && n > 0 &&
	    wc_Sha256Hash(der, (word32)n, out) == 0)
		rc = 0;
	wolfSSL_X509_free(x);
	return rc;
}

int tls_name_match(const char *pattern, size_t plen, const char *host)
{
	size_t hlen = strlen(host);
	if (plen == 0 || hlen == 0 || memchr(pattern, '\0', plen))
		return 0;
	/* One trailing dot (absolute name) on either side is ignored. */
	if (pattern[plen - 1] == '.')
		plen--;
	if (hlen && host[hlen - 1] == '.')
		hlen--;
	if (plen == 0 || hlen == 0)
		return 0;
	if (plen >= 2 && pattern[0] == '*' && pattern[1] == '.') {
		const char *suffix = pattern + 1; /* ".example.com" */
		size_t slen = plen - 1;
		/* At least two labels after the wildcard: "*.com" is refused. */
		if (!memchr(suffix + 1, '.', slen - 1) || suffix[1] == '.')
			return 0;
		if (memchr(pattern + 2, '*', plen - 2))
			return 0;
		const char *dot = memchr(host, '.', hlen);
		if (!dot || dot == host)
			return 0;
		size_t label = (size_t)(dot - host);
		if (label >= 4 && strncasecmp(host, "xn--", 4) == 0)
			return 0;
		return hlen - label == slen && strncasecmp(dot, suffix, slen) == 0;
	}
	if (memchr(pattern, '*', plen))
		return 0; /* partial-label wildcards are not honoured */
	return plen == hlen && strncasecmp(pattern, host, plen) == 0;
}

int tls_conn_peer_name_matches(struct tls_conn *c, const char *name)
{
	WOLFSSL_X509 *x = wolfSSL_get_peer_certificate(c->ssl);
	if (!x)
		return 0;
	int match = 0, have_dns = 0;
	WOLFSSL_STACK *gens = wolfSSL_X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	if (gens) {
		int n = wolfSSL_sk_GENERAL_NAME_num(gens);
		for (int i = 0; i < n && !match; i++) {
			WOLFSSL_GENERAL_NAME *g = wolfSSL_sk_GENERAL_NAME_value(gens, i);
			if (!g || g->type != GEN_DNS || !g->d.dNSName)
				continue;
			have_dns = 1;
			const char *d = (const char *)wolfSSL_ASN1_STRING_data(g->d.dNSName);
			int dl = wolfSSL_ASN1_STRING_length(g->d.dNSName);
			if (d && dl > 0)
				match = tls_name_match(d, (size_t)dl, name);
		}
		wolfSSL_sk_GENERAL_NAME_pop_free(gens, wolfSSL_GENERAL_NAME_free);
	}
	if (!have_dns) {
		/* RFC 6125 §6.4.4: the CN is consulted only when there is no DNS-ID. */
		char cn[256];
		WOLFSSL_X509_NAME *subj = wolfSSL_X509_get_subject_name(x);
		int n = subj ? wolfSSL_X509_NAME_get_text_by_NID(subj, NID_commonName, cn, sizeof(cn))
			     : -1;
		if (n > 0 && (size_t)n == strlen(cn))
			match = tls_name_match(cn, (size_t)n, name);
	}
	wolfSSL_X509_free(x);
	return match;
}

const char *tls_verify_result_name(enum tls_verify v)
{
	switch (v) {
	case TLS_VERIFY_OK: return "ok";
	case TLS_VERIFY_NOT_TRUSTED: return "certificate-not-trusted";
	case TLS_VERIFY_EXPIRED: return "certificate-expired";
	default: return "validation-failure";
	}
}

void tls_conn_collect_chain(struct tls_conn *c, struct tls_chain *chain)
{
	memset(chain, 0, sizeof(*chain));
	c->chain = chain;
}

int tls_cert_file_not_after(const char *path, int64_t *not_after)
{
	WOLFSSL_X509 *x = wolfSSL_X509_load_certificate_file(path, WOLFSSL_FILETYPE_PEM);
	struct tm tm;
	const WOLFSSL_ASN1_TIME *at = x ? wolfSSL_X509_get_notAfter(x) : NULL;
	int rc = -ENOENT;
	memset(&tm, 0, sizeof(tm));
	if (at && wolfSSL_ASN1_TIME_to_tm(at, &tm) == WOLFSSL_SUCCESS) {
		*not_after = (int64_t)timegm(&tm);
		rc = 0;
	}
	wolfSSL_X509_free(x);
	return rc;
}

struct tls_session *tls_conn_get_session(struct tls_conn *c)
{
	/* a copy: the connection's own session changes as tickets arrive */
	/* TLS 1.3 resumes only with a ticket (the session id is a compatibility dummy), and
	 * only once the server's NewSessionTicket came after the handshake: until then a
	 * resumed connection's session holds the ticket it offered next to secrets of its
	 * own, a mix no server accepts (the PSK binder does not verify). */
	if (wolfSSL_version(c->ssl) == TLS1_3_VERSION) {
		uint8_t t[2048], h[32];
		word32 n = sizeof(t);
		if (wolfSSL_get_SessionTicket(c->ssl, t, &n) != WOLFSSL_SUCCESS || n == 0 ||
		    wc_Sha256Hash(t, n, h) != 0 ||
		    (c->has_offered && memcmp(h, c->offered, sizeof(h)) == 0))
			return NULL;
	}
	WOLFSSL_SESSION *cur = wolfSSL_get1_session(c->ssl), *copy = NULL;
	if (cur && wolfSSL_SESSION_is_resumable(cur))
		copy = wolfSSL_SESSION_dup(cur);
	wolfSSL_SESSION_free(cur);
	return (struct tls_session *)copy;
}

int tls_conn_set_session(struct tls_conn *c, struct tls_session *s)
{
	/* wolfSSL adopts the object and updates it as tickets arrive: it gets a copy, so that
	 * the caller's session stays as it was for other connections */
	WOLFSSL_SESSION *d = wolfSSL_SESSION_dup((WOLFSSL_SESSION *)s);
	if (!d)
		return -ENOMEM;
	int rc = wolfSSL_set_session(c->ssl, d) == WOLFSSL_SUCCESS ? 0 : -EINVAL;
	wolfSSL_SESSION_free(d);
	uint8_t t[2048];
	word32 n = sizeof(t);
	if (rc == 0 && wolfSSL_get_SessionTicket(c->ssl, t, &n) == WOLFSSL_SUCCESS && n > 0 &&
	    wc_Sha256Hash(t, n, c->offered) == 0)
		c->has_offered = 1;
	return rc;
}

void tls_session_free(struct tls_session *s)
{
	wolfSSL_SESSION_free((WOLFSSL_SESSION *)s);
}

int tls_conn_resumed(struct tls_conn *c)
{
	return wolfSSL_session_reused(c->ssl) == 1;
}

void tls_conn_peer_names(struct tls_conn *c, char *subject, size_t slen, char *issuer,
			 size_t ilen)
{
	subject[0] = issuer[0] = '\0';
	WOLFSSL_X509 *x = wolfSSL_get_peer_certificate(c->ssl);
	if (!x)
		return;
	WOLFSSL_X509_NAME *n = wolfSSL_X509_get_subject_name(x);
	if (n)
		wolfSSL_X509_NAME_oneline(n, subject, (int)slen);
	n = wolfSSL_X509_get_issuer_name(x);
	if (n)
		wolfSSL_X509_NAME_oneline(n, issuer, (int)ilen);
	wolfSSL_X509_free(x);
}

const char *tls_conn_check(struct tls_conn *c, enum tls_check check, const char *const *names,
			   size_t nnames, const uint8_t (*pins)[32], size_t npins, char *detail,
			   size_t dlen)
{
	detail[0] = '\0';
	if (check == TLS_CHECK_NONE)
		return NULL;
	if (!tls_conn_has_peer_cert(c)) {
		snprintf(detail, dlen, "no peer certificate");
		return "validation-failure";
	}
	if (check == TLS_CHECK_FINGERPRINT) {
		uint8_t fp[32];
		if (tls_conn_peer_spki_sha256(c, fp) < 0) {
			snprintf(detail, dlen, "no peer certificate");
			return "validation-failure";
		}
		for (size_t i = 0; i < npins; i++)
			if (memcmp(fp, pins[i], 32) == 0)
				return NULL;
		int o = snprintf(detail, dlen, "fingerprint mismatch: the server has sha256:");
		for (int i = 0; i < 32 && o > 0 && (size_t)o + 3 < dlen; i++)
			o += snprintf(detail + o, dlen - (size_t)o, "%02x", fp[i]);
		return "validation-failure";
	}
	enum tls_verify v = tls_conn_verify_result(c);
	if (v != TLS_VERIFY_OK)
		return tls_verify_result_name(v);
	for (size_t i = 0; i < nnames; i++)
		if (names[i] && tls_conn_peer_name_matches(c, names[i]))
			return NULL;
	size_t o = 0;
	for (size_t i = 0; i < nnames && o + 2 < dlen; i++)
		o += (size_t)snprintf(detail + o, dlen - o, "%s%s", i ? "," : "", names[i] ? names[i] : "");
	return "certificate-host-mismatch";
}

const char *tls_strerror(int err)
{
	switch (err) {
	case 0: return "ok";
	case TLS_AGAIN: return "needs more input";
	case TLS_CLOSED: return "closed by peer";
	case TLS_E_HANDSHAKE: return "handshake failed";
	case TLS_E_IO: return "TLS error";
	case TLS_E_NOMEM: return "out of memory";
	case TLS_E_CONFIG: return "TLS configuration error";
	default: return "unknown error";
	}
}
