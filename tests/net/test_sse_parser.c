/* test_sse_parser.c - cmocka tests of the incremental SSE parser.
 *
 * Provides: field rules (event, multi-line data, id, retry, comments, unknown fields),
 * CRLF/LF/CR line endings, the leading BOM, the event size bound, callback stop, and the
 * split-anywhere property: a realistic Responses-API transcript fed in two slices at every
 * possible byte boundary, and byte by byte, gives the same events as one feed.
 * Must not: depend on anything but the parser.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "net/sse_parser.h"

typedef struct {
  ds_buf_t out; /* serialised events: "type|id|retry|data\n--\n" */
  int n;
  int stop_after; /* stop the feed after this many events (0 = never) */
} sink_t;

static int on_event(const ds_sse_event_t *ev, void *ud) {
  sink_t *s = ud;
  assert_int_equal(strlen(ev->type), ev->type_len);
  assert_int_equal(strlen(ev->id), ev->id_len);
  ds_buf_printf(&s->out, "%s|%s|%ld|", ev->type, ev->id, ev->retry);
  ds_buf_append(&s->out, ev->data, ev->data_len);
  ds_buf_puts(&s->out, "\n--\n");
  s->n++;
  return (s->stop_after && s->n >= s->stop_after) ? 42 : 0;
}

/* Parses `in` split into the given slice lengths (the rest in a last slice). */
static char *parse_split(const char *in, size_t len, const size_t *cuts, size_t ncuts, int *nev) {
  sink_t s = {DS_BUF_INIT, 0, 0};
  ds_sse_parser_t p;
  ds_sse_parser_init(&p, 0, on_event, &s);
  size_t off = 0;
  for (size_t i = 0; i < ncuts; i++) {
    assert_int_equal(ds_sse_parser_feed(&p, in + off, cuts[i] - off), 0);
    off = cuts[i];
  }
  assert_int_equal(ds_sse_parser_feed(&p, in + off, len - off), 0);
  ds_sse_parser_free(&p);
  if (nev) *nev = s.n;
  ds_buf_cstr(&s.out);
  size_t l;
  return ds_buf_detach(&s.out, &l);
}

static char *parse_whole(const char *in, int *nev) { return parse_split(in, strlen(in), NULL, 0, nev); }

static void test_fields(void **state) {
  const char *in =
      ": a comment\n"
      "event: greeting\n"
      "id: 7\n"
      "retry: 1500\n"
      "data: hello\n"
      "data:world\n"
      "data\n"
      "unknown: ignored\n"
      "\n"
      "data:  two spaces keeps one\n"
      "\n"
      "event: only-type-no-data\n"
      "\n"
      "id\n"
      "data: {\"a\":1}\n"
      "\n";
  int n;
  char *out = parse_whole(in, &n);
  assert_int_equal(n, 3);
  assert_string_equal(out,
                      "greeting|7|1500|hello\nworld\n\n--\n"
                      "message|7|-1| two spaces keeps one\n--\n"
                      "message||-1|{\"a\":1}\n--\n");
  free(out);
}

static void test_line_endings(void **state) {
  const char *lf = "event: a\ndata: 1\ndata: 2\n\ndata: 3\n\n";
  const char *crlf = "event: a\r\ndata: 1\r\ndata: 2\r\n\r\ndata: 3\r\n\r\n";
  const char *cr = "event: a\rdata: 1\rdata: 2\r\rdata: 3\r\r";
  const char *mixed = "event: a\r\ndata: 1\rdata: 2\n\r\ndata: 3\n\r";
  char *a = parse_whole(lf, NULL), *b = parse_whole(crlf, NULL), *c = parse_whole(cr, NULL),
       *d = parse_whole(mixed, NULL);
  assert_string_equal(a, "a||-1|1\n2\n--\nmessage||-1|3\n--\n");
  assert_string_equal(a, b);
  assert_string_equal(a, c);
  assert_string_equal(a, d);
  free(a);
  free(b);
  free(c);
  free(d);
}

static void test_bom(void **state) {
  char *a = parse_whole("\xEF\xBB\xBF" "data: x\n\n", NULL);
  assert_string_equal(a, "message||-1|x\n--\n");
  free(a);
  /* the BOM split over three slices */
  const char *in = "\xEF\xBB\xBF" "data: x\n\n";
  size_t cuts[] = {1, 2};
  a = parse_split(in, strlen(in), cuts, 2, NULL);
  assert_string_equal(a, "message||-1|x\n--\n");
  free(a);
  /* only one leading BOM is dropped; a second one is part of the field name */
  a = parse_whole("\xEF\xBB\xBF\xEF\xBB\xBF" "data: x\n\ndata: y\n\n", NULL);
  assert_string_equal(a, "message||-1|y\n--\n");
  free(a);
  /* a prefix of a BOM that is not one is ordinary input */
  const char *in2 = "\xEF" "data: q\n\n";
  size_t cut2[] = {1};
  a = parse_split(in2, strlen(in2), cut2, 1, NULL);
  char *b = parse_whole(in2, NULL);
  assert_string_equal(a, b);
  assert_string_equal(a, "");
  free(a);
  free(b);
}

/* A Responses-API stream as OpenAI sends it (shape per the API reference). */
static const char *TRANSCRIPT =
    "event: response.created\r\n"
    "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_67c\",\"object\":"
    "\"response\",\"created_at\":1741290958,\"status\":\"in_progress\",\"model\":\"gpt-4o-2024-08-06\","
    "\"output\":[],\"usage\":null}}\r\n\r\n"
    "event: response.in_progress\r\n"
    "data: {\"type\":\"response.in_progress\",\"sequence_number\":1,\"response\":{\"id\":\"resp_67c\","
    "\"status\":\"in_progress\"}}\r\n\r\n"
    ": keep-alive\r\n\r\n"
    "event: response.output_item.added\n"
    "data: {\"type\":\"response.output_item.added\",\"sequence_number\":2,\"output_index\":0,\"item\":"
    "{\"id\":\"msg_67c\",\"type\":\"message\",\"status\":\"in_progress\",\"role\":\"assistant\",\"content\":[]}}\n\n"
    "event: response.content_part.added\n"
    "data: {\"type\":\"response.content_part.added\",\"sequence_number\":3,\"item_id\":\"msg_67c\","
    "\"output_index\":0,\"content_index\":0,\"part\":{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[]}}\n\n"
    "event: response.output_text.delta\n"
    "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_67c\","
    "\"output_index\":0,\"content_index\":0,\"delta\":\"Hi\"}\n\n"
    "event: response.output_text.delta\n"
    "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":5,\"item_id\":\"msg_67c\","
    "\"output_index\":0,\"content_index\":0,\"delta\":\" th\\u00e9re \\n\"}\n\n"
    "event: response.output_text.delta\r"
    "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":6,\"item_id\":\"msg_67c\","
    "\"output_index\":0,\"content_index\":0,\"delta\":\"!\"}\r\r"
    "event: response.output_text.done\n"
    "data: {\"type\":\"response.output_text.done\",\"sequence_number\":7,\"item_id\":\"msg_67c\","
    "\"output_index\":0,\"content_index\":0,\"text\":\"Hi th\\u00e9re \\n!\"}\n\n"
    "event: response.content_part.done\n"
    "data: {\"type\":\"response.content_part.done\",\"sequence_number\":8,\"item_id\":\"msg_67c\","
    "\"output_index\":0,\"content_index\":0,\"part\":{\"type\":\"output_text\",\"text\":\"Hi th\\u00e9re \\n!\"}}\n\n"
    "event: response.output_item.done\n"
    "data: {\"type\":\"response.output_item.done\",\"sequence_number\":9,\"output_index\":0,\"item\":{\"id\":"
    "\"msg_67c\",\"type\":\"message\",\"status\":\"completed\",\"role\":\"assistant\",\"content\":[{\"type\":"
    "\"output_text\",\"text\":\"Hi th\\u00e9re \\n!\"}]}}\n\n"
    "event: response.completed\n"
    "data: {\"type\":\"response.completed\",\"sequence_number\":10,\"response\":{\"id\":\"resp_67c\","
    "\"status\":\"completed\",\"usage\":{\"input_tokens\":37,\"output_tokens\":11,\"total_tokens\":48}}}\n\n";

static void test_every_split_point(void **state) {
  size_t len = strlen(TRANSCRIPT);
  int n0;
  char *ref = parse_whole(TRANSCRIPT, &n0);
  assert_int_equal(n0, 11);
  assert_non_null(strstr(ref, "response.completed||-1|{\"type\":\"response.completed\""));
  for (size_t cut = 0; cut <= len; cut++) {
    int n;
    char *got = parse_split(TRANSCRIPT, len, &cut, 1, &n);
    if (strcmp(got, ref) != 0) fail_msg("split at %zu differs", cut);
    assert_int_equal(n, n0);
    free(got);
  }
  /* three slices: every pair of cut points in a window around the CR-only event */
  const char *cr = strstr(TRANSCRIPT, "\"!\"}\r\r");
  size_t base = (size_t)(cr - TRANSCRIPT);
  for (size_t a = base - 8; a < base + 12; a++)
    for (size_t b = a; b < base + 14; b++) {
      size_t cuts[2] = {a, b};
      char *got = parse_split(TRANSCRIPT, len, cuts, 2, NULL);
      assert_string_equal(got, ref);
      free(got);
    }
  /* byte by byte */
  sink_t s = {DS_BUF_INIT, 0, 0};
  ds_sse_parser_t p;
  ds_sse_parser_init(&p, 0, on_event, &s);
  for (size_t i = 0; i < len; i++) assert_int_equal(ds_sse_parser_feed(&p, TRANSCRIPT + i, 1), 0);
  assert_false(ds_sse_parser_pending(&p));
  assert_int_equal(p.comments, 1);
  assert_int_equal(p.events, 11);
  assert_string_equal(ds_buf_cstr(&s.out), ref);
  ds_sse_parser_free(&p);
  ds_buf_free(&s.out);
  free(ref);
}

static void test_pending_at_eof(void **state) {
  sink_t s = {DS_BUF_INIT, 0, 0};
  ds_sse_parser_t p;
  ds_sse_parser_init(&p, 0, on_event, &s);
  assert_false(ds_sse_parser_pending(&p));
  assert_int_equal(ds_sse_parser_feed(&p, "data: a\n\ndata: b", 16), 0);
  assert_int_equal(s.n, 1);
  assert_true(ds_sse_parser_pending(&p));
  assert_int_equal(ds_sse_parser_feed(&p, "\n", 1), 0);
  assert_true(ds_sse_parser_pending(&p)); /* a data line, but no blank line yet */
  assert_int_equal(ds_sse_parser_feed(&p, "\n", 1), 0);
  assert_false(ds_sse_parser_pending(&p));
  assert_int_equal(s.n, 2);
  ds_sse_parser_free(&p);
  ds_buf_free(&s.out);
}

static void test_bound(void **state) {
  sink_t s = {DS_BUF_INIT, 0, 0};
  ds_sse_parser_t p;
  ds_sse_parser_init(&p, 64, on_event, &s);
  assert_int_equal(ds_sse_parser_feed(&p, "data: small\n\n", 13), 0);
  assert_int_equal(s.n, 1);
  /* many short data lines add up past the bound */
  int rc = 0;
  for (int i = 0; i < 20 && rc == 0; i++) rc = ds_sse_parser_feed(&p, "data: 0123456789\n", 17);
  assert_int_equal(rc, DS_ETOOBIG);
  /* the parser stays failed */
  assert_int_equal(ds_sse_parser_feed(&p, "\n", 1), DS_ETOOBIG);
  assert_int_equal(s.n, 1);
  ds_sse_parser_free(&p);

  /* one endless line without a terminator */
  ds_sse_parser_init(&p, 64, on_event, &s);
  rc = 0;
  for (int i = 0; i < 20 && rc == 0; i++) rc = ds_sse_parser_feed(&p, "xxxxxxxxxx", 10);
  assert_int_equal(rc, DS_ETOOBIG);
  ds_sse_parser_free(&p);
  ds_buf_free(&s.out);
}

static void test_callback_stop(void **state) {
  sink_t s = {DS_BUF_INIT, 0, 2};
  ds_sse_parser_t p;
  ds_sse_parser_init(&p, 0, on_event, &s);
  assert_int_equal(ds_sse_parser_feed(&p, "data: 1\n\ndata: 2\n\ndata: 3\n\n", 27), 42);
  assert_int_equal(s.n, 2);
  ds_sse_parser_free(&p);
  ds_buf_free(&s.out);
}

static void test_retry_rules(void **state) {
  char *a = parse_whole("retry: 12x\ndata: a\n\nretry:\ndata: b\n\nretry: 30\ndata: c\n\ndata: d\n\n", NULL);
  assert_string_equal(a, "message||-1|a\n--\nmessage||-1|b\n--\nmessage||30|c\n--\nmessage||-1|d\n--\n");
  free(a);
}

static void test_id_with_nul_ignored(void **state) {
  const char in[] = "id: 1\ndata: a\n\nid: x\0y\ndata: b\n\n";
  char *a = parse_split(in, sizeof in - 1, NULL, 0, NULL);
  assert_string_equal(a, "message|1|-1|a\n--\nmessage|1|-1|b\n--\n");
  free(a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_fields),          cmocka_unit_test(test_line_endings),
      cmocka_unit_test(test_bom),             cmocka_unit_test(test_every_split_point),
      cmocka_unit_test(test_pending_at_eof),  cmocka_unit_test(test_bound),
      cmocka_unit_test(test_callback_stop),   cmocka_unit_test(test_retry_rules),
      cmocka_unit_test(test_id_with_nul_ignored),
  };
  return cmocka_run_group_tests_name("sse_parser", tests, NULL, NULL);
}
