/* fuzz_ws_message.c - libFuzzer target for WebSocket message reassembly (ds_ws_rx_t).
 *
 * Provides: drives the reassembly queue of net/ws_client with arbitrary sequences of
 * fragments and pops, decoded from the input (per op, one byte: bit 7 = pop instead of
 * feed; for a feed, bit 6 = final, bit 5 = binary, bits 0-4 = fragment length, followed by
 * that many data bytes), and checks every popped message against a simple reference model:
 * same bytes, same binary flag of the message's first fragment, NUL terminator present,
 * messages in order, no message beyond the size bound, DS_ETOOBIG exactly when the bound
 * is crossed, counters consistent. Leaks are caught by the sanitizer build.
 * Must not: abort on DS_ETOOBIG, which is a legitimate outcome.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/err.h"
#include "net/ws_client.h"

#define MAX_MESSAGE 100
#define MAX_EXPECTED 4096

typedef struct {
  unsigned char data[MAX_MESSAGE];
  size_t len;
  int binary;
} ref_msg_t;

static ref_msg_t expected[MAX_EXPECTED];

int LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) {
  ds_ws_rx_t rx;
  ds_ws_rx_init(&rx, MAX_MESSAGE);
  size_t head = 0, tail = 0; /* expected queue */
  unsigned char cur[MAX_MESSAGE];
  size_t cur_len = 0;
  int in_msg = 0, cur_binary = 0;
  size_t i = 0;
  while (i < n) {
    uint8_t op = d[i++];
    if (op & 0x80) {
      ds_ws_msg_t *m = ds_ws_rx_pop(&rx);
      if (head == tail) {
        if (m) abort();
        continue;
      }
      if (!m) abort();
      ref_msg_t *e = &expected[head++];
      if (m->len != e->len || m->binary != e->binary || m->data[m->len] != '\0') abort();
      if (m->len && memcmp(m->data, e->data, m->len) != 0) abort();
      free(m);
      continue;
    }
    int final = (op >> 6) & 1, binary = (op >> 5) & 1;
    size_t len = op & 0x1f;
    if (len > n - i) len = n - i;
    const uint8_t *p = d + i;
    i += len;
    if (tail == MAX_EXPECTED) break;
    if (!in_msg) {
      in_msg = 1;
      cur_binary = binary;
      cur_len = 0;
    }
    int rc = ds_ws_rx_feed(&rx, p, len, final, binary);
    if (cur_len + len > MAX_MESSAGE) {
      if (rc != DS_ETOOBIG) abort();
      in_msg = 0;
      cur_len = 0;
      continue;
    }
    if (rc != 0) abort();
    memcpy(cur + cur_len, p, len);
    cur_len += len;
    if (final) {
      ref_msg_t *e = &expected[tail++];
      memcpy(e->data, cur, cur_len);
      e->len = cur_len;
      e->binary = cur_binary;
      in_msg = 0;
      cur_len = 0;
    }
    if (rx.count != tail - head) abort();
  }
  size_t bytes = 0;
  for (size_t k = head; k < tail; k++) bytes += expected[k].len;
  if (rx.count != tail - head || rx.bytes != bytes) abort();
  ds_ws_rx_free(&rx);
  return 0;
}
