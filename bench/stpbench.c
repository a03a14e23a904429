/* stpbench.c - load generator and backends for bench/run.sh (system OpenSSL).
 *
 * One tiny wire protocol runs end to end through the proxy under test (the proxy only
 * relays bytes, so the backend sees what the client sent):
 *   'S' + u64 n   backend reads and discards n bytes, then answers 'K'   (upload)
 *   'R' + u64 n   backend writes n bytes                                 (download)
 *   'P'           backend answers 'p'                                    (ping)
 * u64 is little-endian. Several commands may follow on one connection; EOF ends it.
 *
 *   stpbench port                         print a free loopback TCP port
 *   stpbench serve [--port P] [--tls CERT KEY] [--group G] [--no-resume] [--stats FILE]
 *        backend on 127.0.0.1:P (0 = any; prints "port N"). Plain: one epoll thread.
 *        --tls: TLS 1.3 only, TLS_AES_128_GCM_SHA256, one thread per connection; it
 *        issues tickets and resumes sessions unless --no-resume; --stats FILE is rewritten
 *        with "handshakes=N resumed=M" after every handshake.
 *   stpbench bulk --port P --dir up|down --bytes N [--tls] [--group G]
 *        one connection; prints "bytes=N seconds=S mbps=M" (MB = 10^6 bytes), timed from
 *        the end of the handshake to the last byte (upload: to the backend's 'K').
 *   stpbench hs --port P --seconds S --conc C [--group G]
 *        C threads each loop: connect, full TLS handshake, ping, close_notify, close.
 *        prints "ok=N errors=E seconds=S rate=R client_cpu=CPU-SECONDS".
 *   stpbench hold --port P --conns N [--tls] [--max-seconds S] [--group G]
 *        opens N connections (handshake + ping each), prints "ready N", then keeps them
 *        open until SIGTERM/SIGINT or --max-seconds, and closes them.
 *
 * The client side always offers only TLS 1.3 with TLS_AES_128_GCM_SHA256 and the key
 * exchange group G (default X25519), never resumes, and does not verify the certificate
 * chain (the server's CertificateVerify signature is still checked by the handshake).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define CIPHER "TLS_AES_128_GCM_SHA256"
#define CHUNK (256 * 1024)

static const char *group = "X25519";

static void die(const char *what)
{
	fprintf(stderr, "stpbench: %s: %s\n", what, errno ? strerror(errno) : "failed");
	ERR_print_errors_fp(stderr);
	exit(1);
}

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void put_u64(unsigned char *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get_u64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = (v << 8) | p[i];
	return v;
}

static unsigned char *payload(void)
{
	static unsigned char *buf;
	if (!buf) {
		buf = malloc(CHUNK);
		uint64_t x = 0x9E3779B97F4A7C15ull;
		for (size_t i = 0; i < CHUNK; i++) {
			x ^= x << 13, x ^= x >> 7, x ^= x << 17;
			buf[i] = (unsigned char)x;
		}
	}
	return buf;
}

static int tcp_connect(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Read several records per read(2): the load generator should not be the bottleneck. */
static void tune_io(SSL_CTX *ctx)
{
	SSL_CTX_set_read_ahead(ctx, 1);
	SSL_CTX_set_default_read_buffer_len(ctx, 64 * 1024);
}

static SSL_CTX *client_ctx(void)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx)
		die("SSL_CTX_new");
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
	if (!SSL_CTX_set_ciphersuites(ctx, CIPHER) || !SSL_CTX_set1_groups_list(ctx, group))
		die("client cipher/group");
	SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	tune_io(ctx);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	return ctx;
}

static SSL_CTX *server_ctx(const char *cert, const char *key)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx)
		die("SSL_CTX_new");
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
	if (!SSL_CTX_set_ciphersuites(ctx, CIPHER) || !SSL_CTX_set1_groups_list(ctx, group))
		die("server cipher/group");
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)
		die("server certificate/key");
	tune_io(ctx);
	return ctx;
}

/* A connection as seen by the client or the threaded TLS backend: fd + optional SSL. */
struct conn {
	int fd;
	SSL *ssl;
};

static long c_read(struct conn *c, void *buf, size_t len)
{
	if (c->ssl) {
		int n = SSL_read(c->ssl, buf, len > INT32_MAX ? INT32_MAX : (int)len);
		return n > 0 ? n : (SSL_get_error(c->ssl, n) == SSL_ERROR_ZERO_RETURN ? 0 : -1);
	}
	ssize_t n;
	do
		n = read(c->fd, buf, len);
	while (n < 0 && errno == EINTR);
	return n;
}

static int c_write_all(struct conn *c, const void *buf, size_t len)
{
	const unsigned char *p = buf;
	while (len) {
		long n;
		if (c->ssl) {
			n = SSL_write(c->ssl, p, len > INT32_MAX ? INT32_MAX : (int)len);
			if (n <= 0)
				return -1;
		} else {
			n = write(c->fd, p, len);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				return -1;
		}
		p += n;
		len -= n;
	}
	return 0;
}

static int c_read_exact(struct conn *c, void *buf, size_t len)
{
	unsigned char *p = buf;
	while (len) {
		long n = c_read(c, p, len);
		if (n <= 0)
			return -1;
		p += n;
		len -= n;
	}
	return 0;
}

static int c_open(struct conn *c, int port, SSL_CTX *ctx)
{
	c->ssl = NULL;
	c->fd = tcp_connect(port);
	if (c->fd < 0)
		return -1;
	if (ctx) {
		c->ssl = SSL_new(ctx);
		SSL_set_fd(c->ssl, c->fd);
		SSL_set_tlsext_host_name(c->ssl, "localhost");
		if (SSL_connect(c->ssl) != 1) {
			SSL_free(c->ssl);
			c->ssl = NULL;
			close(c->fd);
			return -1;
		}
	}
	return 0;
}

static void c_close(struct conn *c)
{
	if (c->ssl) {
		SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
	}
	close(c->fd);
}

static int c_ping(struct conn *c)
{
	char r;
	if (c_write_all(c, "P", 1) < 0 || c_read_exact(c, &r, 1) < 0 || r != 'p')
		return -1;
	return 0;
}

/* ---- backend: threaded, blocking (used with --tls) ----------------------------------- */

/* Serves commands until EOF; shared by the threaded TLS backend. */
static void serve_blocking(struct conn *c)
{
	unsigned char hdr[9], *buf = malloc(CHUNK);
	for (;;) {
		if (c_read_exact(c, hdr, 1) < 0)
			break;
		if (hdr[0] == 'P') {
			if (c_write_all(c, "p", 1) < 0)
				break;
			continue;
		}
		if ((hdr[0] != 'S' && hdr[0] != 'R') || c_read_exact(c, hdr + 1, 8) < 0)
			break;
		uint64_t n = get_u64(hdr + 1);
		if (hdr[0] == 'S') {
			while (n) {
				long r = c_read(c, buf, n < CHUNK ? n : CHUNK);
				if (r <= 0)
					goto out;
				n -= r;
			}
			if (c_write_all(c, "K", 1) < 0)
				break;
		} else {
			while (n) {
				size_t k = n < CHUNK ? n : CHUNK;
				if (c_write_all(c, payload(), k) < 0)
					goto out;
				n -= k;
			}
		}
	}
out:
	free(buf);
}

struct tls_job {
	int fd;
	SSL_CTX *ctx;
};

static const char *stats_file;
static long n_handshakes, n_resumed;

static void count_handshake(int resumed)
{
	long h = __atomic_add_fetch(&n_handshakes, 1, __ATOMIC_RELAXED);
	long r = resumed ? __atomic_add_fetch(&n_resumed, 1, __ATOMIC_RELAXED)
			 : __atomic_load_n(&n_resumed, __ATOMIC_RELAXED);
	if (!stats_file)
		return;
	char line[64];
	int n = snprintf(line, sizeof line, "handshakes=%ld resumed=%ld\n", h, r);
	FILE *f = fopen(stats_file, "r+");
	if (!f)
		f = fopen(stats_file, "w");
	if (f) {
		fwrite(line, 1, (size_t)n, f);
		fclose(f);
	}
}

static void *tls_thread(void *arg)
{
	struct tls_job *j = arg;
	struct conn c = { .fd = j->fd, .ssl = SSL_new(j->ctx) };
	SSL_set_fd(c.ssl, c.fd);
	if (SSL_accept(c.ssl) == 1) {
		count_handshake(SSL_session_reused(c.ssl));
		serve_blocking(&c);
		SSL_shutdown(c.ssl);
	}
	SSL_free(c.ssl);
	close(c.fd);
	free(j);
	return NULL;
}

/* ---- backend: plain, one epoll thread ------------------------------------------------- */

struct econn {
	int fd;
	int state;        /* 0: header, 'S': discarding, 'R': sending */
	unsigned char hdr[9];
	int hlen;
	uint64_t left;
	int want_out;
	size_t pend;      /* queued one-byte replies not yet written ('K'/'p') */
	char pbuf[64];
};

static void e_mod(int ep, struct econn *e, int out)
{
	if (e->want_out == out)
		return;
	struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0), .data.ptr = e };
	epoll_ctl(ep, EPOLL_CTL_MOD, e->fd, &ev);
	e->want_out = out;
}

static void e_close(struct econn *e)
{
	close(e->fd);
	free(e);
}

/* Writes what is owed (short replies first, then 'R' bytes). Returns -1 on error. */
static int e_flush(int ep, struct econn *e)
{
	while (e->pend) {
		ssize_t n = write(e->fd, e->pbuf, e->pend);
		if (n < 0 && errno == EAGAIN)
			goto blocked;
		if (n <= 0)
			return -1;
		memmove(e->pbuf, e->pbuf + n, e->pend - n);
		e->pend -= n;
	}
	while (e->state == 'R' && e->left) {
		size_t k = e->left < CHUNK ? e->left : CHUNK;
		ssize_t n = write(e->fd, payload(), k);
		if (n < 0 && errno == EAGAIN)
			goto blocked;
		if (n <= 0)
			return -1;
		e->left -= n;
	}
	if (e->state == 'R')
		e->state = 0;
	e_mod(ep, e, 0);
	return 0;
blocked:
	e_mod(ep, e, 1);
	return 0;
}

static void e_reply(struct econn *e, char ch)
{
	if (e->pend < sizeof e->pbuf)
		e->pbuf[e->pend++] = ch;
}

/* Consumes input bytes. Returns -1 to close. */
static int e_input(struct econn *e, const unsigned char *p, size_t n)
{
	while (n) {
		if (e->state == 'S') {
			size_t k = n < e->left ? n : e->left;
			e->left -= k, p += k, n -= k;
			if (!e->left) {
				e->state = 0;
				e_reply(e, 'K');
			}
			continue;
		}
		if (e->state == 'R')
			return -1; /* client must wait for its download */
		e->hdr[e->hlen++] = *p++, n--;
		if (e->hdr[0] == 'P') {
			e->hlen = 0;
			e_reply(e, 'p');
		} else if (e->hdr[0] != 'S' && e->hdr[0] != 'R') {
			return -1;
		} else if (e->hlen == 9) {
			e->hlen = 0;
			e->left = get_u64(e->hdr + 1);
			e->state = e->hdr[0];
			if (e->state == 'S' && !e->left) {
				e->state = 0;
				e_reply(e, 'K');
			}
		}
	}
	return 0;
}

static void serve_epoll(int lfd)
{
	int ep = epoll_create1(0);
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = NULL }, evs[256];
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
	unsigned char *buf = malloc(CHUNK);
	for (;;) {
		int n = epoll_wait(ep, evs, 256, -1);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("epoll_wait");
		for (int i = 0; i < n; i++) {
			struct econn *e = evs[i].data.ptr;
			if (!e) {
				int fd;
				while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
					int one = 1;
					setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
					e = calloc(1, sizeof *e);
					e->fd = fd;
					struct epoll_event cev = { .events = EPOLLIN, .data.ptr = e };
					epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev);
				}
				continue;
			}
			int bad = 0;
			if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
				for (int rounds = 0; rounds < 16 && !bad; rounds++) {
					ssize_t r = read(e->fd, buf, CHUNK);
					if (r < 0 && errno == EAGAIN)
						break;
					if (r <= 0 || e_input(e, buf, r) < 0)
						bad = 1;
					else if (r < CHUNK)
						break;
				}
			}
			if (!bad && e_flush(ep, e) < 0)
				bad = 1;
			if (bad)
				e_close(e); /* close() removes it from the epoll set */
		}
	}
}

static int cmd_serve(int port, const char *cert, const char *key, int no_resume)
{
	int lfd = socket(AF_INET, SOCK_STREAM | (cert ? 0 : SOCK_NONBLOCK), 0), one = 1;
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons(port) };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4096) < 0)
		die("bind/listen");
	socklen_t sl = sizeof sa;
	getsockname(lfd, (struct sockaddr *)&sa, &sl);
	printf("port %d\n", ntohs(sa.sin_port));
	fflush(stdout);
	if (!cert) {
		serve_epoll(lfd);
		return 0;
	}
	SSL_CTX *ctx = server_ctx(cert, key);
	if (no_resume) {
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
		SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
		SSL_CTX_set_num_tickets(ctx, 0);
	}
	pthread_attr_t at;
	pthread_attr_init(&at);
	pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&at, 256 * 1024);
	for (;;) {
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE)
				continue;
			die("accept");
		}
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
		struct tls_job *j = malloc(sizeof *j);
		j->fd = fd, j->ctx = ctx;
		pthread_t t;
		if (pthread_create(&t, &at, tls_thread, j) != 0) {
			close(fd);
			free(j);
		}
	}
}

/* ---- clients ------------------------------------------------------------------------- */

static int cmd_bulk(int port, int up, uint64_t bytes, int tls)
{
	SSL_CTX *ctx = tls ? client_ctx() : NULL;
	struct conn c;
	if (c_open(&c, port, ctx) < 0)
		die("connect/handshake");
	/* One ping first: the path to the backend is up before the clock starts. */
	if (c_ping(&c) < 0)
		die("ping");
	unsigned char hdr[9];
	hdr[0] = up ? 'S' : 'R';
	put_u64(hdr + 1, bytes);
	unsigned char *buf = malloc(CHUNK);
	double t0 = now_s();
	if (c_write_all(&c, hdr, 9) < 0)
		die("write header");
	uint64_t left = bytes;
	if (up) {
		while (left) {
			size_t k = left < CHUNK ? left : CHUNK;
			if (c_write_all(&c, payload(), k) < 0)
				die("upload");
			left -= k;
		}
		char k;
		if (c_read_exact(&c, &k, 1) < 0 || k != 'K')
			die("upload ack");
	} else {
		while (left) {
			long n = c_read(&c, buf, left < CHUNK ? left : CHUNK);
			if (n <= 0)
				die("download");
			left -= n;
		}
	}
	double dt = now_s() - t0;
	c_close(&c);
	printf("bytes=%llu seconds=%.3f mbps=%.1f\n", (unsigned long long)bytes, dt,
	       bytes / dt / 1e6);
	return 0;
}

struct hs_arg {
	SSL_CTX *ctx;
	int port;
	double deadline;
	long ok, errors;
};

static void *hs_thread(void *arg)
{
	struct hs_arg *a = arg;
	while (now_s() < a->deadline) {
		struct conn c;
		if (c_open(&c, a->port, a->ctx) < 0) {
			a->errors++;
			usleep(1000);
			continue;
		}
		if (c_ping(&c) < 0)
			a->errors++;
		else
			a->ok++;
		c_close(&c);
	}
	return NULL;
}

static int cmd_hs(int port, double seconds, int conc)
{
	SSL_CTX *ctx = client_ctx();
	struct hs_arg *args = calloc(conc, sizeof *args);
	pthread_t *t = calloc(conc, sizeof *t);
	double t0 = now_s();
	for (int i = 0; i < conc; i++) {
		args[i] = (struct hs_arg){ .ctx = ctx, .port = port, .deadline = t0 + seconds };
		pthread_create(&t[i], NULL, hs_thread, &args[i]);
	}
	long ok = 0, errors = 0;
	for (int i = 0; i < conc; i++) {
		pthread_join(t[i], NULL);
		ok += args[i].ok, errors += args[i].errors;
	}
	double dt = now_s() - t0;
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
		     ru.ru_stime.tv_usec / 1e6;
	printf("ok=%ld errors=%ld seconds=%.3f rate=%.1f client_cpu=%.2f\n", ok, errors, dt,
	       ok / dt, cpu);
	return 0;
}

static volatile sig_atomic_t stop;
static void on_stop(int sig)
{
	(void)sig;
	stop = 1;
}

static int cmd_hold(int port, int n, int tls, double max_seconds)
{
	SSL_CTX *ctx = tls ? client_ctx() : NULL;
	struct conn *c = calloc(n, sizeof *c);
	int open = 0, failed = 0;
	double deadline = now_s() + max_seconds;
	for (int i = 0; i < n && !stop && now_s() < deadline; i++) {
		if (c_open(&c[open], port, ctx) < 0 || c_ping(&c[open]) < 0) {
			failed++;
			continue;
		}
		open++;
	}
	printf("ready %d failed %d\n", open, failed);
	fflush(stdout);
	while (!stop && now_s() < deadline)
		usleep(20000);
	for (int i = 0; i < open; i++)
		c_close(&c[i]);
	return 0;
}

static int cmd_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof sa;
	if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
	    getsockname(fd, (struct sockaddr *)&sa, &sl) < 0)
		die("bind");
	printf("%d\n", ntohs(sa.sin_port));
	close(fd);
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: stpbench port | serve [--port P] [--tls CERT KEY] [--no-resume] "
			"[--stats FILE] | "
			"bulk --port P --dir up|down --bytes N [--tls] | "
			"hs --port P --seconds S --conc C | hold --port P --conns N [--tls] "
			"[--max-seconds S]   (all: [--group G])\n");
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		usage();
	signal(SIGPIPE, SIG_IGN);
	const char *cmd = argv[1], *cert = NULL, *key = NULL, *dir = "up";
	int port = 0, tls = 0, conc = 8, conns = 1000, no_resume = 0;
	double seconds = 10, max_seconds = 120;
	uint64_t bytes = 1ull << 30;
	for (int i = 2; i < argc; i++) {
		const char *a = argv[i];
#define NEXT() (i + 1 < argc ? argv[++i] : (usage(), ""))
		if (!strcmp(a, "--port"))
			port = atoi(NEXT());
		else if (!strcmp(a, "--tls")) {
			tls = 1;
			if (!strcmp(cmd, "serve")) {
				cert = NEXT();
				key = NEXT();
			}
		} else if (!strcmp(a, "--dir"))
			dir = NEXT();
		else if (!strcmp(a, "--bytes"))
			bytes = strtoull(NEXT(), NULL, 10);
		else if (!strcmp(a, "--seconds"))
			seconds = atof(NEXT());
		else if (!strcmp(a, "--conc"))
			conc = atoi(NEXT());
		else if (!strcmp(a, "--conns"))
			conns = atoi(NEXT());
		else if (!strcmp(a, "--max-seconds"))
			max_seconds = atof(NEXT());
		else if (!strcmp(a, "--group"))
			group = NEXT();
		else if (!strcmp(a, "--no-resume"))
			no_resume = 1;
		else if (!strcmp(a, "--stats"))
			stats_file = NEXT();
		else
			usage();
	}
	if (!strcmp(cmd, "port"))
		return cmd_port();
	if (!strcmp(cmd, "serve"))
		return cmd_serve(port, cert, key, no_resume);
	if (!strcmp(cmd, "bulk"))
		return cmd_bulk(port, strcmp(dir, "down") != 0, bytes, tls);
	if (!strcmp(cmd, "hs"))
		return cmd_hs(port, seconds, conc);
	if (!strcmp(cmd, "hold")) {
		signal(SIGTERM, on_stop);
		signal(SIGINT, on_stop);
		return cmd_hold(port, conns, tls, max_seconds);
	}
	usage();
	return 2;
}
