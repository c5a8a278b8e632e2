/* response.c - HTTP responses: whole responses, JSON errors, streaming (chunked or
 * close-delimited) responses fed with shared rbufs, drain and close callbacks, reason
 * phrases.
 *
 * Provides: the response half of http.h plus ds__queue_error (this layer's own errors)
 * and ds__append_json_string.
 * Must not: touch sockets directly; everything goes through the connection's output
 * queue (conn.c), which flushes once per loop iteration.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/err.h"
#include "core/log.h"
#include "http/http_int.h"

const char *ds_http_status_text(int status) {
  switch (status) {
  case 100: return "Continue";
  case 101: return "Switching Protocols";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 206: return "Partial Content";
  case 301: return "Moved Permanently";
  case 302: return "Found";
  case 303: return "See Other";
  case 304: return "Not Modified";
  case 307: return "Temporary Redirect";
  case 308: return "Permanent Redirect";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 406: return "Not Acceptable";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 410: return "Gone";
  case 411: return "Length Required";
  case 412: return "Precondition Failed";
  case 413: return "Content Too Large";
  case 414: return "URI Too Long";
  case 415: return "Unsupported Media Type";
  case 416: return "Range Not Satisfiable";
  case 417: return "Expectation Failed";
  case 422: return "Unprocessable Content";
  case 425: return "Too Early";
  case 428: return "Precondition Required";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 501: return "Not Implemented";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  case 507: return "Insufficient Storage";
  default: break;
  }
  if (status >= 100 && status < 200) return "Informational";
  if (status >= 200 && status < 300) return "Success";
  if (status >= 300 && status < 400) return "Redirection";
  if (status >= 400 && status < 500) return "Client Error";
  return "Server Error";
}

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlongs, no
 * surrogates, at most U+10FFFF), or 0. */
static size_t utf8_seq_len(const char *s, size_t n) {
  const unsigned char *u = (const unsigned char *)s;
  size_t len;
  unsigned lo = 0x80, hi = 0xbf;
  if (u[0] >= 0xc2 && u[0] <= 0xdf) len = 2;
  else if (u[0] >= 0xe0 && u[0] <= 0xef) {
    len = 3;
    if (u[0] == 0xe0) lo = 0xa0;
    if (u[0] == 0xed) hi = 0x9f;
  } else if (u[0] >= 0xf0 && u[0] <= 0xf4) {
    len = 4;
    if (u[0] == 0xf0) lo = 0x90;
    if (u[0] == 0xf4) hi = 0x8f;
  } else {
    return 0;
  }
  if (n < len) return 0;
  if (u[1] < lo || u[1] > hi) return 0;
  for (size_t i = 2; i < len; i++)
    if (u[i] < 0x80 || u[i] > 0xbf) return 0;
  return len;
}

void ds__append_json_string(ds_buf_t *b, const char *s, size_t n) {
  static const char hex[] = "0123456789abcdef";
  ds_buf_putc(b, '"');
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)s[i];
    switch (ch) {
    case '"': ds_buf_append(b, "\\\"", 2); break;
    case '\\': ds_buf_append(b, "\\\\", 2); break;
    case '\n': ds_buf_append(b, "\\n", 2); break;
    case '\r': ds_buf_append(b, "\\r", 2); break;
    case '\t': ds_buf_append(b, "\\t", 2); break;
    case '\b': ds_buf_append(b, "\\b", 2); break;
    case '\f': ds_buf_append(b, "\\f", 2); break;
    default:
      if (ch < 0x20 || ch == 0x7f) {
        char e[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
        ds_buf_append(b, e, 6);
      } else if (ch < 0x80) {
        ds_buf_putc(b, (char)ch);
      } else {
        /* messages may quote client bytes: keep the JSON valid UTF-8 */
        size_t k = utf8_seq_len(s + i, n - i);
        if (k) {
          ds_buf_append(b, s + i, k);
          i += k - 1;
        } else {
          ds_buf_puts(b, "\\ufffd");
        }
      }
    }
  }
  ds_buf_putc(b, '"');
}

/* A header value or name that would split the head (CR/LF) is a caller bug; dropping it
 * keeps the response well-formed instead of letting it inject headers. */
static int header_ok(const ds_http_header_t *h) {
  return !strpbrk(h->name, "\r\n:") && !strpbrk(h->value, "\r\n");
}

static const char *find_header(const ds_http_header_t *hdrs, const char *name) {
  for (const ds_http_header_t *h = hdrs; h && h->name; h++)
    if (strcasecmp(h->name, name) == 0) return h->value ? h->value : "";
  return NULL;
}

int ds_http_headers_have(const ds_http_header_t *hdrs, const char *name) {
  return find_header(hdrs, name) != NULL;
}

#define has_header ds_http_headers_have

/* A handler may ask for the connection to end after this response. */
static int wants_close(const ds_http_header_t *hdrs) {
  const char *v = find_header(hdrs, "connection");
  return v && strcasecmp(v, "close") == 0;
}

void ds_http_server_set_header_hook(ds_http_server_t *srv, ds_http_header_hook_fn fn, void *ud) {
  srv->header_hook = fn;
  srv->header_hook_ud = ud;
}

/* Appends the status line, the caller's headers (minus those this layer owns) and Date. */
static void put_head(ds_buf_t *b, ds_http_server_t *srv, const ds_http_req_t *req, int status,
                     const ds_http_header_t *hdrs, int keep_user_cl) {
  /* formatted by hand: this runs for every response (printf was a visible cost) */
  char line[16] = "HTTP/1.1 000 ";
  int st = status >= 100 && status <= 999 ? status : 500;
  line[9] = (char)('0' + st / 100);
  line[10] = (char)('0' + st / 10 % 10);
  line[11] = (char)('0' + st % 10);
  ds_buf_append(b, line, 13);
  ds_buf_puts(b, ds_http_status_text(status));
  ds_buf_append(b, "\r\n", 2);
  for (const ds_http_header_t *h = hdrs; h && h->name; h++) {
    if (!h->value) continue;
    if (!header_ok(h)) {
      ds_warn("http", "dropping response header with CR/LF: %s", h->name);
      continue;
    }
    /* only names starting with c, t or d can be one this layer owns */
    char c0 = (char)(h->name[0] | 0x20);
    if (c0 == 'c' || c0 == 't' || c0 == 'd') {
      if (strcasecmp(h->name, "content-length") == 0 && !keep_user_cl) continue;
      if (strcasecmp(h->name, "transfer-encoding") == 0 || strcasecmp(h->name, "connection") == 0 ||
          strcasecmp(h->name, "date") == 0)
        continue;
    }
    ds_buf_puts(b, h->name);
    ds_buf_append(b, ": ", 2);
    ds_buf_puts(b, h->value);
    ds_buf_append(b, "\r\n", 2);
  }
  if (srv->header_hook) srv->header_hook(srv->header_hook_ud, req, hdrs, b);
  ds_buf_puts(b, "Date: ");
  ds_buf_puts(b, ds__server_date(srv));
  ds_buf_append(b, "\r\n", 2);
}

/* Stage bytes appended outside ds__conn_queue_copy are accounted here. */
static void account(ds__conn_t *c, size_t before) {
  size_t n = c->stage.len - before;
  c->backlog += n;
  c->srv->stats.bytes_queued += n;
  ds__conn_mark_dirty(c);
}

static void put_error_body(ds_buf_t *b, const char *msg) {
  ds_buf_puts(b, "{\"error\":");
  ds__append_json_string(b, msg, strlen(msg));
  ds_buf_putc(b, '}');
}

void ds__queue_error(ds__conn_t *c, int status, const char *msg, int closing, int is_head) {
  if (c->closing) return;
  ds_buf_t body = DS_BUF_INIT;
  put_error_body(&body, msg);
  size_t before = c->stage.len;
  static const ds_http_header_t json[] = {{"Content-Type", "application/json"}, {NULL, NULL}};
  put_head(&c->stage, c->srv, c->req && c->req->state != DS__REQ_RECEIVING ? &c->req->pub : NULL,
           status, json, 0);
  ds_buf_printf(&c->stage, "Content-Length: %zu\r\n%s\r\n", body.len,
                closing ? "Connection: close\r\n" : "");
  if (!is_head) ds_buf_append(&c->stage, body.data, body.len);
  ds_buf_free(&body);
  account(c, before);
}

/* The request may be answered: attached to a live connection and not yet answered. */
static ds__conn_t *answerable(ds__req_t *r, int state) {
  if (!r || r->dying || !r->conn || r->state != state) return NULL;
  if (r->conn->closing) return NULL;
  return r->conn;
}

void ds_http_respond(ds_http_req_t *req, int status, const ds_http_header_t *hdrs, const char *body,
                     size_t len) {
  ds__req_t *r = (ds__req_t *)req;
  ds__conn_t *c = answerable(r, DS__REQ_ACTIVE);
  if (!c) return;
  if (wants_close(hdrs)) r->keep_alive = 0;
  int closing = !r->keep_alive || c->srv->stopping || c->close_after;
  int no_body = status < 200 || status == 204 || status == 304;
  int user_cl = r->is_head && has_header(hdrs, "content-length");
  size_t before = c->stage.len;
  ds_buf_reserve(&c->stage, 256 + (no_body || r->is_head ? 0 : len));
  put_head(&c->stage, c->srv, req, status, hdrs, user_cl);
  if (!no_body && !user_cl) {
    char num[24], *e = num + sizeof num, *q = e;
    size_t v = len;
    do {
      *--q = (char)('0' + v % 10);
      v /= 10;
    } while (v);
    ds_buf_append(&c->stage, "Content-Length: ", 16);
    ds_buf_append(&c->stage, q, (size_t)(e - q));
    ds_buf_append(&c->stage, "\r\n", 2);
  }
  if (closing) ds_buf_puts(&c->stage, "Connection: close\r\n");
  else if (req->http_minor == 0) ds_buf_puts(&c->stage, "Connection: keep-alive\r\n");
  ds_buf_append(&c->stage, "\r\n", 2);
  if (!no_body && !r->is_head && len) ds_buf_append(&c->stage, body, len);
  account(c, before);
  ds__req_complete(r);
}

void ds_http_respond_error(ds_http_req_t *req, int status, const ds_http_header_t *hdrs,
                           const char *fmt, ...) {
  ds_buf_t msg = DS_BUF_INIT, body = DS_BUF_INIT;
  va_list ap;
  va_start(ap, fmt);
  ds_buf_vprintf(&msg, fmt, ap);
  va_end(ap);
  put_error_body(&body, ds_buf_cstr(&msg));
  size_t n = 0;
  for (const ds_http_header_t *h = hdrs; h && h->name; h++) n++;
  ds_http_header_t *all = ds_xmalloc((n + 2) * sizeof *all);
  size_t k = 0;
  all[k++] = (ds_http_header_t){"Content-Type", "application/json"};
  for (size_t i = 0; i < n; i++)
    if (strcasecmp(hdrs[i].name, "content-type") != 0) all[k++] = hdrs[i];
  all[k] = (ds_http_header_t){NULL, NULL};
  ds_http_respond(req, status, all, body.data, body.len);
  free(all);
  ds_buf_free(&msg);
  ds_buf_free(&body);
}

void ds_http_stream_start(ds_http_req_t *req, int status, const ds_http_header_t *hdrs) {
  ds__req_t *r = (ds__req_t *)req;
  ds__conn_t *c = answerable(r, DS__REQ_ACTIVE);
  if (!c) return;
  int chunked = req->http_minor >= 1;
  if (!chunked || c->srv->stopping || c->close_after || wants_close(hdrs)) r->keep_alive = 0;
  size_t before = c->stage.len;
  put_head(&c->stage, c->srv, req, status, hdrs, 0);
  if (chunked) ds_buf_puts(&c->stage, "Transfer-Encoding: chunked\r\n");
  if (!r->keep_alive) ds_buf_puts(&c->stage, "Connection: close\r\n");
  /* The connection header is this layer's; a handler that asks for keep-alive (the SSE
   * contract lists it) gets it stated when the connection really stays open. */
  else if (has_header(hdrs, "connection")) ds_buf_puts(&c->stage, "Connection: keep-alive\r\n");
  ds_buf_append(&c->stage, "\r\n", 2);
  account(c, before);
  r->chunked_out = (uint8_t)chunked;
  r->state = DS__REQ_STREAMING;
  if (r->is_head) {
    /* Headers only. The connection moves on now; the request object stays valid (and
     * inert) until the caller ends it with ds_http_stream_end/abort, which frees it. */
    r->conn = NULL;
    r->close_cb = NULL;
    r->drain_cb = NULL;
    ds__conn_req_finished(c, r->keep_alive);
    return;
  }
  c->srv->stats.streams_open++;
}

static int stream_check(ds__req_t *r, size_t add, ds__conn_t **out) {
  *out = NULL;
  if (!r || r->dying) return DS_ECLOSED;
  if (!r->conn) return r->state == DS__REQ_STREAMING ? 0 : DS_ECLOSED; /* HEAD: no body */
  if (r->state != DS__REQ_STREAMING) return DS_EINVAL;
  ds__conn_t *c = r->conn;
  if (c->closing || c->lingering || c->peer_eof) return DS_ECLOSED;
  if (add == 0) return 0;
  /* A single buffer is always accepted when nothing is pending, so an oversized
   * buffer cannot wedge the stream. */
  if (c->backlog && c->backlog + add > c->srv->opts.stream_backlog_limit) return DS_ETOOBIG;
  *out = c;
  return 0;
}

int ds_http_stream_write(ds_http_req_t *req, ds_rbuf_t *buf) {
  ds__req_t *r = (ds__req_t *)req;
  ds__conn_t *c;
  char line[24];
  int ln = 0;
  if (buf->len && r && r->chunked_out) ln = snprintf(line, sizeof line, "%zx\r\n", buf->len);
  int rc = stream_check(r, buf->len ? buf->len + (size_t)ln + (ln ? 2 : 0) : 0, &c);
  if (rc != 0 || !c) return rc;
  if (ln) ds__conn_queue_copy(c, line, (size_t)ln);
  ds__conn_queue_rbuf(c, buf);
  if (ln) ds__conn_queue_copy(c, "\r\n", 2);
  return 0;
}

ds_rbuf_t *ds_http_chunk_new(const void *p, size_t n) {
  char line[24];
  int ln = snprintf(line, sizeof line, "%zx\r\n", n);
  ds_rbuf_t *rb = ds_rbuf_alloc((size_t)ln + n + 2);
  memcpy(rb->data, line, (size_t)ln);
  if (n) memcpy(rb->data + ln, p, n);
  memcpy(rb->data + (size_t)ln + n, "\r\n", 2);
  rb->len = (size_t)ln + n + 2;
  rb->data[rb->len] = '\0';
  return rb;
}

int ds_http_stream_write_chunk(ds_http_req_t *req, ds_rbuf_t *chunk) {
  ds__req_t *r = (ds__req_t *)req;
  ds__conn_t *c;
  const char *nl = memchr(chunk->data, '\n', chunk->len < 20 ? chunk->len : 20);
  size_t pre = nl ? (size_t)(nl - chunk->data) + 1 : 0;
  if (!nl || chunk->len <= pre + 2) return DS_EINVAL; /* not from ds_http_chunk_new, or empty */
  int chunked = r && r->chunked_out;
  size_t off = chunked ? 0 : pre, len = chunked ? chunk->len : chunk->len - pre - 2;
  int rc = stream_check(r, len, &c);
  if (rc != 0 || !c) return rc;
  ds__conn_queue_rbuf_part(c, chunk, off, len);
  return 0;
}

int ds_http_stream_write_copy(ds_http_req_t *req, const void *p, size_t n) {
  ds__req_t *r = (ds__req_t *)req;
  ds__conn_t *c;
  char line[24];
  int ln = 0;
  if (n && r && r->chunked_out) ln = snprintf(line, sizeof line, "%zx\r\n", n);
  int rc = stream_check(r, n ? n + (size_t)ln + (ln ? 2 : 0) : 0, &c);
  if (rc != 0 || !c) return rc;
  size_t before = c->stage.len;
  ds_buf_append(&c->stage, line, (size_t)ln);
  ds_buf_append(&c->stage, p, n);
  if (ln) ds_buf_append(&c->stage, "\r\n", 2);
  account(c, before);
  return 0;
}

size_t ds_http_stream_backlog(const ds_http_req_t *req) {
  const ds__req_t *r = (const ds__req_t *)req;
  return r->conn && !r->dying ? r->conn->backlog : 0;
}

void ds_http_stream_on_drain(ds_http_req_t *req, void (*cb)(void *ud), void *ud) {
  ds__req_t *r = (ds__req_t *)req;
  if (r->dying || !r->conn) return;
  r->drain_cb = cb;
  r->drain_ud = ud;
  /* Checked from the flush phase, also when the backlog is already zero. */
  if (cb) ds__conn_mark_dirty(r->conn);
}

void ds_http_stream_end(ds_http_req_t *req) {
  ds__req_t *r = (ds__req_t *)req;
  if (r->dying) return;
  if (!r->conn) { /* detached HEAD stream: nothing left to send */
    ds__req_free(r);
    return;
  }
  if (r->state != DS__REQ_STREAMING || r->conn->closing) return;
  if (r->chunked_out) ds__conn_queue_copy(r->conn, "0\r\n\r\n", 5);
  ds__req_complete(r);
}

void ds_http_stream_abort(ds_http_req_t *req) {
  ds__req_t *r = (ds__req_t *)req;
  if (r->dying) return;
  ds__conn_t *c = r->conn;
  if (!c) {
    ds__req_free(r);
    return;
  }
  if (r->state == DS__REQ_STREAMING) c->srv->stats.streams_open--;
  c->req = NULL;
  ds__req_free(r);
  ds__conn_close(c); /* the caller asked for it: no close callback */
}

void ds_http_req_on_close(ds_http_req_t *req, void (*cb)(void *ud), void *ud) {
  ds__req_t *r = (ds__req_t *)req;
  if (r->dying || !r->conn) return;
  r->close_cb = cb;
  r->close_ud = ud;
}
