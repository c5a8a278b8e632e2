/* main.c - durable-stream entry point (command line, config, loop). */
#include <stdio.h>

int main(void) {
  fputs("durable-stream: build in progress\n", stderr);
  return 1;
}
