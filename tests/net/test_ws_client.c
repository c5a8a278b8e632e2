/* test_ws_client.c - cmocka tests of the libwebsockets-on-uv WebSocket client.
 *
 * Provides: tests of the pure reassembly queue (fragments, binary flag, size bound) and of
 * real connections to a python3-websockets peer (tests/net/ws_peer.py, started here with
 * /usr/bin/python3 on 127.0.0.1): echo in order, handshake headers, fragmented messages,
 * frames queued while connecting, ping/pong, refused port, 401 handshake, connect timeout,
 * peer close with code, dropped socket, oversized message, idle close, release while
 * connecting/open, shutdown with open connections. Each test ends with the lws context
 * destroyed in two stages and uv_loop_close() == 0.
 * Must not: assert on timings; waits poll the loop with deadlines.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "core/buf.h"
#include "core/err.h"
#include "net/ws_client.h"

/* ---------------- the python peer (one per test binary) ---------------- */

static pid_t peer_pid;
static int peer_port;

/* Starts ws_peer.py (with TLS when cert is given); returns its pid, port in *port. */
static pid_t spawn_peer(const char *cert, const char *key, int *port) {
  int fds[2];
  if (pipe(fds) != 0) return -1;
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(fds[1], 1);
    close(fds[0]);
    close(fds[1]);
    if (cert)
      execl("/usr/bin/python3", "python3", DS_SOURCE_DIR "/tests/net/ws_peer.py", "--cert", cert, "--key", key,
            (char *)NULL);
    else execl("/usr/bin/python3", "python3", DS_SOURCE_DIR "/tests/net/ws_peer.py", (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  FILE *f = fdopen(fds[0], "r");
  char line[64] = "";
  int ok = fgets(line, sizeof line, f) && sscanf(line, "PORT=%d", port) == 1;
  fclose(f);
  if (!ok) {
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    return -1;
  }
  return pid;
}

static void stop_pid(pid_t pid) {
  if (pid > 0) {
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
  }
}

static void peer_stop(void) {
  stop_pid(peer_pid);
  peer_pid = 0;
}

static int group_setup(void **state) {
  peer_pid = spawn_peer(NULL, NULL, &peer_port);
  return peer_pid > 0 ? 0 : -1;
}

static int group_teardown(void **state) {
  peer_stop();
  return 0;
}

/* ---------------- per-test loop and client ---------------- */

typedef struct {
  uv_loop_t loop;
  uv_timer_t pulse; /* keeps UV_RUN_ONCE returning while we poll */
  ds_ws_client_t *c;
  int events;
} fx_t;

static void on_pulse(uv_timer_t *t) {}

static int setup(void **state) {
  fx_t *fx = calloc(1, sizeof *fx);
  uv_loop_init(&fx->loop);
  uv_timer_init(&fx->loop, &fx->pulse);
  uv_timer_start(&fx->pulse, on_pulse, 5, 5);
  assert_int_equal(0, ds_ws_client_new(&fx->loop, &fx->c));
  *state = fx;
  return 0;
}

static int teardown(void **state) {
  fx_t *fx = *state;
  ds_ws_client_close(fx->c); /* stage 1 */
  uv_close((uv_handle_t *)&fx->pulse, NULL);
  uv_run(&fx->loop, UV_RUN_DEFAULT);
  assert_int_equal(0, ds_ws_client_free(fx->c)); /* stage 2 */
  assert_int_equal(0, uv_loop_close(&fx->loop));
  free(fx);
  return 0;
}

static void on_event(ds_ws_t *ws, void *ud) {
  fx_t *fx = ud;
  fx->events++;
}

typedef int (*cond_fn)(ds_ws_t *ws, void *arg);

static int run_until(fx_t *fx, ds_ws_t *ws, cond_fn cond, void *arg, int ms) {
  uint64_t deadline = uv_hrtime() + (uint64_t)ms * 1000000u;
  while (!cond(ws, arg)) {
    if (uv_hrtime() > deadline) return -1;
    uv_run(&fx->loop, UV_RUN_ONCE);
  }
  return 0;
}

static int is_open(ds_ws_t *ws, void *arg) { return ds_ws_state(ws) != DS_WS_CONNECTING; }
static int has_ended(ds_ws_t *ws, void *arg) { return ds_ws_state(ws) == DS_WS_ENDED; }
static int has_n(ds_ws_t *ws, void *arg) { return ds_ws_pending(ws) >= (size_t)(intptr_t)arg; }
static int has_pong(ds_ws_t *ws, void *arg) { return ds_ws_pongs(ws) >= 1; }

static ds_ws_t *open_ws(fx_t *fx, const char *path, const ds_ws_opts_t *base) {
  char url[256];
  snprintf(url, sizeof url, "ws://127.0.0.1:%d%s", peer_port, path);
  ds_ws_opts_t o = base ? *base : (ds_ws_opts_t){0};
  o.url = url;
  ds_ws_t *ws = NULL;
  assert_int_equal(0, ds_ws_connect(fx->c, &o, on_event, fx, &ws));
  assert_non_null(ws);
  return ws;
}

static void expect_msg(ds_ws_t *ws, const char *text) {
  ds_ws_msg_t *m = ds_ws_pop(ws);
  assert_non_null(m);
  assert_int_equal(0, m->binary);
  assert_int_equal(strlen(text), m->len);
  assert_memory_equal(text, m->data, m->len);
  free(m);
}

/* ---------------- reassembly ---------------- */

static void test_rx_fragments(void **state) {
  ds_ws_rx_t rx;
  ds_ws_rx_init(&rx, 16);
  assert_int_equal(0, ds_ws_rx_feed(&rx, "hel", 3, 0, 0));
  assert_null(ds_ws_rx_pop(&rx));
  assert_int_equal(0, ds_ws_rx_feed(&rx, "lo", 2, 1, 1)); /* binary is read on the first piece */
  assert_int_equal(0, ds_ws_rx_feed(&rx, "", 0, 1, 1));
  assert_int_equal(2, rx.count);
  ds_ws_msg_t *m = ds_ws_rx_pop(&rx);
  assert_string_equal("hello", m->data);
  assert_int_equal(0, m->binary);
  free(m);
  m = ds_ws_rx_pop(&rx);
  assert_int_equal(0, m->len);
  assert_int_equal(1, m->binary);
  free(m);
  /* bounded: 17 bytes in pieces is refused, the next message is fine */
  assert_int_equal(0, ds_ws_rx_feed(&rx, "0123456789", 10, 0, 0));
  assert_int_equal(DS_ETOOBIG, ds_ws_rx_feed(&rx, "0123456", 7, 1, 0));
  assert_int_equal(0, ds_ws_rx_feed(&rx, "0123456789abcdef", 16, 1, 0));
  m = ds_ws_rx_pop(&rx);
  assert_int_equal(16, m->len);
  free(m);
  assert_int_equal(0, ds_ws_rx_feed(&rx, "left", 4, 0, 0));
  assert_int_equal(0, ds_ws_rx_feed(&rx, "queued", 6, 1, 0));
  assert_int_equal(0, ds_ws_rx_feed(&rx, "partial", 7, 0, 0));
  ds_ws_rx_free(&rx); /* frees the queue and the partial message */
  assert_int_equal(0, rx.count);
}

/* ---------------- connections ---------------- */

static void test_echo_in_order(void **state) {
  fx_t *fx = *state;
  ds_ws_t *ws = open_ws(fx, "/echo", NULL);
  /* queued while connecting: written once open */
  assert_int_equal(0, ds_ws_send_text(ws, "one", 3));
  assert_int_equal(0, run_until(fx, ws, is_open, NULL, 5000));
  assert_int_equal(DS_WS_OPEN, ds_ws_state(ws));
  assert_int_equal(0, ds_ws_send_text(ws, "two", 3));
  assert_int_equal(0, ds_ws_send_text(ws, "three \xe2\x98\x95", 9));
  assert_int_equal(0, run_until(fx, ws, has_n, (void *)3, 5000));
  expect_msg(ws, "one");
  expect_msg(ws, "two");
  expect_msg(ws, "three \xe2\x98\x95");
  assert_null(ds_ws_pop(ws));
  assert_null(ds_ws_error(ws, NULL, NULL, NULL));
  assert_true(fx->events >= 2);
  ds_ws_close(ws, 1000, "done");
  assert_int_equal(DS_ECLOSED, ds_ws_send_text(ws, "late", 4));
  assert_int_equal(0, run_until(fx, ws, has_ended, NULL, 5000));
  assert_string_equal(DS_WS_ELOCAL, ds_ws_error(ws, NULL, NULL, NULL));
  ds_ws_release(ws);
}

static void test_headers_sent(void **state) {
  fx_t *fx = *state;
  const char *hdrs[] = {"Authorization: Bearer abc123", "X-Test: yes"};
  ds_ws_opts_t o = {.headers = hdrs, .nheaders = 2};
  ds_ws_t *ws = open_ws(fx, "/headers", &o);
  assert_int_equal(0, run_until(fx, ws, has_n, (void *)1, 5000));
  expect_msg(ws, "Bearer abc123|yes");
  ds_ws_release(ws); /* release while open: clean close, freed when lws lets go */
}

static void test_fragmented_message(void **state) {
  fx_t *fx = *state;
  ds_ws_t *ws = open_ws(fx, "/fragmented", NULL);
  ds_buf_t b = DS_BUF_INIT;
  for (int i = 0; i < 3000; i++) ds_buf_putc(&b, (char)('a' + i % 26));
  assert_int_equal(0, ds_ws_send_text(ws, b.data, b.len));
  assert_int_equal(0, run_until(fx, ws, has_n, (void *)1, 5000));
  ds_ws_msg_t *m = ds_ws_pop(ws);
  assert_int_equal(b.len, m->len);
  assert_memory_equal(b.data, m->data, b.len);
  free(m);
  ds_buf_free(&b);
  ds_ws_close(ws, 1000, NULL);
  assert_int_equal(0, run_until(fx, ws, has_ended, NULL, 5000));
  ds_ws_release(ws);
}

static void test_ping_pong(void **state) {
  fx_t *fx = *state;
  ds_ws_t *ws = open_ws(fx, "/echo", NULL);
  assert_int_equal(0, run_until(fx, ws, is_open, NULL, 5000));
  assert_int_equal(0, ds_ws_ping(ws));
  assert_int_equal(0, run_until(fx, ws, has_pong, NULL, 5000));
  assert_int_equal(1, ds_ws_pongs(ws));
  ds_ws_release(ws);
}

static void test_refused(void **state) {
  fx_t *fx = *state;
  /* a port nobody listens on: bind, read the port, close */
  int s = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000001)};
  assert_int_equal(0, bind(s, (struct sockaddr *)&a, sizeof a));
  socklen_t al = sizeof a;
  getsockname(s, (struct sockaddr *)&a, &al);
  close(s);
  char url[64];
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/", ntohs(a.sin_port));
  ds_ws_opts_t o = {.url = url};
  ds_ws_t *ws;
  assert_int_equal(0, ds_ws_connect(fx->c, &o, on_event, fx, &ws));
  assert_int_equal(0, run_until(fx, ws, has_ended, NULL, 5000));
  const char *msg;
  assert_string_equal(DS_WS_ECONNREFUSED, ds_ws_error(ws, &msg, NULL, NULL));
  assert_non_null(msg);
  assert_null(strchr(msg, '\n'));
  assert_true(fx->events >= 1);
  assert_int_equal(DS_ECLOSED, ds_ws_send_text(ws, "x", 1));
  ds_ws_release(ws);
}

static void test_handshake_401(void **state) {
  fx_t *fx = *state;
  ds_ws_t *ws = open_ws(fx, "/reject", NULL);
  assert_int_equal(0, run_until(fx, ws, has_ended, NULL, 5000));
  int status = 0;
  const char *msg;
  assert_string_equal(DS_WS_EHANDSHAKE, ds_ws_error(ws, &msg, &status, NULL));
  assert_int_equal(401, status);
  assert_non_null(strstr(msg, "401"));
  ds_ws_release(ws);
}

static void test_connect_timeout(void **state) {
  fx_t *fx = *state;
  ds_ws_opts_t o = {.connect_timeout_ms = 300};
  ds_ws_t *ws = open_ws(fx, "/stall", &o);
  assert_int_equal(0, run_until(fx, ws, has_ended, NULL, 10000));
  assert_string_equal(DS_WS_ETIMEDOUT, ds_ws_error(ws, NULL, NULL, NULL));
  ds_ws_release(ws);
}

static void test_peer_close_code(void **state) {
  fx_t *fx = *state;
  ds_ws_t *ws = open_ws(fx, "/close", NULL);
  assert_int_equal(0, ds_ws_send_text(ws, "last words", 10));
  assert_int_equal(0, run_until(fx, ws, has_ended, NULL, 5000));
  int code = 0;
  assert_string_equal(DS_WS_ECLOSED, ds_ws_error(ws, NULL, NULL, &code));
  assert_int_equal(4001, code);
  expect_msg(ws, "last words"); /* what arrived before the close stays readable */
  assert_null(ds_ws_pop(ws));
  ds_ws_release(ws);
}

static void test_peer_drop(void **state) {
  fx_t *fx = *state;
  ds_ws_t *ws = open_ws(fx, "/drop", NULL);
  assert_int_equal(0, ds_ws_send_text(ws, "bye", 3));
  assert_int_equal(0, run_until(fx, ws, has_ended, NULL, 5000));
  int code = -1;
  assert_string_equal(DS_WS_ECLOSED, ds_ws_error(ws, NULL, NULL, &code));
  assert_int_equal(0, code);
  expect_msg(ws, "bye");
  ds_ws_release(ws);
}

static void test_message_too_big(void **state) {
  fx_t *fx = *state;
  ds_ws_opts_t o = {.max_message = 1000};
  ds_ws_t *ws = open_ws(fx, "/big?n=5000", &o);
  assert_int_equal(0, run_until(fx, ws, has_ended, NULL, 5000));
  assert_string_equal(DS_WS_ETOOBIG, ds_ws_error(ws, NULL, NULL, NULL));
  assert_null(ds_ws_pop(ws));
  ds_ws_release(ws);
  /* the same size within the bound is delivered whole */
  ds_ws_opts_t o2 = {.max_message = 5000};
  ws = open_ws(fx, "/big?n=5000", &o2);
  assert_int_equal(0, run_until(fx, ws, has_n, (void *)1, 5000));
  ds_ws_msg_t *m = ds_ws_pop(ws);
  assert_int_equal(5000, m->len);
  free(m);
  ds_ws_release(ws);
}

static void test_idle_close(void **state) {
  fx_t *fx = *state;
  ds_ws_opts_t o = {.idle_timeout_ms = 150};
  ds_ws_t *ws = open_ws(fx, "/echo", &o);
  assert_int_equal(0, run_until(fx, ws, has_ended, NULL, 5000));
  assert_string_equal(DS_WS_EIDLE, ds_ws_error(ws, NULL, NULL, NULL));
  ds_ws_release(ws);
}

static void test_release_while_connecting(void **state) {
  fx_t *fx = *state;
  ds_ws_t *ws = open_ws(fx, "/stall", NULL);
  ds_ws_release(ws); /* abandoned at once; freed when lws lets go */
  ds_ws_t *ws2 = open_ws(fx, "/echo", NULL);
  assert_int_equal(0, run_until(fx, ws2, is_open, NULL, 5000));
  ds_ws_release(ws2);
  for (int i = 0; i < 20; i++) uv_run(&fx->loop, UV_RUN_ONCE);
  assert_int_equal(0, ds_ws_client_live(fx->c));
}

static void test_shutdown_with_open_connections(void **state) {
  fx_t *fx = *state;
  ds_ws_t *a = open_ws(fx, "/echo", NULL);
  ds_ws_t *b = open_ws(fx, "/stall", NULL);
  assert_int_equal(0, run_until(fx, a, is_open, NULL, 5000));
  int before = fx->events;
  ds_ws_client_close(fx->c); /* stage 1 while both are alive */
  assert_true(fx->events >= before + 2); /* both owners were told */
  assert_string_equal(DS_WS_ECLOSED, ds_ws_error(a, NULL, NULL, NULL));
  assert_string_equal(DS_WS_ECLOSED, ds_ws_error(b, NULL, NULL, NULL));
  ds_ws_t *c = NULL;
  ds_ws_opts_t o = {.url = "ws://127.0.0.1:1/"};
  assert_int_equal(DS_ECLOSED, ds_ws_connect(fx->c, &o, on_event, fx, &c));
  ds_ws_release(a);
  ds_ws_release(b);
}

static void test_host_names(void **state) {
  fx_t *fx = *state;
  /* resolved off the loop, then connected by address; the name goes into Host */
  char url[96];
  snprintf(url, sizeof url, "ws://localhost:%d/echo", peer_port);
  ds_ws_opts_t o = {.url = url};
  ds_ws_t *ws;
  assert_int_equal(0, ds_ws_connect(fx->c, &o, on_event, fx, &ws));
  assert_int_equal(DS_WS_CONNECTING, ds_ws_state(ws));
  assert_int_equal(0, ds_ws_send_text(ws, "by name", 7));
  assert_int_equal(0, run_until(fx, ws, has_n, (void *)1, 5000));
  expect_msg(ws, "by name");
  ds_ws_release(ws);
  /* a name that does not resolve */
  ds_ws_opts_t bad = {.url = "ws://no-such-host.invalid/"};
  assert_int_equal(0, ds_ws_connect(fx->c, &bad, on_event, fx, &ws));
  assert_int_equal(0, run_until(fx, ws, has_ended, NULL, 20000));
  const char *msg;
  assert_string_equal(DS_WS_EDNS, ds_ws_error(ws, &msg, NULL, NULL));
  assert_non_null(strstr(msg, "no-such-host.invalid"));
  ds_ws_release(ws);
  /* released and closed while resolving: freed when the resolution returns */
  assert_int_equal(0, ds_ws_connect(fx->c, &o, on_event, fx, &ws));
  ds_ws_release(ws);
  ds_ws_t *ws2;
  assert_int_equal(0, ds_ws_connect(fx->c, &o, on_event, fx, &ws2));
  ds_ws_close(ws2, 1000, NULL);
  assert_int_equal(0, run_until(fx, ws2, has_ended, NULL, 5000));
  assert_string_equal(DS_WS_ELOCAL, ds_ws_error(ws2, NULL, NULL, NULL));
  ds_ws_release(ws2);
  /* shut down while resolving: ended at once, freed once the resolution returns */
  assert_int_equal(0, ds_ws_connect(fx->c, &o, on_event, fx, &ws));
  ds_ws_client_close(fx->c);
  assert_string_equal(DS_WS_ECLOSED, ds_ws_error(ws, NULL, NULL, NULL));
  ds_ws_release(ws);
}

/* wss:// against a self-signed certificate made here with the openssl CLI: accepted only
 * with `insecure`, otherwise a TLS failure (ETLS). */
static void test_tls(void **state) {
  fx_t *fx = *state;
  char dir[] = "/tmp/ds-test-ws-tls-XXXXXX";
  assert_non_null(mkdtemp(dir));
  char cmd[512], cert[128], key[128];
  snprintf(cert, sizeof cert, "%s/cert.pem", dir);
  snprintf(key, sizeof key, "%s/key.pem", dir);
  snprintf(cmd, sizeof cmd,
           "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -keyout %s -out %s "
           ">/dev/null 2>&1",
           key, cert);
  assert_int_equal(0, system(cmd));
  int port = 0;
  pid_t pid = spawn_peer(cert, key, &port);
  assert_true(pid > 0);
  char url[96];
  snprintf(url, sizeof url, "wss://127.0.0.1:%d/echo", port);
  ds_ws_opts_t o = {.url = url, .insecure = 1};
  ds_ws_t *ws;
  assert_int_equal(0, ds_ws_connect(fx->c, &o, on_event, fx, &ws));
  assert_int_equal(0, ds_ws_send_text(ws, "over tls", 8));
  assert_int_equal(0, run_until(fx, ws, has_n, (void *)1, 10000));
  expect_msg(ws, "over tls");
  ds_ws_release(ws);
  ds_ws_opts_t strict = {.url = url};
  assert_int_equal(0, ds_ws_connect(fx->c, &strict, on_event, fx, &ws));
  assert_int_equal(0, run_until(fx, ws, has_ended, NULL, 10000));
  const char *msg;
  const char *code = ds_ws_error(ws, &msg, NULL, NULL);
  if (strcmp(code, DS_WS_ETLS) != 0) fail_msg("expected ETLS, got %s: %s", code, msg);
  ds_ws_release(ws);
  stop_pid(pid);
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  assert_int_equal(0, system(cmd));
}

static void test_bad_urls(void **state) {
  fx_t *fx = *state;
  const char *bad[] = {"http://127.0.0.1/", "ws://", "ws://h:0/", "ws://h:99999/", "ws://[::1/", "ws://h:x/"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    ds_ws_opts_t o = {.url = bad[i]};
    ds_ws_t *ws = NULL;
    assert_int_equal(DS_EINVAL, ds_ws_connect(fx->c, &o, on_event, fx, &ws));
    assert_null(ws);
  }
  const char *hdr[] = {"no colon here"};
  char url[64];
  snprintf(url, sizeof url, "ws://127.0.0.1:%d/echo", peer_port);
  ds_ws_opts_t o = {.url = url, .headers = hdr, .nheaders = 1};
  ds_ws_t *ws = NULL;
  assert_int_equal(DS_EINVAL, ds_ws_connect(fx->c, &o, on_event, fx, &ws));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_rx_fragments),
      cmocka_unit_test_setup_teardown(test_echo_in_order, setup, teardown),
      cmocka_unit_test_setup_teardown(test_headers_sent, setup, teardown),
      cmocka_unit_test_setup_teardown(test_fragmented_message, setup, teardown),
      cmocka_unit_test_setup_teardown(test_ping_pong, setup, teardown),
      cmocka_unit_test_setup_teardown(test_refused, setup, teardown),
      cmocka_unit_test_setup_teardown(test_handshake_401, setup, teardown),
      cmocka_unit_test_setup_teardown(test_connect_timeout, setup, teardown),
      cmocka_unit_test_setup_teardown(test_peer_close_code, setup, teardown),
      cmocka_unit_test_setup_teardown(test_peer_drop, setup, teardown),
      cmocka_unit_test_setup_teardown(test_message_too_big, setup, teardown),
      cmocka_unit_test_setup_teardown(test_idle_close, setup, teardown),
      cmocka_unit_test_setup_teardown(test_release_while_connecting, setup, teardown),
      cmocka_unit_test_setup_teardown(test_shutdown_with_open_connections, setup, teardown),
      cmocka_unit_test_setup_teardown(test_host_names, setup, teardown),
      cmocka_unit_test_setup_teardown(test_tls, setup, teardown),
      cmocka_unit_test_setup_teardown(test_bad_urls, setup, teardown),
  };
  return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
