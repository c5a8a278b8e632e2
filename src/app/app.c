/* app.c - assembly, routing, signals and orderly shutdown of the server. */
#include "app/app.h"

#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "api/agents.h"
#include "app/auth.h"
#include "core/buf.h"
#include "core/err.h"
#include "core/log.h"
#include "http/http.h"
#include "lua/host.h"
#include "protocol/protocol.h"
#include "store/store.h"
#include "stream/streams.h"

typedef struct app_s {
  uv_loop_t loop;
  const ds_config_t *cfg;
  ds_store_t *store;
  ds_streams_t *streams;
  ds_http_server_t *http;
  ds_agents_api_t *agents;
  ds_protocol_t *protocol; /* /v1/stream: the Durable Streams view of the same streams */
  ds_lua_host_t *lua; /* NULL when config.lua says agents = false */
  ds_auth_t *auth;
  ds_access_t *no_access; /* the grant of requests that bring their own credentials */
  uv_signal_t sigint, sigterm;
  uv_timer_t trim; /* periodic return of free heap pages to the kernel */
  int stopping;
  int http_stopped;
} app_t;

static int path_is(const ds_http_req_t *req, const char *prefix) {
  size_t n = strlen(prefix);
  return req->path_len >= n && memcmp(req->path, prefix, n) == 0 &&
         (req->path_len == n || req->path[n] == '/');
}

static int path_eq(const ds_http_req_t *req, const char *p) {
  return req->path_len == strlen(p) && memcmp(req->path, p, req->path_len) == 0;
}

static void respond_json(ds_http_req_t *req, int status, ds_buf_t *body) {
  static const ds_http_header_t h[] = {{"Content-Type", "application/json"},
                                       {"Cache-Control", "no-store"},
                                       {NULL, NULL}};
  ds_http_respond(req, status, h, body->data ? body->data : "", body->len);
}

static void handle_stats(app_t *app, ds_http_req_t *req) {
  ds_http_stats_t hs;
  ds_streams_stats_t ss;
  ds_store_stats_t st;
  ds_agents_stats_t as;
  ds_http_server_stats(app->http, &hs);
  ds_streams_get_stats(app->streams, &ss);
  ds_store_get_stats(app->store, &st);
  ds_agents_api_stats(app->agents, &as);
  ds_buf_t b = DS_BUF_INIT;
  ds_buf_printf(&b,
                "{\"connections\":%llu,\"connections_total\":%llu,\"requests_total\":%llu,"
                "\"streams_open\":%llu,\"bytes_queued\":%llu,"
                "\"subscribers\":%llu,\"streams_live\":%llu,\"events_appended\":%llu,"
                "\"readers_open\":%llu,\"readers_dropped\":%llu,\"append_errors\":%llu,"
                "\"store\":{\"kind\":\"%s\",\"appends\":%llu,\"records_read\":%llu,"
                "\"cache_hits\":%llu,\"cache_misses\":%llu,\"fsyncs\":%llu,\"open_files\":%llu,"
                "\"streams\":%llu,\"cache_bytes\":%llu}}",
                (unsigned long long)hs.connections_open, (unsigned long long)hs.connections_total,
                (unsigned long long)hs.requests_total, (unsigned long long)hs.streams_open,
                (unsigned long long)hs.bytes_queued, (unsigned long long)ss.subscribers,
                (unsigned long long)ss.streams_live, (unsigned long long)ss.events_appended,
                (unsigned long long)as.readers_open, (unsigned long long)as.readers_dropped,
                (unsigned long long)as.append_errors, ds_store_kind(app->store),
                (unsigned long long)st.appends, (unsigned long long)st.records_read,
                (unsigned long long)st.cache_hits, (unsigned long long)st.cache_misses,
                (unsigned long long)st.fsyncs, (unsigned long long)st.open_files,
                (unsigned long long)st.streams, (unsigned long long)st.cache_bytes);
  if (app->lua) {
    ds_lua_host_stats_t ls;
    ds_lua_host_stats(app->lua, &ls);
    b.len--; /* reopen the object */
    ds_buf_printf(&b,
                  ",\"lua\":{\"tasks_live\":%llu,\"refs\":%llu,\"hooks_failed\":%llu,"
                  "\"events_dispatched\":%llu,\"tasks_killed\":%llu,\"mem_bytes\":%llu,"
                  "\"tasks_refused\":%llu,\"plugins_disabled\":%llu}}",
                  (unsigned long long)ls.tasks_live, (unsigned long long)ls.refs,
                  (unsigned long long)ls.hooks_failed, (unsigned long long)ls.events_dispatched,
                  (unsigned long long)ls.tasks_killed, (unsigned long long)ls.mem_bytes,
                  (unsigned long long)ls.tasks_refused, (unsigned long long)ls.plugins_disabled);
  }
  respond_json(req, 200, &b);
  ds_buf_free(&b);
}

/* Security and CORS headers on every response, this layer's own errors included. */
static void add_common_headers(void *ud, const ds_http_req_t *req, const ds_http_header_t *hdrs,
                               ds_buf_t *out) {
  app_t *app = ud;
  if (!ds_http_headers_have(hdrs, "X-Content-Type-Options"))
    ds_buf_puts(out, "X-Content-Type-Options: nosniff\r\n");
  if (!ds_http_headers_have(hdrs, "Cross-Origin-Resource-Policy"))
    ds_buf_puts(out, "Cross-Origin-Resource-Policy: cross-origin\r\n");
  if (!req || ds_http_headers_have(hdrs, "Access-Control-Allow-Origin")) return;
  if (ds_http_req_header_count(req, "origin") != 1) return; /* none, or refused (two) */
  const char *allow = ds_auth_cors_origin(app->auth, ds_http_req_header(req, "origin"));
  if (!allow) return;
  ds_buf_printf(out, "Access-Control-Allow-Origin: %s\r\n", allow);
  if (strcmp(allow, "*") != 0) ds_buf_puts(out, "Vary: Origin\r\n");
  ds_buf_puts(out, "Access-Control-Expose-Headers: Stream-Offset, Stream-Next-Offset, "
                   "Stream-Up-To-Date, Stream-Closed, Stream-Cursor, Stream-TTL, "
                   "Stream-Expires-At, Stream-SSE-Data-Encoding, ETag, Location, Producer-Epoch, "
                   "Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq\r\n");
}

/* Cross-site request forgery: a browser labels every cross-origin request (and every
 * POST) with its page's Origin, and a "simple" request (a no-cors fetch, a form) reaches us
 * without any preflight. So a request from an origin that is not allowed is refused here,
 * before routing, whatever its method, content type or route: nothing is stored, nothing
 * runs. Requests without Origin (curl, servers) pass. Two Origin headers are refused
 * rather than guessing which one a browser meant. */
static int origin_allowed(app_t *app, ds_http_req_t *req) {
  int n = ds_http_req_header_count(req, "origin");
  const char *origin = ds_http_req_header(req, "origin");
  if (n == 0 || (n == 1 && ds_auth_origin_allowed(app->auth, origin))) return 1;
  char shown[104];
  size_t k = 0;
  for (const char *p = origin; *p && k < sizeof shown - 4; p++)
    shown[k++] = (*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\') ? *p : '?';
  shown[k] = '\0';
  if (n > 1) ds_http_respond_error(req, 403, NULL, "cross-origin request refused: more than one Origin header");
  else
    ds_http_respond_error(req, 403, NULL,
                          "cross-origin request refused: origin '%s' is not allowed (cors.allowed_origins)", shown);
  return 0;
}

/* CORS preflight (of an allowed origin: origin_allowed ran first): answered before
 * authorization, since browsers send no credentials. */
static void handle_preflight(app_t *app, ds_http_req_t *req) {
  const char *asked = ds_http_req_header(req, "access-control-request-headers");
  ds_http_header_t h[] = {
      {"Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, DELETE, OPTIONS"},
      {"Access-Control-Allow-Headers",
       asked && *asked ? asked
                       : "Authorization, Content-Type, Last-Event-ID, If-None-Match, Stream-TTL, "
                         "Stream-Expires-At, Stream-Seq, Stream-Closed, Stream-Forked-From, "
                         "Stream-Fork-Offset, Stream-Fork-Sub-Offset, Producer-Id, "
                         "Producer-Epoch, Producer-Seq"},
      {"Access-Control-Max-Age", "600"},
      {NULL, NULL}};
  ds_http_respond(req, 204, h, NULL, 0);
}

/* Authenticates the request's token, attaches its grant to the request (every handler
 * asks it again about the other streams a request names) and checks the URL path itself. */
static int authorize(app_t *app, ds_http_req_t *req) {
  if (!ds_auth_enabled(app->auth)) return 1;
  if (ds_protocol_self_authorized(app->protocol, req)) {
    /* a subscription callback / ack / release: its callback token (checked by the
     * protocol) is the credential; the grant allows nothing else */
    req->access = app->no_access;
    return 1;
  }
  char *qt = NULL;
  size_t ql = 0;
  if (ds_http_query_get(req->query, "access_token", &qt, &ql) < 0) {
    free(qt);
    qt = NULL;
  }
  const ds_access_t *grant = NULL;
  int rc = ds_auth_authenticate(app->auth, ds_http_req_header(req, "authorization"), qt, &grant);
  free(qt);
  if (rc == 401) {
    static const ds_http_header_t h[] = {{"WWW-Authenticate", "Bearer"}, {NULL, NULL}};
    ds_http_respond_error(req, 401, h, "missing or invalid bearer token");
    return 0;
  }
  req->access = grant;
  int scope = ds_auth_scope_for_method(req->method);
  if (!ds_access_allows(grant, scope, req->path, req->path_len)) {
    ds_http_respond_error(req, 403, NULL, "token not allowed to %s %.*s",
                          scope == DS_SCOPE_READ ? "read" : "append to",
                          (int)(req->path_len > 200 ? 200 : req->path_len), req->path);
    return 0;
  }
  return 1;
}

static void route(void *ud, ds_http_req_t *req) {
  app_t *app = ud;
  if (!origin_allowed(app, req)) return;
  if (strcmp(req->method, "OPTIONS") == 0 && ds_http_req_header(req, "origin")) {
    handle_preflight(app, req);
    return;
  }
  if (!authorize(app, req)) return;
  if (path_is(req, "/agents")) {
    ds_agents_api_handle(app->agents, req);
    return;
  }
  if (path_is(req, "/v1/stream")) {
    ds_protocol_handle(app->protocol, req);
    return;
  }
  int get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
  if (get && path_eq(req, "/health")) {
    ds_buf_t b = DS_BUF_INIT;
    ds_buf_puts(&b, "{\"status\":\"ok\"}");
    respond_json(req, 200, &b);
    ds_buf_free(&b);
    return;
  }
  if (get && path_eq(req, "/debug/stats")) {
    handle_stats(app, req);
    return;
  }
  if (app->lua && ds_lua_host_handle(app->lua, req)) return;
  ds_http_respond_error(req, 404, NULL, "no route for %s %.*s", req->method,
                        (int)(req->path_len > 200 ? 200 : req->path_len), req->path);
}

static void on_http_stopped(void *ud) {
  app_t *app = ud;
  app->http_stopped = 1;
  app->http = NULL;
}

static void begin_shutdown(app_t *app, const char *why) {
  if (app->stopping) return;
  app->stopping = 1;
  ds_info("server", "shutting down (%s)", why);
  uv_close((uv_handle_t *)&app->sigint, NULL);
  uv_close((uv_handle_t *)&app->sigterm, NULL);
  uv_close((uv_handle_t *)&app->trim, NULL);
  /* The agent first: it closes its requests in flight (request-cancelled, reason
   * "shutdown"), then its tasks are cancelled and Lua-routed requests answered. Then live
   * readers end (final chunk, after those events), then HTTP stops: connections with a
   * complete response are flushed; in-flight appends were already stored synchronously. */
  ds_lua_host_shutdown(app->lua);
  ds_agents_api_shutdown(app->agents);
  ds_protocol_shutdown(app->protocol);
  ds_http_server_stop(app->http, on_http_stopped, app);
}

/* glibc keeps freed memory inside its heaps and arenas; under a long mixed load (events of
 * every size, helper threads of libuv and libcurl allocating in their own arenas) the
 * holes add up and RSS creeps up although the bytes in use stay flat (the soak run shows
 * it: bench/soak.sh). Handing free pages back every 30 s keeps RSS at the working set. */
#define DS_TRIM_INTERVAL_MS 30000
static void on_trim(uv_timer_t *t) {
  (void)t;
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

static void on_signal(uv_signal_t *h, int signum) {
  app_t *app = h->data;
  begin_shutdown(app, signum == SIGINT ? "SIGINT" : "SIGTERM");
}

static void print_listening(const ds_config_t *cfg, int port) {
  const char *host = cfg->host;
  if (strchr(host, ':')) printf("listening on http://[%s]:%d\n", host, port);
  else printf("listening on http://%s:%d\n", host, port);
  fflush(stdout);
}

/* Connections and open stream files are descriptors: raise the soft limit to the hard
 * one (as Redis and nginx do), and warn when even that cannot hold what the config asks
 * for. A store whose LRU of open files is smaller than the set of streams being written
 * reopens a file on almost every append, which costs more than the append itself. */
static void raise_fd_limit(const ds_config_t *cfg) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return;
  if (rl.rlim_cur < rl.rlim_max) {
    rlim_t old = rl.rlim_cur;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) rl.rlim_cur = old;
  }
  /* max_connections is a ceiling, not a need; the store's files plus a working margin of
   * connections are what must fit */
  rlim_t want = (rlim_t)cfg->max_open_files + 1024;
  if (rl.rlim_cur < want)
    ds_warn("server", "open-file limit %llu leaves little room beside limits.max_open_files "
            "(%u); lower it or raise the limit (ulimit -n)", (unsigned long long)rl.rlim_cur,
            cfg->max_open_files);
}

int ds_app_run(const ds_config_t *cfg) {
  app_t app;
  memset(&app, 0, sizeof app);
  app.cfg = cfg;
  char err[512];
  int status = 1;
  signal(SIGPIPE, SIG_IGN);
  raise_fd_limit(cfg);
#if defined(__GLIBC__)
  /* All request work runs on the loop thread; the few helper threads (libuv's pool,
   * libcurl's resolver) gain nothing from arenas of their own but fragmentation. */
  mallopt(M_ARENA_MAX, 2);
#endif
  uv_loop_init(&app.loop);

  char *data_dir = cfg->data_dir;
  app.auth = ds_auth_load(cfg->config_path, err, sizeof err);
  if (!app.auth) {
    ds_error("server", "refusing to start: %s", err);
    goto done_loop;
  }
  if (ds_auth_enabled(app.auth)) ds_info("server", "bearer-token authorization is on");
  app.no_access = ds_access_new(0, NULL, 0);
  ds_store_opts_t so = {.kind = cfg->storage,
                        .data_dir = data_dir,
                        .fsync = cfg->fsync,
                        .fsync_interval_ms = cfg->fsync_interval_ms,
                        .tail_cache_bytes = cfg->tail_cache_bytes,
                        .tail_cache_total_bytes = cfg->tail_cache_total_bytes,
                        .max_open_files = cfg->max_open_files,
                        .loop = &app.loop};
  if (ds_store_open(&so, &app.store, err, sizeof err) != 0) {
    ds_error("server", "cannot open the %s store in %s: %s", cfg->storage, data_dir, err);
    goto done_loop;
  }
  ds_streams_opts_t sto = {.max_json_depth = cfg->max_json_depth, .max_event_bytes = cfg->max_body_bytes};
  app.streams = ds_streams_new(app.store, &sto);
  ds_agents_opts_t ao = {.keepalive_ms = cfg->keepalive_ms,
                         .subscriber_backlog_bytes = cfg->subscriber_backlog_bytes};
  app.agents = ds_agents_api_new(&app.loop, app.streams, &ao);
  ds_protocol_opts_t po = {.long_poll_timeout_ms = cfg->long_poll_timeout_ms,
                           .sse_reconnect_ms = cfg->sse_reconnect_ms,
                           .subscriptions = cfg->subscriptions,
                           .fsync = cfg->fsync,
                           .fsync_interval_ms = cfg->fsync_interval_ms,
                           .webhook_allow_networks = (const char *const *)cfg->webhook_allow_networks,
                           .nwebhook_allow_networks = cfg->nwebhook_allow_networks};
  /* subscriptions are as durable as the store: files beside the streams, or memory */
  ds_buf_t subs_dir = DS_BUF_INIT;
  if (strcmp(ds_store_kind(app.store), "yaml") == 0) {
    ds_buf_printf(&subs_dir, "%s/subscriptions", data_dir);
    po.state_dir = ds_buf_cstr(&subs_dir);
  }
  app.protocol = ds_protocol_new(&app.loop, app.streams, &po);
  ds_buf_free(&subs_dir);
  if (cfg->agents_enabled) {
    /* the agent's marks (open requests) are as durable as the store: beside the streams */
    ds_buf_t marks_dir = DS_BUF_INIT;
    if (strcmp(ds_store_kind(app.store), "yaml") == 0) ds_buf_printf(&marks_dir, "%s/agents", data_dir);
    ds_lua_host_opts_t lo = {.config_path = cfg->config_path,
                             .state_dir = marks_dir.len ? ds_buf_cstr(&marks_dir) : NULL};
    app.lua = ds_lua_host_new(&app.loop, app.streams, &lo, err, sizeof err);
    ds_buf_free(&marks_dir);
    if (!app.lua) {
      ds_error("server", "refusing to start: Lua agent layer: %s", err);
      ds_agents_api_shutdown(app.agents);
      ds_protocol_shutdown(app.protocol);
      goto done_streams;
    }
  }

  ds_http_opts_t ho = {.host = cfg->host,
                       .port = cfg->port,
                       .max_header_bytes = cfg->max_header_bytes,
                       .max_body_bytes = cfg->max_body_bytes,
                       .header_timeout_ms = cfg->header_timeout_ms,
                       .body_timeout_ms = cfg->body_timeout_ms,
                       .idle_timeout_ms = cfg->idle_timeout_ms,
                       .max_connections = cfg->max_connections,
                       .stream_backlog_limit = cfg->subscriber_backlog_bytes + (1u << 20)};
  if (ds_http_server_start(&app.loop, &ho, route, &app, &app.http, err, sizeof err) != 0) {
    ds_error("server", "cannot listen on %s:%d: %s", cfg->host, cfg->port, err);
    ds_agents_api_shutdown(app.agents);
    ds_protocol_shutdown(app.protocol);
    ds_lua_host_shutdown(app.lua);
    goto done_streams;
  }
  ds_http_server_set_header_hook(app.http, add_common_headers, &app);
  uv_timer_init(&app.loop, &app.trim);
  uv_timer_start(&app.trim, on_trim, DS_TRIM_INTERVAL_MS, DS_TRIM_INTERVAL_MS);
  uv_unref((uv_handle_t *)&app.trim); /* never keeps the loop alive by itself */
  uv_signal_init(&app.loop, &app.sigint);
  uv_signal_init(&app.loop, &app.sigterm);
  app.sigint.data = app.sigterm.data = &app;
  uv_signal_start(&app.sigint, on_signal, SIGINT);
  uv_signal_start(&app.sigterm, on_signal, SIGTERM);

  ds_info("server", "durable-stream serving %s store in %s (fsync %s)", cfg->storage, data_dir,
          cfg->fsync == DS_FSYNC_ALWAYS ? "always" : cfg->fsync == DS_FSYNC_NEVER ? "never" : "interval");
  print_listening(cfg, ds_http_server_port(app.http));
  uv_run(&app.loop, UV_RUN_DEFAULT);
  status = 0;

done_streams:
  uv_run(&app.loop, UV_RUN_DEFAULT); /* let closing handles finish */
  ds_lua_host_free(app.lua); /* logs leaked refs/tasks, if any */
  ds_protocol_free(app.protocol); /* before the streams: it holds subscriptions on them */
  ds_streams_free(app.streams);
  ds_agents_api_free(app.agents);
  ds_store_close(app.store);
done_loop:
  uv_run(&app.loop, UV_RUN_DEFAULT);
  ds_auth_free(app.auth);
  ds_access_free(app.no_access);
  if (uv_loop_close(&app.loop) != 0) {
    ds_warn("server", "event loop still had open handles at exit");
  }
  if (status == 0) ds_info("server", "stopped cleanly");
  return status;
}
