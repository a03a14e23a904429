/* main.c - command line, configuration check, workers, signals. */
#include "admin.h"
#include "config.h"
#include "log.h"
#include "metrics.h"
#include "listener.h"
#include "notify.h"
#include "probe.h"
#include "shared.h"
#include "tlsrpt.h"
#include "tls.h"
#include "worker.h"

#include <errno.h>
#include <getopt.h>
#include <netdb.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#define DEFAULT_CONFIG "/etc/starttls-proxy/starttls-proxy.conf"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: starttls-proxy [-c FILE] [-t] [-V] [-h]\n"
		"       starttls-proxy --probe HOST:PORT [--protocol smtp|lmtp|imap|pop3|tcp]\n"
		"                      [--tls starttls|implicit] [--name NAME] [--ca FILE]\n"
		"                      [-c FILE --route NAME] [--json]\n"
		"  -c, --config FILE   configuration (default " DEFAULT_CONFIG ")\n"
		"  -t, --check         validate the configuration, certificates and keys, and exit\n"
		"  -V, --version       print the version and the wolfSSL/libuv versions\n"
		"  -h, --help          this text\n"
		"      --probe         test a server before enforcing a policy on it: greeting,\n"
		"                      STARTTLS, TLS, the chain, the SPKI pin, the verification\n"
		"                      result and a verdict per policy level; exit 0 when the\n"
		"                      policy that applies (the route's, else verify) would pass,\n"
		"                      1 when it would block, 2 when the server is unreachable\n");
}

static struct cfg *load(const char *path)
{
	struct cfg_errors errs = { 0 };
	struct cfg *cfg = NULL;
	if (cfg_load(path, &cfg, &errs) < 0) {
		for (size_t i = 0; i < errs.n; i++)
			fprintf(stderr, "%s\n", errs.msg[i]);
		cfg_errors_free(&errs);
		return NULL;
	}
	cfg_errors_free(&errs);
	return cfg;
}

/* -t: an upstream host name that does not resolve now is a warning, not an error (sessions
 * resolve it when they connect; DNS may be down for a moment at start). */
static void warn_dns(const struct cfg *c)
{
	for (size_t i = 0; i < c->nroutes; i++) {
		const struct cfg_addr *u = &c->routes[i].upstream;
		if (!u->needs_dns)
			continue;
		struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;
		int rc = getaddrinfo(u->host, NULL, &hints, &res);
		if (rc != 0)
			fprintf(stderr,
				"%s:%d: warning: upstream host \"%s\" does not resolve now (%s); "
				"sessions resolve it when they connect\n",
				c->path, u->line, u->host, gai_strerror(rc));
		else
			freeaddrinfo(res);
	}
}

/* -t: an upstream port whose well-known TLS mode is not the route's: a STARTTLS route
 * toward 465/993/995 waits for a greeting an implicit-TLS server never sends; an implicit
 * route toward 25/587/143/110 gets a plaintext greeting instead of a ServerHello. */
static void warn_ports(const struct cfg *c)
{
	for (size_t i = 0; i < c->nroutes; i++) {
		const struct cfg_route *r = &c->routes[i];
		unsigned p = r->upstream.port;
		if (r->upstream.original_dst || r->protocol == CFG_PROTO_TCP)
			continue;
		int implicit_port = p == 465 || p == 993 || p == 995;
		int plain_port = p == 25 || p == 587 || p == 143 || p == 110;
		if (implicit_port && r->upstream_tls != CFG_TLS_IMPLICIT)
			fprintf(stderr,
				"%s:%d: warning: route \"%s\": port %u is an implicit-TLS port but "
				"upstream_tls = %s (set upstream_tls = implicit)\n",
				c->path, r->upstream.line, r->name, p, cfg_tls_name(r->upstream_tls));
		else if (plain_port && r->upstream_tls == CFG_TLS_IMPLICIT)
			fprintf(stderr,
				"%s:%d: warning: route \"%s\": port %u greets in plaintext but "
				"upstream_tls = implicit (set upstream_tls = starttls)\n",
				c->path, r->upstream.line, r->name, p);
	}
}

static int drop_privileges(const char *user)
{
	struct passwd *pw = getpwnam(user);
	if (!pw) {
		log_event(LOG_ERROR, NULL, NULL, "fatal", "error", "unknown user", "user", user, NULL);
		return -EPERM;
	}
	if (getuid() == pw->pw_uid && geteuid() == pw->pw_uid && getgid() == pw->pw_gid)
		return 0; /* started as that user already (systemd User=, a container's USER) */
	/* its supplementary groups too: a key readable through one of them stays readable */
	if (initgroups(pw->pw_name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 ||
	    setuid(pw->pw_uid) < 0) {
		log_event(LOG_ERROR, NULL, NULL, "fatal", "error", "cannot drop privileges", "user",
			  user, NULL);
		return -EPERM;
	}
	return 0;
}

static struct worker *workers;
static int nworkers;
static int stopping;
static struct stp_shared shared;
static uv_signal_t sigs[3];
static uv_timer_t stop_poll, grace_timer, status_timer, watchdog_timer;
static int status_on, watchdog_on;

/* Every route gets its counters (kept across reloads, by route name). */
#define CERT_WARN_DAYS 14

/* The certificates a configuration presents, when they expire: to stderr for -t (only
 * those within CERT_WARN_DAYS), else as event=certificate log lines (a warning within
 * CERT_WARN_DAYS). */
static void report_certs(const struct cfg *c, int check)
{
	int64_t now = (int64_t)time(NULL);
	for (size_t i = 0; i < c->nroutes; i++) {
		const struct cfg_route *r = &c->routes[i];
		for (int side = 0; side < 2; side++) {
			int64_t t = side ? r->upstream_cert_not_after : r->cert_not_after;
			const char *file = side ? r->upstream_cert : r->cert;
			if (!t || !file)
				continue;
			char when[64], days[32];
			time_t tt = (time_t)t;
			struct tm tm;
			strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", gmtime_r(&tt, &tm));
			long left = (long)((t - now) / 86400);
			snprintf(days, sizeof(days), "%ld", left);
			int soon = t - now < (int64_t)CERT_WARN_DAYS * 86400;
			if (check && soon)
				fprintf(stderr,
					"%s:%d: warning: route \"%s\": %s \"%s\" expires on %s "
					"(in %ld days)\n",
					c->path, side ? r->upstream_cert_line : r->cert_line, r->name,
					side ? "upstream_cert" : "cert", file, when, left);
			else if (!check)
				log_event(soon ? LOG_WARN : LOG_INFO, NULL, r->name, "certificate",
					  "side", side ? "upstream" : "client", "file", file,
					  "not_after", when, "days_left", days, "status",
					  soon ? "expiring" : "ok", NULL);
		}
	}
}

/* Points each route at its counters and sets the certificate gauges: those of routes the
 * new configuration no longer has (or that lost a certificate) are removed. */
static void attach_metrics(struct cfg *old, struct cfg *c)
{
	for (size_t i = 0; old && i < old->nroutes; i++)
		for (int side = 0; side < 2; side++)
			metrics_cert_expiry(old->routes[i].metrics, side, 0);
	for (size_t i = 0; i < c->nroutes; i++) {
		struct cfg_route *r = &c->routes[i];
		r->metrics = metrics_route(r->name);
		metrics_cert_expiry(r->metrics, METRICS_CLIENT, r->client_side_tls ? r->cert_not_after : 0);
		metrics_cert_expiry(r->metrics, METRICS_UPSTREAM, r->upstream_cert_not_after);
	}
	report_certs(c, 0);
}

/* While the workers drain, the main loop keeps answering /readyz (503); once every
 * worker's loop has ended, the main loop's handles close and it returns. */
static void poll_workers(uv_timer_t *t)
{
	if (__atomic_load_n(&shared.workers_done, __ATOMIC_ACQUIRE) < nworkers)
		return;
	uv_close((uv_handle_t *)t, NULL);
	uv_timer_t *timers[] = { &status_timer, &watchdog_timer };
	int on[] = { status_on, watchdog_on };
	for (int i = 0; i < 2; i++)
		if (on[i] && !uv_is_closing((uv_handle_t *)timers[i]))
			uv_close((uv_handle_t *)timers[i], NULL);
	admin_stop();
	for (int i = 0; i < 3; i++)
		if (!uv_is_closing((uv_handle_t *)&sigs[i]))
			uv_close((uv_handle_t *)&sigs[i], NULL);
}
static const char *config_path;
static struct cfg *current; /* main's reference to the running configuration */

static void reload_failed(const char *error)
{
	log_event(LOG_ERROR, NULL, NULL, "reload", "result", "failed", "error", error, NULL);
}

static int same_str(const char *a, const char *b)
{
	return a == b || (a && b && !strcmp(a, b));
}

/* TLSRPT on the main loop, shared by the workers: 0, or -1 (logged). */
static int start_tlsrpt(uv_loop_t *loop, const struct cfg *c)
{
	if (!c->tlsrpt_dir)
		return 0;
	char contact[320], err[300];
	snprintf(contact, sizeof(contact), "postmaster@%s", c->helo_name);
	struct tlsrpt_opts o = { .dir = c->tlsrpt_dir, .org = c->tlsrpt_org,
				 .submitter = c->helo_name, .contact = contact,
				 .interval_s = c->tlsrpt_interval_s, .relay = c->tlsrpt_relay,
				 .resolver = c->resolver, .trust_anchor = c->dnssec_trust_anchor,
				 .ca = c->ca, .helo = c->helo_name };
	if (tlsrpt_new(loop, &o, &shared.tlsrpt, err, sizeof(err)) < 0) {
		log_event(LOG_ERROR, NULL, NULL, "fatal", "error", err, NULL);
		return -1;
	}
	return 0;
}

/* STATUS= for the service manager: what `systemctl status` shows. */
static void send_status(const char *what)
{
	long open = __atomic_load_n(&shared.active, __ATOMIC_RELAXED);
	unsigned long long total = __atomic_load_n(&shared.next_id, __ATOMIC_RELAXED);
	notify_sendf("STATUS=%s: sessions open %ld, since start %llu, routes %zu", what, open,
		     total, current ? current->nroutes : 0);
}

static void status_tick(uv_timer_t *t)
{
	(void)t;
	send_status(stopping ? "draining" : "serving");
}

/* WATCHDOG=1 while every worker's loop turns (worker_beat) within the interval the
 * manager set; a stuck worker leaves it unfed, and the manager restarts the service. */
static void watchdog_tick(uv_timer_t *t)
{
	(void)t;
	uint64_t now = uv_hrtime(), limit = notify_watchdog_usec() * 1000;
	for (int i = 0; i < nworkers && !stopping; i++) {
		uint64_t b = worker_beat(&workers[i]);
		if (now > b && now - b > limit) {
			char w[16];
			snprintf(w, sizeof(w), "%d", i);
			log_event(LOG_ERROR, NULL, NULL, "watchdog", "result", "worker-stalled",
				  "worker", w, NULL);
			return;
		}
	}
	notify_send("WATCHDOG=1");
}

static unsigned long long monotonic_usec(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000;
}

/* SIGHUP: load and check the file again (certificates and keys included); on success the
 * workers switch to it, keeping the listeners of addresses that stay and the sessions
 * already open; on any error the running configuration stays. 0 when the new
 * configuration runs, -1 when it was refused (logged). */
static int reload(void)
{
	struct cfg_errors errs = { 0 };
	struct cfg *nc = NULL;
	if (cfg_load(config_path, &nc, &errs) < 0) {
		for (size_t i = 0; i < errs.n; i++)
			reload_failed(errs.msg[i]);
		cfg_errors_free(&errs);
		return -1;
	}
	cfg_errors_free(&errs);
	if (nc->workers != current->workers || (nc->user != current->user &&
	    (!nc->user || !current->user || strcmp(nc->user, current->user))))
		log_event(LOG_WARN, NULL, NULL, "reload", "note",
			  "workers and user take effect at the next restart", NULL);
	/* New addresses: probed and bound now, one socket per worker. */
	int **fds = calloc((size_t)nworkers, sizeof(*fds));
	int ok = fds != NULL;
	for (int w = 0; ok && w < nworkers; w++) {
		fds[w] = malloc((nc->nroutes ? nc->nroutes : 1) * sizeof(int));
		ok = fds[w] != NULL;
		for (size_t i = 0; ok && i < nc->nroutes; i++)
			fds[w][i] = -1;
	}
	char err[300];
	for (size_t i = 0; i < nc->nroutes; i++) { /* a passed socket wins over listen */
		const struct cfg_route *r = &nc->routes[i];
		for (size_t j = 0; listener_is_inherited(r->name) && j < current->nroutes; j++)
			if (!strcmp(current->routes[j].name, r->name) &&
			    !cfg_addr_equal(&current->routes[j].listen, &r->listen))
				log_event(LOG_WARN, NULL, r->name, "reload", "note",
					  "the route keeps the socket systemd passed; its new listen "
					  "address is not bound (change the .socket unit)", NULL);
	}
	for (size_t i = 0; ok && i < nc->nroutes; i++) {
		int kept = 0;
		for (size_t j = 0; j < current->nroutes && !kept; j++)
			kept = cfg_addr_equal(&current->routes[j].listen, &nc->routes[i].listen);
		if (kept)
			continue;
		for (int w = 0; ok && w < nworkers; w++) {
			fds[w][i] = listener_socket(nc, &nc->routes[i], err, sizeof(err));
			if (fds[w][i] < 0) {
				reload_failed(err);
				ok = 0;
			}
		}
	}
	if (!ok) {
		for (int w = 0; fds && w < nworkers; w++) {
			for (size_t i = 0; fds[w] && i < nc->nroutes; i++)
				if (fds[w][i] >= 0)
					close(fds[w][i]);
			free(fds[w]);
		}
		free(fds);
		cfg_unref(nc);
		return -1;
	}
	log_setup(nc->log_level, nc->log_format == CFG_LOG_JSON);
	attach_metrics(current, nc);
	if (!same_str(nc->tlsrpt_dir, current->tlsrpt_dir) ||
	    !same_str(nc->tlsrpt_relay, current->tlsrpt_relay) ||
	    !same_str(nc->tlsrpt_org, current->tlsrpt_org) ||
	    nc->tlsrpt_interval_s != current->tlsrpt_interval_s)
		log_event(LOG_WARN, NULL, NULL, "reload", "note",
			  "tlsrpt_dir, tlsrpt_relay, tlsrpt_org and tlsrpt_interval take effect at the "
			  "next restart", NULL);
	if (nc->has_admin_listen != current->has_admin_listen ||
	    (nc->has_admin_listen && !cfg_addr_equal(&nc->admin_listen, &current->admin_listen)))
		log_event(LOG_WARN, NULL, NULL, "reload", "note",
			  "admin_listen takes effect at the next restart", NULL);
	for (int w = 0; w < nworkers; w++) {
		struct reload *r = malloc(sizeof(*r));
		if (!r) {
			free(fds[w]);
			continue;
		}
		r->cfg = cfg_ref(nc);
		r->fds = fds[w];
		worker_reload(&workers[w], r);
	}
	free(fds);
	cfg_unref(current);
	current = nc;
	char n[16];
	snprintf(n, sizeof(n), "%zu", nc->nroutes);
	log_event(LOG_INFO, NULL, NULL, "reload", "result", "ok", "routes", n, NULL);
	return 0;
}

/* The drain proper: listeners close, open sessions get drain_timeout. */
static void stop_workers(uv_timer_t *t)
{
	if (t)
		uv_close((uv_handle_t *)t, NULL);
	for (int i = 0; i < nworkers; i++)
		worker_stop(&workers[i]);
	uv_timer_init(sigs[0].loop, &stop_poll);
	uv_timer_start(&stop_poll, poll_workers, 0, 100);
}

static void on_signal(uv_signal_t *h, int signum)
{
	if (signum == SIGHUP) {
		if (stopping)
			return;
		notify_sendf("RELOADING=1\nMONOTONIC_USEC=%llu", monotonic_usec());
		int rc = reload();
		notify_send("READY=1");
		send_status(rc == 0 ? "serving (reloaded)"
				    : "serving; the last reload was refused, see the log");
		return;
	}
	if (stopping)
		return;
	stopping = 1;
	char grace[32];
	snprintf(grace, sizeof(grace), "%llu", (unsigned long long)current->drain_grace_ms);
	log_event(LOG_INFO, NULL, NULL, "shutdown", "signal", signum == SIGTERM ? "TERM" : "INT",
		  "drain_grace_ms", grace, NULL);
	notify_send("STOPPING=1");
	send_status("draining");
	admin_set_ready(0); /* /readyz 503: load balancers stop sending new clients */
	if (!current->drain_grace_ms) {
		stop_workers(NULL);
		return;
	}
	uv_timer_init(h->loop, &grace_timer);
	uv_timer_start(&grace_timer, stop_workers, current->drain_grace_ms, 0);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "config", required_argument, NULL, 'c' }, { "check", no_argument, NULL, 't' },
		{ "version", no_argument, NULL, 'V' },     { "help", no_argument, NULL, 'h' },
		{ "probe", required_argument, NULL, 'P' }, { "protocol", required_argument, NULL, 'p' },
		{ "tls", required_argument, NULL, 'T' },   { "name", required_argument, NULL, 'n' },
		{ "ca", required_argument, NULL, 'a' },    { "route", required_argument, NULL, 'r' },
		{ "json", no_argument, NULL, 'j' },        { NULL, 0, NULL, 0 },
	};
	const char *path = DEFAULT_CONFIG;
	int check = 0, c, probe_opt = 0;
	struct probe_opts probe = { 0 };
	while ((c = getopt_long(argc, argv, "c:tVh", opts, NULL)) != -1) {
		switch (c) {
		case 'c': path = optarg; break;
		case 't': check = 1; break;
		case 'P': probe.target = optarg; break;
		case 'p': probe.protocol = optarg; probe_opt = 1; break;
		case 'T': probe.tls = optarg; probe_opt = 1; break;
		case 'n': probe.name = optarg; probe_opt = 1; break;
		case 'a': probe.ca = optarg; probe_opt = 1; break;
		case 'r': probe.route = optarg; probe_opt = 1; break;
		case 'j': probe.json = 1; probe_opt = 1; break;
		case 'V':
			printf("starttls-proxy %s (wolfSSL %s, libuv %s)\n", STP_VERSION,
			       tls_library_version(), uv_version_string());
			return 0;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (optind < argc || (probe_opt && !probe.target)) {
		usage(stderr);
		return 1;
	}
	if (probe.tls && strcmp(probe.tls, "starttls") && strcmp(probe.tls, "implicit")) {
		fprintf(stderr, "--tls: expected starttls or implicit\n");
		return 2;
	}
	if (probe.target) {
		if (tls_global_init() < 0)
			return 2;
		log_setup(LOG_ERROR, 0);
		probe.config = path;
		return probe_run(&probe, stdout);
	}
	if (tls_global_init() < 0) {
		fprintf(stderr, "cannot initialise wolfSSL\n");
		return 1;
	}
	struct cfg *cfg = load(path);
	if (!cfg)
		return 1;
	config_path = path;
	current = cfg;
	if (check) {
		warn_dns(cfg);
		warn_ports(cfg);
		report_certs(cfg, 1);
		printf("configuration OK\n");
		cfg_unref(cfg);
		return 0;
	}
	log_setup(cfg->log_level, cfg->log_format == CFG_LOG_JSON);
	signal(SIGPIPE, SIG_IGN);

	if (shared_init(&shared) < 0) {
		log_event(LOG_ERROR, NULL, NULL, "fatal", "error", "cannot initialise", NULL);
		return 1;
	}
	char perr[300];
	if (notify_init() < 0)
		log_event(LOG_WARN, NULL, NULL, "notify", "error",
			  "NOTIFY_SOCKET is not an absolute path or @name: ignored", NULL);
	struct notify_fd *passed = NULL;
	size_t npassed = 0;
	if (notify_listen_fds(&passed, &npassed, perr, sizeof(perr)) < 0 ||
	    listener_inherit(passed, npassed, cfg, perr, sizeof(perr)) < 0) {
		log_event(LOG_ERROR, NULL, NULL, "fatal", "error", perr, NULL);
		free(passed);
		return 1;
	}
	if (listener_probe(cfg, perr, sizeof(perr)) < 0) {
		log_event(LOG_ERROR, NULL, NULL, "fatal", "error", perr, NULL);
		return 1;
	}
	nworkers = cfg->workers;
	workers = calloc((size_t)nworkers, sizeof(*workers));
	if (!workers) {
		log_event(LOG_ERROR, NULL, NULL, "fatal", "error", "out of memory", NULL);
		return 1;
	}
	for (int i = 0; i < nworkers; i++) {
		char err[256];
		if (worker_init(&workers[i], i, cfg, &shared, err, sizeof(err)) < 0) {
			log_event(LOG_ERROR, NULL, NULL, "fatal", "error", err, NULL);
			return 1;
		}
	}
	uv_loop_t *loop = uv_default_loop();
	if (start_tlsrpt(loop, cfg) < 0)
		return 1;
	if (cfg->has_admin_listen && admin_start(loop, &cfg->admin_listen, perr, sizeof(perr)) < 0) {
		log_event(LOG_ERROR, NULL, NULL, "fatal", "error", perr, NULL);
		return 1;
	}
	if (cfg->user && drop_privileges(cfg->user) < 0)
		return 1;
	attach_metrics(NULL, cfg);
	for (size_t i = 0; i < cfg->nroutes; i++) {
		char addr[300];
		const struct cfg_route *r = &cfg->routes[i];
		snprintf(addr, sizeof(addr), "%s:%u", r->listen.host, r->listen.port);
		log_event(LOG_INFO, NULL, r->name, "listening", "addr", addr, "socket",
			  listener_is_inherited(r->name) ? "passed" : "bound", "protocol",
			  cfg_proto_name(r->protocol), "client_tls", cfg_tls_name(r->client_tls),
			  "upstream_tls", cfg_tls_name(r->upstream_tls), "upstream_policy",
			  cfg_policy_name(r->upstream_policy), NULL);
	}
	if (notify_watchdog_usec() && notify_watchdog_usec() / 4000 < WORKER_BEAT_MS)
		worker_set_beat(notify_watchdog_usec() / 4000);
	for (int i = 0; i < nworkers; i++) {
		int rc = worker_start(&workers[i]);
		if (rc < 0) {
			log_event(LOG_ERROR, NULL, NULL, "fatal", "error", uv_strerror(rc), NULL);
			return 1;
		}
	}
	char nw[16];
	snprintf(nw, sizeof(nw), "%d", nworkers);
	log_event(LOG_INFO, NULL, NULL, "ready", "version", STP_VERSION, "workers", nw, "wolfssl",
		  tls_library_version(), "libuv", uv_version_string(), NULL);

	static const int signums[3] = { SIGTERM, SIGINT, SIGHUP };
	for (int i = 0; i < 3; i++) {
		uv_signal_init(loop, &sigs[i]);
		uv_signal_start(&sigs[i], on_signal, signums[i]);
	}
	admin_set_ready(1);
	/* every listener is bound and every worker runs */
	notify_sendf("READY=1\nMAINPID=%ld", (long)getpid());
	send_status("serving");
	if (notify_watchdog_usec() >= 2000) {
		uv_timer_init(loop, &watchdog_timer);
		watchdog_on = 1;
		uint64_t ms = notify_watchdog_usec() / 2000;
		uv_timer_start(&watchdog_timer, watchdog_tick, ms, ms);
	}
	if (notify_active()) {
		uv_timer_init(loop, &status_timer);
		status_on = 1;
		uv_timer_start(&status_timer, status_tick, 2000, 2000);
	}
	uv_run(loop, UV_RUN_DEFAULT); /* until SIGTERM/SIGINT and every worker has drained */

	for (int i = 0; i < nworkers; i++)
		worker_join(&workers[i]);
	free(workers);
	if (shared.tlsrpt) { /* the periods in memory go to the spool */
		tlsrpt_free(shared.tlsrpt);
		shared.tlsrpt = NULL;
		uv_run(loop, UV_RUN_DEFAULT);
	}
	uv_loop_close(loop);
	log_event(LOG_INFO, NULL, NULL, "stopped", NULL);
	cfg_unref(current);
	shared_destroy(&shared);
	for (size_t i = 0; i < npassed; i++)
		close(passed[i].fd);
	free(passed);
	return 0;
}
